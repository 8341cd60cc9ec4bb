//! Measurements 1–4: a native system call, a futex ping-pong, a seccomp user-notification
//! round trip and a seccomp SIGSYS trap.
//!
//! Timing: `std::time::Instant` (clock_gettime(CLOCK_MONOTONIC) through the vDSO). Operations
//! that can be well under a microsecond (`native_syscall`, `seccomp_trap_sigsys`) are timed in
//! batches of [`NATIVE_BATCH`] / [`TRAP_BATCH`] back-to-back calls and each sample is the
//! batch's time divided by the batch size, so the ~20–50 ns of the two clock reads do not
//! dominate; their median is the per-call median, but their p99 is the p99 of batch means
//! (it smooths single outliers). Cross-thread round trips (`futex_pingpong`,
//! `seccomp_user_notif`) take microseconds and are timed one operation per sample. Every
//! measurement first runs a warm-up of a tenth of the samples (at least 16) that is discarded.
//!
//! Threads: the measuring ("client") thread and the thread on the other side are pinned to
//! the two CPUs of [`crate::sys::cpu_pair`] when the machine has at least two; otherwise
//! nothing is pinned. The main thread itself is never pinned.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::sys;

/// Calls per timed sample for `native_syscall`.
pub const NATIVE_BATCH: usize = 64;
/// Calls per timed sample for `seccomp_trap_sigsys`.
pub const TRAP_BATCH: usize = 8;

/// Marker in `args[0]` of the last filtered `getppid`: the supervisor answers it and stops.
const STOP_TAG: u64 = 0x5354_4f50_5354_4f50;

/// Where the threads of a measurement run.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// CPU of the measuring thread.
    pub client: Option<usize>,
    /// CPU of the peer (futex partner, seccomp supervisor).
    pub other: Option<usize>,
}

impl Pinning {
    /// Pin to `cpu_pair()` when there is one, otherwise leave threads unpinned.
    pub fn detect() -> Self {
        match sys::cpu_pair() {
            Some((client, other)) => Self {
                client: Some(client),
                other: Some(other),
            },
            None => Self {
                client: None,
                other: None,
            },
        }
    }

    /// Whether threads are pinned.
    pub fn pinned(&self) -> bool {
        self.client.is_some()
    }
}

fn warmup_count(samples: usize) -> usize {
    (samples / 10).max(16)
}

/// Runs `op` for a warm-up, then `samples` timed batches of `batch` calls; returns per-call ns.
fn time_batches(
    samples: usize,
    batch: usize,
    mut op: impl FnMut() -> Result<()>,
) -> Result<Vec<u64>> {
    let batch = batch.max(1);
    for _ in 0..warmup_count(samples) * batch {
        op()?;
    }
    let mut out = Vec::with_capacity(samples);
    let divisor = batch as u64;
    for _ in 0..samples {
        let start = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        out.push((ns + divisor / 2) / divisor);
    }
    Ok(out)
}

/// Spawns a named scoped thread, turning a spawn failure into an error.
fn spawn<'scope, 'env, T: Send + 'scope>(
    scope: &'scope thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<thread::ScopedJoinHandle<'scope, T>> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn_scoped(scope, f)
        .with_context(|| format!("spawning thread {name}"))
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("benchmark thread panicked"))?
}

/// Measurement 1, `native_syscall`: raw `syscall(SYS_getppid)` on the client CPU.
pub fn native_syscall(samples: usize, pin: Pinning) -> Result<Vec<u64>> {
    thread::scope(|s| {
        let h = spawn(s, "native", || {
            sys::maybe_pin(pin.client);
            time_batches(samples, NATIVE_BATCH, || {
                sys::getppid_raw().context("getppid")?;
                Ok(())
            })
        })?;
        join(h)
    })
}

const IDLE: u32 = 0;
const PING: u32 = 1;
const STOP: u32 = 2;
const FAILED: u32 = 3;

/// Measurement 2, `futex_pingpong`: the client sets the shared word to PING and wakes the
/// partner, then sleeps until the partner has set it back to IDLE and woken it: one round trip
/// (two wakes, two sleeps) per operation, with the shared (non-private) futex operations.
pub fn futex_pingpong(samples: usize, pin: Pinning) -> Result<Vec<u64>> {
    let word = AtomicU32::new(IDLE);
    let word = &word;
    thread::scope(|s| {
        let partner = spawn(s, "futex-partner", move || -> Result<()> {
            sys::maybe_pin(pin.other);
            let res = (|| loop {
                match word.load(Ordering::Acquire) {
                    PING => {
                        word.store(IDLE, Ordering::Release);
                        sys::futex_wake(word, 1).context("FUTEX_WAKE")?;
                    }
                    STOP => return Ok(()),
                    _ => sys::futex_wait(word, IDLE).context("FUTEX_WAIT")?,
                }
            })();
            if res.is_err() {
                word.store(FAILED, Ordering::Release);
                let _ = sys::futex_wake(word, 1);
            }
            res
        })?;
        let client = spawn(s, "futex-client", move || -> Result<Vec<u64>> {
            sys::maybe_pin(pin.client);
            let res = time_batches(samples, 1, || {
                word.store(PING, Ordering::Release);
                sys::futex_wake(word, 1).context("FUTEX_WAKE")?;
                loop {
                    match word.load(Ordering::Acquire) {
                        IDLE => return Ok(()),
                        PING => sys::futex_wait(word, PING).context("FUTEX_WAIT")?,
                        _ => bail!("futex partner failed"),
                    }
                }
            });
            if word.load(Ordering::Acquire) != FAILED {
                word.store(STOP, Ordering::Release);
                let _ = sys::futex_wake(word, 1);
            }
            res
        });
        let client = match client {
            Ok(h) => join(h),
            Err(e) => {
                word.store(STOP, Ordering::Release);
                let _ = sys::futex_wake(word, 1);
                Err(e)
            }
        };
        let partner = join(partner);
        let samples = client?;
        partner?;
        Ok(samples)
    })
}

/// Measurement 3, `seccomp_user_notif`: a dedicated thread installs a per-thread filter that
/// sends `getppid` to a listener (`SECCOMP_RET_USER_NOTIF`); a supervisor thread on the other
/// CPU answers each notification with the real ppid. Measures the filtered thread's round trip.
///
/// Shutdown: the last filtered call carries [`STOP_TAG`] in its first argument; the supervisor
/// answers it and returns, closing the listener. If the supervisor dies first, its closed
/// listener makes pending and later filtered calls fail with `ENOSYS`, so nothing hangs.
/// The filtered thread stays filtered and exits when done.
pub fn seccomp_user_notif(samples: usize, pin: Pinning) -> Result<Vec<u64>> {
    let ppid = sys::getppid_raw().context("getppid")?;
    thread::scope(|s| {
        let (fd_tx, fd_rx) = mpsc::channel();
        let filtered = spawn(s, "seccomp-notif-client", move || -> Result<Vec<u64>> {
            sys::maybe_pin(pin.client);
            match sys::install_user_notif_filter(libc::SYS_getppid) {
                Ok(fd) => {
                    let _ = fd_tx.send(Some(fd));
                }
                Err(err) => {
                    let _ = fd_tx.send(None);
                    return Err(err).context("installing seccomp user-notification filter");
                }
            }
            let res = time_batches(samples, 1, || {
                let got = sys::getppid_raw().context("filtered getppid")?;
                ensure!(got == ppid, "filtered getppid returned {got}, want {ppid}");
                Ok(())
            });
            // Tell the supervisor to stop (an error here means it is already gone).
            let _ = sys::getppid_tagged(STOP_TAG);
            res
        })?;
        let supervisor = match fd_rx.recv() {
            Ok(Some(listener)) => Some(spawn(s, "seccomp-supervisor", move || -> Result<u64> {
                sys::maybe_pin(pin.other);
                let mut handled = 0u64;
                let mut req = sys::zeroed_notif();
                loop {
                    match sys::notif_recv(listener.as_fd(), &mut req) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                        Err(e) => return Err(e).context("SECCOMP_IOCTL_NOTIF_RECV"),
                    }
                    let resp = libc::seccomp_notif_resp {
                        id: req.id,
                        val: ppid,
                        error: 0,
                        flags: 0,
                    };
                    match sys::notif_send(listener.as_fd(), &resp) {
                        Ok(()) => handled += 1,
                        // The caller was interrupted and is gone; not an error.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(e).context("SECCOMP_IOCTL_NOTIF_SEND"),
                    }
                    if req.data.args[0] == STOP_TAG {
                        return Ok(handled);
                    }
                }
            })),
            _ => None,
        };
        let result = join(filtered);
        if let Some(sup) = supervisor {
            let handled = join(sup?)?;
            tracing::debug!("seccomp supervisor answered {handled} notifications");
        }
        result
    })
}

/// Measurement 4, `seccomp_trap_sigsys`: a dedicated thread installs a per-thread filter that
/// traps `getppid` (`SECCOMP_RET_TRAP`); the SIGSYS handler writes the emulated ppid into RAX.
/// Measures the trapped call's round trip (in batches of [`TRAP_BATCH`]) and checks that every
/// call went through the handler.
pub fn seccomp_trap_sigsys(samples: usize, pin: Pinning) -> Result<Vec<u64>> {
    let ppid = sys::getppid_raw().context("getppid")?;
    let _guard = sys::install_sigsys_handler(ppid).context("installing SIGSYS handler")?;
    let before = sys::trap_count();
    let calls = (warmup_count(samples) + samples) * TRAP_BATCH;
    let out = thread::scope(|s| {
        let h = spawn(s, "seccomp-trap", || -> Result<Vec<u64>> {
            sys::maybe_pin(pin.client);
            sys::install_trap_filter(libc::SYS_getppid)
                .context("installing seccomp trap filter")?;
            time_batches(samples, TRAP_BATCH, || {
                let got = sys::getppid_raw().context("trapped getppid")?;
                ensure!(got == ppid, "trapped getppid returned {got}, want {ppid}");
                Ok(())
            })
        })?;
        join(h)
    })?;
    let trapped = sys::trap_count() - before;
    ensure!(
        trapped == calls as u64,
        "SIGSYS handler ran {trapped} times for {calls} calls"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: Pinning = Pinning {
        client: None,
        other: None,
    };

    fn check(v: &[u64], n: usize) {
        assert_eq!(v.len(), n);
        assert!(v.iter().all(|&ns| ns > 0));
    }

    #[test]
    fn native_and_futex() {
        check(&native_syscall(20, PIN).unwrap(), 20);
        check(&futex_pingpong(20, Pinning::detect()).unwrap(), 20);
    }

    /// Seccomp may be unavailable (e.g. in a container that forbids it); only a failure to
    /// install the filter is tolerated.
    fn check_seccomp(res: Result<Vec<u64>>, n: usize) {
        match res {
            Ok(v) => check(&v, n),
            Err(e) if format!("{e:#}").contains("installing") => {
                eprintln!("seccomp unavailable, skipped: {e:#}");
            }
            Err(e) => panic!("{e:#}"),
        }
    }

    #[test]
    fn seccomp_measurements() {
        check_seccomp(seccomp_user_notif(20, Pinning::detect()), 20);
        check_seccomp(seccomp_trap_sigsys(20, PIN), 20);
    }
}
