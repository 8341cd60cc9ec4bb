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
