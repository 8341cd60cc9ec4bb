//! The shim's own descriptors, kept out of the program's fd space.
//!
//! A program owns its fd numbers: it expects its first `socket` to be fd 3, closes every fd
//! from 3 to 1023 when it daemonises, `dup2`s onto any number it likes and reuses numbers it
//! closed. So the shim's descriptors (each session's control socket, doorbells and readiness
//! eventfd, the exit report's copy of stderr, the exec state) live at the top of the fd space,
//! just below the soft `RLIMIT_NOFILE`, where the kernel's lowest-free numbering never reaches
//! while the program has free numbers, and are protected:
//!
//! * `close` of one of them fails with EBADF, as for a number the program never opened, and
//!   `close_range`/`closefrom` skip them;
//! * `dup2`/`dup3` onto one of them first moves the shim's descriptor to another reserved
//!   number (its session learns the new number: [`xen_transport::Session::renumber_fd`]),
//!   then gives the program the number it asked for;
//! * `dup`, `dup2`, `fcntl` and `close` naming one as the *source* fail with EBADF;
//! * lowering `RLIMIT_NOFILE` below them moves them under the new limit.
//!
//! The registry is a fixed array of atomics: no allocation, no lock.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys;

const SLOTS: usize = 64;
const EMPTY: i32 = -1;
/// How far below the limit the shim looks for a free number.
const SEARCH: i32 = 256;

static OWNED: [AtomicI32; SLOTS] = [const { AtomicI32::new(EMPTY) }; SLOTS];
/// The lowest number in the registry (a quick "not ours" for every lower fd).
static LOW: AtomicI32 = AtomicI32::new(i32::MAX);

fn e(n: i32) -> i64 {
    -i64::from(n)
}

/// The soft RLIMIT_NOFILE.
pub fn soft_limit() -> i64 {
    let mut r = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let rc = sys::sys(
        libc::SYS_prlimit64,
        &[
            0,
            libc::RLIMIT_NOFILE as u64,
            0,
            &mut r as *mut libc::rlimit64 as u64,
        ],
    );
    if rc < 0 {
        return 1024;
    }
    r.rlim_cur.min(i32::MAX as u64) as i64
}

fn recompute_low() {
    let low = OWNED
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .filter(|&f| f != EMPTY)
        .min()
        .unwrap_or(i32::MAX);
    LOW.store(low, Ordering::Release);
}

fn register(fd: RawFd) {
    for s in OWNED.iter() {
        if s.compare_exchange(EMPTY, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            LOW.fetch_min(fd, Ordering::AcqRel);
            return;
        }
    }
}

fn unregister(fd: RawFd) {
    for s in OWNED.iter() {
        if s.compare_exchange(fd, EMPTY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            break;
        }
    }
    recompute_low();
}

/// True when `fd` is one of the shim's own descriptors.
pub fn is_owned(fd: i64) -> bool {
    if fd < i64::from(LOW.load(Ordering::Acquire)) {
        return false;
    }
    OWNED
        .iter()
        .any(|s| i64::from(s.load(Ordering::Acquire)) == fd)
}

/// Duplicates `fd` onto the highest free number below `limit` (within [`SEARCH`] of it),
/// with `cloexec` or not. Returns the new number, or a negative errno.
fn dup_high(fd: RawFd, limit: i64, cloexec: bool) -> i64 {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    let floor = (limit - i64::from(SEARCH)).max(3);
    let mut k = limit - 1;
    while k >= floor {
        let r = sys::sys(libc::SYS_fcntl, &[fd as u64, cmd as u64, k as u64]);
        if r >= 0 {
            return r;
        }
        if r != e(libc::EMFILE) && r != e(libc::EINVAL) {
            return r;
        }
        k -= 1;
    }
    e(libc::EMFILE)
}

/// Moves `fd` (owned by the caller) to a reserved number and registers it; on failure it
/// stays where it is (and is still registered, so the program cannot close it).
pub fn place_raw(fd: RawFd, cloexec: bool) -> RawFd {
    let n = dup_high(fd, soft_limit(), cloexec);
    let kept = if n >= 0 && n as RawFd != fd {
        sys::sys(libc::SYS_close, &[fd as u64]);
        n as RawFd
    } else {
        fd
    };
    register(kept);
    kept
}

/// The transport's hook ([`xen_transport::FdHooks::place`]): a session's descriptor goes to a
/// reserved number.
pub fn place(fd: OwnedFd) -> OwnedFd {
    let kept = place_raw(fd.into_raw_fd(), true);
    // SAFETY: `kept` is the descriptor the caller handed over (moved), owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(kept) }
}

/// The transport's hook ([`xen_transport::FdHooks::release`]): the session no longer needs
/// the descriptor: unregister and close it (through the shim's own trampoline).
pub fn release(fd: RawFd) {
    unregister(fd);
    sys::sys(libc::SYS_close, &[fd as u64]);
}

/// Unregisters `fd` without closing it (its owner closes it).
pub fn forget(fd: RawFd) {
    unregister(fd);
}

/// The hooks for the transport.
pub const HOOKS: xen_transport::FdHooks = xen_transport::FdHooks { place, release };

/// Moves the shim's descriptor `fd` out of the way (the program is about to take its number,
/// or it lies above a lowered limit). `limit` bounds the new number. Every holder is told.
fn move_away(fd: RawFd, limit: i64) -> bool {
    let cloexec = sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_GETFD as u64]);
    let n = dup_high(fd, limit, cloexec < 0 || cloexec & 1 != 0);
    if n < 0 || n as RawFd == fd {
        return false;
    }
    let n = n as RawFd;
    if !crate::remote::renumber_fd(fd, n) && !crate::renumber_own_fd(fd, n) {
        // Nobody holds it any more (a session retired meanwhile): nothing to move.
        sys::sys(libc::SYS_close, &[n as u64]);
        unregister(fd);
        return true;
    }
    for s in OWNED.iter() {
        if s.compare_exchange(fd, n, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            break;
        }
    }
    recompute_low();
    true
}

/// Before the program's `dup2`/`dup3` onto `target`: if the number is the shim's, move the
/// shim's descriptor first (the program's call then replaces the old number, closing it).
pub fn before_dup_onto(target: i64) {
    if is_owned(target) {
        move_away(target as RawFd, soft_limit());
    }
}

/// After the soft limit was lowered to `limit`: descriptors at or above it move below it.
pub fn after_limit(limit: i64) {
    for s in OWNED.iter() {
        let fd = s.load(Ordering::Acquire);
        if fd != EMPTY && i64::from(fd) >= limit {
            let old = fd;
            if move_away(fd, limit) {
                sys::sys(libc::SYS_close, &[old as u64]);
            }
        }
    }
}

/// `close_range(first, last, flags)` without the shim's descriptors: the range is split into
/// the pieces between them. Returns the first error (as `close_range` would).
pub fn close_range_around(first: u32, last: u32, flags: u32) -> i64 {
    let mut mine = [0u32; SLOTS];
    let mut n = 0;
    for s in OWNED.iter() {
        let fd = s.load(Ordering::Acquire);
        if fd != EMPTY && (fd as u32) >= first && (fd as u32) <= last {
            mine[n] = fd as u32;
            n += 1;
        }
    }
    if n == 0 || flags & libc::CLOSE_RANGE_CLOEXEC != 0 {
        // Setting close-on-exec on the shim's (already close-on-exec) fds changes nothing,
        // except on the exec state, which is never inside a range while the program runs.
        return sys::sys(
            libc::SYS_close_range,
            &[u64::from(first), u64::from(last), u64::from(flags)],
        );
    }
    let mine = &mut mine[..n];
    mine.sort_unstable();
    let mut from = first;
    let mut rc = 0;
    for &m in mine.iter() {
        if m > from {
            let r = sys::sys(
                libc::SYS_close_range,
                &[u64::from(from), u64::from(m - 1), u64::from(flags)],
            );
            if rc == 0 && r < 0 {
                rc = r;
            }
        }
        from = m.saturating_add(1);
        if m == u32::MAX {
            return rc;
        }
    }
    if from <= last && from != 0 {
        let r = sys::sys(
            libc::SYS_close_range,
            &[u64::from(from), u64::from(last), u64::from(flags)],
        );
        if rc == 0 && r < 0 {
            rc = r;
        }
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_null() -> RawFd {
        sys::sys(
            libc::SYS_openat,
            &[
                libc::AT_FDCWD as u64,
                c"/dev/null".as_ptr() as u64,
                libc::O_RDONLY as u64,
            ],
        ) as RawFd
    }

    fn is_open(fd: i64) -> bool {
        sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_GETFD as u64]) >= 0
    }

    #[test]
    fn placed_fds_sit_near_the_limit_and_survive_close_range() {
        let a = place_raw(open_null(), true);
        let b = place_raw(open_null(), true);
        let lim = soft_limit();
        assert!(i64::from(a) >= lim - i64::from(SEARCH) && i64::from(a) < lim);
        assert_ne!(a, b);
        assert!(is_owned(a.into()) && is_owned(b.into()) && !is_owned(0));
        // A local fd just below them (other tests' fds are far lower).
        let low = open_null();
        let local = sys::sys(
            libc::SYS_fcntl,
            &[low as u64, libc::F_DUPFD as u64, (a.min(b) - 8) as u64],
        ) as RawFd;
        sys::sys(libc::SYS_close, &[low as u64]);
        assert!(local > 0 && local < a.min(b));
        let hi = a.max(b) as u32;
        assert_eq!(close_range_around(local as u32, hi, 0), 0);
        assert!(!is_open(local.into()));
        assert!(is_open(a.into()) && is_open(b.into()));
        release(a);
        release(b);
        assert!(!is_open(a.into()) && !is_open(b.into()));
        assert!(!is_owned(a.into()));
    }
}
