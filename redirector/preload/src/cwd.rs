//! The routed working directory: set when the program `chdir`s under the mount prefix.
//!
//! The kernel's own cwd cannot be inside the remote tree, so the shim keeps the full
//! (prefix-including) path and resolves relative paths against it while it is set.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::paths::PathBuf;

static LOCK: AtomicBool = AtomicBool::new(false);
static mut CWD: Option<PathBuf> = None;
static ROUTED: AtomicBool = AtomicBool::new(false);

fn locked<R>(f: impl FnOnce(&mut Option<PathBuf>) -> R) -> R {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: CWD is only accessed here, under LOCK, which this thread holds.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(CWD) });
    LOCK.store(false, Ordering::Release);
    r
}

/// The routed cwd (full path), if the cwd is under the mount prefix.
pub fn get() -> Option<PathBuf> {
    if !ROUTED.load(Ordering::Acquire) {
        return None;
    }
    locked(|c| c.clone())
}

/// Sets (Some) or leaves (None) the routed cwd.
pub fn set(p: Option<PathBuf>) {
    ROUTED.store(p.is_some(), Ordering::Release);
    locked(|c| *c = p);
}

// ---- the local (kernel) cwd, cached so relative paths can be checked against the mount ----

static LOCAL_LOCK: AtomicBool = AtomicBool::new(false);
static LOCAL_VALID: AtomicBool = AtomicBool::new(false);
static mut LOCAL: Option<PathBuf> = None;

/// Forgets the cached kernel cwd (after a local chdir/fchdir).
pub fn invalidate_local() {
    LOCAL_VALID.store(false, Ordering::Release);
}

/// The kernel's cwd, from the cache or a raw getcwd.
pub fn local() -> Option<PathBuf> {
    while LOCAL_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: LOCAL is only accessed here, under LOCAL_LOCK, which this thread holds.
    let slot = unsafe { &mut *std::ptr::addr_of_mut!(LOCAL) };
    if !LOCAL_VALID.load(Ordering::Acquire) || slot.is_none() {
        let mut buf = [0u8; crate::paths::PATH_MAX];
        let n = crate::sys::sys(
            libc::SYS_getcwd,
            &[buf.as_mut_ptr() as u64, buf.len() as u64],
        );
        *slot = if n > 1 {
            PathBuf::from_bytes(&buf[..n as usize - 1])
        } else {
            None
        };
        LOCAL_VALID.store(slot.is_some(), Ordering::Release);
    }
    let r = slot.clone();
    LOCAL_LOCK.store(false, Ordering::Release);
    r
}
