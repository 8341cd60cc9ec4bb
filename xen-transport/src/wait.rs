//! Adaptive spin-then-sleep and the counters that show how waiting went.
//!
//! A waiter spins for a budget close to the round trips it has recently measured, then arms
//! the ring's event word and sleeps. The budget follows an exponentially weighted average of
//! observed waits: short waits (answered within `max`) pull it toward twice their length,
//! long waits (blocking I/O) pull it back toward `min`, because spinning through them only
//! burns the core. `max = 0` disables spinning altogether.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds of a spin budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinPolicy {
    /// Lowest budget.
    pub min: Duration,
    /// Highest budget; zero means never spin.
    pub max: Duration,
}

impl SpinPolicy {
    /// Client default: a few round trips.
    pub const CLIENT: SpinPolicy = SpinPolicy {
        min: Duration::from_micros(2),
        max: Duration::from_micros(50),
    };
    /// Server default: pinned pollers spin longer before giving their core back.
    pub const SERVER: SpinPolicy = SpinPolicy {
        min: Duration::from_micros(20),
        max: Duration::from_micros(500),
    };
    /// Never spin: sleep at once.
    pub const SLEEP: SpinPolicy = SpinPolicy {
        min: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// Reads `VIRTUOS_<PREFIX>_SPIN_MIN_NS` / `_MAX_NS` from the environment over `self`.
    pub fn from_env(self, prefix: &str) -> SpinPolicy {
        let get = |what: &str| {
            std::env::var(format!("VIRTUOS_{prefix}_SPIN_{what}_NS"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
        };
        self.with_overrides(get("MIN"), get("MAX"))
    }

    /// This policy with the bounds given in nanoseconds replaced (as [`SpinPolicy::from_env`]
    /// does with the values of its variables).
    pub const fn with_overrides(self, min_ns: Option<u64>, max_ns: Option<u64>) -> SpinPolicy {
        let max = match max_ns {
            Some(n) => Duration::from_nanos(n),
            None => self.max,
        };
        let min = match min_ns {
            Some(n) => Duration::from_nanos(n),
            None => self.min,
        };
        SpinPolicy {
            min: if min.as_nanos() < max.as_nanos() {
                min
            } else {
                max
            },
            max,
        }
    }
}

/// A self-tuning spin budget, shared by the threads of one side.
#[derive(Debug)]
pub struct AdaptiveSpin {
    policy: SpinPolicy,
    ewma_ns: AtomicU64,
}

impl AdaptiveSpin {
    /// A budget that starts at the middle of `policy`.
    pub fn new(policy: SpinPolicy) -> Self {
        let start = (policy.min.as_nanos() as u64 + policy.max.as_nanos() as u64) / 4;
        AdaptiveSpin {
            policy,
            ewma_ns: AtomicU64::new(start),
        }
    }

    /// The bounds this budget moves within.
    pub fn policy(&self) -> SpinPolicy {
        self.policy
    }

    /// How long to spin before sleeping now.
    pub fn budget(&self) -> Duration {
        let max = self.policy.max.as_nanos() as u64;
        if max == 0 {
            return Duration::ZERO;
        }
        let min = self.policy.min.as_nanos() as u64;
        Duration::from_nanos((2 * self.ewma_ns.load(Ordering::Relaxed)).clamp(min, max))
    }

    /// Records a wait that lasted `waited` (spinning and/or sleeping).
    pub fn record(&self, waited: Duration) {
        let max = self.policy.max.as_nanos() as u64;
        let w = waited.as_nanos() as u64;
        // A long wait pulls the average toward zero, so the (clamped) budget falls to `min`.
        // Pulling it toward `min` itself would leave the budget, twice the average, at 2 * min.
        let target = if w <= max { w } else { 0 };
        let old = self.ewma_ns.load(Ordering::Relaxed);
        // Racy update by design: a lost sample among threads only slows adaptation.
        self.ewma_ns
            .store(old - old / 8 + target / 8, Ordering::Relaxed);
    }
}

/// How often each way of waiting happened.
#[derive(Debug, Default)]
pub struct WaitStats {
    /// Waits that ended while spinning.
    pub spins: AtomicU64,
    /// Times a waiter went to sleep.
    pub sleeps: AtomicU64,
    /// Doorbells this side rang to wake the peer.
    pub wakeups: AtomicU64,
}

/// A copy of [`WaitStats`] (or of a sum of per-channel counters) at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitSnapshot {
    /// Calls made (client) or requests served (server).
    pub calls: u64,
    /// Waits that ended while spinning.
    pub spins: u64,
    /// Times a waiter went to sleep.
    pub sleeps: u64,
    /// Doorbells rung to wake the peer.
    pub wakeups: u64,
}

impl WaitStats {
    /// Current values (calls left zero).
    pub fn snapshot(&self) -> WaitSnapshot {
        WaitSnapshot {
            calls: 0,
            spins: self.spins.load(Ordering::Relaxed),
            sleeps: self.sleeps.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
        }
    }
}

/// Spins politely until `done()` or `budget` passes; returns whether `done()` became true.
///
/// The clock is read every 32 polls so its cost stays small next to a cache-line transfer.
pub fn spin_until(budget: Duration, done: impl FnMut() -> bool) -> bool {
    spin_while_peer_runs(budget, done, || false)
}

/// [`spin_until`], giving up early (false) when, at one of its looks every [`YIELD_EVERY`],
/// `peer_stalled()` says that the peer has not picked up the work yet.
///
/// Where there are more busy threads than cores (4 readers and the server on 2 cores), the
/// peer that will answer may be runnable on this very core, and a spinner that keeps spinning
/// holds it off for its whole budget; the caller then sleeps instead, which frees the core.
/// The obvious alternative, `sched_yield`, is not one: a program's own seccomp sandbox may
/// not allow it (OpenSSH's pre-authentication child is killed for it), while sleeping on the
/// futex is what the wait does anyway. Once the peer has taken the request it is running
/// elsewhere, and the answer is best awaited on the spot.
pub fn spin_while_peer_runs(
    budget: Duration,
    mut done: impl FnMut() -> bool,
    mut peer_stalled: impl FnMut() -> bool,
) -> bool {
    if done() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let start = std::time::Instant::now();
    let mut next_look = YIELD_EVERY;
    loop {
        for _ in 0..32 {
            std::hint::spin_loop();
            if done() {
                return true;
            }
        }
        let spent = start.elapsed();
        if spent >= budget {
            return done();
        }
        if spent >= next_look {
            if peer_stalled() {
                return done();
            }
            next_look = spent + YIELD_EVERY;
        }
    }
}

/// How long a waiter spins between two looks at whether its peer is stalled.
pub const YIELD_EVERY: Duration = Duration::from_micros(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_tracks_short_waits_and_backs_off_from_long_ones() {
        let s = AdaptiveSpin::new(SpinPolicy::CLIENT);
        for _ in 0..100 {
            s.record(Duration::from_micros(10));
        }
        let b = s.budget();
        assert!(
            b >= Duration::from_micros(18) && b <= Duration::from_micros(21),
            "{b:?}"
        );
        for _ in 0..100 {
            s.record(Duration::from_millis(5));
        }
        assert_eq!(s.budget(), SpinPolicy::CLIENT.min);
        assert_eq!(
            AdaptiveSpin::new(SpinPolicy::SLEEP).budget(),
            Duration::ZERO
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)] // Miri's clock passes the budget before the first yield point
    fn a_spinner_gives_up_when_the_peer_is_stalled() {
        let mut asked = 0;
        assert!(!spin_while_peer_runs(
            Duration::from_micros(200),
            || false,
            || {
                asked += 1;
                true
            }
        ));
        assert_eq!(asked, 1, "gave up at the first look");
        let mut asked = 0;
        assert!(spin_while_peer_runs(
            Duration::from_secs(5),
            || true,
            || {
                asked += 1;
                true
            }
        ));
        assert_eq!(asked, 0, "an answer already there needs no yield");
    }

    #[test]
    fn spin_until_stops_on_done_and_on_budget() {
        let mut n = 0;
        assert!(spin_until(Duration::from_secs(5), || {
            n += 1;
            n == 100
        }));
        assert!(!spin_until(Duration::from_micros(50), || false));
        assert!(!spin_until(Duration::ZERO, || false));
    }
}
