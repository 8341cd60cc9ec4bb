//! Resource limits: no client can stop a server or starve the others.
//!
//! A server raises its own `RLIMIT_NOFILE` soft limit to the hard limit when it starts
//! ([`raise_nofile_limit`]). Every open file the server holds for a client (a socket, a file,
//! and each session's own descriptors: its control socket and eventfds) is charged to the
//! client's uid in an [`Account`]; a call that would take a uid past its budget fails with
//! `EMFILE`, and a session that would take it past its session budget is refused as full (a
//! uid at its open-file budget still gets sessions: their descriptors are bounded by the
//! session budget, and their calls get `EMFILE`). So one
//! user exhausting its budget leaves room for the others, and a resource error is always the
//! error of the call that met it, never the end of the acceptor or of a worker.
//!
//! Root (uid 0) is exempt from both per-uid budgets, as the kernel lets a privileged process
//! exceed `fs.file-max`: it is still bounded by `--max-sessions`, the per-session handle limit
//! and the process's own fd limit, and the budgets of the other uids keep a quarter of those for
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The per-uid budgets, as command-line options every server shares (flatten into its
/// arguments).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct UidLimitArgs {
    /// Most concurrent sessions of one uid (default: 3/4 of --max-sessions). A client of a uid
    /// at its budget is refused as full, so one user cannot take every session. Root (uid 0) is
    /// exempt.
    #[arg(long, value_name = "N")]
    pub max_sessions_per_uid: Option<usize>,
    /// Most descriptors the server holds for one uid: its open sockets and files, and its
    /// sessions' own (3 each with one worker) (default: 3/4 of the server's RLIMIT_NOFILE,
    /// which it raises to the hard limit at start). A call that would exceed it fails with
    /// EMFILE, so one user cannot exhaust the server's descriptors; a new session is still
    /// admitted (within --max-sessions-per-uid). Root (uid 0) is exempt.
    #[arg(long, value_name = "N")]
    pub max_handles_per_uid: Option<usize>,
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit; returns the new soft
/// limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Raises the fd limit as [`raise_nofile_limit`] and logs the outcome (what each server binary
/// does first).
pub fn raise_nofile_limit_logged() {
    match raise_nofile_limit() {
        Ok(n) => tracing::debug!(
            limit = n,
            "open file limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(%e, "cannot raise the open file limit"),
    }
}

/// This process's `RLIMIT_NOFILE` soft limit (1024 if it cannot be read; `usize::MAX` when
/// unlimited).
pub fn nofile_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// The default per-uid budget out of `total`: three quarters, at least one.
pub fn default_share(total: usize) -> usize {
    (total / 4).saturating_mul(3).max(1)
}

/// Whether `errno` reports a lack of resources (descriptors, memory, buffers) rather than a
/// fault of the request: such an error is the call's, and a server loop meeting it backs off
/// and goes on.
pub fn is_resource_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS
    )
}

/// One uid's usage and budgets.
#[derive(Debug)]
pub struct Account {
    uid: u32,
    fds: AtomicUsize,
    sessions: AtomicUsize,
    max_fds: usize,
    max_sessions: usize,
}

impl Account {
    /// An account for `uid` with these budgets (`usize::MAX`: unbounded).
    pub fn new(uid: u32, max_fds: usize, max_sessions: usize) -> Account {
        Account {
            uid,
            fds: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            max_fds,
            max_sessions,
        }
    }

    /// The uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Open files charged now.
    pub fn fds(&self) -> usize {
        self.fds.load(Ordering::Relaxed)
    }

    /// Sessions charged now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The open-file budget.
    pub fn max_fds(&self) -> usize {
        self.max_fds
    }

    /// The session budget.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// True when `n` more open files fit in the budget now.
    pub fn has_room(&self, n: usize) -> bool {
        self.fds().saturating_add(n) <= self.max_fds
    }

    fn take(counter: &AtomicUsize, n: usize, max: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                v.checked_add(n).filter(|&t| t <= max)
            })
            .is_ok()
    }

    /// Charges `n` open files; `None` (nothing charged) when that would exceed the budget.
    pub fn charge_fds(self: &Arc<Self>, n: usize) -> Option<FdCharge> {
        Self::take(&self.fds, n, self.max_fds).then(|| FdCharge {
            account: self.clone(),
            n,
        })
    }

    /// Charges one session and its own `fds` descriptors; `None` (nothing charged) when the
    /// uid is at its session budget. The descriptors are charged even past the open-file
    /// budget (the session budget bounds them): a uid at its open-file budget still gets a
    /// session, whose calls that need a descriptor fail with `EMFILE`.
    pub fn charge_session(self: &Arc<Self>, fds: usize) -> Option<SessionCharge> {
        if !Self::take(&self.sessions, 1, self.max_sessions) {
            return None;
        }
        self.fds.fetch_add(fds, Ordering::AcqRel);
        Some(SessionCharge {
            fds: FdCharge {
                account: self.clone(),
                n: fds,
            },
            account: self.clone(),
        })
    }
}

/// Open files charged to an account; released when dropped.
#[derive(Debug)]
pub struct FdCharge {
    account: Arc<Account>,
    n: usize,
}

impl Drop for FdCharge {
    fn drop(&mut self) {
        self.account.fds.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A session (and its own descriptors) charged to an account; released when dropped.
#[derive(Debug)]
pub struct SessionCharge {
    account: Arc<Account>,
    #[allow(dead_code)] // released with the session charge
    fds: FdCharge,
}

impl Drop for SessionCharge {
    fn drop(&mut self) {
        self.account.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every uid's account, server-wide.
#[derive(Debug)]
pub struct Accounts {
    by_uid: Mutex<HashMap<u32, Arc<Account>>>,
    max_fds: usize,
    max_sessions: usize,
}

impl Accounts {
    /// Accounts with these per-uid budgets (root is exempt).
    pub fn new(max_fds_per_uid: usize, max_sessions_per_uid: usize) -> Accounts {
        Accounts {
            by_uid: Mutex::new(HashMap::new()),
            max_fds: max_fds_per_uid,
            max_sessions: max_sessions_per_uid,
        }
    }

    /// Accounts without budgets (every uid exempt).
    pub fn unlimited() -> Accounts {
        Accounts::new(usize::MAX, usize::MAX)
    }

    /// The per-uid open-file budget.
    pub fn max_fds_per_uid(&self) -> usize {
        self.max_fds
    }

    /// The per-uid session budget.
    pub fn max_sessions_per_uid(&self) -> usize {
        self.max_sessions
    }

    /// `uid`'s account (created on first use; kept: there are few uids).
    pub fn get(&self, uid: u32) -> Arc<Account> {
        let mut m = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(uid)
            .or_insert_with(|| {
                Arc::new(if uid == 0 {
                    Account::new(0, usize::MAX, usize::MAX)
                } else {
                    Account::new(uid, self.max_fds, self.max_sessions)
                })
            })
            .clone()
    }
}

/// Lets a message through at most once per interval and counts what it held back.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl RateLimit {
    /// At most one message per `every`.
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(messages held back since the last one)` when a message may go out now.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_charge_and_release() {
        let acc = Accounts::new(4, 2);
        let a = acc.get(1000);
        let c1 = a.charge_fds(3).unwrap();
        assert!(a.charge_fds(2).is_none(), "over budget, nothing charged");
        assert_eq!(a.fds(), 3);
        let s = a.charge_session(1).unwrap();
        assert_eq!((a.fds(), a.sessions()), (4, 1));
        // At its open-file budget a uid still gets sessions (their descriptors count), but no
        // more files.
        let s2 = a.charge_session(1).unwrap();
        assert_eq!((a.fds(), a.sessions()), (5, 2));
        assert!(a.charge_fds(1).is_none());
        assert!(a.charge_session(0).is_none(), "the session budget is full");
        assert_eq!(a.sessions(), 2, "a refused session is not counted");
        drop(c1);
        assert!(a.charge_fds(2).is_some(), "closing made room");
        drop((s, s2));
        assert_eq!((a.fds(), a.sessions()), (0, 0));
        // Root is exempt; other uids have their own accounts.
        let root = acc.get(0);
        let _big = root.charge_fds(1 << 40).unwrap();
        assert!(acc.get(1001).charge_fds(4).is_some());
        assert!(Arc::ptr_eq(&a, &acc.get(1000)));
    }

    #[test]
    fn defaults_leave_a_quarter() {
        assert_eq!(default_share(20_000), 15_000);
        assert_eq!(default_share(1024), 768);
        assert_eq!(default_share(1), 1);
    }

    #[test]
    fn rate_limit_holds_back_and_counts() {
        let r = RateLimit::new(Duration::from_secs(60));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::new(Duration::ZERO);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let n = raise_nofile_limit().unwrap();
        assert_eq!(nofile_limit() as u64, n);
    }
}
