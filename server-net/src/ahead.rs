//! Receiving ahead: a connected TCP socket's data goes into a stream of its session's region
//! as it arrives, so that the client's `recv` is a copy out of shared memory with no round
//! trip ([`xen_transport::stream`]).
//!
//! A socket gets a stream when it is accepted by a session whose client asked for streams,
//! while that session is its only holder. The readiness watcher receives into it on every
//! edge (one `recvmsg` into the free space, non-blocking), and publishes `POLLIN` as the
//! stream's level; a stream that filled up is refilled when the client, having made room,
//! posts [`abi::Opcode::Refill`]. The end of the file and a socket error are kept in the
//! stream's state, behind the bytes that came before them.
//!
//! A stream is *detached* for good when its socket is about to be shared (a fork, an exec, a
//! descriptor passed over SCM_RIGHTS: [`service::Handler::cloning`]) or when any call asks
//! the server to receive on the socket itself (a `recv` the client cannot serve from the
//! stream: control messages, `MSG_OOB`, a receive timeout). The server takes every unread
//! byte back from the stream (a client thread reading at that moment either gets a byte or
//! leaves it to the server, never both) and keeps them, with a pending error, as the socket's
//! *pushback*, which every later `Recv` of any holder is served from first: the byte order
//! of the connection is the kernel's whoever reads it.
//!
//! A socket closed with unread data in its stream is closed with a reset, as Linux closes a
//! socket with unread data in its receive queue.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use service::fdtable::Handle;
use service::SessionRef;
use xen_transport::StreamState;

use crate::sys;

/// A socket's transmit stream is its receive stream's index plus this.
const TX: u32 = xen_transport::layout::TX_OFFSET;

/// Whether a transmit stream with `room` free bytes reads as writable: a quarter of it free,
/// as Linux reports a socket writable once a good part of its send buffer is free.
pub fn writable(room: usize) -> bool {
    room >= xen_transport::layout::STREAM_BYTES / 4
}

/// Sends `rest` on `fd`, waiting for room, for at most [`CLOSE_DRAIN_MS`].
fn send_rest(fd: &Handle, mut rest: &[u8]) {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(CLOSE_DRAIN_MS as u64);
    while !rest.is_empty() {
        let iov = [libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        }];
        // SAFETY: the iovec covers `rest`, a live private buffer.
        match unsafe { sys::send_iov(fd.as_fd(), &iov, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) } {
            Ok(n) => rest = &rest[n..],
            Err(libc::EINTR) => {}
            Err(libc::EAGAIN) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return;
                }
                sys::wait_writable(fd.as_fd(), left.as_millis().min(1000) as i32);
            }
            Err(_) => return,
        }
    }
}

/// Stops `slot`'s streams for good because the client broke the protocol on its `which`
/// stream (an index out of range): the socket goes by call from now on.
fn stop(slot: &Slot, p: &mut Producer, s: &xen_transport::Stream<'_>, which: &str) {
    tracing::debug!(
        session = slot.session.id(),
        handle = slot.handle,
        which,
        "stream index out of range; stream stopped"
    );
    p.detached = true;
    s.set(StreamState::DETACHED);
}

/// One stream given to a socket.
struct Slot {
    index: u32,
    handle: u32,
    session: SessionRef,
    fd: Handle,
    /// The server's private tail (bytes produced) and whether the stream is detached.
    st: Mutex<Producer>,
}

#[derive(Default)]
struct Producer {
    /// Receive stream: bytes produced.
    tail: u64,
    detached: bool,
    /// Transmit stream: bytes sent.
    tx_head: u64,
    /// Transmit stream: the socket refused more (EAGAIN); sending goes on at its next
    /// writable edge.
    tx_blocked: bool,
}

/// How long the server waits, on the worker, for a socket to take what its transmit stream
/// still holds before the stream is detached or the socket shut down (a rare case: a fork,
/// a shutdown or a send by call while the socket's send buffer is full).
pub const DRAIN_WAIT_MS: i32 = 5000;

/// How long a socket closed with bytes still in its transmit stream keeps sending them in
/// the background, as Linux goes on sending after a close.
const CLOSE_DRAIN_MS: i32 = 60_000;

/// Bytes (and a pending error) taken back from a detached stream.
#[derive(Default)]
struct Pushback {
    data: Vec<u8>,
    error: i32,
}

#[derive(Default)]
struct Inner {
    /// Streams in use, by (session, handle).
    slots: HashMap<(u64, u32), Arc<Slot>>,
    /// Attached (not detached) streams by socket (the `OpenFd`'s address).
    by_socket: HashMap<usize, Arc<Slot>>,
    /// Free stream indices per session (created on the session's first stream).
    free: HashMap<u64, Vec<u32>>,
    /// Pushback by socket, with a weak reference that tells when the socket is gone.
    pushback: HashMap<usize, (std::sync::Weak<service::fdtable::OpenFd>, Pushback)>,
}

/// The network domain's streams.
#[derive(Default)]
pub struct Ahead {
    inner: Mutex<Inner>,
    /// Sockets with pushback (so that `Recv` looks only when some have).
    pushed: AtomicUsize,
    /// Bytes received ahead (telemetry).
    pub bytes: std::sync::atomic::AtomicU64,
    /// Bytes sent from transmit streams (telemetry).
    pub sent: std::sync::atomic::AtomicU64,
}

fn key(fd: &Handle) -> usize {
    Arc::as_ptr(fd) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ahead {
    /// Gives `fd`, handle `h` of `session`, a stream if the session has streams and one is
    /// free, and receives into it what has arrived already. Returns whether it got one.
    pub fn attach(&self, session: &SessionRef, h: u32, fd: &Handle) -> bool {
        let n = session.streams();
        if n == 0 || h as usize >= xen_transport::layout::EVENT_SLOTS {
            return false;
        }
        let slot = {
            let mut inner = lock(&self.inner);
            if inner.slots.contains_key(&(session.id(), h)) {
                return false;
            }
            let free = inner
                .free
                .entry(session.id())
                .or_insert_with(|| (0..n.min(xen_transport::layout::TX_OFFSET)).rev().collect());
            let Some(index) = free.pop() else {
                return false;
            };
            if session.attach_stream(index, h).is_none() {
                inner.free.entry(session.id()).or_default().push(index);
                return false;
            }
            let slot = Arc::new(Slot {
                index,
                handle: h,
                session: session.clone(),
                fd: fd.clone(),
                st: Mutex::new(Producer::default()),
            });
            inner.slots.insert((session.id(), h), slot.clone());
            inner.by_socket.insert(key(fd), slot.clone());
            slot
        };
        if self.fill(&slot, sys::readiness(fd.as_fd())) {
            self.republish(&slot);
        }
        true
    }

    fn slot(&self, id: u64, h: u32) -> Option<Arc<Slot>> {
        lock(&self.inner).slots.get(&(id, h)).cloned()
    }

    /// Receives into the stream what the socket has (one `recvmsg` into the free space, more
    /// while each fills it and a client makes room meanwhile); returns whether the stream
    /// changed (new bytes, the end of the file, an error). `mask` is the socket's readiness
    /// as polled before: when it shows the peer's end (or an error), a short read is followed
    /// by one more, which finds that end — its edge came before this fill and will not come
    /// again.
    fn fill(&self, slot: &Slot, mask: u32) -> bool {
        let ended = mask & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as u32 != 0;
        let mut p = lock(&slot.st);
        if p.detached {
            return false;
        }
        let Some(s) = slot.session.stream(slot.index) else {
            return false;
        };
        let mut changed = false;
        // Until the socket is empty, ended or failed, or the stream full: no bound on the
        // reads, since stopping anywhere else (the stream neither full nor the socket empty)
        // would leave data in the socket that no edge and no refill ever asks for; the
        // peer's data and the client's reading are the only things that keep it going.
        loop {
            let snap = s.snapshot();
            if snap.state.has(StreamState::EOF) {
                break;
            }
            let fd = slot.fd.as_fd();
            let r = s.fill(&mut p.tail, |iov| {
                // SAFETY: the iovecs come from `Stream::fill`: the stream's free space, inside
                // the session's mapping, which `slot.session` keeps mapped; no Rust reference
                // covers shared memory.
                unsafe { sys::recv_iov(fd, iov, libc::MSG_DONTWAIT) }
            });
            match r {
                Ok((0, _)) => {
                    s.set(StreamState::EOF);
                    changed = true;
                    break;
                }
                Ok((n, room)) => {
                    self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    changed = true;
                    // A short read emptied the socket (but for its end, if it has one); one
                    // that filled the room offered may have left more. (Not "is the stream
                    // full now": a client may have made room since.)
                    if n < room && !ended {
                        break;
                    }
                }
                Err(Some(libc::EAGAIN)) | Err(Some(libc::EINTR)) => break,
                Err(Some(e)) => {
                    // After a connection's error its reads give the end of the file.
                    s.set_error(e);
                    s.set(StreamState::EOF);
                    changed = true;
                    break;
                }
                Err(None) => {
                    if s.unread(p.tail).is_none() {
                        // The client broke the protocol (its head is out of range): it gets
                        // nothing more through the stream.
                        stop(slot, &mut p, &s, "receive");
                        break;
                    }
                    s.set(StreamState::FULL);
                    // A client that made room between the look and the flag did not see the
                    // flag, and asks for nothing: look again (taking the flag back, unless
                    // that client took it first and asks).
                    if s.unread(p.tail)
                        .is_some_and(|u| u < xen_transport::layout::STREAM_BYTES)
                        && s.take_full()
                    {
                        continue;
                    }
                    break;
                }
            }
        }
        tracing::trace!(
            session = slot.session.id(),
            handle = slot.handle,
            tail = p.tail,
            unread = ?s.unread(p.tail),
            state = s.snapshot().state.0,
            changed,
            "stream filled"
        );
        changed
    }

    /// `POLLIN` as the client must see it for handle `h` of `session` whose socket reports
    /// `mask`, receiving ahead first when `edge` (new readiness arrived): the stream's level
    /// for a socket with a stream, and `POLLIN` for one with pushback.
    pub fn level(&self, session: &SessionRef, h: u32, fd: &Handle, mask: u32, edge: bool) -> u32 {
        let pollin = libc::POLLIN as u32;
        let pollout = libc::POLLOUT as u32;
        if let Some(slot) = self.slot(session.id(), h) {
            if edge {
                self.fill(&slot, mask);
                if mask & pollout != 0 {
                    self.send_queued(&slot);
                }
            }
            let p = lock(&slot.st);
            if !p.detached {
                let readable = slot
                    .session
                    .stream(slot.index)
                    .is_some_and(|s| s.snapshot().readable());
                let mut m = if readable {
                    mask | pollin
                } else {
                    mask & !pollin
                };
                if let Some(tx) = slot.session.stream(slot.index + TX) {
                    m = if writable(tx.room()) {
                        m | pollout
                    } else {
                        m & !pollout
                    };
                }
                return m;
            }
        }
        if self.pushed.load(Ordering::Relaxed) > 0 && self.has_pushback(fd) {
            return mask | pollin;
        }
        mask
    }

    fn has_pushback(&self, fd: &Handle) -> bool {
        lock(&self.inner)
            .pushback
            .get(&key(fd))
            .is_some_and(|(_, p)| !p.data.is_empty() || p.error != 0)
    }

    /// Sends what the transmit stream holds (non-blocking); returns whether anything
    /// changed for the client (room made, an error kept).
    fn send_queued(&self, slot: &Slot) -> bool {
        let mut p = lock(&slot.st);
        if p.detached {
            return false;
        }
        self.send_locked(slot, &mut p)
    }

    fn send_locked(&self, slot: &Slot, p: &mut Producer) -> bool {
        let Some(tx) = slot.session.stream(slot.index + TX) else {
            return false;
        };
        tx.take_pending();
        let mut changed = false;
        p.tx_blocked = false;
        loop {
            let fd = slot.fd.as_fd();
            let r = tx.drain(&mut p.tx_head, |iov| {
                // SAFETY: the iovecs come from `Stream::drain`: queued bytes of the stream,
                // inside the session's mapping, which `slot.session` keeps mapped.
                unsafe { sys::send_iov(fd, iov, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
            });
            match r {
                Ok((_, 0)) => break,
                Ok((n, q)) => {
                    changed = true;
                    self.sent.fetch_add(n as u64, Ordering::Relaxed);
                    if n < q {
                        p.tx_blocked = true;
                        break;
                    }
                }
                Err(Some(libc::EINTR)) => continue,
                Err(Some(libc::EAGAIN)) => {
                    p.tx_blocked = true;
                    break;
                }
                Err(Some(e)) => {
                    // The connection failed: what it still held is lost, as on Linux, and
                    // the client hears of it at its next call.
                    let mut lost = Vec::new();
                    tx.take_queued(&mut p.tx_head, &mut lost);
                    tx.set_error(e);
                    changed = true;
                    break;
                }
                Err(None) => {
                    stop(slot, p, &tx, "transmit");
                    break;
                }
            }
        }
        changed
    }

    /// Sends everything the transmit stream holds, waiting up to `ms` for the socket to
    /// take it (the caller is about to do something that must come after those bytes);
    /// returns whether it is empty now.
    fn send_all_locked(&self, slot: &Slot, p: &mut Producer, ms: i32) -> bool {
        let Some(tx) = slot.session.stream(slot.index + TX) else {
            return true;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
        loop {
            self.send_locked(slot, p);
            if p.detached || tx.queued(p.tx_head).is_none_or(|q| q == 0) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !sys::wait_writable(slot.fd.as_fd(), left.as_millis() as i32) {
                return false;
            }
        }
    }

    /// `Flush`: the client copied bytes into the transmit stream of handle `h`.
    pub fn flush(&self, session: &SessionRef, h: u32) {
        let Some(slot) = self.slot(session.id(), h) else {
            return;
        };
        if self.send_queued(&slot) {
            self.republish(&slot);
        }
    }

    /// Before the server sends on `fd` itself (a send by call): the transmit stream's bytes
    /// go first. False when they could not all go within the wait (the send must fail
    /// with EAGAIN rather than overtake them).
    pub fn before_send(&self, fd: &Handle, wait_ms: i32) -> bool {
        let slot = lock(&self.inner).by_socket.get(&key(fd)).cloned();
        let Some(slot) = slot else { return true };
        let mut p = lock(&slot.st);
        if p.detached {
            return true;
        }
        let empty = self.send_all_locked(&slot, &mut p, wait_ms);
        drop(p);
        self.republish(&slot);
        empty
    }

    /// Bytes queued in the transmit stream of handle `h` (SIOCOUTQ).
    pub fn unsent(&self, session: &SessionRef, h: u32) -> usize {
        let Some(slot) = self.slot(session.id(), h) else {
            return 0;
        };
        let p = lock(&slot.st);
        if p.detached {
            return 0;
        }
        slot.session
            .stream(slot.index + TX)
            .and_then(|t| t.queued(p.tx_head))
            .unwrap_or(0)
    }

    /// `Refill`: the client made room in the stream of handle `h`: receives into it, and
    /// publishes an edge when that brought something (the client's word may say readable
    /// still while the client sleeps on the stream it emptied: only an edge wakes it).
    pub fn refill(&self, session: &SessionRef, h: u32) {
        let Some(slot) = self.slot(session.id(), h) else {
            return;
        };
        if let Some(s) = slot.session.stream(slot.index) {
            s.clear(StreamState::FULL);
        }
        if self.fill(&slot, sys::readiness(slot.fd.as_fd())) {
            self.republish(&slot);
        }
    }

    /// Detaches the stream of `slot`: its unread bytes and pending error become the socket's
    /// pushback; the client is told (its map word cleared, an edge published).
    fn detach(&self, slot: &Slot) {
        let mut p = lock(&slot.st);
        if p.detached {
            return;
        }
        // What the program sent through the stream goes before anything sent by call.
        if !self.send_all_locked(slot, &mut p, DRAIN_WAIT_MS) {
            tracing::warn!(
                session = slot.session.id(),
                handle = slot.handle,
                "socket took nothing for {DRAIN_WAIT_MS} ms; its unsent stream bytes are dropped"
            );
        }
        if let Some(tx) = slot.session.stream(slot.index + TX) {
            tx.set(StreamState::DETACHED);
        }
        p.detached = true;
        let Some(s) = slot.session.stream(slot.index) else {
            return;
        };
        s.set(StreamState::DETACHED);
        let mut back = Vec::new();
        s.take_back(p.tail, &mut back);
        let error = s.take_error() as i32;
        slot.session.unmap_stream(slot.handle);
        drop(p);
        let mut inner = lock(&self.inner);
        inner.by_socket.remove(&key(&slot.fd));
        if !back.is_empty() || error != 0 {
            let e = inner
                .pushback
                .entry(key(&slot.fd))
                .or_insert_with(|| (Arc::downgrade(&slot.fd), Pushback::default()));
            e.1.data.extend_from_slice(&back);
            if e.1.error == 0 {
                e.1.error = error;
            }
            self.pushed.store(inner.pushback.len(), Ordering::Relaxed);
        }
        drop(inner);
        tracing::debug!(
            session = slot.session.id(),
            handle = slot.handle,
            taken_back = back.len(),
            "stream detached"
        );
    }

    /// The handles of session `id` are about to be shared: their streams are detached.
    pub fn cloning(&self, id: u64, handles: &[u32]) {
        let slots: Vec<Arc<Slot>> = {
            let inner = lock(&self.inner);
            handles
                .iter()
                .filter_map(|h| inner.slots.get(&(id, *h)).cloned())
                .collect()
        };
        for s in slots {
            self.detach(&s);
            self.republish(&s);
        }
    }

    fn republish(&self, slot: &Slot) {
        let mask = self.level(
            &slot.session,
            slot.handle,
            &slot.fd,
            sys::readiness(slot.fd.as_fd()),
            false,
        );
        slot.session.publish_event(slot.handle as usize, mask, true);
    }

    /// Before the server receives on `fd` itself: detaches its stream, if it has one.
    pub fn before_recv(&self, fd: &Handle) {
        let slot = lock(&self.inner).by_socket.get(&key(fd)).cloned();
        if let Some(s) = slot {
            self.detach(&s);
            self.republish(&s);
        }
    }

    /// Serves a `Recv` of up to `len` bytes on `fd` from its pushback: `Some(Ok(bytes))`
    /// (written by `put`), `Some(Err(errno))` for a pending error once the bytes are gone, or
    /// `None` when the socket has no pushback.
    pub fn recv_pushback(
        &self,
        fd: &Handle,
        len: usize,
        peek: bool,
        put: impl FnOnce(&[u8]) -> usize,
    ) -> Option<Result<usize, i32>> {
        if self.pushed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut inner = lock(&self.inner);
        let k = key(fd);
        let (_, p) = inner.pushback.get_mut(&k)?;
        let r = if !p.data.is_empty() {
            let n = put(&p.data[..len.min(p.data.len())]);
            if !peek {
                p.data.drain(..n);
            }
            Ok(n)
        } else if p.error != 0 {
            let e = p.error;
            if !peek {
                p.error = 0;
            }
            Err(e)
        } else {
            return None;
        };
        if p.data.is_empty() && p.error == 0 {
            inner.pushback.remove(&k);
        }
        self.pushed.store(inner.pushback.len(), Ordering::Relaxed);
        Some(r)
    }

    /// Bytes the client has not read yet beyond the kernel's queue (FIONREAD).
    pub fn unread(&self, session: &SessionRef, h: u32, fd: &Handle) -> usize {
        let mut n = 0;
        if let Some(slot) = self.slot(session.id(), h) {
            let p = lock(&slot.st);
            if !p.detached {
                n += slot
                    .session
                    .stream(slot.index)
                    .and_then(|s| s.unread(p.tail))
                    .unwrap_or(0);
            }
        }
        if self.pushed.load(Ordering::Relaxed) > 0 {
            n += lock(&self.inner)
                .pushback
                .get(&key(fd))
                .map_or(0, |(_, p)| p.data.len());
        }
        n
    }

    /// Handle `h` of session `id` was closed: its stream is freed, and a socket closed with
    /// unread bytes in it is reset at its last close.
    pub fn closed(&self, id: u64, h: u32) {
        let Some(slot) = lock(&self.inner).slots.remove(&(id, h)) else {
            return;
        };
        self.release(&slot);
    }

    fn release(&self, slot: &Slot) {
        {
            let mut p = lock(&slot.st);
            if !p.detached {
                // Bytes the program sent before closing still go, in the background when
                // the socket cannot take them now (Linux keeps sending after a close).
                self.send_locked(slot, &mut p);
                let mut rest = Vec::new();
                if let Some(tx) = slot.session.stream(slot.index + TX) {
                    tx.take_queued(&mut p.tx_head, &mut rest);
                }
                if !rest.is_empty() {
                    let fd = slot.fd.clone();
                    let spawned = std::thread::Builder::new()
                        .name("virtuos-net-linger".into())
                        .spawn(move || send_rest(&fd, &rest));
                    if let Err(e) = spawned {
                        tracing::warn!(%e, "cannot send a closed socket's last bytes");
                    }
                }
            }
            let unread = !p.detached
                && slot
                    .session
                    .stream(slot.index)
                    .and_then(|s| s.unread(p.tail))
                    .is_some_and(|n| n > 0);
            if unread {
                sys::reset_on_close(slot.fd.as_fd());
            }
            if !p.detached {
                slot.session.unmap_stream(slot.handle);
            }
        }
        let mut inner = lock(&self.inner);
        if inner
            .by_socket
            .get(&key(&slot.fd))
            .is_some_and(|s| s.index == slot.index && s.session.id() == slot.session.id())
        {
            inner.by_socket.remove(&key(&slot.fd));
        }
        if let Some(f) = inner.free.get_mut(&slot.session.id()) {
            f.push(slot.index);
        }
        // Pushback of sockets nobody holds any more.
        inner.pushback.retain(|_, (w, _)| w.strong_count() > 0);
        self.pushed.store(inner.pushback.len(), Ordering::Relaxed);
    }

    /// Session `id` ended: every stream of it goes (its sockets with unread data reset).
    pub fn session_closed(&self, id: u64) {
        let slots: Vec<Arc<Slot>> = {
            let mut inner = lock(&self.inner);
            let keys: Vec<(u64, u32)> = inner
                .slots
                .keys()
                .filter(|(s, _)| *s == id)
                .copied()
                .collect();
            keys.iter().filter_map(|k| inner.slots.remove(k)).collect()
        };
        for s in &slots {
            self.release(s);
        }
        lock(&self.inner).free.remove(&id);
    }

    /// Streams in use (tests and statistics).
    pub fn attached(&self) -> usize {
        lock(&self.inner).by_socket.len()
    }
}
