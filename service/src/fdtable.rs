//! Per-session tables of open files, and their hand-over to a forked child or a new program.
//!
//! A session names its open files by small integer *handles*, allocated lowest-free like file
//! descriptors. Each handle holds an `Arc<OpenFd>`: handles in different sessions (after a
//! fork) may share one open file description, so they share its offset and flags, exactly as a
//! parent and child share a descriptor. The file is closed when its last holder lets go.
//!
//! A file a handler opens for a session is charged to the client's uid
//! ([`crate::limits::Account`]) from [`FdTable::insert_new`] until its descriptor closes, so a
//! file shared after a fork counts once, and one parked in a clone token or held by an
//! operation in flight still counts.
//!
//! [`CloneTokens`] implements the session opcodes `PrepareClone`/`Adopt`: a snapshot of a table
//! is parked under a one-time random token for 30 s, and only the right process may redeem it:
//! for a fork token, a process other than the creator that is its child or runs as the same uid
//! (a daemon's child whose parent exited before the child adopted has been re-parented, yet it
//! knows the token only because it was forked from the creator's memory); for an exec token,
//! the creator itself (after `exec`) or its vfork child. Tokens that nobody redeemed are
//! dropped, with the files they hold, once they expire ([`CloneTokens::purge_expired`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi::Errno;

use crate::limits::{Account, FdCharge};

/// A descriptor the server holds for its clients, with the budget it is charged to.
#[derive(Debug)]
pub struct OpenFd {
    fd: OwnedFd,
    _charge: Option<FdCharge>,
}

impl OpenFd {
    /// The descriptor itself.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Gives up the descriptor (and releases its charge): the caller closes it.
    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }
}

impl From<OwnedFd> for OpenFd {
    /// An uncharged descriptor.
    fn from(fd: OwnedFd) -> OpenFd {
        OpenFd { fd, _charge: None }
    }
}

impl std::ops::Deref for OpenFd {
    type Target = OwnedFd;

    fn deref(&self) -> &OwnedFd {
        &self.fd
    }
}

impl AsFd for OpenFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for OpenFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for OpenFd {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

/// One open file of a session.
pub type Handle = Arc<OpenFd>;

/// A copy of a session's table: slot `i` holds handle `i`.
pub type Snapshot = Vec<Option<Handle>>;

/// Default bound on handles per session.
pub const DEFAULT_MAX_HANDLES: usize = 1 << 16;

/// A session's open files.
#[derive(Debug)]
pub struct FdTable {
    inner: Mutex<Inner>,
    limit: usize,
    /// Where new files are charged (`None`: nowhere).
    account: Option<Arc<Account>>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Snapshot,
    /// No slot below this index is free.
    lowest_free: usize,
    open: usize,
}

impl Inner {
    fn recount(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        self.open = self.slots.iter().filter(|s| s.is_some()).count();
        self.lowest_free = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
    }
}

impl FdTable {
    /// An empty table holding at most `limit` handles, charging nobody.
    pub fn new(limit: usize) -> FdTable {
        FdTable {
            inner: Mutex::new(Inner::default()),
            limit,
            account: None,
        }
    }

    /// An empty table holding at most `limit` handles, whose new files
    /// ([`FdTable::insert_new`]) are charged to `account`.
    pub fn with_account(limit: usize, account: Arc<Account>) -> FdTable {
        FdTable {
            account: Some(account),
            ..FdTable::new(limit)
        }
    }

    /// The account new files are charged to.
    pub fn account(&self) -> Option<&Arc<Account>> {
        self.account.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the table inconsistent (every update is
        // a single assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open file behind `handle`, or `EBADF`.
    pub fn get(&self, handle: u64) -> Result<Handle, Errno> {
        let t = self.lock();
        usize::try_from(handle)
            .ok()
            .and_then(|h| t.slots.get(h))
            .and_then(Clone::clone)
            .ok_or(Errno::EBADF)
    }

    /// Installs `fd` under the lowest free handle; `EMFILE` when the table is full.
    pub fn insert(&self, fd: Handle) -> Result<u32, Errno> {
        let mut t = self.lock();
        if t.open >= self.limit {
            return Err(Errno::EMFILE);
        }
        let h = t.lowest_free;
        if h == t.slots.len() {
            t.slots.push(Some(fd));
        } else {
            t.slots[h] = Some(fd);
        }
        t.open += 1;
        t.lowest_free = t.slots[h + 1..]
            .iter()
            .position(Option::is_none)
            .map_or(t.slots.len(), |i| h + 1 + i);
        Ok(h as u32)
    }

    /// Installs a descriptor just opened for this session, charged to the table's account until
    /// it closes: `EMFILE` (and `fd` closed) when the table is full or the account's budget is.
    pub fn insert_new(&self, fd: OwnedFd) -> Result<(u32, Handle), Errno> {
        let charge = match &self.account {
            Some(a) => Some(a.charge_fds(1).ok_or(Errno::EMFILE)?),
            None => None,
        };
        let fd = Arc::new(OpenFd {
            fd,
            _charge: charge,
        });
        let h = self.insert(fd.clone())?;
        Ok((h, fd))
    }

    /// True when another handle can be installed now (in the table and in the budget of its
    /// account).
    pub fn has_room(&self) -> bool {
        self.lock().open < self.limit && self.account.as_ref().is_none_or(|a| a.has_room(1))
    }
    /// Removes `handle` and returns its file (closed when the caller drops the last holder),
    /// or `EBADF`.
    pub fn remove(&self, handle: u64) -> Result<Handle, Errno> {
        let mut t = self.lock();
        let h = usize::try_from(handle).map_err(|_| Errno::EBADF)?;
        let fd = t
            .slots
            .get_mut(h)
            .and_then(Option::take)
            .ok_or(Errno::EBADF)?;
        t.open -= 1;
        t.lowest_free = t.lowest_free.min(h);
        while t.slots.last().is_some_and(Option::is_none) {
            t.slots.pop();
        }
        Ok(fd)
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.lock().open
    }

    /// True when no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the table sharing every open file.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().slots.clone()
    }

    /// Adds every file of `snap` under new (lowest free) numbers; returns (number in `snap`,
    /// number here) per file. `EMFILE` (nothing added) when they do not all fit.
    pub fn import(&self, snap: &Snapshot) -> Result<Vec<(u32, u32)>, Errno> {
        let want = snap.iter().filter(|s| s.is_some()).count();
        if self.lock().open + want > self.limit {
            return Err(Errno::EMFILE);
        }
        let mut out = Vec::with_capacity(want);
        for (old, f) in snap.iter().enumerate() {
            if let Some(f) = f {
                match self.insert(f.clone()) {
                    Ok(h) => out.push((old as u32, h)),
                    Err(e) => {
                        for (_, h) in out {
                            let _ = self.remove(u64::from(h));
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Replaces the whole table with `snap` (same handle numbers); returns the old contents.
    /// `EMFILE` if `snap` holds more handles than this table may.
    pub fn replace(&self, snap: Snapshot) -> Result<Snapshot, Errno> {
        if snap.iter().filter(|s| s.is_some()).count() > self.limit {
            return Err(Errno::EMFILE);
        }
        let mut t = self.lock();
        let old = std::mem::replace(&mut t.slots, snap);
        t.recount();
        Ok(old)
    }
}

/// What a clone token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneKind {
    /// A forked child adopts its parent's table.
    Fork,
    /// The same process adopts its table after `exec`.
    Exec,
    /// Whoever receives the fds sent with SCM_RIGHTS imports them ([`FdTable::import`]).
    Pass,
}

impl CloneKind {
    /// Decodes `PrepareClone`'s `args[0]`.
    pub fn from_arg(a: u64) -> Option<CloneKind> {
        match a {
            0 => Some(CloneKind::Fork),
            1 => Some(CloneKind::Exec),
            2 => Some(CloneKind::Pass),
            _ => None,
        }
    }
}

/// How long a token stays redeemable.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(30);
/// Most tokens outstanding at once (server-wide).
pub const MAX_TOKENS: usize = 4096;

struct Parked {
    kind: CloneKind,
    creator_pid: i32,
    creator_uid: u32,
    created: Instant,
    table: Snapshot,
    /// A pidfd of the child a fork token was made for ([`CloneTokens::bind_child`]).
    child: Option<OwnedFd>,
}

impl Parked {
    /// Whether the token may still be redeemed at `now`: not expired, and its child (when
    /// known) still running.
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < TOKEN_LIFETIME
            && self.child.as_ref().is_none_or(crate::creds::pidfd_running)
    }
}

/// Parked snapshots awaiting adoption, server-wide.
#[derive(Default)]
pub struct CloneTokens {
    parked: Mutex<HashMap<u64, Parked>>,
}

impl CloneTokens {
    /// An empty registry.
    pub fn new() -> CloneTokens {
        CloneTokens::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `table` for a child (`Fork`) or a new image (`Exec`) of process `creator`;
    /// returns the token. `EAGAIN` when too many tokens are outstanding.
    pub fn prepare(&self, kind: CloneKind, creator: Who, table: Snapshot) -> Result<u64, Errno> {
        self.prepare_at(kind, creator, table, Instant::now())
    }

    fn prepare_at(
        &self,
        kind: CloneKind,
        creator: Who,
        table: Snapshot,
        now: Instant,
    ) -> Result<u64, Errno> {
        let mut p = self.lock();
        Self::expire(&mut p, now);
        if p.len() >= MAX_TOKENS {
            return Err(Errno::EAGAIN);
        }
        let token = loop {
            let t = getrandom::u64().map_err(|_| Errno::EAGAIN)?;
            if t != 0 && !p.contains_key(&t) {
                break t;
            }
        };
        p.insert(
            token,
            Parked {
                kind,
                creator_pid: creator.pid,
                creator_uid: creator.uid,
                created: now,
                table,
                child: None,
            },
        );
        Ok(token)
    }

    /// Redeems `token` for process `who` whose parent is `ppid`: `ENOENT` for an unknown,
    /// used or expired token; `EPERM` (token kept) when this process may not redeem it.
    pub fn redeem(&self, token: u64, who: Who, ppid: i32) -> Result<Snapshot, Errno> {
        self.redeem_at(token, who, ppid, Instant::now())
    }

    fn redeem_at(&self, token: u64, who: Who, ppid: i32, now: Instant) -> Result<Snapshot, Errno> {
        let mut p = self.lock();
        Self::expire(&mut p, now);
        let t = p.get(&token).ok_or(Errno::ENOENT)?;
        let pid = who.pid;
        let allowed = match t.kind {
            // The child adopts right after fork, but its parent may have exited by then (a
            // daemon's double fork): it was re-parented, and the same uid with the secret
            // token is then the proof. Another user's process never gets the files.
            CloneKind::Fork => {
                pid != t.creator_pid && (ppid == t.creator_pid || who.uid == t.creator_uid)
            }
            // The program that execs may be the creator itself, or a vfork/posix_spawn child
            // that made the request through its parent's (shared) session memory.
            CloneKind::Exec => pid == t.creator_pid || ppid == t.creator_pid,
            // Only through Import (below), never as a whole table.
            CloneKind::Pass => false,
        };
        if !allowed {
            return Err(Errno::EPERM);
        }
        Ok(p.remove(&token).expect("present").table)
    }

    /// Redeems a pass token, whoever holds it (the token travelled with the fds, as a
    /// capability): `ENOENT` for an unknown, used or expired one, `EINVAL` for a token of
    /// another kind (kept).
    pub fn redeem_pass(&self, token: u64) -> Result<Snapshot, Errno> {
        let mut p = self.lock();
        Self::expire(&mut p, Instant::now());
        match p.get(&token) {
            None => Err(Errno::ENOENT),
            Some(t) if t.kind != CloneKind::Pass => Err(Errno::EINVAL),
            Some(_) => Ok(p.remove(&token).expect("present").table),
        }
    }

    /// Gives up `token` for its creator `who` (an exec that failed): `ENOENT` for an unknown
    /// token, `EPERM` (kept) when `who` did not create it.
    pub fn drop_token(&self, token: u64, who: Who) -> Result<(), Errno> {
        let mut p = self.lock();
        let t = p.get(&token).ok_or(Errno::ENOENT)?;
        if t.creator_pid != who.pid || t.creator_uid != who.uid {
            return Err(Errno::EPERM);
        }
        p.remove(&token);
        Ok(())
    }

    /// Drops the tokens that expired unredeemed (a child killed before it adopted, an exec
    /// into a program that is not redirected), closing the files only they held; returns how
    /// many. The server calls it periodically, so no listener outlives its holders by more
    /// than [`TOKEN_LIFETIME`] and a tick.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut p = self.lock();
        let before = p.len();
        Self::expire(&mut p, now);
        before - p.len()
    }

    fn expire(p: &mut HashMap<u64, Parked>, now: Instant) {
        p.retain(|_, t| t.live(now));
    }

    /// Records that the fork token `token` of process `who` was made for the child behind
    /// `child` (a pidfd): once that child exits unredeemed, the token goes at the next purge.
    /// `ENOENT` for an unknown (or already redeemed) token, `EPERM` for another process's,
    /// `EINVAL` for a token that is not a fork token.
    pub fn bind_child(&self, token: u64, who: Who, child: OwnedFd) -> Result<(), Errno> {
        let mut p = self.lock();
        let t = p.get_mut(&token).ok_or(Errno::ENOENT)?;
        if t.creator_pid != who.pid || t.creator_uid != who.uid {
            return Err(Errno::EPERM);
        }
        if t.kind != CloneKind::Fork {
            return Err(Errno::EINVAL);
        }
        t.child = Some(child);
        Ok(())
    }

    /// Tokens outstanding (expired ones included until the next purge, prepare or redeem).
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }
}

/// A process as a clone token sees it: its pid and uid (from the session's peer credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Handle {
        Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()).into())
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn new_files_are_charged_until_they_close() {
        let acc = crate::limits::Accounts::new(2, 8);
        let a = FdTable::with_account(16, acc.get(1000));
        let b = FdTable::with_account(16, acc.get(1000));
        let (h, f) = a.insert_new(devnull()).unwrap();
        assert_eq!(h, 0);
        b.insert_new(devnull()).unwrap();
        assert!(!a.has_room(), "the uid's budget is shared by its sessions");
        assert_eq!(a.insert_new(devnull()).unwrap_err(), Errno::EMFILE);
        // Another uid, and root, are not affected.
        let c = FdTable::with_account(16, acc.get(1001));
        assert!(c.insert_new(devnull()).is_ok());
        let r = FdTable::with_account(16, acc.get(0));
        for _ in 0..4 {
            r.insert_new(devnull()).unwrap();
        }
        // A shared file counts once, until its last holder lets go.
        c.insert(f.clone()).unwrap();
        drop(a.remove(0).unwrap());
        assert_eq!(acc.get(1000).fds(), 2);
        drop(f);
        drop(c);
        assert_eq!(acc.get(1000).fds(), 1);
        assert!(a.insert_new(devnull()).is_ok());
    }

    #[test]
    fn handles_are_lowest_free_and_bounded() {
        let t = FdTable::new(3);
        assert_eq!(t.insert(fd()), Ok(0));
        assert_eq!(t.insert(fd()), Ok(1));
        assert_eq!(t.insert(fd()), Ok(2));
        assert_eq!(t.insert(fd()), Err(Errno::EMFILE));
        assert!(t.remove(1).is_ok());
        assert_eq!(t.remove(1).unwrap_err(), Errno::EBADF);
        assert_eq!(t.get(1).unwrap_err(), Errno::EBADF);
        assert!(t.remove(0).is_ok());
        assert_eq!(t.insert(fd()), Ok(0));
        assert_eq!(t.insert(fd()), Ok(1));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(u64::MAX).unwrap_err(), Errno::EBADF);
        assert_eq!(t.remove(1 << 40).unwrap_err(), Errno::EBADF);
        // Remove from the end: the table shrinks and numbering stays lowest-free.
        assert!(t.remove(2).is_ok());
        assert!(t.remove(1).is_ok());
        assert_eq!(t.insert(fd()), Ok(1));
    }

    #[test]
    fn snapshots_share_open_files() {
        let a = FdTable::new(16);
        let f = fd();
        a.insert(f.clone()).unwrap();
        a.insert(fd()).unwrap();
        a.remove(0).unwrap();
        let snap = a.snapshot();
        let b = FdTable::new(16);
        b.insert(fd()).unwrap();
        let old = b.replace(snap).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(b.get(0).unwrap_err(), Errno::EBADF);
        assert!(Arc::ptr_eq(&b.get(1).unwrap(), &a.get(1).unwrap()));
        assert_eq!(
            b.insert(fd()),
            Ok(0),
            "hole below adopted handles is reused"
        );
        assert_eq!(b.insert(fd()), Ok(2));
        assert_eq!(
            Arc::strong_count(&f),
            1,
            "removed handle not kept by anyone"
        );
        let small = FdTable::new(1);
        assert_eq!(small.replace(b.snapshot()).unwrap_err(), Errno::EMFILE);
    }

    #[test]
    fn tokens_check_who_redeems_and_expire() {
        let reg = CloneTokens::new();
        let t0 = Instant::now();
        let who = |pid, uid| Who { pid, uid };
        let fork = reg
            .prepare_at(CloneKind::Fork, who(100, 1000), vec![Some(fd())], t0)
            .unwrap();
        // Not the child: kept for the right process.
        assert_eq!(
            reg.redeem_at(fork, who(100, 1000), 1, t0).unwrap_err(),
            Errno::EPERM,
            "the creator itself"
        );
        assert_eq!(
            reg.redeem_at(fork, who(300, 1001), 200, t0).unwrap_err(),
            Errno::EPERM,
            "another user's process"
        );
        assert_eq!(
            reg.redeem_at(fork, who(101, 1000), 100, t0).unwrap().len(),
            1
        );
        assert_eq!(
            reg.redeem_at(fork, who(101, 1000), 100, t0).unwrap_err(),
            Errno::ENOENT,
            "one-time"
        );
        // A daemon's child whose parent exited before it adopted: re-parented, same uid.
        let orphan = reg
            .prepare_at(CloneKind::Fork, who(100, 1000), vec![Some(fd())], t0)
            .unwrap();
        assert_eq!(
            reg.redeem_at(orphan, who(102, 1000), 1, t0).unwrap().len(),
            1
        );
        // A child of another uid is accepted only as the creator's direct child.
        let root = reg
            .prepare_at(CloneKind::Fork, who(100, 0), vec![], t0)
            .unwrap();
        assert_eq!(
            reg.redeem_at(root, who(103, 1000), 1, t0).unwrap_err(),
            Errno::EPERM
        );
        assert!(reg.redeem_at(root, who(103, 1000), 100, t0).is_ok());
        let exec = reg
            .prepare_at(CloneKind::Exec, who(100, 1000), vec![], t0)
            .unwrap();
        assert_eq!(
            reg.redeem_at(exec, who(300, 1000), 200, t0).unwrap_err(),
            Errno::EPERM
        );
        assert!(reg.redeem_at(exec, who(100, 1000), 1, t0).is_ok());
        let late = reg
            .prepare_at(CloneKind::Exec, who(100, 1000), vec![], t0)
            .unwrap();
        assert_eq!(
            reg.redeem_at(late, who(100, 1000), 1, t0 + TOKEN_LIFETIME)
                .unwrap_err(),
            Errno::ENOENT
        );
        assert_eq!(reg.outstanding(), 0);
        assert_eq!(reg.redeem(12345, who(1, 0), 1).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn a_pass_is_imported_once_under_new_numbers() {
        let reg = CloneTokens::new();
        let (a, b) = (fd(), fd());
        let t = reg
            .prepare(
                CloneKind::Pass,
                Who { pid: 1, uid: 1 },
                vec![None, Some(a.clone()), None, Some(b.clone())],
            )
            .unwrap();
        // Not through Adopt, by anyone.
        assert_eq!(
            reg.redeem(t, Who { pid: 2, uid: 1 }, 1).unwrap_err(),
            Errno::EPERM
        );
        let snap = reg.redeem_pass(t).unwrap();
        assert_eq!(reg.redeem_pass(t).unwrap_err(), Errno::ENOENT, "one-time");
        let table = FdTable::new(3);
        table.insert(fd()).unwrap();
        assert_eq!(table.import(&snap).unwrap(), vec![(1, 1), (3, 2)]);
        assert!(Arc::ptr_eq(&table.get(2).unwrap(), &b));
        assert_eq!(table.import(&snap).unwrap_err(), Errno::EMFILE);
        assert_eq!(table.len(), 3, "a failed import adds nothing");
        let fork = reg
            .prepare(CloneKind::Fork, Who { pid: 1, uid: 1 }, vec![])
            .unwrap();
        assert_eq!(reg.redeem_pass(fork).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn only_the_creator_drops_a_token() {
        let reg = CloneTokens::new();
        let f = fd();
        let me = Who { pid: 7, uid: 1000 };
        let t = reg
            .prepare(CloneKind::Exec, me, vec![Some(f.clone())])
            .unwrap();
        assert_eq!(
            reg.drop_token(t, Who { pid: 8, uid: 1000 }).unwrap_err(),
            Errno::EPERM
        );
        assert_eq!(Arc::strong_count(&f), 2);
        reg.drop_token(t, me).unwrap();
        assert_eq!(Arc::strong_count(&f), 1, "released at once");
        assert_eq!(reg.drop_token(t, me).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn a_token_whose_child_exited_goes_at_the_next_purge() {
        let reg = CloneTokens::new();
        let f = fd();
        let me = Who {
            pid: std::process::id() as i32,
            uid: 0,
        };
        let t = reg
            .prepare(CloneKind::Fork, me, vec![Some(f.clone())])
            .unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = crate::creds::pidfd_open(child.id() as i32).unwrap();
        let other = Who { pid: 1, uid: 0 };
        assert_eq!(
            reg.bind_child(
                t,
                other,
                crate::creds::pidfd_open(child.id() as i32).unwrap()
            ),
            Err(Errno::EPERM)
        );
        assert_eq!(
            reg.bind_child(7, me, crate::creds::pidfd_open(child.id() as i32).unwrap()),
            Err(Errno::ENOENT)
        );
        reg.bind_child(t, me, pidfd).unwrap();
        assert_eq!(reg.purge_expired(), 0, "the child still runs");
        assert_eq!(Arc::strong_count(&f), 2);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(reg.purge_expired(), 1, "the child died unredeemed");
        assert_eq!(Arc::strong_count(&f), 1, "the snapshot's file is released");
        let e = reg.prepare(CloneKind::Exec, me, vec![Some(fd())]).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("1")
            .spawn()
            .unwrap();
        assert_eq!(
            reg.bind_child(
                e,
                me,
                crate::creds::pidfd_open(sleeper.id() as i32).unwrap()
            ),
            Err(Errno::EINVAL),
            "only fork tokens have a child"
        );
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(crate::creds::pidfd_open(0).is_none());
    }

    #[test]
    fn expired_tokens_release_their_files() {
        let reg = CloneTokens::new();
        let f = fd();
        let t0 = Instant::now() - TOKEN_LIFETIME;
        reg.prepare_at(
            CloneKind::Fork,
            Who { pid: 1, uid: 0 },
            vec![Some(f.clone())],
            t0,
        )
        .unwrap();
        assert_eq!(Arc::strong_count(&f), 2);
        assert_eq!(reg.purge_expired(), 1);
        assert_eq!(Arc::strong_count(&f), 1, "the parked copy is closed");
        assert_eq!(reg.purge_expired(), 0);
    }

    #[test]
    fn token_count_is_bounded() {
        let reg = CloneTokens::new();
        let t0 = Instant::now();
        let w = Who { pid: 1, uid: 0 };
        for _ in 0..MAX_TOKENS {
            reg.prepare_at(CloneKind::Exec, w, vec![], t0).unwrap();
        }
        assert_eq!(
            reg.prepare_at(CloneKind::Exec, w, vec![], t0).unwrap_err(),
            Errno::EAGAIN
        );
        // Expired ones make room.
        assert!(reg
            .prepare_at(CloneKind::Exec, w, vec![], t0 + TOKEN_LIFETIME)
            .is_ok());
    }
}
