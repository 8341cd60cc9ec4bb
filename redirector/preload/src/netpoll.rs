//! `poll`, `ppoll`, `select`, `pselect6` and `epoll_*` over local fds and network sockets.
//!
//! Remote readiness comes from the network session's shared readiness words (kept current by
//! the server, see `xen_transport::events`); local fds are asked of the kernel. When nothing
//! is ready, the thread spins briefly on the readiness epoch, then announces itself as a
//! waiter and sleeps in `ppoll` on its local fds (or the real epoll fd), the session's
//! readiness eventfd and its control socket (which hangs up if the domain dies): the first of
//! them to become ready wakes it, and an idle wait burns no CPU.
//!
//! Epoll interest in remote sockets is kept here, per epoll fd: level-triggered items report
//! while the socket is ready; edge-triggered ones when the socket's edge counter moved since
//! they last reported (and once after `EPOLL_CTL_ADD`/`MOD` if ready then, as Linux does);
//! `EPOLLONESHOT` items disarm after one report until `EPOLL_CTL_MOD`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use xen_transport::layout::header;

use crate::fdtable::{self, Remote};
use crate::lock::SigLock;
use crate::remote::{Live, Pin, NET};
use crate::sys::{self, get, put};

fn e(n: i32) -> i64 {
    -i64::from(n)
}

/// Signals blocked while a wait scans and spins, so that a signal arriving then stays pending
/// until the `ppoll` that sleeps, which unblocks them atomically and returns EINTR: without
/// this, a handler that ran between the scan and the sleep would leave the wait asleep (the
/// race `ppoll`'s sigmask exists for). The shim's one signal block ([`crate::lock::Masked`]):
/// SIGSYS, the shim's own trap, and the fault signals stay deliverable.
pub(crate) struct SigBlock {
    masked: crate::lock::Masked,
}

impl SigBlock {
    pub(crate) fn new() -> SigBlock {
        SigBlock {
            masked: crate::lock::Masked::new(),
        }
    }

    /// The thread's mask from before the block (restored on drop).
    pub(crate) fn old(&self) -> u64 {
        self.masked.old()
    }

    /// The block itself, for locks taken under it ([`crate::lock::SigLock::with_blocked`]).
    fn masked(&self) -> &crate::lock::Masked {
        &self.masked
    }

    /// The mask to sleep with: the caller's own (`ppoll`, `pselect6`, `epoll_pwait`), or the
    /// thread's mask from before the block. SIGSYS is never blocked.
    fn sleep_mask(&self, user: Option<(u64, u64)>) -> u64 {
        match user {
            Some((p, _)) if p != 0 => get::<u64>(p) & !sys::SIGSYS_BIT,
            _ => self.old(),
        }
    }
}

/// How long a waiter spins on the readiness epoch before it sleeps.
const SPIN: Duration = Duration::from_micros(30);

const DEAD: u32 = (libc::POLLERR | libc::POLLHUP) as u32;

/// A remote socket's readiness (mask, edge counter) in `live`'s session; a socket of a dead
/// session (or without a session) is in error and hung up.
fn remote_state(live: Option<&Live>, r: Remote) -> (u32, u32) {
    // A dead domain's listener looks idle (nothing to accept), not failed: a server that
    // keeps waiting on it neither spins nor dies. Its connections report the error.
    let dead = if r.listening { 0 } else { DEAD };
    let Some(live) = live else {
        return (dead, 0);
    };
    let Some(raw) = fdtable::handle_in(r.handle, live.generation()) else {
        return (dead, 0);
    };
    if r.listening && live.s.server_gone() {
        return (0, 0);
    }
    match live.s.readiness(raw as usize) {
        Some(x) => (x.mask, x.seq),
        None => ((libc::POLLIN | libc::POLLOUT) as u32, 0),
    }
}

/// True when `r` belongs to no live session (its session died, or there is none).
fn gone(live: Option<&Live>, r: Remote) -> bool {
    live.is_none_or(|l| fdtable::handle_in(r.handle, l.generation()).is_none())
}

/// The bits of `mask` a waiter asking for `events` gets (errors and hang-ups always).
fn report(mask: u32, events: u32) -> u32 {
    let mut m = mask;
    if m & libc::POLLIN as u32 != 0 {
        m |= libc::POLLRDNORM as u32;
    }
    if m & libc::POLLOUT as u32 != 0 {
        m |= libc::POLLWRNORM as u32;
    }
    m & (events | DEAD)
}

/// One entry of a mixed wait.
enum Kind {
    Local,
    Remote(Remote),
    /// A storage-domain file: always ready for reading and writing, as regular files are.
    File,
    Ignored,
}

fn classify(fd: i32) -> Kind {
    if fd < 0 {
        return Kind::Ignored;
    }
    match fdtable::get_any(i64::from(fd)) {
        Some(r) if r.net => Kind::Remote(r),
        Some(_) => Kind::File,
        None => Kind::Local,
    }
}

fn spin_epoch(live: &Live, epoch: u32) -> bool {
    let t = Instant::now();
    loop {
        // Read the clock only every 64 checks: in a VM it costs more than the check.
        for _ in 0..64 {
            if live.s.event_epoch() != epoch {
                return true;
            }
            std::hint::spin_loop();
        }
        if t.elapsed() >= SPIN {
            return false;
        }
    }
}

/// Sleeps until a local fd in `local` is ready, the session's readiness moves, the domain
/// dies, the deadline passes or a signal arrives (`Err(-EINTR)`). `local` gets its revents.
fn sleep(
    live: Option<&Live>,
    epoch: u32,
    local: &mut Vec<libc::pollfd>,
    deadline: Option<Instant>,
    sigmask: Option<(u64, u64)>,
) -> Result<(), i64> {
    let n_local = local.len();
    let mut control_at = None;
    if let Some(l) = live {
        if spin_epoch(l, epoch) {
            return Ok(());
        }
        l.s.event_waiter(true);
        if l.s.event_epoch() != epoch {
            l.s.event_waiter(false);
            return Ok(());
        }
        if let Some(efd) = l.s.event_fd() {
            local.push(libc::pollfd {
                fd: efd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        control_at = Some(local.len());
        local.push(libc::pollfd {
            fd: l.s.control_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        });
    }
    // Without a session (the domain died), wake every retry interval: the caller's next look
    // reconnects once the domain is back and takes its listeners back.
    let deadline = if live.is_none() {
        let cap = Instant::now() + crate::remote::RETRY_INTERVAL;
        Some(deadline.map_or(cap, |d| d.min(cap)))
    } else {
        deadline
    };
    let ts = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        }
    });
    let (mask, size) = sigmask.unwrap_or((0, 8));
    let r = sys::sys(
        libc::SYS_ppoll,
        &[
            local.as_mut_ptr() as u64,
            local.len() as u64,
            ts.as_ref().map_or(0, |t| t as *const libc::timespec as u64),
            mask,
            size,
        ],
    );
    let mut foreign = None;
    if let Some(l) = live {
        if let Some(efd) = l.s.event_fd() {
            if local.get(n_local).is_some_and(|p| p.revents != 0) {
                if owns_unit(l, epoch) {
                    take_unit(efd);
                } else {
                    foreign = Some((l, efd));
                }
            }
        }
        l.s.event_waiter(false);
        if control_at.is_some_and(|i| local[i].revents != 0) {
            // The control socket hung up: the domain died. Mark the session dead (the
            // readiness words will never move again), so that the caller's next look
            // replaces it and reports the dead session's sockets in error, instead of
            // sleeping on a socket that stays hung up, i.e. spinning.
            l.s.server_gone();
        }
    }
    local.truncate(n_local);
    if r == e(libc::EINTR) {
        return Err(r);
    }
    if let Some((l, efd)) = foreign {
        return leave_unit(l, efd, epoch, local, deadline, sigmask);
    }
    Ok(())
}

/// Naps of a waiter that leaves a readiness unit to its owner (see [`owns_unit`]), at most
/// this many before it takes the unit as a left-over.
const FOREIGN_NAPS: u32 = 16;
const NAP: Duration = Duration::from_millis(1);

/// Whether a waiter woken by the readiness eventfd may take a unit. The server writes one unit
/// per announced waiter; a waiter whose epoch has not moved was not written a unit for a
/// change it has not seen. The unit then belongs to another waiter that the kernel woke but
/// that has not run yet: taking it would send that waiter back to sleep until its timeout (a
/// lost wake-up). Only when no other thread is announced can it be a left-over (of a waiter
/// that woke for a local fd or its timeout, or of several changes during one sleep).
fn owns_unit(l: &Live, epoch: u32) -> bool {
    l.s.event_epoch() != epoch
        || l.s
            .region()
            .u32_at(header::EVENT_WAITERS)
            .load(Ordering::SeqCst)
            <= 1
}

fn take_unit(efd: i32) {
    let mut v = 0u64;
    sys::sys(libc::SYS_read, &[efd as u64, &mut v as *mut u64 as u64, 8]);
}

/// Leaves a unit that is not ours (see [`owns_unit`]) to its owner: naps on the local fds and
/// the control socket, without the eventfd, until the unit is gone, the epoch moves, a local
/// fd is ready, the deadline passes or a signal arrives; a unit still there after
/// [`FOREIGN_NAPS`] naps is a left-over and is taken.
fn leave_unit(
    l: &Live,
    efd: i32,
    epoch: u32,
    local: &mut Vec<libc::pollfd>,
    deadline: Option<Instant>,
    sigmask: Option<(u64, u64)>,
) -> Result<(), i64> {
    let n_local = local.len();
    local.push(libc::pollfd {
        fd: l.s.control_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    });
    let (mask, size) = sigmask.unwrap_or((0, 8));
    let mut nap = || -> Result<(), i64> {
        for _ in 0..FOREIGN_NAPS {
            let left = deadline.map_or(NAP, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(());
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: left.min(NAP).subsec_nanos() as libc::c_long,
            };
            let r = sys::sys(
                libc::SYS_ppoll,
                &[
                    local.as_mut_ptr() as u64,
                    local.len() as u64,
                    &ts as *const libc::timespec as u64,
                    mask,
                    size,
                ],
            );
            if r == e(libc::EINTR) {
                return Err(r);
            }
            if local.last().is_some_and(|c| c.revents != 0) {
                l.s.server_gone(); // the control socket hung up: see `sleep`
            }
            if r != 0 || l.s.event_epoch() != epoch {
                return Ok(());
            }
            let mut probe = [libc::pollfd {
                fd: efd,
                events: libc::POLLIN,
                revents: 0,
            }];
            if sys::sys(libc::SYS_poll, &[probe.as_mut_ptr() as u64, 1, 0]) <= 0 {
                return Ok(()); // its owner took it
            }
        }
        take_unit(efd);
        Ok(())
    };
    let result = nap();
    local.truncate(n_local);
    result
}

/// The core of poll/ppoll/select: `pfds` (a copy) gets revents; returns the number of
/// entries with events, or `None` when no remote socket is in the set.
fn poll_core(
    pfds: &mut [libc::pollfd],
    deadline: Option<Instant>,
    sigmask: Option<(u64, u64)>,
) -> Option<i64> {
    let kinds: Vec<Kind> = pfds.iter().map(|p| classify(p.fd)).collect();
    if !kinds.iter().any(|k| matches!(k, Kind::Remote(_))) {
        return None;
    }
    let _pin = Pin::new(&NET);
    let block = SigBlock::new();
    let mask = block.sleep_mask(sigmask);
    let sigmask = Some((&mask as *const u64 as u64, 8));
    let mut local: Vec<libc::pollfd> = Vec::new();
    let mut local_idx: Vec<usize> = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        if matches!(k, Kind::Local) {
            local.push(libc::pollfd {
                fd: pfds[i].fd,
                events: pfds[i].events,
                revents: 0,
            });
            local_idx.push(i);
        }
    }
    let mut kinds = kinds;
    loop {
        let live = NET.session(None);
        let epoch = live.map_or(0, |l| l.s.event_epoch());
        // A listener taken back from a restarted domain has a new handle.
        for (i, k) in kinds.iter_mut().enumerate() {
            if let Kind::Remote(_) = k {
                *k = classify(pfds[i].fd);
            }
        }
        let mut ready = 0i64;
        for (i, k) in kinds.iter().enumerate() {
            let ev = pfds[i].events as u16 as u32;
            let rev = match k {
                Kind::Remote(r) => report(remote_state(live, *r).0, ev),
                Kind::File => report((libc::POLLIN | libc::POLLOUT) as u32, ev),
                Kind::Local | Kind::Ignored => 0,
            };
            pfds[i].revents = rev as u16 as i16;
            ready += i64::from(rev != 0);
        }
        if !local.is_empty() {
            let r = sys::sys(
                libc::SYS_poll,
                &[local.as_mut_ptr() as u64, local.len() as u64, 0],
            );
            if r < 0 {
                return Some(r);
            }
            for (j, &i) in local_idx.iter().enumerate() {
                pfds[i].revents = local[j].revents;
                ready += i64::from(local[j].revents != 0);
            }
        }
        if ready > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(ready);
        }
        if let Err(err) = sleep(live, epoch, &mut local, deadline, sigmask) {
            return Some(err);
        }
        // Without a session the sleep lasted a retry interval at most: look again (a
        // restarted domain gives the listeners back).
    }
}

fn read_pollfds(p: u64, n: usize) -> Vec<libc::pollfd> {
    (0..n)
        .map(|i| get::<libc::pollfd>(p + (i * std::mem::size_of::<libc::pollfd>()) as u64))
        .collect()
}

fn write_revents(p: u64, pfds: &[libc::pollfd]) {
    for (i, x) in pfds.iter().enumerate() {
        put::<libc::pollfd>(p + (i * std::mem::size_of::<libc::pollfd>()) as u64, *x);
    }
}

/// Waits on `pfds` (which hold a remote socket) until one is ready or a signal arrives
/// (`-EINTR`): the wait of a blocking socket call, which holds no channel while it waits.
pub fn wait_fds(pfds: &mut [libc::pollfd]) -> i64 {
    poll_core(pfds, None, None).unwrap_or(0)
}

/// poll(2).
pub fn poll(fds: u64, nfds: u64, timeout_ms: i64) -> Option<i64> {
    if nfds == 0 || nfds > 1 << 20 {
        return None;
    }
    let mut pfds = read_pollfds(fds, nfds as usize);
    let r = poll_core(&mut pfds, crate::net::deadline_ms(timeout_ms), None)?;
    if r >= 0 {
        write_revents(fds, &pfds);
    }
    Some(r)
}

fn deadline_ts(p: u64) -> Option<Instant> {
    (p != 0).then(|| {
        let ts: libc::timespec = get(p);
        Instant::now()
            + Duration::from_secs(ts.tv_sec.max(0) as u64)
            + Duration::from_nanos(ts.tv_nsec.max(0) as u64)
    })
}

/// ppoll(2).
pub fn ppoll(a: [u64; 6]) -> Option<i64> {
    if a[1] == 0 || a[1] > 1 << 20 {
        return None;
    }
    let mut pfds = read_pollfds(a[0], a[1] as usize);
    let mask = (a[3] != 0).then_some((a[3], a[4]));
    let r = poll_core(&mut pfds, deadline_ts(a[2]), mask)?;
    if r >= 0 {
        write_revents(a[0], &pfds);
    }
    Some(r)
}

fn fd_isset(set: u64, fd: usize) -> bool {
    set != 0 && get::<u64>(set + (fd / 64 * 8) as u64) & (1 << (fd % 64)) != 0
}

/// select(2) and pselect6(2).
pub fn select(a: [u64; 6], pselect: bool) -> Option<i64> {
    let nfds = (a[0] as i32).clamp(0, 1024) as usize;
    let (rs, ws, xs) = (a[1], a[2], a[3]);
    let mut pfds = Vec::new();
    let mut any_remote = false;
    for fd in 0..nfds {
        let mut ev = 0i16;
        if fd_isset(rs, fd) {
            ev |= libc::POLLIN;
        }
        if fd_isset(ws, fd) {
            ev |= libc::POLLOUT;
        }
        if fd_isset(xs, fd) {
            ev |= libc::POLLPRI;
        }
        if ev != 0 {
            any_remote |= fdtable::get_net(fd as i64).is_some();
            pfds.push(libc::pollfd {
                fd: fd as i32,
                events: ev,
                revents: 0,
            });
        }
    }
    if !any_remote {
        return None;
    }
    let (deadline, mask) = if pselect {
        let mask = if a[5] != 0 {
            let m: [u64; 2] = get(a[5]);
            (m[0] != 0).then_some((m[0], m[1]))
        } else {
            None
        };
        (deadline_ts(a[4]), mask)
    } else {
        let d = (a[4] != 0).then(|| {
            let tv: libc::timeval = get(a[4]);
            Instant::now()
                + Duration::from_secs(tv.tv_sec.max(0) as u64)
                + Duration::from_micros(tv.tv_usec.max(0) as u64)
        });
        (d, None)
    };
    let r = poll_core(&mut pfds, deadline, mask)?;
    if r < 0 {
        return Some(r);
    }
    if pfds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Some(e(libc::EBADF));
    }
    for set in [rs, ws, xs] {
        if set != 0 {
            for w in 0..nfds.div_ceil(64) {
                put::<u64>(set + (w * 8) as u64, 0);
            }
        }
    }
    let mut count = 0i64;
    let mut mark = |set: u64, fd: usize| {
        if set != 0 {
            let at = set + (fd / 64 * 8) as u64;
            put::<u64>(at, get::<u64>(at) | 1 << (fd % 64));
            count += 1;
        }
    };
    for p in &pfds {
        let (fd, rev) = (p.fd as usize, p.revents);
        if p.events & libc::POLLIN != 0 && rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
        {
            mark(rs, fd);
        }
        if p.events & libc::POLLOUT != 0 && rev & (libc::POLLOUT | libc::POLLERR) != 0 {
            mark(ws, fd);
        }
        if p.events & libc::POLLPRI != 0 && rev & libc::POLLPRI != 0 {
            mark(xs, fd);
        }
    }
    if !pselect && a[4] != 0 {
        let left = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        put(
            a[4],
            libc::timeval {
                tv_sec: left.as_secs() as libc::time_t,
                tv_usec: left.subsec_micros() as libc::suseconds_t,
            },
        );
    }
    Some(count)
}

// ---- epoll ----

#[derive(Clone, Copy)]
struct Item {
    fd: i64,
    events: u32,
    data: u64,
    /// Edge counter value last reported (edge-triggered items).
    last_seq: u32,
    /// A one-shot item that reported: disarmed until EPOLL_CTL_MOD.
    disabled: bool,
    /// The socket died with its session and that was reported (see [`epoll_scan`]).
    gone_reported: bool,
}

struct EpSet {
    epfd: i64,
    items: Vec<Item>,
}

static EPOLLS: SigLock<Vec<EpSet>> = SigLock::new(Vec::new());
/// Remote items in all sets (0: every epoll call goes straight to the kernel).
static REMOTE_ITEMS: AtomicUsize = AtomicUsize::new(0);

/// The registry lock, for the fork handlers.
pub(crate) fn lock() -> &'static dyn crate::lock::ForkLock {
    &EPOLLS
}

fn with_eps<R>(f: impl FnOnce(&mut Vec<EpSet>) -> R) -> R {
    let block = SigBlock::new();
    with_eps_blocked(&block, f)
}

/// As [`with_eps`], under the caller's signal block.
fn with_eps_blocked<R>(block: &SigBlock, f: impl FnOnce(&mut Vec<EpSet>) -> R) -> R {
    EPOLLS.with_blocked(block.masked(), |eps| {
        let r = f(eps);
        let n = eps.iter().map(|s| s.items.len()).sum();
        REMOTE_ITEMS.store(n, Ordering::Relaxed);
        r
    })
}

const EPOLLET: u32 = libc::EPOLLET as u32;
const EPOLLONESHOT: u32 = libc::EPOLLONESHOT as u32;
const EPOLLEXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

/// epoll_ctl(2) for a remote socket (others go to the kernel).
pub fn epoll_ctl(a: [u64; 6]) -> Option<i64> {
    let (epfd, op, fd, evp) = (a[0] as i32 as i64, a[1] as i32, a[2] as i32 as i64, a[3]);
    let r = match fdtable::get_any(fd) {
        Some(r) if r.net => r,
        Some(_) => return Some(e(libc::EPERM)), // regular files cannot be polled by epoll
        None => return None,
    };
    if epfd == fd {
        return Some(e(libc::EINVAL));
    }
    // The epoll fd must be a real epoll instance.
    let mut probe = libc::epoll_event { events: 0, u64: 0 };
    let check = sys::sys(
        libc::SYS_epoll_wait,
        &[epfd as u64, &mut probe as *mut _ as u64, 1, 0],
    );
    if check == e(libc::EBADF) || check == e(libc::EINVAL) {
        return Some(check);
    }
    let ev = if op == libc::EPOLL_CTL_DEL {
        None
    } else {
        if evp == 0 {
            return Some(e(libc::EFAULT));
        }
        let ev: libc::epoll_event = get(evp);
        Some((ev.events, ev.u64))
    };
    let seq = {
        let _pin = Pin::new(&NET);
        remote_state(NET.session(None), r).1
    };
    Some(with_eps(|eps| {
        let set = match eps.iter_mut().position(|s| s.epfd == epfd) {
            Some(i) => &mut eps[i],
            None => {
                eps.push(EpSet {
                    epfd,
                    items: Vec::new(),
                });
                eps.last_mut().expect("pushed")
            }
        };
        let at = set.items.iter().position(|i| i.fd == fd);
        match (op, at, ev) {
            (libc::EPOLL_CTL_ADD, Some(_), _) => e(libc::EEXIST),
            (libc::EPOLL_CTL_ADD, None, Some((events, data))) => {
                set.items.push(Item {
                    fd,
                    events,
                    data,
                    last_seq: seq.wrapping_sub(1),
                    disabled: false,
                    gone_reported: false,
                });
                0
            }
            (libc::EPOLL_CTL_MOD, Some(i), Some((events, data))) => {
                if set.items[i].events & EPOLLEXCLUSIVE != 0 || events & EPOLLEXCLUSIVE != 0 {
                    return e(libc::EINVAL);
                }
                set.items[i] = Item {
                    fd,
                    events,
                    data,
                    last_seq: seq.wrapping_sub(1),
                    disabled: false,
                    gone_reported: false,
                };
                0
            }
            (libc::EPOLL_CTL_DEL, Some(i), _) => {
                set.items.remove(i);
                0
            }
            (libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL, None, _) => e(libc::ENOENT),
            _ => e(libc::EINVAL),
        }
    }))
}

/// Collects ready remote items of `epfd` into `out` (at most `max`).
/// False when the set holds no remote item (the call is the kernel's). Under the caller's
/// signal block.
fn epoll_scan(
    block: &SigBlock,
    epfd: i64,
    live: Option<&Live>,
    out: &mut Vec<(u32, u64)>,
    max: usize,
) -> bool {
    with_eps_blocked(block, |eps| {
        let Some(set) = eps
            .iter_mut()
            .find(|s| s.epfd == epfd && !s.items.is_empty())
        else {
            return false;
        };
        for it in set.items.iter_mut() {
            if out.len() >= max {
                break;
            }
            if it.disabled {
                continue;
            }
            let Some(r) = fdtable::get_net(it.fd) else {
                continue;
            };
            let (mask, seq) = remote_state(live, r);
            let m = report(mask, it.events);
            if m == 0 {
                continue;
            }
            if gone(live, r) {
                // A socket of a dead session stays in error forever: report that once, also
                // to level-triggered items, or a program that keeps the fd registered (nginx
                // and its listening socket: accept fails, it waits again) would spin on it.
                if it.gone_reported {
                    continue;
                }
                it.gone_reported = true;
            } else if it.events & EPOLLET != 0 {
                if seq == it.last_seq {
                    continue;
                }
                it.last_seq = seq;
            }
            if it.events & EPOLLONESHOT != 0 {
                it.disabled = true;
            }
            out.push((m, it.data));
        }
        true
    })
}

/// epoll_wait(2), epoll_pwait(2), epoll_pwait2(2) on an epoll fd with remote items.
pub fn epoll_wait(nr: i64, a: [u64; 6]) -> Option<i64> {
    if REMOTE_ITEMS.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let epfd = a[0] as i32 as i64;
    let (evp, max) = (a[1], a[2] as i32);
    let _pin = Pin::new(&NET);
    let ev_size = std::mem::size_of::<libc::epoll_event>() as u64;
    let mut found: Vec<(u32, u64)> = Vec::with_capacity((max.max(1) as usize).min(1024));
    // One signal block for the whole call (two mask changes, however often it scans): the
    // registry lock is taken under it, and a wait that sleeps needs it anyway (see
    // [`SigBlock`]). The first scan also says whether the set has remote items at all; the
    // readiness epoch is read before each scan, so a change after it wakes the sleep below.
    let block = SigBlock::new();
    let mut live = NET.session(None);
    let mut epoch = live.map_or(0, |l| l.s.event_epoch());
    if !epoll_scan(&block, epfd, live, &mut found, max.max(0) as usize) {
        return None;
    }
    if max <= 0 {
        return Some(e(libc::EINVAL));
    }
    let max = max as usize;
    let deadline = match nr {
        libc::SYS_epoll_pwait2 => deadline_ts(a[3]),
        _ => crate::net::deadline_ms(a[3] as i32 as i64),
    };
    let sigmask = match nr {
        libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 if a[4] != 0 => Some((a[4], a[5])),
        _ => None,
    };
    let mask = block.sleep_mask(sigmask);
    let sigmask = Some((&mask as *const u64 as u64, 8));
    let mut local = vec![libc::pollfd {
        fd: epfd as i32,
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        for (i, (m, data)) in found.iter().enumerate() {
            put(
                evp + i as u64 * ev_size,
                libc::epoll_event {
                    events: *m,
                    u64: *data,
                },
            );
        }
        let mut n = found.len();
        if n < max {
            let r = sys::sys(
                libc::SYS_epoll_wait,
                &[epfd as u64, evp + n as u64 * ev_size, (max - n) as u64, 0],
            );
            if r < 0 && n == 0 {
                return Some(r);
            }
            n += r.max(0) as usize;
        }
        if n > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(n as i64);
        }
        if let Err(err) = sleep(live, epoch, &mut local, deadline, sigmask) {
            return Some(err);
        }
        live = NET.session(None);
        epoch = live.map_or(0, |l| l.s.event_epoch());
        found.clear();
        epoll_scan(&block, epfd, live, &mut found, max);
    }
}

/// A remote socket's placeholder `fd` was closed: drop it from every epoll set.
pub fn forget_fd(fd: i64) {
    if REMOTE_ITEMS.load(Ordering::Relaxed) == 0 {
        return;
    }
    with_eps(|eps| {
        for s in eps.iter_mut() {
            s.items.retain(|i| i.fd != fd);
        }
    });
}

/// A local fd was closed: if it was an epoll fd, its remote items go with it.
pub fn closed_local(fd: i64) {
    if REMOTE_ITEMS.load(Ordering::Relaxed) == 0 {
        return;
    }
    with_eps(|eps| eps.retain(|s| s.epfd != fd));
}

/// In a fork child: nothing to reset (the fork handlers took and released the registry
/// lock around the fork).
pub fn after_fork_child() {}
