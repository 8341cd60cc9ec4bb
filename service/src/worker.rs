//! One polling worker: its channels of every session, its io_uring, its idle policy.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
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
use xen_transport::{Credentials, ServerSession, SpinPolicy};

use crate::{Handler, Sessions, ShutdownHandle, WorkerStats, WORKER_TICK};

/// What a handler does with a request.
pub enum Outcome {
    /// Answer now.
    Done(Response),
    /// Execute through io_uring; the completion goes to [`Handler::complete`]. The entry's
    /// `user_data` is set by the runtime. Buffers it names must live in the call's data window
    /// ([`Call::window_ptr`]) or in memory the handler keeps alive until completion.
    Submit(io_uring::squeue::Entry),
}

/// One request being served.
pub struct Call<'a> {
    session: &'a ServerSession,
    channel: u32,
    req: ValidRequest,
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
        self.session.creds()
    }

    /// The session id.
    pub fn session_id(&self) -> u64 {
        self.session.id()
    }

    /// Copies the request payload out of shared memory (`len <= data_len`).
    pub fn read_payload(&self, out: &mut [u8]) {
        let n = out.len().min(self.req.raw.data_len as usize);
        self.session
            .read_window(self.channel, self.req.raw.data_off, &mut out[..n]);
    }

    /// Writes result bytes at the start of the request's payload range (truncated to it).
    pub fn write_payload(&self, data: &[u8]) -> usize {
        let n = data.len().min(self.req.raw.data_len as usize);
        self.session
            .write_window(self.channel, self.req.raw.data_off, &data[..n]);
        n
    }

    /// Pointer to the request's payload range, for io_uring buffers.
    pub fn window_ptr(&self) -> *mut u8 {
        self.session
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
}

/// A session as one worker sees it: its channels and their private indices.
struct Mine {
    session: Arc<ServerSession>,
    channels: Vec<(u32, BackState)>,
}

/// An io_uring operation in flight.
struct InFlight {
    session: Arc<ServerSession>,
    /// Index into `Mine::channels` is not stable across refreshes; keep the channel number.
    channel: u32,
    req: ValidRequest,
    /// Already answered (shutdown): ignore the completion.
    answered: bool,
    /// Memory the entry points at that must outlive the operation.
    _keep: Option<Box<types::Timespec>>,
}

const WAKE_TOKEN: u64 = u64::MAX;
const URING_TOKEN: u64 = u64::MAX - 1;
/// Requests taken from one channel per pass, so one busy client cannot starve the others.
const BATCH: usize = 16;

struct Worker<H: Handler> {
    ctx: WorkerCtx<H>,
    uring: IoUring,
    epoll: Epoll,
    mine: HashMap<u64, Mine>,
    generation: u64,
    inflight: Vec<Option<InFlight>>,
    free: Vec<usize>,
    spin: AdaptiveSpin,
    /// io_uring entries prepared during a pass, submitted after it (reused buffer).
    submissions: Vec<Submission>,
}

type Submission = (
    Arc<ServerSession>,
    u32,
    ValidRequest,
    io_uring::squeue::Entry,
    Option<Box<types::Timespec>>,
);

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
    };
    w.run();
}

impl<H: Handler> Worker<H> {
    fn stats(&self) -> &WorkerStats {
        &self.ctx.stats[self.ctx.index]
    }

    fn run(&mut self) {
        let mut idle_since: Option<Instant> = None;
        let mut idle_passes = 0u32;
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
            if !idle_passes.is_multiple_of(64) || since.elapsed() < self.spin.budget() {
                std::hint::spin_loop();
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
        let ids: Vec<u64> = all.iter().map(|s| s.id()).collect();
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
                    .delete(m.session.bell().doorbell_fd(self.ctx.index));
            }
        }
        for s in all {
            if self.mine.contains_key(&s.id()) {
                continue;
            }
            let channels = (0..s.layout().channels)
                .filter(|c| *c as usize % self.ctx.workers == self.ctx.index)
                .map(|c| (c, BackState::default()))
                .collect();
            let fd = s.bell().doorbell_fd(self.ctx.index);
            if let Err(e) = self
                .epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, s.id()))
            {
                tracing::error!(session = s.id(), %e, "cannot watch doorbell; session not served");
                continue;
            }
            self.mine.insert(
                s.id(),
                Mine {
                    session: s,
                    channels,
                },
            );
        }
    }

    /// Serves every owned channel once; returns whether anything was done.
    fn poll_rings(&mut self) -> bool {
        let mut busy = false;
        let mut submissions = std::mem::take(&mut self.submissions);
        let handler = &*self.ctx.handler;
        let stats = &self.ctx.stats[self.ctx.index];
        for m in self.mine.values_mut() {
            let session = &m.session;
            for (c, back) in m.channels.iter_mut() {
                if session.is_quarantined(*c) {
                    continue;
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
                    match serve(handler, session, *c, &slot) {
                        Served::Now(rsp, rejected) => {
                            back.push(&ring, &rsp.to_slot());
                            answered += 1;
                            if rejected {
                                session.bump(*c, ringoff::SERVER_REJECTED, 1);
                                stats.rejected.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Served::Uring(entry, req, keep) => {
                            submissions.push((session.clone(), *c, req, entry, keep))
                        }
                    }
                }
                if answered > 0 {
                    if back.publish(&ring) {
                        session.notify_client(*c);
                        stats.wait.wakeups.fetch_add(1, Ordering::Relaxed);
                    }
                    session.bump(*c, ringoff::SERVER_REQUESTS, answered);
                    stats.requests.fetch_add(answered, Ordering::Relaxed);
                }
            }
        }
        for (session, c, req, entry, keep) in submissions.drain(..) {
            self.submit(&session, c, req, entry, keep);
        }
        self.submissions = submissions;
        busy
    }

    fn submit(
        &mut self,
        session: &Arc<ServerSession>,
        channel: u32,
        req: ValidRequest,
        entry: io_uring::squeue::Entry,
        keep: Option<Box<types::Timespec>>,
    ) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.inflight.push(None);
            self.inflight.len() - 1
        });
        self.inflight[slot] = Some(InFlight {
            session: session.clone(),
            channel,
            req,
            answered: false,
            _keep: keep,
        });
        let entry = entry.user_data(slot as u64);
        loop {
            // SAFETY: the buffers named by `entry` live in the session's mapped window or in
            // `_keep`; the `Arc<ServerSession>` and `_keep` stored in `inflight[slot]` keep them
            // alive until the completion is reaped.
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
                break;
            }
            // Submission queue full: hand the batch to the kernel and retry.
            if let Err(e) = self.uring.submit() {
                tracing::error!(%e, "io_uring submit failed");
            }
        }
        self.stats().uring.fetch_add(1, Ordering::Relaxed);
    }

    /// Submits queued entries and posts every completion; returns whether any arrived.
    fn reap(&mut self) -> bool {
        if !self.uring.submission().is_empty() {
            if let Err(e) = self.uring.submit() {
                tracing::error!(%e, "io_uring submit failed");
            }
        }
        let cqes: Vec<(u64, i32)> = self
            .uring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        if cqes.is_empty() {
            return false;
        }
        let mut touched: Vec<(u64, u32)> = Vec::new();
        for (ud, result) in cqes {
            let Some(f) = self.inflight.get_mut(ud as usize).and_then(Option::take) else {
                continue;
            };
            self.free.push(ud as usize);
            if f.answered {
                continue;
            }
            let call = Call {
                session: &f.session,
                channel: f.channel,
                req: f.req,
            };
            let rsp = complete(&*self.ctx.handler, &call, result);
            self.post(&f.session, f.channel, rsp);
            touched.push((f.session.id(), f.channel));
        }
        touched.sort_unstable();
        touched.dedup();
        for (id, c) in touched {
            self.publish(id, c);
        }
        true
    }

    fn back(&mut self, id: u64, channel: u32) -> Option<(&Arc<ServerSession>, &mut BackState)> {
        let m = self.mine.get_mut(&id)?;
        let session = &m.session;
        m.channels
            .iter_mut()
            .find(|(c, _)| *c == channel)
            .map(|(_, b)| (session, b))
    }

    /// Pushes a response for a request taken earlier (its session may have ended since).
    fn post(&mut self, session: &Arc<ServerSession>, channel: u32, rsp: Response) {
        let index = self.ctx.index;
        let Some((s, back)) = self.back(session.id(), channel) else {
            return;
        };
        if back.in_flight() == 0 {
            return;
        }
        back.push(&s.ring(channel), &rsp.to_slot());
        s.bump(channel, ringoff::SERVER_REQUESTS, 1);
        self.ctx.stats[index]
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&mut self, id: u64, channel: u32) {
        let index = self.ctx.index;
        let Some((s, back)) = self.back(id, channel) else {
            return;
        };
        if back.publish(&s.ring(channel)) {
            s.notify_client(channel);
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
            for (c, back) in &m.channels {
                if !m.session.is_quarantined(*c) {
                    pending |= back.arm(&m.session.ring(*c));
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
                        m.session.bell().drain(self.ctx.index);
                    }
                }
            }
        }
    }

    /// Answers everything queued or in flight with EIO and wakes the clients.
    fn drain_for_shutdown(&mut self) {
        for m in self.mine.values() {
            m.session.set_state(xen_transport::ServerState::Closing);
        }
        // In-flight io_uring operations: answer now, ignore their completions.
        let mut pending: Vec<(Arc<ServerSession>, u32, u64)> = Vec::new();
        for f in self.inflight.iter_mut().flatten() {
            if !f.answered {
                f.answered = true;
                pending.push((f.session.clone(), f.channel, f.req.raw.id));
            }
        }
        for (s, c, id) in pending {
            self.post(&s, c, shutdown_response(id));
        }
        // Queued requests: take and answer each.
        for m in self.mine.values_mut() {
            let s = &m.session;
            for (c, back) in m.channels.iter_mut() {
                let ring = s.ring(*c);
                while let Ok(Some(slot)) = back.take(&ring) {
                    let id = abi::Request::from_slot_unchecked(&slot).id;
                    back.push(&ring, &shutdown_response(id).to_slot());
                }
                back.publish(&ring);
            }
            s.notify_all();
        }
        // Cancel what the kernel still holds, and wait for it so no buffer is written after
        // the mappings go away.
        let busy = self.inflight.iter().flatten().count();
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

enum Served {
    Now(Response, bool),
    Uring(
        io_uring::squeue::Entry,
        ValidRequest,
        Option<Box<types::Timespec>>,
    ),
}

/// Decodes one request slot and executes it (or prepares its io_uring entry).
fn serve<H: Handler>(handler: &H, session: &ServerSession, channel: u32, slot: &RawSlot) -> Served {
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
        session,
        channel,
        req,
    };
    let id = call.id();
    let mut keep = None;
    #[allow(unreachable_patterns)] // domain opcodes join the match as the domains add them
    let outcome = match req.opcode {
        Opcode::Nop => Outcome::Done(Response::ok(id, (req.raw.args[0] & i64::MAX as u64) as i64)),
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
            let us = req.raw.args[0].min(60_000_000);
            let ts = Box::new(types::Timespec::from(Duration::from_micros(us)));
            let entry = opcode::Timeout::new(&*ts as *const types::Timespec).build();
            keep = Some(ts);
            Outcome::Submit(entry)
        }
        _ => handler.handle(&call),
    };
    match outcome {
        Outcome::Done(rsp) => Served::Now(rsp, false),
        Outcome::Submit(e) => Served::Uring(e, req, keep),
    }
}

fn complete<H: Handler>(handler: &H, call: &Call<'_>, result: i32) -> Response {
    match call.req.opcode {
        Opcode::UringNop => Response::ok(call.id(), i64::from(result)),
        // A timeout completes with -ETIME when it expires: that is success for Delay.
        Opcode::Delay if result == -libc::ETIME => Response::ok(call.id(), 0),
        Opcode::Delay => Response::ok(call.id(), i64::from(result)),
        _ => handler.complete(call, result),
    }
}
