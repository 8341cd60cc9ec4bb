//! One polling worker: its channels of every session, its io_uring, its idle policy.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::{
    decode_request, Errno, Opcode, RawSlot, Response, ValidRequest, RSP_FLAG_REJECTED,
    RSP_FLAG_SHUTDOWN,
};
use io_uring::{opcode, types, IoUring};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use xen_transport::layout::ring as ringoff;
use xen_transport::ring::BackState;
use xen_transport::wait::AdaptiveSpin;
use xen_transport::{Credentials, SpinPolicy};

use crate::creds::{self, Identity};
use crate::fdtable::{CloneKind, CloneTokens, FdTable, Who};
use crate::pool::Pool;
use crate::{Handler, Live, Sessions, ShutdownHandle, WorkerStats, WORKER_TICK};

/// Memory an io_uring entry points at, kept alive until its completion has been handled
/// (path strings, `open_how`, result buffers, the open file the entry names).
pub type Keep = Box<dyn Any + Send>;

/// A call run on the blocking pool. It runs on a pool thread acting as the client (when the
/// handler [acts as the client](Handler::acts_as_client)) and returns the response to post.
pub type BlockingFn = Box<dyn FnOnce(&Call<'_>) -> Response + Send>;

/// What a handler does with a request.
pub enum Outcome {
    /// Answer now.
    Done(Response),
    /// Execute through io_uring; the completion goes to [`Handler::complete`]. The entry's
    /// `user_data` is set by the runtime, and so is its personality when the handler acts as
    /// the client. Buffers it names must live in the call's data window ([`Call::window_ptr`]).
    Submit(io_uring::squeue::Entry),
    /// As [`Outcome::Submit`], with memory the entry points at (or an open file it names) that
    /// must outlive the operation; [`Call::kept`] returns it to [`Handler::complete`].
    SubmitKeep(io_uring::squeue::Entry, Keep),
    /// Run on the blocking pool without holding up the polling worker; the function's
    /// response is posted like an io_uring completion.
    Blocking(BlockingFn),
    /// As [`Outcome::Blocking`], for a call that may wait indefinitely on another client (a
    /// lock request): it runs on a thread of its own, so that waiters cannot take every pool
    /// thread and starve the calls that would release them.
    Wait(BlockingFn),
    /// As [`Outcome::SubmitKeep`] (the keep may be `()`), for an operation that may wait
    /// indefinitely: it is linked to an io_uring timeout of the given length (`None`: no
    /// limit). When the timeout fires, [`Handler::complete`] gets `-EAGAIN`; when the client
    /// cancels the request (a signal interrupted it), `-EINTR`.
    SubmitWaiting(io_uring::squeue::Entry, Keep, Option<Duration>),
}

/// A session as a handler may keep it beyond one call (to push readiness from elsewhere).
#[derive(Clone)]
pub struct SessionRef(pub(crate) Arc<Live>);

impl SessionRef {
    /// The session id.
    pub fn id(&self) -> u64 {
        self.0.s.id()
    }

    /// The session's open files.
    pub fn fds(&self) -> &FdTable {
        &self.0.ctx.fds
    }

    /// Publishes handle `h`'s readiness (see [`xen_transport::events`]).
    pub fn publish_event(&self, h: usize, mask: u32, edge: bool) {
        self.0.s.publish_event(h, mask, edge)
    }

    /// Clears handle `h`'s readiness word.
    pub fn clear_event(&self, h: usize) {
        self.0.s.clear_event(h)
    }

    /// How many streams the session's region has (0 unless its client asked for them).
    pub fn streams(&self) -> u32 {
        self.0.s.layout().streams
    }

    /// Stream `i` of the session's region (see [`xen_transport::stream`]).
    pub fn stream(&self, i: u32) -> Option<xen_transport::Stream<'_>> {
        self.0.s.stream(i)
    }

    /// Gives stream `i` to handle `h`, afresh.
    pub fn attach_stream(&self, i: u32, h: u32) -> Option<xen_transport::Stream<'_>> {
        self.0.s.attach_stream(i, h)
    }

    /// Handle `h` has no stream any more.
    pub fn unmap_stream(&self, h: u32) {
        self.0.s.unmap_stream(h)
    }

    /// True once the session has ended (its client is gone).
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Relaxed)
    }
}

/// Per-session state the runtime keeps beside the shared region.
#[derive(Debug)]
pub struct SessionCtx {
    pub(crate) creds: Credentials,
    pub(crate) ppid: i32,
    pub(crate) groups: Vec<u32>,
    /// Who pool threads and io_uring personalities act as (handlers that act as the client).
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) fds: FdTable,
    /// A pidfd of the client process (None for a session from another domain or where the
    /// kernel gave none): anything read of the client by pid is checked against it.
    pub(crate) pidfd: Option<std::os::fd::OwnedFd>,
}

impl SessionCtx {
    /// Whether the process that connected is still running (so its pid still names it): a
    /// pidfd becomes readable when its process exits, zombie or not.
    fn client_alive(&self) -> bool {
        self.pidfd.as_ref().is_some_and(creds::pidfd_running)
    }
}

/// One request being served.
pub struct Call<'a> {
    live: &'a Arc<Live>,
    channel: u32,
    req: ValidRequest,
    personality: Option<u16>,
    keep: Option<&'a (dyn Any + Send)>,
}

impl Call<'_> {
    /// The request id (echo it in the response).
    pub fn id(&self) -> u64 {
        self.req.raw.id
    }

    /// The validated request.
    pub fn request(&self) -> &ValidRequest {
        &self.req
    }

    /// The session's kernel-reported credentials.
    pub fn creds(&self) -> Credentials {
        self.live.ctx.creds
    }

    /// Whether the client process has capability `cap` in its effective set now. Read from
    /// `/proc/<pid>/status` and then checked against the session's pidfd: if the process that
    /// connected has exited, its pid may name another process (a root one), whose
    /// capabilities must never count; a session without a pidfd has none.
    pub fn has_capability(&self, cap: u32) -> bool {
        let ctx = &self.live.ctx;
        let Some(eff) = creds::cap_eff(ctx.creds.pid) else {
            return false;
        };
        ctx.client_alive() && cap < 64 && eff & (1 << cap) != 0
    }

    /// The supplementary groups of the client process, read when the session started.
    pub fn groups(&self) -> &[u32] {
        &self.live.ctx.groups
    }

    /// The session id.
    pub fn session_id(&self) -> u64 {
        self.live.s.id()
    }

    /// The session's open files.
    pub fn fds(&self) -> &FdTable {
        &self.live.ctx.fds
    }

    /// The session, to keep beyond this call.
    pub fn session(&self) -> SessionRef {
        SessionRef(self.live.clone())
    }

    /// The io_uring personality acting as this session's client on this worker (the runtime
    /// sets it on every entry a handler submits), when the handler acts as the client; `None`
    /// on the blocking pool, whose threads act as the client themselves.
    pub fn personality(&self) -> Option<u16> {
        self.personality
    }

    /// In [`Handler::complete`]: what the handler kept with [`Outcome::SubmitKeep`].
    pub fn kept<T: Any>(&self) -> Option<&T> {
        self.keep.and_then(|k| k.downcast_ref())
    }

    /// Copies the request payload out of shared memory (`len <= data_len`).
    pub fn read_payload(&self, out: &mut [u8]) {
        let n = out.len().min(self.req.raw.data_len as usize);
        self.live
            .s
            .read_window(self.channel, self.req.raw.data_off, &mut out[..n]);
    }

    /// Copies `out.len()` bytes from `offset` into the request's payload range (clamped to
    /// it); returns how many were copied.
    pub fn read_payload_at(&self, offset: usize, out: &mut [u8]) -> usize {
        let len = self.req.raw.data_len as usize;
        let start = offset.min(len);
        let n = out.len().min(len - start);
        self.live.s.read_window(
            self.channel,
            self.req.raw.data_off + start as u32,
            &mut out[..n],
        );
        n
    }

    /// Writes result bytes at the start of the request's payload range (truncated to it).
    pub fn write_payload(&self, data: &[u8]) -> usize {
        let n = data.len().min(self.req.raw.data_len as usize);
        self.live
            .s
            .write_window(self.channel, self.req.raw.data_off, &data[..n]);
        n
    }

    /// `preadv2(fd, payload, file_off, flags)` into the request's payload range, done at once
    /// on this thread: bytes read, or Linux's errno. Meant for `RWF_NOWAIT` reads, which the
    /// page cache answers without blocking (or refuses with EAGAIN).
    pub fn pread_payload(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        file_off: i64,
        flags: i32,
    ) -> Result<usize, i32> {
        self.live.s.pread_window(
            self.channel,
            self.req.raw.data_off,
            self.req.raw.data_len,
            fd,
            file_off,
            flags,
        )
    }

    /// Pointer to the request's payload range, for io_uring buffers and system calls; valid
    /// for `data_len` bytes while the call is in flight. The client may write it concurrently.
    pub fn window_ptr(&self) -> *mut u8 {
        self.live
            .s
            .window_ptr(self.channel, self.req.raw.data_off, self.req.raw.data_len)
    }
}

pub(crate) struct WorkerCtx<H: Handler> {
    pub index: usize,
    pub workers: usize,
    pub cpu: Option<usize>,
    pub spin: SpinPolicy,
    pub uring_entries: u32,
    pub sessions: Arc<Sessions>,
    pub shutdown: ShutdownHandle,
    pub wake: Arc<EventFd>,
    pub stats: Arc<Vec<WorkerStats>>,
    pub handler: Arc<H>,
    pub pool: Arc<Pool>,
    pub tokens: Arc<CloneTokens>,
}

/// A session as one worker sees it: its channels and their private indices.
struct Mine {
    live: Arc<Live>,
    /// Channel, its private indices, the last cancel id seen.
    channels: Vec<(u32, BackState, u64)>,
    /// This worker's io_uring personality for the session's client.
    personality: Option<u16>,
}

/// An io_uring operation or blocking call in flight.
struct InFlight {
    live: Arc<Live>,
    /// Index into `Mine::channels` is not stable across refreshes; keep the channel number.
    channel: u32,
    req: ValidRequest,
    /// Already answered (shutdown): ignore the completion.
    answered: bool,
    /// Memory the entry points at that must outlive the operation.
    keep: Option<Keep>,
    /// An io_uring operation (else a blocking-pool call).
    uring: bool,
    /// A linked timeout's length, kept until the entry is submitted.
    timeout: Option<Box<types::Timespec>>,
    /// The client asked to cancel it (a signal interrupted the caller).
    cancelled: bool,
    /// A call waiting on a thread of its own: what a cancel interrupts.
    waiter: Option<Arc<crate::interrupt::Waiter>>,
}

/// Work a request still needs after the polling pass.
enum Work {
    Uring(io_uring::squeue::Entry, Option<Keep>),
    Waiting(io_uring::squeue::Entry, Keep, Option<Duration>),
    Blocking(BlockingFn),
    Wait(BlockingFn),
}

const WAKE_TOKEN: u64 = u64::MAX;
const URING_TOKEN: u64 = u64::MAX - 1;
/// user_data of linked timeouts and cancel entries (their completions are ignored).
const AUX_TOKEN: u64 = u64::MAX - 2;
/// user_data of the multishot poll on the handler's event source.
const EVENT_TOKEN: u64 = u64::MAX - 3;
/// Requests taken from one channel per pass, so one busy client cannot starve the others.
const BATCH: usize = 16;

/// Idle passes between two `sched_yield`s while another thread shares this worker's core.
/// Two pollers often do (the network and the storage domain's workers pinned beside each
/// other, or a server beside the application or the load on a small machine): the sooner an
/// idle one yields, the sooner the other one sees its request. nginx through both domains on
/// the 2-core VM: 0.09x native yielding every 8 passes, 0.17x every 2 (docs/ARCHITECTURE.md,
/// "Two pollers on one core").
const YIELD_PASSES_SHARED: u32 = 2;
/// The most idle passes between two `sched_yield`s: each yield that finds nobody else to run
/// (it returns within [`YIELD_ALONE`]) doubles the interval up to this, so a worker alone on
/// its core makes few useless system calls. A divisor of 64.
const YIELD_PASSES_ALONE: u32 = 64;
/// A `sched_yield` that returns sooner than this ran nobody else.
const YIELD_ALONE: Duration = Duration::from_micros(3);

struct Worker<H: Handler> {
    ctx: WorkerCtx<H>,
    uring: IoUring,
    epoll: Epoll,
    mine: HashMap<u64, Mine>,
    generation: u64,
    inflight: Vec<Option<InFlight>>,
    free: Vec<usize>,
    spin: AdaptiveSpin,
    /// Work prepared during a pass, started after it (reused buffer).
    submissions: Vec<(Arc<Live>, u32, ValidRequest, Work)>,
    /// Responses of blocking calls, by in-flight slot (the pool writes `wake` after each).
    done_tx: mpsc::Sender<(usize, Response)>,
    done_rx: mpsc::Receiver<(usize, Response)>,
}

pub(crate) fn run<H: Handler>(ctx: WorkerCtx<H>, uring: IoUring) {
    if let Some(cpu) = ctx.cpu {
        if let Err(e) = crate::cpus::pin_current_thread(cpu) {
            tracing::warn!(cpu, %e, "could not pin worker");
        }
    }
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(%e, "epoll_create failed; worker exits");
            ctx.shutdown.trigger();
            return;
        }
    };
    let reg = epoll
        .add(
            ctx.wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
        )
        .and_then(|_| {
            // SAFETY: the io_uring fd stays open for the worker's life (it owns `uring`).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(uring.as_raw_fd()) };
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, URING_TOKEN))
        });
    if let Err(e) = reg {
        tracing::error!(%e, "epoll_ctl failed; worker exits");
        ctx.shutdown.trigger();
        return;
    }
    let spin = AdaptiveSpin::new(ctx.spin);
    let (done_tx, done_rx) = mpsc::channel();
    let mut w = Worker {
        ctx,
        uring,
        epoll,
        mine: HashMap::new(),
        generation: u64::MAX,
        inflight: Vec::new(),
        free: Vec::new(),
        spin,
        submissions: Vec::new(),
        done_tx,
        done_rx,
    };
    w.arm_event_source();
    w.run();
}

impl<H: Handler> Worker<H> {
    fn stats(&self) -> &WorkerStats {
        &self.ctx.stats[self.ctx.index]
    }

    /// Worker 0 watches the handler's event source with a multishot poll.
    fn arm_event_source(&mut self) {
        if self.ctx.index != 0 {
            return;
        }
        let Some(fd) = self.ctx.handler.event_source() else {
            return;
        };
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(EVENT_TOKEN);
        // SAFETY: a poll entry names no buffers; the fd outlives the worker (the handler
        // owns it).
        while unsafe { self.uring.submission().push(&entry) }.is_err() {
            let _ = self.uring.submit();
        }
        let _ = self.uring.submit();
    }

    fn run(&mut self) {
        let mut idle_since: Option<Instant> = None;
        let mut idle_passes = 0u32;
        let mut yield_every = YIELD_PASSES_SHARED;
        loop {
            self.refresh();
            let mut busy = self.poll_rings();
            busy |= self.reap();
            if self.ctx.shutdown.is_triggered() {
                self.drain_for_shutdown();
                return;
            }
            if busy {
                if let Some(t) = idle_since.take() {
                    self.stats().wait.spins.fetch_add(1, Ordering::Relaxed);
                    self.spin.record(t.elapsed());
                }
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            // Read the clock only every 64 idle passes: a pass is far cheaper than a clock
            // read in a VM, and the clock read delays noticing the next request.
            idle_passes = idle_passes.wrapping_add(1);
            if !idle_passes.is_multiple_of(yield_every) {
                std::hint::spin_loop();
                continue;
            }
            // Let another runnable thread on this core (a second domain's worker pinned beside
            // this one, or the application itself on a small machine) run: an idle spinner
            // must not hold a core it shares. Without one, this returns at once, and the next
            // yield comes later.
            let before = Instant::now();
            std::thread::yield_now();
            yield_every = if before.elapsed() < YIELD_ALONE {
                (yield_every * 2).min(YIELD_PASSES_ALONE)
            } else {
                YIELD_PASSES_SHARED
            };
            if !idle_passes.is_multiple_of(64) || since.elapsed() < self.spin.budget() {
                continue;
            }
            if self.arm_all() {
                continue;
            }
            self.sleep();
            if let Some(t) = idle_since.take() {
                self.spin.record(t.elapsed());
            }
        }
    }

    /// Picks up added and removed sessions.
    fn refresh(&mut self) {
        if self.ctx.sessions.generation() == self.generation {
            return;
        }
        let (g, all) = self.ctx.sessions.snapshot();
        self.generation = g;
        let ids: Vec<u64> = all.iter().map(|l| l.s.id()).collect();
        let gone: Vec<u64> = self
            .mine
            .keys()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        for id in gone {
            if let Some(m) = self.mine.remove(&id) {
                let _ = self
                    .epoll
                    .delete(m.live.s.bell().doorbell_fd(self.ctx.index));
                if let Some(p) = m.personality {
                    let _ = self.uring.submitter().unregister_personality(p);
                }
                // The last reference may close many files; closing can block (writeback,
                // final truncation of deleted files), so let the pool do it.
                let live = m.live;
                let _ = self.ctx.pool.spawn(Box::new(move || drop(live)));
            }
            // An operation of the gone session still waiting in the kernel (a recv from a
            // silent peer, an accept) would hold the session, its files and its mapping until
            // it completes, which may be never: cancel it. Its completion is handled as any
            // cancelled call's (a socket it still produced goes into the session's table and
            // is closed with it).
            let waiting: Vec<(u32, u64)> = self
                .inflight
                .iter()
                .flatten()
                .filter(|f| f.uring && !f.answered && !f.cancelled && f.live.s.id() == id)
                .map(|f| (f.channel, f.req.raw.id))
                .collect();
            for (c, req_id) in waiting {
                self.cancel(id, c, req_id);
            }
        }
        for l in all {
            let id = l.s.id();
            if self.mine.contains_key(&id) {
                continue;
            }
            let channels = (0..l.s.layout().channels)
                .filter(|c| *c as usize % self.ctx.workers == self.ctx.index)
                .map(|c| (c, BackState::default(), 0))
                .collect();
            let fd = l.s.bell().doorbell_fd(self.ctx.index);
            if let Err(e) = self.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, id)) {
                // Still served: a sleeping worker polls its rings every tick.
                tracing::warn!(session = id, %e,
                    "cannot watch a doorbell; the session's calls may wait up to a tick when this worker sleeps");
            }
            let personality = l.ctx.identity.as_ref().and_then(|ident| {
                // io_uring captures the registering thread's credentials: act as the client
                // for the length of the registration.
                let submitter = self.uring.submitter();
                match creds::with_identity(ident, || submitter.register_personality()) {
                    Ok(Ok(p)) => Some(p),
                    Ok(Err(e)) | Err(e) => {
                        tracing::error!(session = id, %e,
                            "cannot register an io_uring personality; io_uring calls of this session will fail with EACCES");
                        None
                    }
                }
            });
            self.mine.insert(
                id,
                Mine {
                    live: l,
                    channels,
                    personality,
                },
            );
        }
    }

    /// Serves every owned channel once; returns whether anything was done.
    fn poll_rings(&mut self) -> bool {
        let mut busy = false;
        let mut submissions = std::mem::take(&mut self.submissions);
        let ctx = &self.ctx;
        let stats = &ctx.stats[ctx.index];
        let mut cancels = Vec::new();
        for m in self.mine.values_mut() {
            let live = &m.live;
            let session = &live.s;
            for (c, back, last_cancel) in m.channels.iter_mut() {
                if session.is_quarantined(*c) {
                    continue;
                }
                if back.in_flight() > 0 {
                    let want = session.cancel_word(*c);
                    if want != *last_cancel {
                        *last_cancel = want;
                        cancels.push((session.id(), *c, want));
                    }
                }
                let ring = session.ring(*c);
                let mut answered = 0u64;
                for _ in 0..BATCH {
                    let slot = match back.take(&ring) {
                        Ok(Some(slot)) => slot,
                        Ok(None) => break,
                        Err(e) => {
                            session.quarantine(*c, &e);
                            break;
                        }
                    };
                    busy = true;
                    match serve(ctx, live, *c, m.personality, &slot) {
                        Served::Now(rsp, rejected) => {
                            back.push(&ring, &rsp.to_slot());
                            answered += 1;
                            if rejected {
                                session.bump(*c, ringoff::SERVER_REJECTED, 1);
                                stats.rejected.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Served::Later(req, work) => submissions.push((live.clone(), *c, req, work)),
                    }
                }
                if answered > 0 {
                    // Count before publishing, so nobody who saw a response reads a stale count.
                    session.bump(*c, ringoff::SERVER_REQUESTS, answered);
                    stats.requests.fetch_add(answered, Ordering::Relaxed);
                    if back.publish(&ring) {
                        session.notify_client(*c);
                        stats.wait.wakeups.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        for (live, c, req, work) in submissions.drain(..) {
            if let Some(rsp) = self.start(&live, c, req, work) {
                self.post(&live, c, rsp);
                self.publish(live.s.id(), c);
            }
        }
        self.submissions = submissions;
        for (id, c, req_id) in cancels {
            self.cancel(id, c, req_id);
        }
        busy
    }

    /// Cancels request `req_id` on channel `c` of session `id`, if it is still in flight: an
    /// io_uring operation (its completion then reports `-EINTR`), or a call waiting on a
    /// thread of its own, whose system call is interrupted (`crate::interrupt`).
    fn cancel(&mut self, id: u64, c: u32, req_id: u64) {
        let found = self.inflight.iter_mut().enumerate().find_map(|(slot, f)| {
            let f = f.as_mut()?;
            ((f.uring || f.waiter.is_some())
                && !f.answered
                && f.live.s.id() == id
                && f.channel == c
                && f.req.raw.id == req_id)
                .then(|| {
                    f.cancelled = true;
                    (slot, f.waiter.clone())
                })
        });
        let slot = match found {
            Some((_, Some(waiter))) => return waiter.cancel(),
            Some((slot, None)) => slot,
            None => return,
        };
        let entry = opcode::AsyncCancel::new(slot as u64)
            .build()
            .user_data(AUX_TOKEN);
        // SAFETY: a cancel entry names no buffers.
        while unsafe { self.uring.submission().push(&entry) }.is_err() {
            if let Err(e) = self.uring.submit() {
                tracing::error!(%e, "io_uring submit failed");
                return;
            }
        }
    }

    fn alloc(&mut self, f: InFlight) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.inflight.push(None);
            self.inflight.len() - 1
        });
        self.inflight[slot] = Some(f);
        slot
    }

    /// Starts io_uring or blocking work; returns a response when it cannot start.
    fn start(
        &mut self,
        live: &Arc<Live>,
        channel: u32,
        req: ValidRequest,
        work: Work,
    ) -> Option<Response> {
        match work {
            Work::Uring(entry, keep) => {
                let entry = if live.ctx.identity.is_some() {
                    // Never run a client's operation with the server's own credentials.
                    match self.mine.get(&live.s.id()).and_then(|m| m.personality) {
                        Some(p) => entry.personality(p),
                        None => return Some(Response::err(req.raw.id, Errno::EACCES)),
                    }
                } else {
                    entry
                };
                self.submit(live, channel, req, entry, keep, None);
                None
            }
            Work::Waiting(entry, keep, timeout) => {
                let entry = if live.ctx.identity.is_some() {
                    match self.mine.get(&live.s.id()).and_then(|m| m.personality) {
                        Some(p) => entry.personality(p),
                        None => return Some(Response::err(req.raw.id, Errno::EACCES)),
                    }
                } else {
                    entry
                };
                self.submit(live, channel, req, entry, Some(keep), timeout);
                None
            }
            Work::Blocking(f) => self.start_blocking(live, channel, req, f, false),
            Work::Wait(f) => self.start_blocking(live, channel, req, f, true),
        }
    }

    fn submit(
        &mut self,
        live: &Arc<Live>,
        channel: u32,
        req: ValidRequest,
        entry: io_uring::squeue::Entry,
        keep: Option<Keep>,
        timeout: Option<Duration>,
    ) {
        let ts = timeout.map(|t| Box::new(types::Timespec::from(t)));
        let link = ts.as_deref().map(|t| {
            opcode::LinkTimeout::new(t as *const _)
                .build()
                .user_data(AUX_TOKEN)
        });
        let slot = self.alloc(InFlight {
            live: live.clone(),
            channel,
            req,
            answered: false,
            keep,
            uring: true,
            timeout: ts,
            cancelled: false,
            waiter: None,
        });
        let entry = entry.user_data(slot as u64);
        let entry = if link.is_some() {
            entry.flags(io_uring::squeue::Flags::IO_LINK)
        } else {
            entry
        };
        loop {
            let mut sq = self.uring.submission();
            // The operation and its linked timeout go in together.
            let need = if link.is_some() { 2 } else { 1 };
            if sq.capacity() - sq.len() >= need {
                // SAFETY: the buffers named by `entry` live in the session's mapped window or
                // in `keep`, and the timeout's timespec in `inflight[slot].timeout`; the
                // `Arc<Live>` and both boxes stored there keep them alive until the
                // completion is reaped.
                unsafe {
                    let _ = sq.push(&entry);
                    if let Some(l) = &link {
                        let _ = sq.push(l);
                    }
                }
                break;
            }
            drop(sq);
            // Submission queue full: hand the batch to the kernel and retry.
            if let Err(e) = self.uring.submit() {
                tracing::error!(%e, "io_uring submit failed");
            }
        }
        self.stats().uring.fetch_add(1, Ordering::Relaxed);
    }

    fn start_blocking(
        &mut self,
        live: &Arc<Live>,
        channel: u32,
        req: ValidRequest,
        f: BlockingFn,
        own_thread: bool,
    ) -> Option<Response> {
        let slot = self.alloc(InFlight {
            live: live.clone(),
            channel,
            req,
            answered: false,
            keep: None,
            uring: false,
            timeout: None,
            cancelled: false,
            waiter: own_thread.then(crate::interrupt::Waiter::new),
        });
        let tx = self.done_tx.clone();
        let wake = self.ctx.wake.clone();
        let live = live.clone();
        let waiter = self.inflight[slot].as_ref().and_then(|f| f.waiter.clone());
        let job = Box::new(move || {
            let rsp = match &waiter {
                Some(w) => w.run(|| run_blocking(&live, channel, req, f)),
                None => run_blocking(&live, channel, req, f),
            };
            if tx.send((slot, rsp)).is_ok() {
                let _ = wake.write(1);
            }
        });
        self.stats().blocking.fetch_add(1, Ordering::Relaxed);
        let rsp = if own_thread {
            let spawned = std::thread::Builder::new()
                .name(format!("virtuos-{}-wait", self.ctx.handler.name()))
                .spawn(job);
            match spawned {
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(%e, "cannot start a thread for a waiting call");
                    Response::err(req.raw.id, Errno::EAGAIN)
                }
            }
        } else if self.ctx.pool.spawn(job) {
            return None;
        } else {
            // The pool is closed: shutting down.
            shutdown_response(req.raw.id)
        };
        if let Some(f) = self.inflight[slot].take() {
            drop(f);
            self.free.push(slot);
        }
        Some(rsp)
    }

    /// Submits queued entries and posts every completion; returns whether any arrived.
    fn reap(&mut self) -> bool {
        if !self.uring.submission().is_empty() {
            if let Err(e) = self.uring.submit() {
                tracing::error!(%e, "io_uring submit failed");
            }
        }
        let mut cqes: Vec<(u64, i32)> = Vec::new();
        let mut events = false;
        let mut rearm = false;
        for c in self.uring.completion() {
            if c.user_data() == EVENT_TOKEN {
                events = true;
                rearm |= !io_uring::cqueue::more(c.flags());
            } else {
                cqes.push((c.user_data(), c.result()));
            }
        }
        if events {
            self.ctx.handler.service_events();
            if rearm {
                self.arm_event_source();
            }
        }
        let done: Vec<(usize, Response)> = self.done_rx.try_iter().collect();
        if cqes.is_empty() && done.is_empty() {
            return events;
        }
        let mut touched: Vec<(u64, u32)> = Vec::new();
        for (ud, result) in cqes {
            let Some(f) = self
                .inflight
                .get_mut(ud as usize)
                .filter(|f| f.as_ref().is_some_and(|f| f.uring))
                .and_then(Option::take)
            else {
                continue;
            };
            self.free.push(ud as usize);
            if f.answered {
                continue;
            }
            // A cancelled waiting operation: by the client (a signal) or by its timeout.
            let result = if result == -libc::ECANCELED && f.timeout.is_some() || f.cancelled {
                if result == -libc::ECANCELED {
                    if f.cancelled {
                        -libc::EINTR
                    } else {
                        -libc::EAGAIN
                    }
                } else {
                    result
                }
            } else {
                result
            };
            let outcome = {
                let call = Call {
                    live: &f.live,
                    channel: f.channel,
                    req: f.req,
                    personality: self.mine.get(&f.live.s.id()).and_then(|m| m.personality),
                    keep: f.keep.as_deref(),
                };
                complete(&*self.ctx.handler, &call, result)
            };
            let rsp = match outcome_work(outcome) {
                Ok(rsp) => Some(rsp),
                Err(work) => self.start(&f.live, f.channel, f.req, work),
            };
            if let Some(rsp) = rsp {
                self.post(&f.live, f.channel, rsp);
                touched.push((f.live.s.id(), f.channel));
            }
        }
        for (slot, rsp) in done {
            let Some(f) = self
                .inflight
                .get_mut(slot)
                .filter(|f| f.as_ref().is_some_and(|f| !f.uring))
                .and_then(Option::take)
            else {
                continue;
            };
            self.free.push(slot);
            if f.answered {
                continue;
            }
            self.post(&f.live, f.channel, rsp);
            touched.push((f.live.s.id(), f.channel));
        }
        touched.sort_unstable();
        touched.dedup();
        for (id, c) in touched {
            self.publish(id, c);
        }
        true
    }

    fn back(&mut self, id: u64, channel: u32) -> Option<(&Arc<Live>, &mut BackState)> {
        let m = self.mine.get_mut(&id)?;
        let live = &m.live;
        m.channels
            .iter_mut()
            .find(|(c, _, _)| *c == channel)
            .map(|(_, b, _)| (live, b))
    }

    /// Pushes a response for a request taken earlier (its session may have ended since).
    fn post(&mut self, live: &Arc<Live>, channel: u32, rsp: Response) {
        let index = self.ctx.index;
        let Some((l, back)) = self.back(live.s.id(), channel) else {
            return;
        };
        if back.in_flight() == 0 {
            return;
        }
        back.push(&l.s.ring(channel), &rsp.to_slot());
        l.s.bump(channel, ringoff::SERVER_REQUESTS, 1);
        self.ctx.stats[index]
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&mut self, id: u64, channel: u32) {
        let index = self.ctx.index;
        let Some((l, back)) = self.back(id, channel) else {
            return;
        };
        if back.publish(&l.s.ring(channel)) {
            l.s.notify_client(channel);
            self.ctx.stats[index]
                .wait
                .wakeups
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Arms every owned ring; returns whether requests arrived meanwhile (do not sleep).
    fn arm_all(&self) -> bool {
        let mut pending = false;
        for m in self.mine.values() {
            for (c, back, _) in &m.channels {
                if !m.live.s.is_quarantined(*c) {
                    pending |= back.arm(&m.live.s.ring(*c));
                }
            }
        }
        pending
    }

    fn sleep(&mut self) {
        self.stats().wait.sleeps.fetch_add(1, Ordering::Relaxed);
        let mut events = [EpollEvent::empty(); 32];
        let timeout = EpollTimeout::try_from(WORKER_TICK).unwrap_or(EpollTimeout::NONE);
        let n = self.epoll.wait(&mut events, timeout).unwrap_or(0);
        for ev in &events[..n] {
            match ev.data() {
                WAKE_TOKEN => {
                    let _ = self.ctx.wake.read();
                }
                URING_TOKEN => {}
                id => {
                    if let Some(m) = self.mine.get(&id) {
                        m.live.s.bell().drain(self.ctx.index);
                    }
                }
            }
        }
    }

    /// Answers everything queued or in flight with EIO and wakes the clients.
    fn drain_for_shutdown(&mut self) {
        // In-flight io_uring operations and blocking calls: answer now, ignore their
        // completions.
        let mut pending: Vec<(Arc<Live>, u32, u64)> = Vec::new();
        for f in self.inflight.iter_mut().flatten() {
            if !f.answered {
                f.answered = true;
                pending.push((f.live.clone(), f.channel, f.req.raw.id));
            }
        }
        for (l, c, id) in pending {
            self.post(&l, c, shutdown_response(id));
        }
        // Queued requests: take and answer each.
        for m in self.mine.values_mut() {
            let s = &m.live.s;
            for (c, back, _) in m.channels.iter_mut() {
                let ring = s.ring(*c);
                while let Ok(Some(slot)) = back.take(&ring) {
                    let id = abi::Request::from_slot_unchecked(&slot).id;
                    back.push(&ring, &shutdown_response(id).to_slot());
                }
                back.publish(&ring);
            }
            // Announce the shutdown only after this worker's answers are published, so a
            // waiting client finds its answer before it sees the state change.
            s.set_state(xen_transport::ServerState::Closing);
            s.notify_all();
        }
        // Cancel what the kernel still holds, and wait for it so no buffer is written after
        // the mappings go away. (Blocking calls hold their session, and so its mapping.)
        let busy = self.inflight.iter().flatten().filter(|f| f.uring).count();
        if busy > 0 {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(u64::MAX);
            // SAFETY: a cancel entry names no buffers.
            let _ = unsafe { self.uring.submission().push(&cancel) };
            let _ = self
                .uring
                .submit_and_wait(busy.min(self.ctx.uring_entries as usize));
        }
    }
}

fn shutdown_response(id: u64) -> Response {
    Response {
        flags: RSP_FLAG_SHUTDOWN,
        ..Response::err(id, Errno::EIO)
    }
}

/// Runs a blocking call on a pool thread, acting as the session's client.
fn run_blocking(live: &Arc<Live>, channel: u32, req: ValidRequest, f: BlockingFn) -> Response {
    let id = req.raw.id;
    let switched = match &live.ctx.identity {
        Some(ident) => creds::assume(ident),
        None => creds::restore(),
    };
    if let Err(e) = switched {
        tracing::warn!(session = live.s.id(), %e, "cannot act as the client");
        return Response::err(id, Errno::EACCES);
    }
    let call = Call {
        live,
        channel,
        req,
        personality: None,
        keep: None,
    };
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(&call))) {
        Ok(rsp) => rsp,
        Err(_) => {
            tracing::error!(
                session = live.s.id(),
                opcode = req.opcode.name(),
                "blocking call panicked"
            );
            Response::err(id, Errno::EIO)
        }
    }
}

enum Served {
    Now(Response, bool),
    Later(ValidRequest, Work),
}

/// An outcome's response, or the work it still needs.
fn outcome_work(o: Outcome) -> Result<Response, Work> {
    match o {
        Outcome::Done(r) => Ok(r),
        Outcome::Submit(e) => Err(Work::Uring(e, None)),
        Outcome::SubmitKeep(e, k) => Err(Work::Uring(e, Some(k))),
        Outcome::Blocking(f) => Err(Work::Blocking(f)),
        Outcome::Wait(f) => Err(Work::Wait(f)),
        Outcome::SubmitWaiting(e, k, t) => Err(Work::Waiting(e, k, t)),
    }
}

/// Decodes one request slot and executes it (or prepares its io_uring entry or blocking call).
fn serve<H: Handler>(
    ctx: &WorkerCtx<H>,
    live: &Arc<Live>,
    channel: u32,
    personality: Option<u16>,
    slot: &RawSlot,
) -> Served {
    let session = &live.s;
    let req = match decode_request(slot, session.layout().window) {
        Ok(r) => r,
        Err((id, e)) => {
            tracing::debug!(session = session.id(), channel, %e, "request rejected");
            let rsp = Response {
                flags: RSP_FLAG_REJECTED,
                ..Response::err(id, e.errno())
            };
            return Served::Now(rsp, true);
        }
    };
    let call = Call {
        live,
        channel,
        req,
        personality,
        keep: None,
    };
    let id = call.id();
    let args = req.raw.args;
    #[allow(unreachable_patterns)] // domain opcodes join the match as the domains add them
    let outcome = match req.opcode {
        Opcode::Nop => Outcome::Done(Response::ok(id, (args[0] & i64::MAX as u64) as i64)),
        Opcode::UringNop => Outcome::Submit(opcode::Nop::new().build()),
        Opcode::Echo => {
            let mut buf = vec![0u8; req.raw.data_len as usize];
            call.read_payload(&mut buf);
            buf.reverse();
            let n = call.write_payload(&buf);
            Outcome::Done(Response {
                data_len: n as u32,
                ..Response::ok(id, n as i64)
            })
        }
        Opcode::WhoAmI => {
            let c = call.creds();
            let mut r = Response::ok(id, 0);
            r.aux[0] = c.pid as u64;
            r.aux[1] = u64::from(c.uid);
            r.aux[2] = u64::from(c.gid);
            Outcome::Done(r)
        }
        Opcode::Delay => {
            let us = args[0].min(60_000_000);
            let ts = Box::new(types::Timespec::from(Duration::from_micros(us)));
            let entry = opcode::Timeout::new(&*ts as *const types::Timespec).build();
            Outcome::SubmitKeep(entry, ts)
        }
        Opcode::PrepareClone => {
            // args[1]: how many handles (u32 each, in the payload) the snapshot keeps; 0: all.
            let n = (args[1] as usize).min(MAX_CLONE_LIST);
            let only = (n > 0)
                .then(|| {
                    let mut raw = vec![0u8; n * 4];
                    let got = call.read_payload_at(0, &mut raw);
                    raw[..got - got % 4]
                        .chunks_exact(4)
                        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<u32>>()
                })
                .map(|mut v| {
                    v.sort_unstable();
                    v
                });
            Outcome::Done(prepare_clone(ctx, live, id, args[0], only.as_deref()))
        }
        Opcode::DropClone => {
            let who = Who {
                pid: live.ctx.creds.pid,
                uid: live.ctx.creds.uid,
            };
            Outcome::Done(match ctx.tokens.drop_token(args[0], who) {
                Ok(()) => Response::ok(id, 0),
                Err(e) => Response::err(id, e),
            })
        }
        Opcode::BindClone => {
            let who = Who {
                pid: live.ctx.creds.pid,
                uid: live.ctx.creds.uid,
            };
            let r = match crate::creds::pidfd_open(args[1] as i32) {
                None => Err(Errno::ESRCH),
                Some(child) => ctx.tokens.bind_child(args[0], who, child),
            };
            Outcome::Done(match r {
                Ok(()) => Response::ok(id, 0),
                Err(e) => Response::err(id, e),
            })
        }
        Opcode::Import => {
            let snap = match ctx.tokens.redeem_pass(args[0]) {
                Ok(s) => s,
                Err(e) => return Served::Now(Response::err(id, e), false),
            };
            let pairs = match live.ctx.fds.import(&snap) {
                Ok(p) => p,
                Err(e) => return Served::Now(Response::err(id, e), false),
            };
            // The snapshot's own references go on the pool (closing may block).
            let _ = ctx.pool.spawn(Box::new(move || drop(snap)));
            let bytes: Vec<u8> = pairs
                .iter()
                .flat_map(|(o, n)| o.to_ne_bytes().into_iter().chain(n.to_ne_bytes()))
                .collect();
            let n = call.write_payload(&bytes);
            if n < bytes.len() {
                // The window cannot hold the answer: give the files back.
                for (_, h) in &pairs {
                    let _ = live.ctx.fds.remove(u64::from(*h));
                }
                return Served::Now(Response::err(id, Errno::ENOBUFS), false);
            }
            let news: Vec<u32> = pairs.iter().map(|p| p.1).collect();
            ctx.handler.imported(&call, &news);
            Outcome::Done(Response {
                data_len: n as u32,
                ..Response::ok(id, n as i64)
            })
        }
        Opcode::Adopt => {
            let rsp = adopt(ctx, live, id, args[0]);
            if rsp.result >= 0 {
                ctx.handler.adopted(&call);
            }
            Outcome::Done(rsp)
        }
        _ => ctx.handler.handle(&call),
    };
    match outcome_work(outcome) {
        Ok(rsp) => Served::Now(rsp, false),
        Err(work) => Served::Later(req, work),
    }
}

/// Most handles a `PrepareClone` may list.
const MAX_CLONE_LIST: usize = 1 << 16;

fn prepare_clone<H: Handler>(
    ctx: &WorkerCtx<H>,
    live: &Live,
    id: u64,
    kind: u64,
    only: Option<&[u32]>,
) -> Response {
    let Some(kind) = CloneKind::from_arg(kind) else {
        return Response::err(id, Errno::EINVAL);
    };
    let mut snap = live.ctx.fds.snapshot();
    if let Some(keep) = only {
        for (h, slot) in snap.iter_mut().enumerate() {
            if keep.binary_search(&(h as u32)).is_err() {
                *slot = None;
            }
        }
    }
    let shared: Vec<u32> = snap
        .iter()
        .enumerate()
        .filter_map(|(h, f)| f.as_ref().map(|_| h as u32))
        .collect();
    ctx.handler.cloning(live.s.id(), &shared);
    let creator = Who {
        pid: live.ctx.creds.pid,
        uid: live.ctx.creds.uid,
    };
    match ctx.tokens.prepare(kind, creator, snap) {
        Ok(token) => {
            let mut r = Response::ok(id, 0);
            r.aux[0] = token;
            r
        }
        Err(e) => Response::err(id, e),
    }
}

fn adopt<H: Handler>(ctx: &WorkerCtx<H>, live: &Live, id: u64, token: u64) -> Response {
    let c = &live.ctx;
    let who = Who {
        pid: c.creds.pid,
        uid: c.creds.uid,
    };
    let snap = match ctx.tokens.redeem(token, who, c.ppid) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(
                session = live.s.id(),
                pid = c.creds.pid,
                ?e,
                "adopt refused"
            );
            return Response::err(id, e);
        }
    };
    match c.fds.replace(snap) {
        Ok(old) => {
            if old.iter().any(Option::is_some) {
                // Closing may block: let the pool drop the replaced files.
                let _ = ctx.pool.spawn(Box::new(move || drop(old)));
            }
            let mut r = Response::ok(id, 0);
            r.aux[0] = c.fds.len() as u64;
            r
        }
        Err(e) => Response::err(id, e),
    }
}

fn complete<H: Handler>(handler: &H, call: &Call<'_>, result: i32) -> Outcome {
    match call.req.opcode {
        Opcode::UringNop => Outcome::Done(Response::ok(call.id(), i64::from(result))),
        // A timeout completes with -ETIME when it expires: that is success for Delay.
        Opcode::Delay if result == -libc::ETIME => Outcome::Done(Response::ok(call.id(), 0)),
        Opcode::Delay => Outcome::Done(Response::ok(call.id(), i64::from(result))),
        _ => handler.complete(call, result),
    }
}
