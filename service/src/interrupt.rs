//! Interrupting a call that waits on a thread of its own (a lock wait: `F_SETLKW`, `flock`)
//! when its client cancels it, because a signal handler without `SA_RESTART` ran in the
//! client while it waited: Linux's `EINTR`.
//!
//! The waiting thread records its thread id while it runs the call; a cancel sends it
//! [`wake_signal`], whose handler does nothing and is installed without `SA_RESTART`, so the
//! blocking system call returns `EINTR` and the call answers `-EINTR`. The signal is sent
//! again every [`RESEND`] until the call has finished (a signal that lands just before the
//! thread enters its system call is otherwise lost), for at most [`RESEND_FOR`].

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Interval between signals to a cancelled waiter.
pub const RESEND: Duration = Duration::from_millis(5);
/// How long a cancelled waiter is signalled at most (a call that ignores EINTR then finishes
/// on its own).
pub const RESEND_FOR: Duration = Duration::from_secs(2);

/// Not started yet.
const IDLE: i32 = 0;
/// Finished: its thread id may already be another thread's.
const DONE: i32 = -1;

/// The signal that interrupts a waiting thread's system call.
pub fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the do-nothing handler once per process (without `SA_RESTART`).
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction (no flags: no SA_RESTART, an empty mask) with a plain
        // extern "C" handler that touches nothing is valid; the old action may be null.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = ignore as *const () as usize;
            libc::sigaction(wake_signal(), &act, std::ptr::null_mut());
        }
    });
}

/// One waiting call's thread, as the canceller sees it.
#[derive(Debug, Default)]
pub struct Waiter {
    tid: Mutex<i32>,
}

impl Waiter {
    /// A waiter for a call about to start on its own thread.
    pub fn new() -> Arc<Waiter> {
        install();
        Arc::new(Waiter::default())
    }

    /// Runs `f` on the calling thread (the waiting call's), interruptible by [`Waiter::cancel`].
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        *self.tid.lock().unwrap_or_else(|e| e.into_inner()) = nix::unistd::gettid().as_raw();
        let r = f();
        *self.tid.lock().unwrap_or_else(|e| e.into_inner()) = DONE;
        r
    }

    /// Signals the call's thread until the call has finished (from a thread of its own, so
    /// the worker goes on at once).
    pub fn cancel(self: &Arc<Waiter>) {
        let w = self.clone();
        let spawned = std::thread::Builder::new()
            .name("virtuos-cancel".into())
            .spawn(move || {
                let until = Instant::now() + RESEND_FOR;
                while Instant::now() < until {
                    {
                        // The lock keeps the thread from finishing (and its id from being
                        // reused) while the signal is sent.
                        let tid = *w.tid.lock().unwrap_or_else(|e| e.into_inner());
                        match tid {
                            DONE => return,
                            IDLE => {}
                            tid => {
                                // SAFETY: tgkill takes plain integers; `tid` is a live thread
                                // of this process (it cannot record DONE while we hold the
                                // lock).
                                unsafe {
                                    libc::syscall(
                                        libc::SYS_tgkill,
                                        libc::getpid(),
                                        tid,
                                        wake_signal(),
                                    )
                                };
                            }
                        }
                    }
                    std::thread::sleep(RESEND);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(%e, "cannot start a thread to interrupt a waiting call");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_interrupts_a_blocking_call() {
        let w = Waiter::new();
        let (r, wr) = nix::unistd::pipe().unwrap();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            w2.run(|| {
                let mut b = [0u8; 1];
                nix::unistd::read(&r, &mut b)
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        w.cancel();
        let got = t.join().unwrap();
        assert_eq!(got, Err(nix::errno::Errno::EINTR));
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(wr);
    }
}
