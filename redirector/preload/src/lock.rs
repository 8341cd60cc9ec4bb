//! The shim's one kind of lock: a spin lock held with the thread's signals blocked.
//!
//! A signal handler that calls an interposed function runs on top of whatever the thread was
//! doing, possibly inside the shim with a lock held; if the handler needed the same lock, the
//! thread would spin forever. So every lock of the shim is taken with every maskable signal
//! blocked (SIGSYS, the shim's own trap, and the synchronous fault signals stay deliverable:
//! the kernel kills a process whose forced signal is blocked), and released before they are
//! unblocked. A handler therefore never runs while its own thread holds a shim lock, and
//! another thread holding it always finishes its (short, non-blocking) critical section.
//!
//! Fork: a thread of the parent that held a lock does not exist in the child. The shim's
//! `pthread_atfork` handlers take every lock before `fork` ([`acquire_all_for_fork`]) and
//! release them on both sides ([`release_all_after_fork`]), so the child inherits consistent
//! data, as glibc does for its own locks.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

/// Signals that stay deliverable while a lock is held (the kernel kills a process whose
/// forced, synchronous signal is blocked).
const KEEP: u64 = sys::SIGSYS_BIT
    | 1 << (libc::SIGSEGV - 1)
    | 1 << (libc::SIGBUS - 1)
    | 1 << (libc::SIGILL - 1)
    | 1 << (libc::SIGFPE - 1)
    | 1 << (libc::SIGTRAP - 1);

/// Blocks every maskable signal but [`KEEP`] on this thread until dropped.
pub struct Masked {
    old: u64,
}

impl Masked {
    /// Blocks the signals; the previous mask comes back on drop.
    pub fn new() -> Masked {
        let block: u64 = !KEEP;
        let mut old = 0u64;
        sys::sys(
            libc::SYS_rt_sigprocmask,
            &[
                libc::SIG_BLOCK as u64,
                &block as *const u64 as u64,
                &mut old as *mut u64 as u64,
                8,
            ],
        );
        Masked { old }
    }

    /// The thread's mask from before.
    pub fn old(&self) -> u64 {
        self.old
    }
}

impl Default for Masked {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Masked {
    fn drop(&mut self) {
        sys::sys(
            libc::SYS_rt_sigprocmask,
            &[
                libc::SIG_SETMASK as u64,
                &self.old as *const u64 as u64,
                0,
                8,
            ],
        );
    }
}

/// Data behind a spin lock that is only held with signals blocked.
pub struct SigLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through `with`, which holds the lock exclusively.
unsafe impl<T: Send> Sync for SigLock<T> {}

impl<T> SigLock<T> {
    /// A lock around `v`.
    pub const fn new(v: T) -> SigLock<T> {
        SigLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(v),
        }
    }

    fn acquire(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }

    fn release(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Runs `f` on the data with the lock held and signals blocked. `f` must not take another
    /// `SigLock` that may be taken in the opposite order, nor block.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let m = Masked::new();
        self.with_blocked(&m, f)
    }

    /// As [`SigLock::with`], under a signal block the caller already holds (`_blocked`, alive
    /// for the whole call, is the proof): no mask change of its own.
    pub fn with_blocked<R>(&self, _blocked: &Masked, f: impl FnOnce(&mut T) -> R) -> R {
        self.acquire();
        // SAFETY: the lock is held by this thread, with its signals blocked, so no other
        // reference to the data exists until it is released below.
        let r = f(unsafe { &mut *self.data.get() });
        self.release();
        r
    }
}

/// A lock the fork handlers take and release (see the module documentation).
pub trait ForkLock: Sync {
    /// Takes the lock (signals are already blocked by the caller).
    fn fork_acquire(&self);
    /// Releases it.
    fn fork_release(&self);
}

impl<T: Send> ForkLock for SigLock<T> {
    fn fork_acquire(&self) {
        self.acquire();
    }
    fn fork_release(&self) {
        self.release();
    }
}

/// Every lock of the shim, in the one order they may nest (outer first).
fn all() -> [&'static dyn ForkLock; 3] {
    [
        crate::cwd::lock(),
        crate::netpoll::lock(),
        crate::fdtable::lock(),
    ]
}

/// Mask held across fork by [`acquire_all_for_fork`].
static FORK_MASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Before `fork`: blocks signals and takes every lock, so that the child inherits none held.
pub fn acquire_all_for_fork() {
    let m = Masked::new();
    FORK_MASK.store(m.old(), Ordering::Relaxed);
    std::mem::forget(m);
    for l in all() {
        l.fork_acquire();
    }
}

/// After `fork`, in the parent and in the child: releases every lock, restores the mask.
pub fn release_all_after_fork() {
    for l in all().into_iter().rev() {
        l.fork_release();
    }
    let old = FORK_MASK.load(Ordering::Relaxed);
    drop(Masked { old });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_blocked_inside_and_restored_after() {
        static L: SigLock<u32> = SigLock::new(0);
        let mask = || {
            let mut cur = 0u64;
            sys::sys(
                libc::SYS_rt_sigprocmask,
                &[libc::SIG_BLOCK as u64, 0, &mut cur as *mut u64 as u64, 8],
            );
            cur
        };
        let before = mask();
        L.with(|v| {
            *v += 1;
            let inside = mask();
            assert_ne!(inside & (1 << (libc::SIGALRM - 1)), 0);
            assert_eq!(inside & sys::SIGSYS_BIT, 0);
        });
        assert_eq!(mask(), before);
    }
}
