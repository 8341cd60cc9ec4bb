//! The routed working directory: set when the program `chdir`s under the mount prefix.
//!
//! The kernel's own cwd cannot be inside the remote tree, so the shim keeps the full
//! (prefix-including) path and resolves relative paths against it while it is set.
//! Both values live behind one [`SigLock`], held with signals blocked, so a signal handler
//! that resolves a path while its thread was inside `get`/`set` cannot deadlock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::lock::{ForkLock, SigLock};
use crate::paths::PathBuf;
use crate::proc;

struct State {
    /// The routed cwd (full path), when the cwd is under the mount prefix.
    routed: Option<PathBuf>,
    /// The kernel's cwd, cached (None: not known; read it again).
    local: Option<PathBuf>,
}

static STATE: SigLock<State> = SigLock::new(State {
    routed: None,
    local: None,
});
static ROUTED: AtomicBool = AtomicBool::new(false);
static LOCAL_VALID: AtomicBool = AtomicBool::new(false);

/// The cwd of children sharing the owner's memory (`vfork`, `posix_spawn` with a chdir file
/// action, Python's `subprocess(cwd=...)`): such a child has a kernel cwd of its own, so its
/// `chdir` must not move the owner's. Its routed cwd lives here, by pid, until its exec.
struct ChildCwd {
    pid: i64,
    /// None: the child moved to a local directory.
    routed: Option<PathBuf>,
}

const CHILD_SLOTS: usize = 4;
static CHILDREN: SigLock<[Option<ChildCwd>; CHILD_SLOTS]> =
    SigLock::new([const { None }; CHILD_SLOTS]);
/// Slots in use (0: no child has moved; `get` then costs nothing extra).
static CHILDREN_IN_USE: AtomicUsize = AtomicUsize::new(0);

fn used(n: isize) {
    if n > 0 {
        CHILDREN_IN_USE.fetch_add(1, Ordering::AcqRel);
        proc::CHILD_STATE.fetch_add(1, Ordering::AcqRel);
    } else {
        CHILDREN_IN_USE.fetch_sub(1, Ordering::AcqRel);
        proc::CHILD_STATE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// In a shared child that changed directory: its own routed cwd (`Some(None)`: a local one).
fn child_state() -> Option<Option<PathBuf>> {
    if CHILDREN_IN_USE.load(Ordering::Acquire) == 0 || !proc::shared_child() {
        return None;
    }
    let me = crate::sys::getpid();
    CHILDREN.with(|c| {
        c.iter()
            .flatten()
            .find(|x| x.pid == me)
            .map(|x| x.routed.clone())
    })
}

/// Records a shared child's new cwd. False when every slot is taken by a live child.
fn set_child(p: Option<PathBuf>) -> bool {
    let me = crate::sys::getpid();
    CHILDREN.with(|c| {
        let at = c
            .iter()
            .position(|x| matches!(x, Some(x) if x.pid == me))
            .or_else(|| c.iter().position(|x| x.is_none()));
        let Some(i) = at else { return false };
        if c[i].is_none() {
            used(1);
        }
        c[i] = Some(ChildCwd { pid: me, routed: p });
        true
    })
}

/// In the owner: frees the slots of children that no longer share its memory (they exec'd
/// with their cwd in the exec state, or ended).
pub fn sweep_children() {
    if CHILDREN_IN_USE.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut pids = [0i64; CHILD_SLOTS];
    CHILDREN.with(|c| {
        for (i, x) in c.iter().enumerate() {
            pids[i] = x.as_ref().map(|x| x.pid).unwrap_or(0);
        }
    });
    for (i, &pid) in pids.iter().enumerate() {
        // kcmp outside the lock (a system call per slot).
        if pid != 0 && !proc::shares_memory_with(pid) {
            CHILDREN.with(|c| {
                if matches!(&c[i], Some(x) if x.pid == pid) {
                    c[i] = None;
                    used(-1);
                }
            });
        }
    }
}

/// The lock, for the fork handlers.
pub(crate) fn lock() -> &'static dyn ForkLock {
    &STATE
}

/// The routed cwd (full path), if the cwd is under the mount prefix.
pub fn get() -> Option<PathBuf> {
    if let Some(c) = child_state() {
        return c;
    }
    if !ROUTED.load(Ordering::Acquire) {
        return None;
    }
    STATE.with(|s| s.routed.clone())
}

/// Sets (Some) or leaves (None) the routed cwd. In a child sharing the owner's memory, only
/// the child's own cwd changes; false when it cannot be recorded (the call then fails).
pub fn set(p: Option<PathBuf>) -> bool {
    if proc::shared_child() {
        return set_child(p);
    }
    STATE.with(|s| {
        ROUTED.store(p.is_some(), Ordering::Release);
        s.routed = p;
    });
    true
}

/// Forgets the cached kernel cwd (after a local chdir/fchdir; a shared child's own change
/// leaves the owner's cache alone).
pub fn invalidate_local() {
    if !proc::shared_child() {
        LOCAL_VALID.store(false, Ordering::Release);
    }
}

fn raw_getcwd() -> Option<PathBuf> {
    let mut buf = [0u8; crate::paths::PATH_MAX];
    let n = crate::sys::sys(
        libc::SYS_getcwd,
        &[buf.as_mut_ptr() as u64, buf.len() as u64],
    );
    if n > 1 {
        PathBuf::from_bytes(&buf[..n as usize - 1])
    } else {
        None
    }
}

/// The kernel's cwd, from the cache or a raw getcwd (always raw in a shared child, whose
/// kernel cwd may differ from the owner's).
pub fn local() -> Option<PathBuf> {
    if CHILDREN_IN_USE.load(Ordering::Acquire) > 0 && proc::shared_child() {
        return raw_getcwd();
    }
    STATE.with(|s| {
        if !LOCAL_VALID.load(Ordering::Acquire) || s.local.is_none() {
            s.local = raw_getcwd();
            LOCAL_VALID.store(s.local.is_some(), Ordering::Release);
        }
        s.local.clone()
    })
}
