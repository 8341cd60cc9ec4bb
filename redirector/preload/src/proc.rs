//! Which process the shim is running in: the one whose memory it owns, or a child that shares
//! that memory (`vfork`, `posix_spawn`'s `CLONE_VM|CLONE_VFORK` clone, `system()`).
//!
//! A `vfork` child runs on its parent's memory with its own copy of the fd table: whatever it
//! writes into the shim's state (the fd table, the routed cwd, the sessions) it writes into
//! its parent's. So every call that would change that state first asks [`shared_child`]:
//! the pid the shim recorded for its own process (at start and in the fork handler of a
//! `fork` child, whose memory is its own) differs from the kernel's answer exactly in such a
//! child. A shared child then only changes its own kernel fds, never the parent's table or a
//! server's handles, and it decides what to carry across `exec` from its own kernel fd table
//! ([`same_file_as_parent`]).

use std::sync::atomic::{AtomicI64, Ordering};

use crate::sys;

static PID: AtomicI64 = AtomicI64::new(0);

/// Entries that shared children keep in the owner's memory (cwd slots, sessions of their own,
/// files they opened): while non-zero, the owner sweeps those of children that have gone or
/// exec'd ([`sweep`]).
pub static CHILD_STATE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// True when process `pid` still shares this process's memory (a `vfork` child before its
/// exec). A process that has gone, exec'd, or cannot be compared does not.
pub fn shares_memory_with(pid: i64) -> bool {
    let me = sys::getpid();
    if pid == me {
        return true;
    }
    match sys::sys(
        libc::SYS_kcmp,
        &[me as u64, pid as u64, 2 /* KCMP_VM */, 0, 0],
    ) {
        0 => true,
        // Cannot compare (no kcmp in this kernel, or not allowed): a live process may still
        // be sharing; only a gone one certainly is not.
        r if r == -(libc::ENOSYS as i64) || r == -(libc::EPERM as i64) => {
            sys::sys(libc::SYS_kill, &[pid as u64, 0]) != -(libc::ESRCH as i64)
        }
        _ => false,
    }
}

/// In the owner, at the start of every dispatched call: frees what shared children that no
/// longer share its memory left behind. One relaxed load when there is nothing.
pub fn sweep() {
    if CHILD_STATE.load(Ordering::Relaxed) == 0 || shared_child() {
        return;
    }
    crate::cwd::sweep_children();
    crate::remote::sweep_child_sessions();
    sweep_opens();
}

fn sweep_opens() {
    for s in CHILD_OPENS.iter() {
        let p = s.pid.load(Ordering::Acquire);
        if p > 0
            && !shares_memory_with(p)
            && s.pid
                .compare_exchange(p, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            CHILD_STATE.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Records the current process as the owner of the shim's memory (constructor, fork child).
pub fn set_owner() {
    sys::forked();
    PID.store(sys::sys(libc::SYS_getpid, &[]), Ordering::Release);
}

/// True in a child that shares its parent's memory (see the module documentation). One
/// `getpid` system call per dispatched call ([`sys::getpid`]); callers ask only on paths that
/// change shared state.
pub fn shared_child() -> bool {
    let owner = PID.load(Ordering::Acquire);
    owner != 0 && sys::getpid() != owner
}

/// The owner's pid (the parent, in a shared child).
pub fn owner() -> i64 {
    PID.load(Ordering::Acquire)
}

thread_local! {
    /// Set while this thread runs the shim's own set-up code (connecting a session), whose
    /// libc calls must reach the kernel, never the shim's routing again. (A `Cell` without a
    /// destructor: no lazy registration on first use.)
    static INTERNAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread runs the shim's own set-up code (see [`Internal`]).
pub fn internal() -> bool {
    INTERNAL.with(|c| c.get())
}

/// Clears the mark of shim code this thread left for good (a handler `longjmp`ed out of it).
pub fn abandon_internal() {
    INTERNAL.with(|c| c.set(false));
}

/// Marks this thread as running the shim's own code until dropped.
pub struct Internal(bool);

impl Internal {
    /// Marks the thread.
    pub fn enter() -> Internal {
        Internal(INTERNAL.with(|c| c.replace(true)))
    }
}

impl Drop for Internal {
    fn drop(&mut self) {
        let prev = self.0;
        INTERNAL.with(|c| c.set(prev));
    }
}

/// True when `fd` is one of the shim's placeholders for a remote file or socket (an `O_PATH`
/// descriptor of a memfd named `virtuos-remote`).
pub fn is_placeholder(fd: i64) -> bool {
    let mut path = crate::diag::Line::default();
    use std::fmt::Write;
    if write!(path, "/proc/self/fd/{fd}\0").is_err() {
        return false;
    }
    let mut target = [0u8; 64];
    let n = sys::sys(
        libc::SYS_readlinkat,
        &[
            libc::AT_FDCWD as u64,
            path.as_bytes().as_ptr() as u64,
            target.as_mut_ptr() as u64,
            target.len() as u64,
        ],
    );
    n > 0 && target[..n as usize].starts_with(b"/memfd:virtuos-remote")
}

/// Identity of an open file: device and inode.
pub fn identity_fd(fd: i64) -> Option<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid output buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = sys::sys(
        libc::SYS_fstat,
        &[fd as u64, &mut st as *mut libc::stat as u64],
    );
    (r == 0).then_some((st.st_dev, st.st_ino))
}

/// Identity of the file behind the owner's fd `fd` (through `/proc/<owner>/fd/<fd>`).
pub fn identity_in_owner(fd: i64) -> Option<(u64, u64)> {
    let mut path = [0u8; 64];
    let mut w = crate::diag::Line::default();
    use std::fmt::Write;
    write!(w, "/proc/{}/fd/{}", owner(), fd).ok()?;
    let b = w.as_bytes();
    path[..b.len()].copy_from_slice(b);
    // SAFETY: a zeroed stat is a valid output buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = sys::sys(
        libc::SYS_newfstatat,
        &[
            libc::AT_FDCWD as u64,
            path.as_ptr() as u64,
            &mut st as *mut libc::stat as u64,
            0,
        ],
    );
    (r == 0).then_some((st.st_dev, st.st_ino))
}

/// In a shared child: does its fd `fd` still refer to the file the owner's fd `fd` refers to
/// (the child did not close or replace it since the clone)?
pub fn same_file_as_parent(fd: i64) -> bool {
    match (identity_fd(fd), identity_in_owner(fd)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

// ---- remote files opened inside a shared child (posix_spawn's addopen), until its exec ----

const CHILD_SLOTS: usize = 32;

struct ChildOpen {
    pid: AtomicI64,
    dev: std::sync::atomic::AtomicU64,
    ino: std::sync::atomic::AtomicU64,
    remote: std::sync::atomic::AtomicU64,
}

static CHILD_OPENS: [ChildOpen; CHILD_SLOTS] = [const {
    ChildOpen {
        pid: AtomicI64::new(0),
        dev: std::sync::atomic::AtomicU64::new(0),
        ino: std::sync::atomic::AtomicU64::new(0),
        remote: std::sync::atomic::AtomicU64::new(0),
    }
}; CHILD_SLOTS];

fn encode(r: crate::fdtable::Remote) -> u64 {
    u64::from(r.handle)
        | u64::from(r.net) << 32
        | u64::from(r.is_dir) << 33
        | u64::from(r.listening) << 34
}

fn decode(v: u64) -> crate::fdtable::Remote {
    crate::fdtable::Remote {
        handle: v as u32,
        net: v >> 32 & 1 != 0,
        is_dir: v >> 33 & 1 != 0,
        listening: v >> 34 & 1 != 0,
    }
}

/// In a shared child: remembers that its placeholder `fd` stands for `r` (opened by the child
/// itself, on the parent's session), for its exec. False when no slot is free.
pub fn child_opened(fd: i64, r: crate::fdtable::Remote) -> bool {
    let Some((dev, ino)) = identity_fd(fd) else {
        return false;
    };
    let me = sys::getpid();
    // Slots of children that ended or exec'd are free again.
    sweep_opens();
    for s in CHILD_OPENS.iter() {
        if s.pid
            .compare_exchange(0, -me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            s.dev.store(dev, Ordering::Relaxed);
            s.ino.store(ino, Ordering::Relaxed);
            s.remote.store(encode(r), Ordering::Relaxed);
            s.pid.store(me, Ordering::Release);
            CHILD_STATE.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// The remote files this shared child opened itself: `(identity, remote)` each.
pub fn child_opens(mut f: impl FnMut((u64, u64), crate::fdtable::Remote)) {
    let me = sys::getpid();
    for s in CHILD_OPENS.iter() {
        if s.pid.load(Ordering::Acquire) == me {
            f(
                (s.dev.load(Ordering::Relaxed), s.ino.load(Ordering::Relaxed)),
                decode(s.remote.load(Ordering::Relaxed)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_not_a_shared_child_and_sees_its_own_files() {
        set_owner();
        assert!(!shared_child());
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd() as i64;
        assert!(identity_fd(fd).is_some());
        assert_eq!(identity_fd(fd), identity_in_owner(fd));
        assert!(same_file_as_parent(fd));
    }
}
