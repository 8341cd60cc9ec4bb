//! The sessions with the service domains (storage and network) and the calls made over them.
//!
//! Each domain is a [`Domain`] with its own lazily connected session, generation of handles
//! and reconnection state; [`STORAGE`] and [`NET`] are the two. The free functions
//! ([`call`], [`call_aux`], [`call_raw`], ...) are the storage domain's.
//!
//! **Reconnection.** A storage domain that died leaves this process's session dead: calls on
//! it fail with EIO. Once the domain is back (a supervisor restarts it), the next call that
//! needs the session connects a new one, at most one attempt per [`RETRY_INTERVAL`] while the
//! domain is down. Each new session after a dead one starts a new *generation*
//! ([`fdtable::new_generation`]): its handle numbers start afresh, so files opened in an older
//! generation are gone. A call naming such a handle fails with EIO here and never reaches the
//! new session, where the same number may name another file. Path-based calls and new opens
//! work again at once; the routed cwd is a path and stays.
//!
//! A fork child's new session that adopts its parent's files continues the parent's
//! generation; when the adoption fails, the inherited entries become stale.
//!
//! Old sessions stay mapped while a call may still use them: calls pin themselves in
//! `INFLIGHT`, and a replaced session is freed once no call is in flight (or kept, a few at
//! most, until then).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use abi::{Opcode, Request};
use xen_transport::layout::header;
use xen_transport::{ClientConfig, ServerState, Session};

use crate::storage_call::call_on;
use crate::{config, fdtable};

/// A published session and the generation its handles belong to.
pub struct Live {
    /// The session.
    pub s: Session,
    generation: AtomicU32,
}

impl Live {
    /// True when the session cannot serve calls any more: its server died or is closing.
    fn unusable(&self) -> bool {
        self.s.is_dead()
            || self
                .s
                .region()
                .u32_at(header::SERVER_STATE)
                .load(Ordering::Acquire)
                != ServerState::Running as u32
    }

    /// The generation of this session's handles.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }
}

/// One service domain as this process sees it.
pub struct Domain {
    /// The network domain (else storage).
    pub net: bool,
    live: AtomicPtr<Live>,
    /// Calls sent to the domain by this process (telemetry).
    pub routed: AtomicU64,
    /// Sessions connected by this process image (telemetry; the first one counts).
    pub connects: AtomicU64,
    /// Calls in flight (pinned): a replaced session is freed only when this is zero.
    inflight: AtomicU32,
    /// Replaced sessions waiting until no call can still use them.
    retired: [AtomicPtr<Live>; 4],
    any_retired: AtomicBool,
    /// Monotonic time (ns) of the last connection attempt; 0: none yet.
    last_try: AtomicU64,
    /// Whether the "unavailable" warning was printed for the current outage.
    warned: AtomicBool,
    /// Set in a fork child: its next session may continue the parent's generation by adopting.
    adopting: AtomicBool,
    connecting: AtomicBool,
    /// Set when a dead session was retired; cleared (with a message) by the next connection.
    outage: AtomicBool,
    /// A session a child sharing the owner's memory connected for itself (the owner had
    /// none), and that child's pid; never published in `live`, dropped before its exec.
    child: AtomicPtr<Live>,
    child_pid: std::sync::atomic::AtomicI64,
}

impl Domain {
    const fn new(net: bool) -> Domain {
        Domain {
            net,
            live: AtomicPtr::new(std::ptr::null_mut()),
            routed: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            retired: [const { AtomicPtr::new(std::ptr::null_mut()) }; 4],
            any_retired: AtomicBool::new(false),
            last_try: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            adopting: AtomicBool::new(false),
            connecting: AtomicBool::new(false),
            outage: AtomicBool::new(false),
            child: AtomicPtr::new(std::ptr::null_mut()),
            child_pid: std::sync::atomic::AtomicI64::new(0),
        }
    }

    fn name(&self) -> &'static str {
        if self.net {
            "network"
        } else {
            "storage"
        }
    }

    fn sock(&self) -> Option<&'static std::path::Path> {
        use std::os::unix::ffi::OsStrExt;
        let c = config::get();
        let p = if self.net {
            c.net_sock.as_ref()
        } else {
            c.storage_sock.as_ref()
        }?;
        Some(std::path::Path::new(std::ffi::OsStr::from_bytes(
            p.as_bytes(),
        )))
    }

    /// Whether this domain is configured for the process.
    pub fn configured(&self) -> bool {
        self.sock().is_some()
    }
}

/// Descriptors (O_PATH, at reserved numbers) of the directories holding the storage and the
/// network domain's sockets, opened by the constructor: a process that `chroot`s away from
/// the socket (sshd's privilege-separated child, before it drops its uid) still reaches it.
static SOCK_DIRS: [std::sync::atomic::AtomicI32; 2] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; 2];

/// Opens the socket directories (see [`SOCK_DIRS`]); called once by the constructor.
pub fn open_socket_dirs() {
    use std::os::unix::ffi::OsStrExt;
    for d in [&STORAGE, &NET] {
        let Some(dir) = d.sock().and_then(|s| s.parent()) else {
            continue;
        };
        let mut p = dir.as_os_str().as_bytes().to_vec();
        p.push(0);
        let fd = crate::sys::sys(
            libc::SYS_openat,
            &[
                libc::AT_FDCWD as u64,
                p.as_ptr() as u64,
                (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
            ],
        );
        if fd >= 0 {
            let fd = crate::reserve::place_raw(fd as i32, true);
            SOCK_DIRS[usize::from(d.net)].store(fd, Ordering::Relaxed);
        }
    }
}

/// Connects a session to `sock`. When the path does not resolve from here (the process has
/// `chroot`ed since it started), through the socket's directory: the connect resolves the
/// socket's name against that directory as the working directory for an instant (signals
/// blocked; another thread's relative path call in that instant would resolve there too).
fn connect_session(
    net: bool,
    sock: &std::path::Path,
    cfg: &ClientConfig,
) -> Result<Session, xen_transport::control::ConnectError> {
    use std::os::unix::ffi::OsStrExt;
    let with_streams;
    let cfg = if net && config::get().streams {
        with_streams = ClientConfig {
            capabilities: cfg.capabilities | abi::control::CAP_STREAMS,
            ..*cfg
        };
        &with_streams
    } else {
        cfg
    };
    let first = xen_transport::control::connect_session(sock, cfg);
    let dir = SOCK_DIRS[usize::from(net)].load(Ordering::Relaxed);
    let Err(e) = first else { return first };
    let mut p = sock.as_os_str().as_bytes().to_vec();
    p.push(0);
    let reachable = crate::sys::sys(
        libc::SYS_faccessat,
        &[libc::AT_FDCWD as u64, p.as_ptr() as u64, libc::F_OK as u64],
    ) == 0;
    let Some(name) = sock.file_name() else {
        return Err(e);
    };
    if reachable || dir < 0 {
        return Err(e);
    }
    let _masked = crate::lock::Masked::new();
    let here = crate::sys::sys(
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as u64,
            c".".as_ptr() as u64,
            (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        ],
    );
    if here < 0 || crate::sys::sys(libc::SYS_fchdir, &[dir as u64]) < 0 {
        if here >= 0 {
            crate::sys::sys(libc::SYS_close, &[here as u64]);
        }
        return Err(e);
    }
    let r = xen_transport::control::connect_session(std::path::Path::new(name), cfg);
    crate::sys::sys(libc::SYS_fchdir, &[here as u64]);
    crate::sys::sys(libc::SYS_close, &[here as u64]);
    r
}

/// The storage domain.
pub static STORAGE: Domain = Domain::new(false);
/// The network domain.
pub static NET: Domain = Domain::new(true);

/// Calls sent to the storage domain by this process (telemetry).
pub fn routed() -> u64 {
    STORAGE.routed.load(Ordering::Relaxed) + NET.routed.load(Ordering::Relaxed)
}

const EIO: i64 = -(libc::EIO as i64);

/// While the domain is down, at most one connection attempt per this interval.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Keeps a call's session mapped while the call runs.
pub struct Pin(&'static Domain);

thread_local! {
    /// The pins this thread holds on each domain (storage, network), so that pins a call
    /// left behind when a handler `longjmp`ed out of it can be given back
    /// ([`recover_abandoned`]). (`Cell`s without a destructor: no lazy registration.)
    static MY_PINS: [std::cell::Cell<u32>; 2] =
        const { [std::cell::Cell::new(0), std::cell::Cell::new(0)] };
}

impl Pin {
    /// Pins `d`'s sessions.
    pub fn new(d: &'static Domain) -> Pin {
        d.inflight.fetch_add(1, Ordering::SeqCst);
        MY_PINS.with(|p| {
            let c = &p[usize::from(d.net)];
            c.set(c.get() + 1);
        });
        Pin(d)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        MY_PINS.with(|p| {
            let c = &p[usize::from(self.0.net)];
            c.set(c.get().saturating_sub(1));
        });
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Gives back what this thread's calls left behind when a signal handler `longjmp`ed out of
/// them (their drops never ran): their pins, and the channel leases of each domain's
/// current session ([`xen_transport::Session::recover_abandoned`]). Only for a thread that
/// is in none of the shim's calls (see `dispatch`).
pub fn recover_abandoned() {
    for d in [&STORAGE, &NET] {
        let mine = MY_PINS.with(|p| p[usize::from(d.net)].replace(0));
        if mine > 0 {
            d.inflight.fetch_sub(mine, Ordering::SeqCst);
        }
        let _pin = Pin::new(d);
        let p = d.live.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: pinned: a published session stays allocated while pinned.
            unsafe { &*p }.s.recover_abandoned();
        }
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local (async-signal-safe).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Domain {
    /// Connects a new session of generation `generation` and publishes it; the session it
    /// replaces is retired. Callers hold `connecting`.
    fn connect_as(&self, sock: &std::path::Path, generation: u32) -> Result<(), String> {
        let cfg = ClientConfig {
            spin: config::get().spin,
            fd_hooks: Some(crate::reserve::HOOKS),
            ..ClientConfig::EMPTY
        };
        let s = connect_session(self.net, sock, &cfg).map_err(|e| e.to_string())?;
        let live = Box::new(Live {
            s,
            generation: AtomicU32::new(generation),
        });
        self.connects.fetch_add(1, Ordering::Relaxed);
        let old = self.live.swap(Box::into_raw(live), Ordering::SeqCst);
        if !old.is_null() {
            self.retire(old);
        }
        Ok(())
    }

    /// Connects the session now (without waiting for a first call). Returns the error when
    /// the domain cannot be reached.
    pub fn connect(&'static self) -> Result<(), String> {
        let _pin = Pin::new(self);
        match self.session(None) {
            Some(_) => Ok(()),
            None => Err(format!("{} domain unavailable", self.name())),
        }
    }

    /// Keeps `old` (unpublished) until no call can use it, then frees it.
    fn retire(&self, old: *mut Live) {
        for slot in self.retired.iter() {
            if slot
                .compare_exchange(
                    std::ptr::null_mut(),
                    old,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.any_retired.store(true, Ordering::SeqCst);
                return;
            }
        }
        // Every slot is taken (calls have been in flight across several restarts): leak it
        // rather than free memory a call may still read.
    }

    /// Frees retired sessions if the only call in flight is the caller's own. Callers hold
    /// `connecting` and are pinned.
    fn reclaim(&self) {
        // Any call that could still hold a retired session pinned itself before loading it,
        // and every session was unpublished before it was retired: with SeqCst throughout, a
        // count of one (this caller) means nobody else holds one.
        if self.inflight.load(Ordering::SeqCst) != 1 {
            return;
        }
        let mut left = false;
        for slot in self.retired.iter() {
            let p = slot.swap(std::ptr::null_mut(), Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: `p` came from Box::into_raw in `connect_as`, was unpublished before
                // it was retired, and no other call is in flight that could have loaded it.
                drop(unsafe { Box::from_raw(p) });
            }
            left |= !slot.load(Ordering::SeqCst).is_null();
        }
        self.any_retired.store(left, Ordering::SeqCst);
    }

    /// Drops the session inherited from the parent (in a fork child), without touching the
    /// parent's rings again. The child's next session continues the parent's generation if
    /// it adopts the parent's handles ([`Opcode::Adopt`]); otherwise the inherited entries
    /// are stale.
    pub fn abandon(&self) {
        let old = self.live.swap(std::ptr::null_mut(), Ordering::SeqCst);
        let mut all = vec![old];
        all.extend(
            self.retired
                .iter()
                .map(|s| s.swap(std::ptr::null_mut(), Ordering::SeqCst)),
        );
        for p in all.into_iter().filter(|p| !p.is_null()) {
            // SAFETY: from Box::into_raw in `connect_as`; the child is single-threaded here
            // and no call of its own is in flight, so nothing else refers to it.
            drop(unsafe { Box::from_raw(p) });
        }
        self.any_retired.store(false, Ordering::SeqCst);
        self.inflight.store(0, Ordering::SeqCst);
        self.connecting.store(false, Ordering::SeqCst);
        self.last_try.store(0, Ordering::Relaxed);
        self.warned.store(false, Ordering::Relaxed);
        self.adopting
            .store(fdtable::any_of(self.net), Ordering::Relaxed);
    }

    /// Connects, or reconnects after the domain died, rate-limited; `op` is the call that
    /// needs the session and `current` the session the caller found unusable (or null).
    /// Returns the published session after the attempt (null when there is none).
    fn connect_if_needed(&self, op: Option<Opcode>, current: *mut Live) -> *mut Live {
        let Some(sock) = self.sock() else {
            return current;
        };
        if crate::proc::shared_child() {
            // A vfork/posix_spawn child must not publish a session of its own into its
            // parent's memory: it uses the parent's, or one of its own on the side.
            if !current.is_null() {
                return current;
            }
            return self.child_session(sock);
        }
        if self
            .connecting
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Another thread is connecting: wait for its outcome (a connect is quick: it
            // either reaches a listening domain or fails at once).
            while self.connecting.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            return self.live.load(Ordering::SeqCst);
        }
        // No signal handler may run on this thread while it holds `connecting`: one that
        // needed the domain would wait for this very thread.
        let _masked = crate::lock::Masked::new();
        // The transport's libc calls while connecting (statx of the region, recvmsg...) go
        // straight to the kernel: a stale table entry must never route them back here.
        let _internal = crate::proc::Internal::enter();
        let mut p = self.live.load(Ordering::SeqCst);
        // SAFETY: the caller is pinned; a published or retired session stays allocated while
        // any call pinned before its retirement is in flight.
        if !p.is_null() && unsafe { &*p }.unusable() {
            // The domain died (or is closing): every handle of this session is gone with it.
            // Unpublish it first, then make the table's entries stale.
            if self
                .live
                .compare_exchange(p, std::ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.retire(p);
                fdtable::new_generation(self.net);
                self.outage.store(true, Ordering::Relaxed);
            }
            p = self.live.load(Ordering::SeqCst);
        }
        if p.is_null() {
            let now = now_ns();
            let last = self.last_try.load(Ordering::Relaxed);
            if last == 0 || now.saturating_sub(last) >= RETRY_INTERVAL.as_nanos() as u64 {
                self.last_try.store(now.max(1), Ordering::Relaxed);
                let adopting = self.adopting.swap(false, Ordering::Relaxed);
                if adopting && op != Some(Opcode::Adopt) {
                    // A fork child that does not adopt its parent's handles: the inherited
                    // entries name handles of the parent's session, not of the child's.
                    fdtable::new_generation(self.net);
                }
                match self.connect_as(sock, fdtable::generation(self.net)) {
                    Ok(()) => {
                        self.warned.store(false, Ordering::Relaxed);
                        if self.outage.swap(false, Ordering::Relaxed) {
                            crate::diag!(
                                "virtuos: pid {}: reconnected to the {} domain; files and connections opened before it restarted fail with EIO",
                                crate::diag::pid(),
                                self.name()
                            );
                        }
                        if self.net && fdtable::any_of(true) && op != Some(Opcode::Adopt) {
                            // Listeners of a session that died (this process's, or inherited
                            // by a fork child from a parent that never noticed) come back.
                            let p = self.live.load(Ordering::SeqCst);
                            if !p.is_null() {
                                // SAFETY: just published by `connect_as`; the caller is
                                // pinned, so it stays allocated.
                                crate::net::reclaim_kept(unsafe { &*p });
                            }
                        }
                    }
                    Err(e) => {
                        if adopting {
                            fdtable::new_generation(self.net);
                        }
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            crate::diag!(
                                "virtuos: {} domain unavailable ({e}); calls routed to it fail with EIO until it is back",
                                self.name()
                            );
                        }
                    }
                }
            }
        }
        if self.any_retired.load(Ordering::SeqCst) {
            self.reclaim();
        }
        self.connecting.store(false, Ordering::Release);
        self.live.load(Ordering::SeqCst)
    }

    /// The usable session, connecting lazily. The caller must hold a [`Pin`] for as long as
    /// it uses the result.
    pub fn session(&self, op: Option<Opcode>) -> Option<&'static Live> {
        let mut p = self.live.load(Ordering::SeqCst);
        // SAFETY: the caller is pinned: a session loaded while pinned is freed only after
        // every call pinned at that time has ended (see `reclaim`), or by `abandon` in a
        // single-threaded fork child.
        let usable = !p.is_null() && !unsafe { &*p }.unusable();
        if !usable {
            p = self.connect_if_needed(op, p);
        }
        // SAFETY: as above.
        let live = (!p.is_null()).then(|| unsafe { &*p })?;
        (!live.unusable()).then_some(live)
    }

    /// Translates the tagged handle in `args[0]` (if `op` names one) into the server's
    /// number for `live`'s session: EIO when it belongs to another generation (it was opened
    /// in a session that died), so it never reaches a handle of this session.
    pub fn check_handle(&self, live: &Live, op: Opcode, args: &mut [u64; 5]) -> Result<(), i64> {
        if !names_handle(op, args) {
            return Ok(());
        }
        if op == Opcode::CopyRange {
            // The second file, in args[2].
            let h = u32::try_from(args[2]).map_err(|_| -(libc::EBADF as i64))?;
            args[2] = u64::from(fdtable::handle_in(h, live.generation()).ok_or(EIO)?);
        }
        let Ok(h) = u32::try_from(args[0]) else {
            return Ok(()); // not a handle the shim made: the server answers EBADF
        };
        match fdtable::handle_in(h, live.generation()) {
            Some(raw) => {
                args[0] = u64::from(raw);
                Ok(())
            }
            None => Err(EIO),
        }
    }

    /// Tags the result of a call that returns a new handle with the session's generation.
    pub fn tag_result(&self, live: &Live, op: Opcode, r: i64) -> i64 {
        if !matches!(op, Opcode::OpenAt | Opcode::Socket | Opcode::Accept) || r < 0 {
            return r;
        }
        if r >= 1 << fdtable::HANDLE_BITS {
            // Cannot be tagged (a server configured for more handles than the shim can name).
            let mut lease = live.s.lease();
            let _ = lease.call(Request {
                opcode: Opcode::Close as u16,
                args: [r as u64, 0, 0, 0, 0],
                ..Request::default()
            });
            return -(libc::EMFILE as i64);
        }
        i64::from(fdtable::tag(r as u32, live.generation()))
    }

    /// After an adoption failed, the entries inherited from the parent are stale.
    fn adopt_result(&self, live: &Live, op: Opcode, r: i64) {
        if op == Opcode::Adopt && r < 0 {
            live.generation
                .store(fdtable::new_generation(self.net), Ordering::Release);
        }
    }

    /// As [`call_aux`], on this domain.
    pub fn call_aux(
        &'static self,
        op: Opcode,
        args: &mut [u64; 5],
        inputs: &[&[u8]],
        out: Option<&mut [u8]>,
    ) -> (i64, u64) {
        let _pin = Pin::new(self);
        let Some(live) = self.session(Some(op)) else {
            return (EIO, 0);
        };
        if let Err(e) = self.check_handle(live, op, args) {
            return (e, 0);
        }
        self.routed.fetch_add(1, Ordering::Relaxed);
        if !self.net {
            may_lock(op, args);
        }
        if !self.net && !matches!(op, Opcode::FStat | Opcode::OpenAt) {
            // Anything else may change a file this thread opened: its stat is re-asked.
            open_stat::clear();
        }
        let (r, aux) = if !self.net && waits(op, args) {
            crate::storage_call::call_on_interruptible(
                &live.s,
                op,
                args,
                inputs,
                out,
                Some(&mut crate::signals::should_interrupt),
            )
        } else {
            call_on(&live.s, op, args, inputs, out)
        };
        self.died_under(live, r);
        self.adopt_result(live, op, r);
        (self.tag_result(live, op, r), aux)
    }

    /// Sends a call that needs no answer (nothing in the window) without waiting for it
    /// ([`Lease::post`]): its answer is skipped by the channel's next call. A session that
    /// died took the handle with it (EIO).
    pub fn post(&'static self, op: Opcode, mut args: [u64; 5]) -> i64 {
        let _pin = Pin::new(self);
        let Some(live) = self.session(Some(op)) else {
            return EIO;
        };
        if let Err(e) = self.check_handle(live, op, &mut args) {
            return e;
        }
        self.routed.fetch_add(1, Ordering::Relaxed);
        let mut lease = live.s.lease();
        let r = lease
            .post(Request {
                opcode: op as u16,
                args,
                ..Request::default()
            })
            .map_or_else(|err| -i64::from(err.errno().get()), |()| 0);
        self.died_under(live, r);
        r
    }

    /// A call that failed because its session died under it: the next connection attempt
    /// waits a retry interval from now. A program that retries at once with another call
    /// (sqlite falls back to a read-only open when a read-write one fails, then cannot roll
    /// back its hot journal and reads a half-written database as "malformed") fails the same
    /// way, instead of finding a domain that restarted meanwhile.
    fn died_under(&self, live: &Live, r: i64) {
        if r < 0 && live.unusable() {
            self.last_try.store(now_ns().max(1), Ordering::Relaxed);
        }
    }
}

impl Domain {
    /// The session of the current shared child (connecting it if needed), or null.
    fn child_session(&self, sock: &std::path::Path) -> *mut Live {
        let me = crate::diag::pid();
        let p = self.child.load(Ordering::SeqCst);
        if !p.is_null() {
            let owner = self.child_pid.load(Ordering::SeqCst);
            if owner == me {
                return p;
            }
            // Another child's (still in use, or not swept yet): this child goes without.
            let _ = owner;
            return std::ptr::null_mut();
        }
        let cfg = ClientConfig {
            spin: config::get().spin,
            fd_hooks: Some(crate::reserve::HOOKS),
            ..ClientConfig::EMPTY
        };
        let connected = {
            let _internal = crate::proc::Internal::enter();
            connect_session(self.net, sock, &cfg)
        };
        let Ok(s) = connected else {
            return std::ptr::null_mut();
        };
        // A generation of its own: the owner's entries (if any) never reach this session.
        let live = Box::into_raw(Box::new(Live {
            s,
            generation: AtomicU32::new(fdtable::next_generation(fdtable::generation(self.net))),
        }));
        self.child_pid.store(me, Ordering::SeqCst);
        self.child.store(live, Ordering::SeqCst);
        crate::proc::CHILD_STATE.fetch_add(1, Ordering::AcqRel);
        live
    }

    /// In the owner: drops a session a shared child connected for itself, once that child
    /// no longer shares this memory (it exec'd, with what it carries in its exec token, or
    /// ended).
    fn sweep_child_session(&self) {
        let p = self.child.load(Ordering::SeqCst);
        if p.is_null() || crate::proc::shares_memory_with(self.child_pid.load(Ordering::SeqCst)) {
            return;
        }
        if self
            .child
            .compare_exchange(p, std::ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            crate::proc::CHILD_STATE.fetch_sub(1, Ordering::AcqRel);
            // Its descriptors live in the child's fd table only (gone with it): unregister
            // them without closing numbers that are the owner's.
            // SAFETY: from Box::into_raw in `child_session`; its child can no longer reach it
            // and no other thread of the owner looks at `child`.
            let live = unsafe { Box::from_raw(p) };
            let mut fds = [0i32; 16];
            let mut n = 0;
            live.s.kept_fds(&mut |fd| {
                if n < fds.len() {
                    fds[n] = fd;
                    n += 1;
                }
            });
            for &fd in &fds[..n] {
                crate::reserve::forget(fd);
                live.s.renumber_fd(fd, -1);
            }
            // Unmaps the region (the owner's memory); closes nothing.
            drop(live);
        }
    }

    /// Tells the sessions (current and retired) holding the descriptor `old` that it is now
    /// `new`; false when none holds it.
    fn renumber_fd(&'static self, old: i32, new: i32) -> bool {
        let _pin = Pin::new(self);
        let mut all = [std::ptr::null_mut(); 5];
        all[0] = self.live.load(Ordering::SeqCst);
        for (i, r) in self.retired.iter().enumerate() {
            all[i + 1] = r.load(Ordering::SeqCst);
        }
        all.iter().filter(|p| !p.is_null()).any(|&p| {
            // SAFETY: pinned: a published or retired session stays allocated meanwhile.
            unsafe { &*p }.s.renumber_fd(old, new)
        })
    }
}

impl Domain {
    /// Replaces the session by one connected now, with the process's current credentials,
    /// holding the same handles (an exec-kind snapshot adopted under the same numbers, so the
    /// fd table stays valid). When that fails the old session is retired: its calls would act
    /// with the credentials the process gave up, so they fail with EIO instead.
    fn refresh_credentials(&'static self) {
        let Some(sock) = self.sock() else { return };
        if self.live.load(Ordering::SeqCst).is_null() || crate::proc::shared_child() {
            return;
        }
        while self
            .connecting
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let _masked = crate::lock::Masked::new();
        let _pin = Pin::new(self);
        let old = self.live.load(Ordering::SeqCst);
        if !old.is_null() {
            // SAFETY: pinned; a published session stays allocated while pinned.
            let live = unsafe { &*old };
            let mut args = [1, 0, 0, 0, 0];
            let (r, token) = call_on(&live.s, Opcode::PrepareClone, &mut args, &[], None);
            let fresh = (r >= 0)
                .then(|| {
                    let _internal = crate::proc::Internal::enter();
                    let cfg = ClientConfig {
                        spin: config::get().spin,
                        fd_hooks: Some(crate::reserve::HOOKS),
                        ..ClientConfig::EMPTY
                    };
                    connect_session(self.net, sock, &cfg).ok()
                })
                .flatten()
                .and_then(|s| {
                    let mut a = [token, 0, 0, 0, 0];
                    (call_on(&s, Opcode::Adopt, &mut a, &[], None).0 >= 0).then_some(s)
                });
            match fresh {
                Some(s) => {
                    let new = Box::into_raw(Box::new(Live {
                        s,
                        generation: AtomicU32::new(live.generation()),
                    }));
                    self.connects.fetch_add(1, Ordering::Relaxed);
                    if self
                        .live
                        .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        self.retire(old);
                    } else {
                        // SAFETY: never published.
                        drop(unsafe { Box::from_raw(new) });
                    }
                }
                None => {
                    crate::diag!(
                        "virtuos: pid {}: cannot carry the {} domain's files over to the new credentials; they fail with EIO",
                        crate::diag::pid(),
                        self.name()
                    );
                    if self
                        .live
                        .compare_exchange(
                            old,
                            std::ptr::null_mut(),
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok()
                    {
                        self.retire(old);
                        fdtable::new_generation(self.net);
                    }
                }
            }
        }
        self.connecting.store(false, Ordering::Release);
    }
}

/// After the process changed its credentials: every domain's session is replaced by one
/// with the new credentials, holding the same handles, before the call returns.
pub fn refresh_credentials() {
    STORAGE.refresh_credentials();
    NET.refresh_credentials();
}

/// In the owner: drops sessions of shared children that are gone (see [`crate::proc::sweep`]).
pub fn sweep_child_sessions() {
    STORAGE.sweep_child_session();
    NET.sweep_child_session();
}

/// Tells whichever session holds the descriptor `old` that it is now `new` (see
/// [`crate::reserve`]); false when none holds it.
pub fn renumber_fd(old: i32, new: i32) -> bool {
    STORAGE.renumber_fd(old, new) || NET.renumber_fd(old, new)
}

/// Storage handles whose close may be posted without waiting (by raw handle): opened
/// read-only by this process and never locked (`flock`, record locks, leases: a close
/// releases them, and another process must find them released once `close` returned). A
/// read-only file's close reports no write-back error, so nothing a program could act on is
/// lost. Unset (the safe answer) for handles this image did not open itself.
static CLOSE_POSTED: [AtomicBool; fdtable::MAX_HANDLES] =
    [const { AtomicBool::new(false) }; fdtable::MAX_HANDLES];

/// Records whether the storage handle `tagged`, just opened with `flags`, may be closed by a
/// post ([`CLOSE_POSTED`]).
pub fn opened(tagged: u32, flags: u64, st_mode: u64) {
    if let Some(x) = CLOSE_POSTED.get(fdtable::raw(tagged) as usize) {
        x.store(
            flags & libc::O_ACCMODE as u64 == libc::O_RDONLY as u64,
            Ordering::Relaxed,
        );
    }
    if let Some(x) = MAY_BLOCK.get(fdtable::raw(tagged) as usize) {
        let kind = st_mode as u32 & libc::S_IFMT;
        x.store(
            kind == libc::S_IFIFO || kind == libc::S_IFCHR,
            Ordering::Relaxed,
        );
    }
}

/// Storage handles whose reads and writes may wait for another process (a FIFO, a character
/// device) for as long as it likes: a signal handler that runs meanwhile interrupts them as
/// Linux's (EINTR without `SA_RESTART`). By raw handle; set at this image's own open and
/// for those an exec handed over as such, cleared at close (unset, the safe answer, for a
/// file received over a socket).
static MAY_BLOCK: [AtomicBool; fdtable::MAX_HANDLES] =
    [const { AtomicBool::new(false) }; fdtable::MAX_HANDLES];

/// Whether the storage handle `tagged` is a FIFO or character device this image opened or
/// inherited as one ([`MAY_BLOCK`]).
pub fn may_block(tagged: u32) -> bool {
    MAY_BLOCK
        .get(fdtable::raw(tagged) as usize)
        .is_some_and(|x| x.load(Ordering::Relaxed))
}

/// Marks an inherited storage handle as a FIFO or character device (the exec hand-over says
/// so).
pub fn mark_may_block(tagged: u32) {
    if let Some(x) = MAY_BLOCK.get(fdtable::raw(tagged) as usize) {
        x.store(true, Ordering::Relaxed);
    }
}

/// Whether storage call `op` may wait indefinitely: a lock wait
/// ([`crate::storage_call::waits`]), or a read or write of a FIFO or character device this
/// image opened or inherited ([`MAY_BLOCK`]).
/// Such a read or write also tells the server so ([`abi::RW_MAY_BLOCK`]), which then honours
/// the file's `O_NONBLOCK`.
fn waits(op: Opcode, args: &mut [u64; 5]) -> bool {
    if crate::storage_call::waits(op, args) {
        return true;
    }
    let fifo =
        matches!(op, Opcode::Read | Opcode::Write) && u32::try_from(args[0]).is_ok_and(may_block);
    if fifo {
        args[2] |= abi::RW_MAY_BLOCK;
    }
    fifo
}

/// A storage call that may leave something a close releases (a lock, a lease): the handle's
/// close waits for its answer again.
fn may_lock(op: Opcode, args: &[u64; 5]) {
    let locks = match op {
        Opcode::Flock => true,
        Opcode::Fcntl => !matches!(args[1] as i32, libc::F_GETFL | libc::F_SETFL),
        _ => false,
    };
    if locks {
        if let Some(x) = u32::try_from(args[0])
            .ok()
            .and_then(|h| CLOSE_POSTED.get(fdtable::raw(h) as usize))
        {
            x.store(false, Ordering::Relaxed);
        }
    }
}

/// Closes the remote handle of `r` in its domain (its last placeholder went away).
pub fn close_handle(r: fdtable::Remote) -> i64 {
    if r.net {
        return crate::net::close_handle(r);
    }
    if let Some(x) = MAY_BLOCK.get(fdtable::raw(r.handle) as usize) {
        x.store(false, Ordering::Relaxed);
    }
    let posted = CLOSE_POSTED
        .get(fdtable::raw(r.handle) as usize)
        .is_some_and(|x| x.swap(false, Ordering::Relaxed));
    if posted {
        return match STORAGE.post(Opcode::Close, [u64::from(r.handle), 0, 0, 0, 0]) {
            EIO => 0,
            rc => rc,
        };
    }
    STORAGE
        .call_aux(
            Opcode::Close,
            &mut [u64::from(r.handle), 0, 0, 0, 0],
            &[],
            None,
        )
        .0
}

/// Connects the storage session now (without waiting for a first call).
pub fn connect() -> Result<(), String> {
    STORAGE.connect()
}

/// Drops the sessions inherited from the parent (in a fork child).
pub fn abandon() {
    STORAGE.abandon();
    NET.abandon();
}

/// Window size of the storage session (0 without a session).
pub fn window() -> usize {
    let _pin = Pin::new(&STORAGE);
    STORAGE
        .session(None)
        .map(|l| l.s.layout().window as usize)
        .unwrap_or(0)
}

/// True for the opcodes whose `args[0]` is a handle.
fn names_handle(op: Opcode, args: &[u64; 5]) -> bool {
    use Opcode::*;
    match op {
        Close | Read | Write | PRead | PWrite | LSeek | FStat | GetDents64 | FSync | FTruncate
        | FChmod | FChown | Fallocate | FStatFs | Fcntl | CopyRange | Advise | Flock => true,
        Xattr => args[0] != u64::MAX,
        Bind | Listen | Accept | Connect | Send | Recv | Shutdown | GetSockOpt | SetSockOpt
        | GetSockName | GetPeerName | Ioctl | StoreKey | Refill | Flush => true,
        UtimensAt => args[0] != u64::MAX,
        _ => false,
    }
}

/// One storage call: `inputs` are written back to back at the start of the window (their
/// lengths go in `args[4]` and `args[3]`), `out` receives up to `out.len()` bytes from the
/// window start. Returns the raw result (`-errno` on failure; EIO when the domain is missing
/// or dead).
pub fn call(op: Opcode, mut args: [u64; 5], inputs: &[&[u8]], out: Option<&mut [u8]>) -> i64 {
    call_aux(op, &mut args, inputs, out).0
}

/// As [`call`], also returning the response's first aux word.
pub fn call_aux(
    op: Opcode,
    args: &mut [u64; 5],
    inputs: &[&[u8]],
    out: Option<&mut [u8]>,
) -> (i64, u64) {
    STORAGE.call_aux(op, args, inputs, out)
}
/// A storage call whose payload is written as is, with `args` untouched.
pub fn call_raw(op: Opcode, mut args: [u64; 5], payload: &[u8], out: Option<&mut [u8]>) -> i64 {
    let d = &STORAGE;
    let _pin = Pin::new(d);
    let Some(live) = d.session(Some(op)) else {
        return EIO;
    };
    if let Err(e) = d.check_handle(live, op, &mut args) {
        return e;
    }
    d.routed.fetch_add(1, Ordering::Relaxed);
    open_stat::clear();
    let r = call_raw_on(&live.s, op, args, payload, out);
    d.died_under(live, r);
    d.adopt_result(live, op, r);
    d.tag_result(live, op, r)
}

fn call_raw_on(
    s: &Session,
    op: Opcode,
    args: [u64; 5],
    payload: &[u8],
    out: Option<&mut [u8]>,
) -> i64 {
    let mut lease = s.lease();
    if lease.write(0, payload).is_err() {
        return -(libc::ENAMETOOLONG as i64);
    }
    let data_len = payload
        .len()
        .max(out.as_ref().map(|o| o.len()).unwrap_or(0));
    let req = Request {
        opcode: op as u16,
        data_len: data_len.min(lease.window() as usize) as u32,
        args,
        ..Request::default()
    };
    match lease.call(req) {
        Ok(r) => {
            if let Some(out) = out {
                let n = (r.result.max(0) as usize).min(out.len());
                if lease.read(0, &mut out[..n]).is_err() {
                    return EIO;
                }
            }
            r.result
        }
        Err(e) => -i64::from(e.errno().get()),
    }
}

/// The stat of the file this thread opened last, which the storage domain sends with the open
/// ([`Opcode::OpenAt`]): the `fstat` that usually follows (nginx's for every file it serves)
/// is answered from it, once, without a round trip. Any other storage call of the thread
/// drops it, so it never stands for a file this process changed since; another process's
/// change between the open and the fstat is seen as if the fstat had come first.
///
/// Per thread, and safe against a signal handler on the same thread: while the thread is
/// inside [`put`](open_stat::put) or [`take`](open_stat::take), a handler neither reads nor
/// writes it, and one that would have dropped it makes the interrupted update drop it.
pub mod open_stat {
    use std::cell::Cell;

    /// Bytes of a `struct statx`.
    pub const SIZE: usize = 256;

    struct Slot {
        handle: Cell<u32>,
        valid: Cell<bool>,
        busy: Cell<bool>,
        dirty: Cell<bool>,
        st: Cell<[u8; SIZE]>,
    }

    thread_local! {
        static SLOT: Slot = const {
            Slot {
                handle: Cell::new(0),
                valid: Cell::new(false),
                busy: Cell::new(false),
                dirty: Cell::new(false),
                st: Cell::new([0; SIZE]),
            }
        };
    }

    /// Remembers `st` as the stat of `handle`, just opened by this thread.
    pub fn put(handle: u32, st: &[u8; SIZE]) {
        SLOT.with(|s| {
            if s.busy.replace(true) {
                return;
            }
            s.dirty.set(false);
            s.handle.set(handle);
            s.st.set(*st);
            s.valid.set(!s.dirty.get());
            s.busy.set(false);
        });
    }

    /// The stat of `handle` if this thread just opened it (consumed).
    pub fn take(handle: u32) -> Option<[u8; SIZE]> {
        SLOT.with(|s| {
            if s.busy.replace(true) {
                return None;
            }
            let hit = s.valid.get() && !s.dirty.get() && s.handle.get() == handle;
            let st = hit.then(|| s.st.get());
            s.valid.set(false);
            s.busy.set(false);
            st
        })
    }

    /// Drops the remembered stat.
    pub fn clear() {
        SLOT.with(|s| {
            if s.busy.get() {
                s.dirty.set(true);
            } else {
                s.valid.set(false);
            }
        });
    }
}
