//! The server side of a session: the region seen from a service domain.
//!
//! The service runtime owns the polling policy; this module gives it checked access to one
//! session's rings, data windows, state word and counters, and quarantines channels whose
//! client broke the ring protocol.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::ServerBell;
use crate::events::Readiness;
use crate::layout::{header, ring, Layout, EVENT_SLOTS, REGION_MAGIC, REGION_VERSION};
use crate::mem::SharedMem;
use crate::ring::{RingError, RingView};
use crate::wait::WaitSnapshot;
use crate::ServerState;

/// Who the client is, as the kernel reported it at connect time (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One session, server side.
pub struct ServerSession {
    id: u64,
    creds: Credentials,
    mem: SharedMem,
    layout: Layout,
    bell: Box<dyn ServerBell>,
    control: OwnedFd,
    quarantined: Box<[AtomicBool]>,
    /// The readiness eventfd shared with the client (semaphore mode), if the backend has one.
    event_fd: Option<OwnedFd>,
}

impl ServerSession {
    /// Initialises the region header and wraps the session.
    pub fn new(
        id: u64,
        creds: Credentials,
        mem: SharedMem,
        layout: Layout,
        bell: Box<dyn ServerBell>,
        control: OwnedFd,
    ) -> Self {
        layout
            .check_len(mem.len())
            .expect("the server sized the region from this layout");
        mem.u32_at(header::MAGIC)
            .store(REGION_MAGIC, Ordering::Relaxed);
        mem.u32_at(header::VERSION)
            .store(REGION_VERSION, Ordering::Relaxed);
        mem.u32_at(header::CHANNELS)
            .store(layout.channels, Ordering::Relaxed);
        mem.u32_at(header::RING_SIZE)
            .store(layout.ring_size, Ordering::Relaxed);
        mem.u32_at(header::WINDOW)
            .store(layout.window, Ordering::Relaxed);
        mem.u64_at(header::SESSION_ID).store(id, Ordering::Relaxed);
        mem.u32_at(header::SERVER_STATE)
            .store(ServerState::Running as u32, Ordering::Release);
        let quarantined = (0..layout.channels)
            .map(|_| AtomicBool::new(false))
            .collect();
        ServerSession {
            id,
            creds,
            mem,
            layout,
            bell,
            control,
            quarantined,
            event_fd: None,
        }
    }

    /// Sets the readiness eventfd (the local backend passes it to the client).
    pub fn set_event_fd(&mut self, fd: OwnedFd) {
        self.event_fd = Some(fd);
    }

    /// The readiness eventfd, if any.
    pub fn event_fd(&self) -> Option<&OwnedFd> {
        self.event_fd.as_ref()
    }

    /// Publishes handle `h`'s readiness: `mask` is what is ready now; `edge` says new
    /// readiness arrived (edge-triggered waiters see it once more). Handles at or above
    /// [`EVENT_SLOTS`] are ignored. Wakes sleeping client threads.
    pub fn publish_event(&self, h: usize, mask: u32, edge: bool) {
        if h >= EVENT_SLOTS {
            return;
        }
        let w = self.mem.u64_at(self.layout.event_off(h));
        // Several server threads may publish the same word (a worker after a call, the
        // readiness watcher after an edge): update it atomically so no edge is lost.
        let mut cur = w.load(Ordering::SeqCst);
        loop {
            let old = Readiness::from_word(cur);
            let gained = mask & !old.mask != 0;
            if old.mask == mask && !edge {
                return;
            }
            let new = Readiness {
                mask,
                seq: if edge || gained {
                    old.seq.wrapping_add(1)
                } else {
                    old.seq
                },
            };
            match w.compare_exchange(cur, new.to_word(), Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.mem
            .u32_at(header::EVENT_EPOCH)
            .fetch_add(1, Ordering::SeqCst);
        self.wake_event_waiters();
    }

    /// Clears handle `h`'s readiness word (the handle was closed).
    pub fn clear_event(&self, h: usize) {
        if h < EVENT_SLOTS {
            self.mem
                .u64_at(self.layout.event_off(h))
                .store(0, Ordering::SeqCst);
        }
    }

    /// Writes one eventfd unit per announced waiter.
    pub fn wake_event_waiters(&self) {
        // The client reads the value once and clamps it: it is only a wake-up count.
        let waiters = self
            .mem
            .u32_at(header::EVENT_WAITERS)
            .load(Ordering::SeqCst);
        if waiters == 0 {
            return;
        }
        let Some(fd) = &self.event_fd else {
            return;
        };
        let n: u64 = u64::from(waiters.min(1024));
        // SAFETY: writes 8 bytes from a local to an eventfd this session owns.
        let _ = unsafe { libc::write(fd.as_raw_fd(), &n as *const u64 as *const libc::c_void, 8) };
    }

    /// Session id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's kernel-reported credentials.
    pub fn creds(&self) -> Credentials {
        self.creds
    }

    /// The region geometry.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The control socket (readable/hung-up when the client goes away).
    pub fn control(&self) -> &OwnedFd {
        &self.control
    }

    /// The doorbells.
    pub fn bell(&self) -> &dyn ServerBell {
        &*self.bell
    }

    /// The ring of channel `c`.
    pub fn ring(&self, c: u32) -> RingView<'_> {
        RingView::new(&self.mem, &self.layout, c)
    }

    /// Stream `i` (see [`crate::stream`]), if the session has streams and `i` is one.
    pub fn stream(&self, i: u32) -> Option<crate::Stream<'_>> {
        (i < self.layout.streams).then(|| crate::Stream::new(&self.mem, &self.layout, i))
    }

    /// Gives stream `i` to handle `h`, afresh (its map word names it).
    pub fn attach_stream(&self, i: u32, h: u32) -> Option<crate::Stream<'_>> {
        if h as usize >= crate::layout::EVENT_SLOTS {
            return None;
        }
        let s = self.stream(i)?;
        s.reset(&self.layout, i, h);
        Some(s)
    }

    /// Handle `h` has no stream any more (its map word is cleared).
    pub fn unmap_stream(&self, h: u32) {
        crate::Stream::unmap(&self.mem, &self.layout, h)
    }

    /// Publishes the server state.
    pub fn set_state(&self, state: ServerState) {
        self.mem
            .u32_at(header::SERVER_STATE)
            .store(state as u32, Ordering::Release);
    }

    /// Wakes whoever sleeps on channel `c`.
    pub fn notify_client(&self, c: u32) {
        self.bump(c, ring::SERVER_WAKEUPS, 1);
        let ring = self.ring(c);
        // A failed futex wake cannot be retried usefully; the client's sleep is bounded.
        let _ = self.bell.notify_client(c, ring.rsp_prod_word());
    }

    /// Wakes every channel (shutdown).
    pub fn notify_all(&self) {
        for c in 0..self.layout.channels {
            let _ = self.bell.notify_client(c, self.ring(c).rsp_prod_word());
        }
    }

    /// Stops serving channel `c` because its client broke the protocol.
    pub fn quarantine(&self, c: u32, err: &RingError) {
        if !self.quarantined[c as usize].swap(true, Ordering::Relaxed) {
            tracing::warn!(session = self.id, channel = c, pid = self.creds.pid, %err,
                "client broke the ring protocol; channel quarantined");
        }
    }

    /// True when channel `c` is quarantined.
    pub fn is_quarantined(&self, c: u32) -> bool {
        self.quarantined[c as usize].load(Ordering::Relaxed)
    }

    /// The id of the request the client last asked to cancel on channel `c` (0: none).
    pub fn cancel_word(&self, c: u32) -> u64 {
        self.mem
            .u64_at(self.layout.ring_off(c) + ring::CLIENT_CANCEL)
            .load(Ordering::Acquire)
    }

    /// Adds `n` to a server counter of channel `c` (a `ring::SERVER_*` offset).
    pub fn bump(&self, c: u32, counter: usize, n: u64) {
        let w = self.mem.u64_at(self.layout.ring_off(c) + counter);
        w.store(w.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn window_at(&self, c: u32, off: u32, len: usize) -> usize {
        assert!(abi::range_fits(off, len as u32, self.layout.window) && len <= u32::MAX as usize);
        self.layout.window_off(c) + off as usize
    }

    /// Copies payload bytes out of channel `c`'s window (`off`/`len` already validated).
    pub fn read_window(&self, c: u32, off: u32, out: &mut [u8]) {
        self.mem.copy_out(self.window_at(c, off, out.len()), out);
    }

    /// Copies result bytes into channel `c`'s window (`off`/`len` already validated).
    pub fn write_window(&self, c: u32, off: u32, data: &[u8]) {
        self.mem.copy_in(self.window_at(c, off, data.len()), data);
    }

    /// `preadv2` of `fd` into `len` bytes of channel `c`'s window at `off` (see
    /// [`SharedMem::pread_into`]).
    pub fn pread_window(
        &self,
        c: u32,
        off: u32,
        len: u32,
        fd: std::os::fd::BorrowedFd<'_>,
        file_off: i64,
        flags: i32,
    ) -> Result<usize, i32> {
        let at = self.window_at(c, off, len as usize);
        self.mem.pread_into(at, len as usize, fd, file_off, flags)
    }

    /// Pointer to `len` bytes of channel `c`'s window, for the kernel to read or write.
    pub fn window_ptr(&self, c: u32, off: u32, len: u32) -> *mut u8 {
        self.mem
            .raw_range(self.window_at(c, off, len as usize), len as usize)
    }

    /// Sums the client's own counters (client-written, so informational only).
    pub fn client_stats(&self) -> WaitSnapshot {
        WaitSnapshot {
            calls: self.sum(ring::CLIENT_CALLS),
            spins: self.sum(ring::CLIENT_SPINS),
            sleeps: self.sum(ring::CLIENT_SLEEPS),
            wakeups: self.sum(ring::CLIENT_WAKEUPS),
        }
    }

    /// Sums one `ring::SERVER_*` or `ring::CLIENT_*` counter over all channels.
    pub fn sum(&self, counter: usize) -> u64 {
        (0..self.layout.channels)
            .map(|c| {
                self.mem
                    .u64_at(self.layout.ring_off(c) + counter)
                    .load(Ordering::Relaxed)
            })
            .fold(0u64, u64::wrapping_add)
    }
}
