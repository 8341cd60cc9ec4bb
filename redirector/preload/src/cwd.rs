//! The routed working directory: set when the program `chdir`s under the mount prefix.
//!
//! The kernel's own cwd cannot be inside the remote tree, so the shim keeps the full
//! (prefix-including) path and resolves relative paths against it while it is set.
//! Both values live behind one [`SigLock`], held with signals blocked, so a signal handler
//! that resolves a path while its thread was inside `get`/`set` cannot deadlock.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::lock::{ForkLock, SigLock};
use crate::paths::PathBuf;

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

/// The lock, for the fork handlers.
pub(crate) fn lock() -> &'static dyn ForkLock {
    &STATE
}

/// The routed cwd (full path), if the cwd is under the mount prefix.
pub fn get() -> Option<PathBuf> {
    if !ROUTED.load(Ordering::Acquire) {
        return None;
    }
    STATE.with(|s| s.routed.clone())
}

/// Sets (Some) or leaves (None) the routed cwd.
pub fn set(p: Option<PathBuf>) {
    STATE.with(|s| {
        ROUTED.store(p.is_some(), Ordering::Release);
        s.routed = p;
    });
}

/// Forgets the cached kernel cwd (after a local chdir/fchdir).
pub fn invalidate_local() {
    LOCAL_VALID.store(false, Ordering::Release);
}

/// The kernel's cwd, from the cache or a raw getcwd.
pub fn local() -> Option<PathBuf> {
    STATE.with(|s| {
        if !LOCAL_VALID.load(Ordering::Acquire) || s.local.is_none() {
            let mut buf = [0u8; crate::paths::PATH_MAX];
            let n = crate::sys::sys(
                libc::SYS_getcwd,
                &[buf.as_mut_ptr() as u64, buf.len() as u64],
            );
            s.local = if n > 1 {
                PathBuf::from_bytes(&buf[..n as usize - 1])
            } else {
                None
            };
            LOCAL_VALID.store(s.local.is_some(), Ordering::Release);
        }
        s.local.clone()
    })
}
