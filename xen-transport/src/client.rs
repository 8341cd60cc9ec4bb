//! The client side of a session: channel leases, calls, adaptive waiting.
//!
//! A call leases a free channel with one compare-and-swap (starting at the channel this thread
//! used last), writes its request, publishes it, rings the server only if the server said it
//! is asleep, then spins and finally sleeps on the channel's response word. Nothing on this
//! path allocates or takes a blocking lock, so it may run inside a signal handler: a handler
//! that interrupts a call simply leases another channel.
//!
//! Every synchronous call is timed from the publication of its request until its response is
//! seen, and counted in the region's log2 latency histogram
//! ([`crate::layout::header::LAT_HIST`]), which `virtuos-redirect top` reads from outside.
//! The clock reads are the ones the wait already makes for the adaptive spin (its start, just
//! after publishing, and its end); only a call that rings a sleeping server's doorbell reads
//! the clock once more, before the doorbell, so that the doorbell counts in its round trip.
//! What the fast path adds is one relaxed atomic add on a stripe of the histogram shared only
//! with channels `LAT_STRIPES` apart. Fire-and-forget posts are not timed.

use std::cell::Cell;
use std::os::fd::OwnedFd;

use crate::fdcell::{FdCell, FdHooks};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use abi::{decode_response, Errno, Request, Response, ResponseError};
use thiserror::Error;

use crate::backend::ClientBell;
use crate::layout::{header, ring, Layout};
use crate::mem::SharedMem;
use crate::ring::{FrontState, RingError, RingView};
use crate::wait::{spin_while_peer_runs, AdaptiveSpin, SpinPolicy, WaitSnapshot};
use crate::ServerState;

/// How long one sleep lasts before the client checks that the server still exists.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(50);

/// How long a call already in flight waits for its answer once the server announced shutdown.
pub const CLOSING_GRACE: Duration = Duration::from_secs(2);

/// What a client asks for when it connects.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// Channels wanted (0: the server's default). More channels, more concurrent calls.
    pub channels: u32,
    /// Data window per channel in bytes (0: the server's default).
    pub window: u32,
    /// Capabilities the client can use.
    pub capabilities: u64,
    /// Spin bounds of the adaptive wait.
    pub spin: SpinPolicy,
    /// Where the session's kept descriptors go (an application's shim keeps them at reserved
    /// numbers, out of the program's sight); None: where the kernel puts them.
    pub fd_hooks: Option<FdHooks>,
}

impl ClientConfig {
    /// The server's defaults, the client's default spin bounds, no hooks; unlike
    /// [`ClientConfig::default`] it reads nothing from the environment.
    pub const EMPTY: ClientConfig = ClientConfig {
        channels: 0,
        window: 0,
        capabilities: abi::control::CAPS_KNOWN,
        spin: SpinPolicy::CLIENT,
        fd_hooks: None,
    };
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            channels: 0,
            window: 0,
            capabilities: abi::control::CAPS_KNOWN,
            spin: SpinPolicy::CLIENT.from_env("CLIENT"),
            fd_hooks: None,
        }
    }
}

/// Why a call did not produce a response.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum CallError {
    /// The server is gone (its control socket closed): the domain died.
    #[error("service domain is gone")]
    ServerGone,
    /// The server announced shutdown.
    #[error("service domain is shutting down")]
    ServerClosing,
    /// The server broke the ring protocol; the session is unusable.
    #[error("service domain broke the ring protocol: {0}")]
    Ring(#[from] RingError),
    /// The server sent an invalid response; the session is unusable.
    #[error("service domain sent an invalid response: {0}")]
    Response(#[from] ResponseError),
    /// The payload does not fit the channel's data window.
    #[error("payload of {len} bytes at {off} does not fit the {window}-byte data window")]
    TooLarge {
        /// Offset asked for.
        off: usize,
        /// Length asked for.
        len: usize,
        /// Window size.
        window: u32,
    },
}

impl CallError {
    /// The errno an interposed system call reports for this failure: a dead or broken domain
    /// looks like a failed device (`EIO`), an oversized payload like a bad buffer (`EFAULT`).
    pub fn errno(&self) -> Errno {
        match self {
            CallError::TooLarge { .. } => Errno::EFAULT,
            _ => Errno::EIO,
        }
    }
}

/// Client-private state of one channel; touched only by the thread holding its lease.
/// Cache-line aligned so threads leasing neighbouring channels do not share a line.
#[repr(align(64))]
struct ChannelState {
    busy: AtomicBool,
    req_prod_pvt: AtomicU32,
    rsp_cons: AtomicU32,
    /// The thread holding the lease ([`thread_token`]; 0 when free).
    owner: std::sync::atomic::AtomicUsize,
    /// A lease its thread abandoned ([`Session::recover_abandoned`]): the next lease first
    /// takes every response still due, so the server is done with the window.
    dirty: AtomicBool,
}

/// This thread's identity for lease ownership: the address of a thread-local (unique among
/// live threads; no system call).
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| t as *const u8 as usize)
}

/// One client session with one server.
pub struct Session {
    mem: SharedMem,
    layout: Layout,
    bell: Box<dyn ClientBell>,
    control: FdCell,
    channels: Box<[ChannelState]>,
    spin: AdaptiveSpin,
    /// Threads of this process spinning on one of the session's channels right now.
    spinners: std::sync::atomic::AtomicU32,
    dead: AtomicBool,
    session_id: u64,
    /// The readiness eventfd (see [`crate::events`]), if the backend has one.
    event_fd: Option<FdCell>,
    fd_hooks: Option<FdHooks>,
}

thread_local! {
    static PREFERRED: Cell<u32> = const { Cell::new(u32::MAX) };
}

impl Session {
    /// Assembles a session from a validated region, its doorbells and the control socket
    /// (kept open: its closing is how each side learns that the other died).
    pub(crate) fn new(
        mem: SharedMem,
        layout: Layout,
        bell: Box<dyn ClientBell>,
        control: OwnedFd,
        spin: SpinPolicy,
        session_id: u64,
        fd_hooks: Option<FdHooks>,
    ) -> Self {
        let channels = (0..layout.channels)
            .map(|_| ChannelState {
                busy: AtomicBool::new(false),
                req_prod_pvt: AtomicU32::new(0),
                rsp_cons: AtomicU32::new(0),
                owner: std::sync::atomic::AtomicUsize::new(0),
                dirty: AtomicBool::new(false),
            })
            .collect();
        Session {
            mem,
            layout,
            bell,
            control: FdCell::new(control, fd_hooks),
            channels,
            spin: AdaptiveSpin::new(spin),
            spinners: std::sync::atomic::AtomicU32::new(0),
            dead: AtomicBool::new(false),
            session_id,
            event_fd: None,
            fd_hooks,
        }
    }

    pub(crate) fn set_event_fd(&mut self, fd: OwnedFd) {
        self.event_fd = Some(FdCell::new(fd, self.fd_hooks));
    }

    /// The readiness eventfd to poll beside local fds (semaphore mode, non-blocking).
    pub fn event_fd(&self) -> Option<std::os::fd::RawFd> {
        self.event_fd.as_ref().map(|f| f.raw())
    }

    /// Replaces the number `old` of one of the session's descriptors by `new`, an open
    /// duplicate the caller made (see [`FdCell`]); false when the session has no descriptor
    /// numbered `old`.
    pub fn renumber_fd(&self, old: std::os::fd::RawFd, new: std::os::fd::RawFd) -> bool {
        self.control.renumber(old, new)
            || self.event_fd.as_ref().is_some_and(|f| f.renumber(old, new))
            || self.bell.renumber(old, new)
    }

    /// Calls `f` with the number of every descriptor the session keeps open.
    pub fn kept_fds(&self, f: &mut dyn FnMut(std::os::fd::RawFd)) {
        f(self.control.raw());
        if let Some(e) = &self.event_fd {
            f(e.raw());
        }
        self.bell.kept_fds(f);
    }

    /// Handle `h`'s readiness as the server last published it (`None` beyond the words).
    /// For a handle with a stream, `POLLIN` says what the stream holds now (bytes, an error
    /// or the end of the file): the server's word may still say readable after this
    /// process's threads emptied it.
    pub fn readiness(&self, h: usize) -> Option<crate::Readiness> {
        (h < crate::layout::EVENT_SLOTS).then(|| {
            let mut r = crate::Readiness::from_word(
                self.mem
                    .u64_at(self.layout.event_off(h))
                    .load(Ordering::SeqCst),
            );
            if let Some(s) = self.stream(h) {
                let snap = s.snapshot();
                if !snap.state.has(crate::StreamState::DETACHED) || snap.readable() {
                    let pollin = libc::POLLIN as u32;
                    r.mask = if snap.readable() {
                        r.mask | pollin
                    } else {
                        r.mask & !pollin
                    };
                }
            }
            if let Some(t) = self.tx_stream(h) {
                if !t.snapshot().state.has(crate::StreamState::DETACHED) {
                    // Writable while a quarter of the transmit stream is free.
                    let pollout = libc::POLLOUT as u32;
                    r.mask = if t.room() >= crate::layout::STREAM_BYTES / 4 {
                        r.mask | pollout
                    } else {
                        r.mask & !pollout
                    };
                }
            }
            r
        })
    }

    /// The stream that handle `h` transmits through, if the server gave it one.
    pub fn tx_stream(&self, h: usize) -> Option<crate::Stream<'_>> {
        crate::Stream::tx_of_handle(&self.mem, &self.layout, h)
    }

    /// The stream that handle `h` receives into, if the server gave it one.
    pub fn stream(&self, h: usize) -> Option<crate::Stream<'_>> {
        crate::Stream::of_handle(&self.mem, &self.layout, h)
    }

    /// The readiness epoch (bumped by the server after every change).
    pub fn event_epoch(&self) -> u32 {
        self.mem.u32_at(header::EVENT_EPOCH).load(Ordering::SeqCst)
    }

    /// Announces (`+1`) or withdraws (`-1`) a thread about to sleep for readiness. After
    /// announcing, re-read [`Session::event_epoch`] before sleeping (see [`crate::events`]).
    pub fn event_waiter(&self, announce: bool) {
        let w = self.mem.u32_at(header::EVENT_WAITERS);
        if announce {
            w.fetch_add(1, Ordering::SeqCst);
        } else {
            w.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// True when the server process is gone (checks its control socket; cheap).
    pub fn server_gone(&self) -> bool {
        self.is_dead() || self.check_alive().is_err()
    }

    /// The control socket: it hangs up when the server dies (poll it beside local fds).
    pub fn control_fd(&self) -> std::os::fd::RawFd {
        self.control.raw()
    }

    /// The region's geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The server-chosen session id.
    pub fn id(&self) -> u64 {
        self.session_id
    }

    /// The adaptive spin budget.
    pub fn spin(&self) -> &AdaptiveSpin {
        &self.spin
    }

    /// Makes one call without payload.
    pub fn call(&self, req: Request) -> Result<Response, CallError> {
        self.lease().call(req)
    }

    /// Leases a free channel, waiting (yielding) while all are in use.
    pub fn lease(&self) -> Lease<'_> {
        let n = self.layout.channels;
        let start = PREFERRED.with(|p| p.get());
        let start = if start < n { start } else { 0 };
        loop {
            for i in 0..n {
                let c = (start + i) % n;
                let ch = &self.channels[c as usize];
                if ch
                    .busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    PREFERRED.with(|p| p.set(c));
                    ch.owner.store(thread_token(), Ordering::Relaxed);
                    let front = FrontState {
                        req_prod_pvt: ch.req_prod_pvt.load(Ordering::Relaxed),
                        rsp_cons: ch.rsp_cons.load(Ordering::Relaxed),
                    };
                    let mut lease = Lease {
                        session: self,
                        channel: c,
                        front,
                    };
                    if ch.dirty.load(Ordering::Relaxed) {
                        lease.drain();
                        ch.dirty.store(false, Ordering::Relaxed);
                    }
                    return lease;
                }
            }
            // Every channel is busy: more threads in calls than channels. Give the CPU away.
            std::thread::yield_now();
        }
    }

    /// Releases the leases this thread holds but whose calls it left for good (a signal
    /// handler that `longjmp`ed out of a call it interrupted: the lease's drop never ran).
    /// Only for a thread that is in none of this session's calls. Each such channel's
    /// requests are taken as published (one pushed but not published is dropped) and the
    /// channel is marked dirty: its next lease asks the server to cancel the last request and
    /// takes every response still due before the window is used again. Returns how many.
    pub fn recover_abandoned(&self) -> usize {
        let me = thread_token();
        let mut n = 0;
        for (c, ch) in self.channels.iter().enumerate() {
            if !ch.busy.load(Ordering::Acquire) || ch.owner.load(Ordering::Relaxed) != me {
                continue;
            }
            let ring = RingView::new(&self.mem, &self.layout, c as u32);
            let published = ring.req_prod_word().load(Ordering::Acquire);
            ch.req_prod_pvt.store(published, Ordering::Relaxed);
            ch.dirty.store(true, Ordering::Relaxed);
            ch.owner.store(0, Ordering::Relaxed);
            ch.busy.store(false, Ordering::Release);
            n += 1;
        }
        n
    }

    /// The shared region, for diagnostics and hostile-peer tests. Writing into it by hand
    /// breaks the protocol for this session (the server then quarantines the channel).
    pub fn region(&self) -> &SharedMem {
        &self.mem
    }

    /// True once the server is known to be gone.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    fn server_state(&self) -> u32 {
        self.mem
            .u32_at(header::SERVER_STATE)
            .load(Ordering::Acquire)
    }

    /// Checks the control socket: a hang-up means the server process is gone.
    fn check_alive(&self) -> Result<(), CallError> {
        let mut pfd = libc::pollfd {
            fd: self.control.raw(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        if r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            self.dead.store(true, Ordering::Relaxed);
            return Err(CallError::ServerGone);
        }
        Ok(())
    }

    /// The routed-call latency histogram, summed over its stripes: `[b]` counts calls whose
    /// round trip took `[2^b, 2^(b+1))` ns (the last bucket: everything longer).
    pub fn latency_histogram(&self) -> [u64; header::LAT_BUCKETS] {
        let mut h = [0; header::LAT_BUCKETS];
        for s in 0..header::LAT_STRIPES {
            for (b, v) in h.iter_mut().enumerate() {
                *v += self
                    .mem
                    .u64_at(header::lat_bucket(s, b))
                    .load(Ordering::Relaxed);
            }
        }
        h
    }

    /// Sums the per-channel client counters.
    pub fn stats(&self) -> WaitSnapshot {
        let mut s = WaitSnapshot::default();
        for c in 0..self.layout.channels {
            let base = self.layout.ring_off(c);
            let get = |off| self.mem.u64_at(base + off).load(Ordering::Relaxed);
            s.calls += get(ring::CLIENT_CALLS);
            s.spins += get(ring::CLIENT_SPINS);
            s.sleeps += get(ring::CLIENT_SLEEPS);
            s.wakeups += get(ring::CLIENT_WAKEUPS);
        }
        s
    }
}

/// Exclusive use of one channel for the length of a call.
pub struct Lease<'s> {
    session: &'s Session,
    channel: u32,
    front: FrontState,
}

impl Lease<'_> {
    /// The channel leased.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Size of this channel's data window.
    pub fn window(&self) -> u32 {
        self.session.layout.window
    }

    fn window_range(&self, off: usize, len: usize) -> Result<usize, CallError> {
        let window = self.session.layout.window;
        match off.checked_add(len) {
            Some(end) if end <= window as usize => {
                Ok(self.session.layout.window_off(self.channel) + off)
            }
            _ => Err(CallError::TooLarge { off, len, window }),
        }
    }

    /// Copies `data` into the data window at `off`.
    pub fn write(&self, off: usize, data: &[u8]) -> Result<(), CallError> {
        let at = self.window_range(off, data.len())?;
        self.session.mem.copy_in(at, data);
        Ok(())
    }

    /// Copies `out.len()` bytes out of the data window at `off`.
    pub fn read(&self, off: usize, out: &mut [u8]) -> Result<(), CallError> {
        let at = self.window_range(off, out.len())?;
        self.session.mem.copy_out(at, out);
        Ok(())
    }

    fn bump(&self, off: usize) {
        let w = self
            .session
            .mem
            .u64_at(self.session.layout.ring_off(self.channel) + off);
        w.store(w.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Counts one round trip of `took` in the latency histogram. Channels `LAT_STRIPES`
    /// apart (and a forked child's copy of the session) share a stripe: an atomic add.
    fn record_latency(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let b = (ns.max(1).ilog2() as usize).min(header::LAT_BUCKETS - 1);
        let stripe = self.channel as usize % header::LAT_STRIPES;
        self.session
            .mem
            .u64_at(header::lat_bucket(stripe, b))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Sends `req` (its `id` is replaced by a channel-unique one) and waits for its response.
    /// A payload must already be in the window at `req.data_off`.
    ///
    /// A server that breaks the ring protocol makes the whole session unusable: this and every
    /// later call fail with an error whose errno is `EIO`.
    pub fn call(&mut self, req: Request) -> Result<Response, CallError> {
        self.call_checked(req, None)
    }

    /// As [`Lease::call`], for a request that may wait indefinitely in the server (a blocking
    /// accept or recv). When a signal handler runs while the caller sleeps, `on_signal` is
    /// asked whether the call should be interrupted (Linux's `EINTR`, as opposed to a restart
    /// under `SA_RESTART`); if it says yes, the server is asked to cancel the request (the
    /// channel's `CLIENT_CANCEL` word and its doorbell). The call still returns the server's
    /// response: the operation's own result if it finished first, else the server's answer
    /// for a cancelled operation (`-EINTR`).
    pub fn call_interruptible(
        &mut self,
        req: Request,
        on_signal: &mut dyn FnMut() -> bool,
    ) -> Result<Response, CallError> {
        self.call_checked(req, Some(on_signal))
    }

    fn call_checked(
        &mut self,
        req: Request,
        on_signal: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<Response, CallError> {
        self.call_inner(req, on_signal).inspect_err(|e| {
            if matches!(
                e,
                CallError::Ring(_) | CallError::Response(_) | CallError::ServerGone
            ) {
                self.session.dead.store(true, Ordering::Relaxed);
            }
        })
    }

    fn call_inner(
        &mut self,
        mut req: Request,
        mut on_signal: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<Response, CallError> {
        let s = self.session;
        if s.dead.load(Ordering::Relaxed) {
            return Err(CallError::ServerGone);
        }
        if s.server_state() != ServerState::Running as u32 {
            return Err(CallError::ServerClosing);
        }
        self.window_range(req.data_off as usize, req.data_len as usize)?;
        let ring = RingView::new(&s.mem, &s.layout, self.channel);
        req.id = (u64::from(self.channel) << 32) | u64::from(self.front.req_prod_pvt);
        // Synchronous calls leave at most in-flight fire-and-forget requests behind; drain
        // their responses if the ring is full.
        while !self.front.push(&ring, &req.to_slot()) {
            self.wait_any(&ring, &mut None)?;
            self.front.take(&ring)?;
        }
        self.bump(ring::CLIENT_CALLS);
        // When the round trip began: before the doorbell if the server must be woken, else
        // (the fast path, no extra clock read) when the first wait begins.
        let mut sent = None;
        if self.front.publish(&ring) {
            sent = Some(Instant::now());
            self.bump(ring::CLIENT_WAKEUPS);
            if s.bell.notify_server(self.channel).is_err() {
                s.check_alive()?;
            }
        }
        let mut intr = on_signal.as_mut().map(|f| Interrupt {
            on_signal: &mut **f,
            id: req.id,
            sent: false,
        });
        loop {
            let (began, seen) = self.wait_any(&ring, &mut intr)?;
            let sent = *sent.get_or_insert(began);
            if let Some(slot) = self.front.take(&ring)? {
                let rsp = decode_response(&slot, req.data_len)?;
                if rsp.id == req.id {
                    self.record_latency(seen.saturating_duration_since(sent));
                    return Ok(rsp);
                }
                // A response to an earlier fire-and-forget request: nobody waits for it.
            }
        }
    }

    /// Sends `req` without waiting for its response (fire and forget: the response is
    /// skipped by a later call on this channel). The request must not use the data window,
    /// which the next call on the channel may overwrite before the server reads it.
    pub fn post(&mut self, mut req: Request) -> Result<(), CallError> {
        let s = self.session;
        if s.dead.load(Ordering::Relaxed) {
            return Err(CallError::ServerGone);
        }
        if s.server_state() != ServerState::Running as u32 {
            return Err(CallError::ServerClosing);
        }
        req.data_len = 0;
        req.flags |= abi::REQ_FLAG_NO_REPLY_WAIT;
        let ring = RingView::new(&s.mem, &s.layout, self.channel);
        req.id = (u64::from(self.channel) << 32) | u64::from(self.front.req_prod_pvt);
        while !self.front.push(&ring, &req.to_slot()) {
            self.wait_any(&ring, &mut None)?;
            self.front.take(&ring)?;
        }
        self.bump(ring::CLIENT_CALLS);
        if self.front.publish(&ring) {
            self.bump(ring::CLIENT_WAKEUPS);
            if s.bell.notify_server(self.channel).is_err() {
                s.check_alive()?;
            }
        }
        Ok(())
    }

    /// Takes every response still due on this channel (a dirty one, see
    /// [`Session::recover_abandoned`]), after asking the server to cancel the last request
    /// (an abandoned wait that could last). A dead server ends it.
    fn drain(&mut self) {
        let ring = RingView::new(&self.session.mem, &self.session.layout, self.channel);
        if self.front.outstanding() > 0 {
            let last = self.front.req_prod_pvt.wrapping_sub(1);
            self.request_cancel((u64::from(self.channel) << 32) | u64::from(last));
        }
        while self.front.outstanding() > 0 {
            if self.wait_any(&ring, &mut None).is_err() {
                return;
            }
            if self.front.take(&ring).is_err() {
                return;
            }
        }
    }

    /// Asks the server to cancel request `id` on this channel.
    fn request_cancel(&self, id: u64) {
        let s = self.session;
        s.mem
            .u64_at(s.layout.ring_off(self.channel) + ring::CLIENT_CANCEL)
            .store(id, Ordering::SeqCst);
        self.bump(ring::CLIENT_WAKEUPS);
        let _ = s.bell.notify_server(self.channel);
    }

    /// Waits until a response is published on this channel; returns when the wait began and
    /// when the response was seen.
    fn wait_any(
        &self,
        ring: &RingView<'_>,
        intr: &mut Option<Interrupt<'_>>,
    ) -> Result<(Instant, Instant), CallError> {
        let s = self.session;
        let word = ring.rsp_prod_word();
        let cons = self.front.rsp_cons;
        let ready = || word.load(Ordering::Acquire) != cons;
        // Several of this process's threads spin at once and the server has not taken our
        // latest request: it is not polling (preempted, perhaps by us), and sleeping now
        // frees a core for it. A lone spinner keeps spinning: the server is then running on
        // another core, and giving up would only add a wake-up (nginx lost a third of its
        // requests/s through both domains when every waiter gave up so).
        let taken = ring.taken_word();
        let mine = self.front.req_prod_pvt;
        let stalled = || {
            s.spinners.load(Ordering::Relaxed) > 1
                && (taken.load(Ordering::Relaxed).wrapping_sub(mine) as i32) < 0
        };
        let start = Instant::now();
        s.spinners.fetch_add(1, Ordering::Relaxed);
        let answered = spin_while_peer_runs(s.spin.budget(), ready, stalled);
        s.spinners.fetch_sub(1, Ordering::Relaxed);
        if answered {
            self.bump(ring::CLIENT_SPINS);
            let seen = Instant::now();
            s.spin.record(seen - start);
            return Ok((start, seen));
        }
        let mut closing_since: Option<Instant> = None;
        loop {
            if self.front.arm(ring) {
                break;
            }
            if s.server_state() != ServerState::Running as u32 {
                // A closing server answers what it already took: wait for those answers a
                // short while (each worker sets the state only after answering its own
                // channels, but other workers may still be draining).
                let since = *closing_since.get_or_insert_with(Instant::now);
                if self.front.outstanding() == 0 || since.elapsed() > CLOSING_GRACE {
                    return Err(CallError::ServerClosing);
                }
            }
            self.bump(ring::CLIENT_SLEEPS);
            // A failing wait (not EINTR/EAGAIN/timeout) leaves us polling via the liveness
            // check below, never hanging.
            let waited = s.bell.wait_response(word, cons, LIVENESS_INTERVAL);
            if let (Err(e), Some(i)) = (&waited, intr.as_mut()) {
                if e.kind() == std::io::ErrorKind::Interrupted && !i.sent && (i.on_signal)() {
                    i.sent = true;
                    self.request_cancel(i.id);
                }
            }
            if ready() {
                break;
            }
            s.check_alive()?;
        }
        let seen = Instant::now();
        s.spin.record(seen - start);
        Ok((start, seen))
    }
}

/// An interruptible call's state while it waits.
struct Interrupt<'a> {
    on_signal: &'a mut dyn FnMut() -> bool,
    id: u64,
    sent: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let ch = &self.session.channels[self.channel as usize];
        ch.req_prod_pvt
            .store(self.front.req_prod_pvt, Ordering::Relaxed);
        ch.rsp_cons.store(self.front.rsp_cons, Ordering::Relaxed);
        ch.owner.store(0, Ordering::Relaxed);
        ch.busy.store(false, Ordering::Release);
    }
}
