//! Streams: byte rings in the session region into which a server receives ahead.
//!
//! A stream belongs to one handle of its session (the server's stream map names it). The
//! server is its only producer: it writes bytes at `TAIL` (which it keeps privately and
//! publishes, never reading it back) into the free space that `HEAD` leaves, and sets state
//! bits: end of file, a pending error, "full" (it stopped receiving for want of room: the
//! client asks it to go on once it made room), "detached" (it stopped for good; later data
//! comes by call). Client threads consume: each copies bytes between `HEAD` and `TAIL` out
//! and then advances `HEAD` with a compare-and-swap, retrying from the start if another
//! consumer moved it first, so that one receive call takes a contiguous run of the stream,
//! as a socket's lock makes it in the kernel. The server may take every unread byte back the
//! same way (detaching), so a byte is consumed exactly once, by a client or by the server.
//!
//! Nothing the client writes can make the server read or write outside the stream: the
//! server bounds every access by its private tail and the stream's capacity, and a head that
//! is not between `tail - capacity` and `tail` is a protocol violation (the stream stops).

use std::sync::atomic::Ordering;

use crate::layout::{stream as off, Layout, STREAM_BYTES, STREAM_HEADER};
use crate::mem::SharedMem;

/// State bits of a stream (the `STATE` word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamState(pub u32);

impl StreamState {
    /// The peer's end of file was received after the last byte in the stream.
    pub const EOF: u32 = 1;
    /// The server stopped receiving into the stream for good: once it is empty, data comes
    /// by call.
    pub const DETACHED: u32 = 2;
    /// The server stopped receiving because the stream was full; a client that makes room
    /// asks it to go on.
    pub const FULL: u32 = 4;
    /// Transmit streams: the client asked the server to send what it copied in (set by the
    /// client that finds it clear, which then posts the request; cleared by the server
    /// before it looks at the tail).
    pub const PENDING: u32 = 8;

    /// Whether bit `b` is set.
    pub fn has(self, b: u32) -> bool {
        self.0 & b != 0
    }
}

/// What a client sees of a stream at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes ready to be read.
    pub ready: usize,
    /// State bits.
    pub state: StreamState,
    /// Pending error (errno), 0 for none.
    pub error: u32,
}

impl Snapshot {
    /// Whether a receive would not wait: bytes, an error or the end of the file.
    pub fn readable(&self) -> bool {
        self.ready > 0 || self.error != 0 || self.state.has(StreamState::EOF)
    }
}

/// One stream of a mapped region, as either side sees it.
#[derive(Clone, Copy)]
pub struct Stream<'m> {
    mem: &'m SharedMem,
    off: usize,
}

impl<'m> Stream<'m> {
    /// Stream `i` of a region laid out as `layout` (`i` below `layout.streams`).
    pub fn new(mem: &'m SharedMem, layout: &Layout, i: u32) -> Stream<'m> {
        Stream {
            mem,
            off: layout.stream_off(i),
        }
    }

    /// The stream that handle `h` of the region receives into, if any (the server's stream
    /// map; a client reads it, the server writes it).
    pub fn of_handle(mem: &'m SharedMem, layout: &Layout, h: usize) -> Option<Stream<'m>> {
        if layout.streams == 0 || h >= crate::layout::EVENT_SLOTS {
            return None;
        }
        let v = mem
            .u32_at(layout.stream_map_word(h))
            .load(Ordering::Acquire);
        let i = v.checked_sub(1).filter(|&i| i < layout.streams)?;
        let s = Stream::new(mem, layout, i);
        (s.owner() == h as u32).then_some(s)
    }

    /// The transmit stream of handle `h`, if it has one (see [`crate::layout::TX_OFFSET`]).
    pub fn tx_of_handle(mem: &'m SharedMem, layout: &Layout, h: usize) -> Option<Stream<'m>> {
        let rx = Stream::of_handle(mem, layout, h)?;
        let i = ((rx.off - layout.stream_off(0)) / crate::layout::STREAM_SPAN) as u32;
        let s = Stream::new(mem, layout, i + crate::layout::TX_OFFSET);
        (s.owner() == h as u32).then_some(s)
    }

    fn head(&self) -> &std::sync::atomic::AtomicU64 {
        self.mem.u64_at(self.off + off::HEAD)
    }

    fn tail(&self) -> &std::sync::atomic::AtomicU64 {
        self.mem.u64_at(self.off + off::TAIL)
    }

    fn state_word(&self) -> &std::sync::atomic::AtomicU32 {
        self.mem.u32_at(self.off + off::STATE)
    }

    fn error_word(&self) -> &std::sync::atomic::AtomicU32 {
        self.mem.u32_at(self.off + off::ERROR)
    }

    /// The handle the stream receives for.
    pub fn owner(&self) -> u32 {
        self.mem
            .u32_at(self.off + off::OWNER)
            .load(Ordering::Acquire)
    }

    fn data(&self) -> usize {
        self.off + STREAM_HEADER
    }

    /// The stream now. A client that sees a head or tail out of order (only a server
    /// breaking the protocol writes them so) sees nothing ready.
    pub fn snapshot(&self) -> Snapshot {
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        let ready = tail.wrapping_sub(head);
        Snapshot {
            ready: if ready <= STREAM_BYTES as u64 {
                ready as usize
            } else {
                0
            },
            state: StreamState(self.state_word().load(Ordering::Acquire)),
            error: self.error_word().load(Ordering::Acquire),
        }
    }

    /// Client: copies up to `max` ready bytes out, calling `copy(mem, src_off, len, at)` for
    /// each contiguous piece (`at` counts bytes from the start of this read), and consumes
    /// them unless `peek`. Returns the bytes read (0 when none are ready). When another
    /// consumer takes bytes first, the copy is made again from the new head, so the caller's
    /// buffer ends up holding exactly what the return value says.
    pub fn read_with(
        &self,
        max: usize,
        peek: bool,
        mut copy: impl FnMut(&SharedMem, usize, usize, usize),
    ) -> usize {
        loop {
            let head = self.head().load(Ordering::Acquire);
            let tail = self.tail().load(Ordering::Acquire);
            let ready = tail.wrapping_sub(head);
            if ready == 0 || ready > STREAM_BYTES as u64 {
                return 0;
            }
            let n = (ready as usize).min(max);
            let at = (head % STREAM_BYTES as u64) as usize;
            let first = n.min(STREAM_BYTES - at);
            copy(self.mem, self.data() + at, first, 0);
            if n > first {
                copy(self.mem, self.data(), n - first, first);
            }
            if peek {
                return n;
            }
            if self
                .head()
                .compare_exchange(head, head + n as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return n;
            }
        }
    }

    /// Client: takes the pending error, if any (once: a concurrent taker gets 0).
    pub fn take_error(&self) -> u32 {
        let e = self.error_word().load(Ordering::Acquire);
        if e != 0
            && self
                .error_word()
                .compare_exchange(e, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return e;
        }
        0
    }

    /// Client: clears [`StreamState::FULL`]; true when it was set (this caller then asks
    /// the server to go on).
    pub fn take_full(&self) -> bool {
        self.state_word()
            .fetch_and(!StreamState::FULL, Ordering::AcqRel)
            & StreamState::FULL
            != 0
    }

    /// Client, transmit stream: takes the copying-in lock (false when another thread, or
    /// code this thread interrupted, holds it).
    pub fn try_lock(&self) -> bool {
        self.mem
            .u32_at(self.off + off::WLOCK)
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Client, transmit stream: releases the copying-in lock.
    pub fn unlock(&self) {
        self.mem
            .u32_at(self.off + off::WLOCK)
            .store(0, Ordering::Release);
    }

    /// Free bytes of a transmit stream as its client sees them.
    pub fn room(&self) -> usize {
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        STREAM_BYTES.saturating_sub(tail.wrapping_sub(head).min(STREAM_BYTES as u64) as usize)
    }

    /// Whether a transmit stream holds bytes the server has not sent.
    pub fn unsent(&self) -> bool {
        self.head().load(Ordering::Acquire) != self.tail().load(Ordering::Acquire)
    }

    /// Client, transmit stream, lock held: copies up to `max` bytes in, calling
    /// `copy(mem, dst_off, len, at)` for each contiguous piece of free space (`at` counts
    /// bytes from the start of this write), and publishes them. Returns the bytes taken.
    pub fn write_with(
        &self,
        max: usize,
        mut copy: impl FnMut(&SharedMem, usize, usize, usize),
    ) -> usize {
        let n = self.room().min(max);
        if n == 0 {
            return 0;
        }
        let tail = self.tail().load(Ordering::Relaxed);
        let at = (tail % STREAM_BYTES as u64) as usize;
        let first = n.min(STREAM_BYTES - at);
        copy(self.mem, self.data() + at, first, 0);
        if n > first {
            copy(self.mem, self.data(), n - first, first);
        }
        self.tail().store(tail + n as u64, Ordering::Release);
        n
    }

    /// Client, transmit stream, after publishing bytes: true when the caller must ask the
    /// server to send (nobody asked since the server last looked).
    pub fn mark_pending(&self) -> bool {
        self.state_word()
            .fetch_or(StreamState::PENDING, Ordering::SeqCst)
            & StreamState::PENDING
            == 0
    }

    /// Server, transmit stream: clears [`StreamState::PENDING`] before it looks at the tail
    /// (a client that publishes later sees it clear and asks again).
    pub fn take_pending(&self) {
        self.state_word()
            .fetch_and(!StreamState::PENDING, Ordering::SeqCst);
    }

    /// Server, transmit stream: bytes the client published and the server has not sent,
    /// given the private `head`; `None` when the client's tail is out of range.
    pub fn queued(&self, head: u64) -> Option<usize> {
        let q = self.tail().load(Ordering::SeqCst).wrapping_sub(head);
        (q <= STREAM_BYTES as u64).then_some(q as usize)
    }

    /// Server, transmit stream: hands the queued bytes (at most two pieces) to `send` and
    /// consumes what it took. Returns the bytes sent and the bytes offered, the errno `send`
    /// failed with, or `Err(None)` when the tail is out of range.
    pub fn drain(
        &self,
        head: &mut u64,
        send: impl FnOnce(&[libc::iovec]) -> Result<usize, i32>,
    ) -> Result<(usize, usize), Option<i32>> {
        let q = self.queued(*head).ok_or(None)?;
        if q == 0 {
            return Ok((0, 0));
        }
        let at = (*head % STREAM_BYTES as u64) as usize;
        let first = q.min(STREAM_BYTES - at);
        let iov = [
            libc::iovec {
                iov_base: self.mem.raw_range(self.data() + at, first).cast(),
                iov_len: first,
            },
            libc::iovec {
                iov_base: self.mem.raw_range(self.data(), q - first).cast(),
                iov_len: q - first,
            },
        ];
        let pieces = if q > first { 2 } else { 1 };
        let n = send(&iov[..pieces]).map_err(Some)?.min(q);
        *head += n as u64;
        self.head().store(*head, Ordering::Release);
        Ok((n, q))
    }

    /// Server, transmit stream: copies the queued bytes out (for sending elsewhere) and
    /// consumes them.
    pub fn take_queued(&self, head: &mut u64, out: &mut Vec<u8>) {
        let Some(q) = self.queued(*head) else { return };
        let at = (*head % STREAM_BYTES as u64) as usize;
        let first = q.min(STREAM_BYTES - at);
        let start = out.len();
        out.resize(start + q, 0);
        self.mem
            .copy_out(self.data() + at, &mut out[start..start + first]);
        if q > first {
            self.mem
                .copy_out(self.data(), &mut out[start + first..start + q]);
        }
        *head += q as u64;
        self.head().store(*head, Ordering::Release);
    }

    /// Server: starts the stream afresh for handle `h` and names it in the stream map.
    pub fn reset(&self, layout: &Layout, i: u32, h: u32) {
        self.head().store(0, Ordering::Relaxed);
        self.tail().store(0, Ordering::Relaxed);
        self.error_word().store(0, Ordering::Relaxed);
        self.state_word().store(0, Ordering::Relaxed);
        self.mem
            .u32_at(self.off + off::WLOCK)
            .store(0, Ordering::Relaxed);
        if i < crate::layout::TX_OFFSET {
            // The transmit stream of the same socket, named for the same handle first.
            let tx = Stream::new(self.mem, layout, i + crate::layout::TX_OFFSET);
            tx.head().store(0, Ordering::Relaxed);
            tx.tail().store(0, Ordering::Relaxed);
            tx.error_word().store(0, Ordering::Relaxed);
            tx.state_word().store(0, Ordering::Relaxed);
            tx.mem
                .u32_at(tx.off + off::WLOCK)
                .store(0, Ordering::Relaxed);
            tx.mem
                .u32_at(tx.off + off::OWNER)
                .store(h, Ordering::Release);
        }
        self.mem
            .u32_at(self.off + off::OWNER)
            .store(h, Ordering::Release);
        self.mem
            .u32_at(layout.stream_map_word(h as usize))
            .store(i + 1, Ordering::Release);
    }

    /// Server: removes handle `h` from the stream map.
    pub fn unmap(mem: &SharedMem, layout: &Layout, h: u32) {
        if layout.streams > 0 && (h as usize) < crate::layout::EVENT_SLOTS {
            mem.u32_at(layout.stream_map_word(h as usize))
                .store(0, Ordering::Release);
        }
    }

    /// Server: the unread bytes given the private `tail`, or `None` when the client's head is
    /// out of range (a protocol violation).
    pub fn unread(&self, tail: u64) -> Option<usize> {
        let u = tail.wrapping_sub(self.head().load(Ordering::Acquire));
        (u <= STREAM_BYTES as u64).then_some(u as usize)
    }

    /// Server: receives into the free space with `recv(iovecs)` (at most two pieces), and
    /// publishes what it wrote. Returns the bytes `recv` gave and the room it was offered
    /// (fewer bytes than room: the socket had no more), the errno it failed with, or
    /// `Err(None)` when there is no room or the head is out of range.
    pub fn fill(
        &self,
        tail: &mut u64,
        recv: impl FnOnce(&[libc::iovec]) -> Result<usize, i32>,
    ) -> Result<(usize, usize), Option<i32>> {
        let unread = self.unread(*tail).ok_or(None)?;
        let room = STREAM_BYTES - unread;
        if room == 0 {
            return Err(None);
        }
        let at = (*tail % STREAM_BYTES as u64) as usize;
        let first = room.min(STREAM_BYTES - at);
        let iov = [
            libc::iovec {
                iov_base: self.mem.raw_range(self.data() + at, first).cast(),
                iov_len: first,
            },
            libc::iovec {
                iov_base: self.mem.raw_range(self.data(), room - first).cast(),
                iov_len: room - first,
            },
        ];
        let pieces = if room > first { 2 } else { 1 };
        let n = recv(&iov[..pieces]).map_err(Some)?.min(room);
        *tail += n as u64;
        self.tail().store(*tail, Ordering::Release);
        Ok((n, room))
    }

    /// Server: sets state bits.
    pub fn set(&self, bits: u32) {
        self.state_word().fetch_or(bits, Ordering::AcqRel);
    }

    /// Server: clears state bits.
    pub fn clear(&self, bits: u32) {
        self.state_word().fetch_and(!bits, Ordering::AcqRel);
    }

    /// Server: records a pending socket error.
    pub fn set_error(&self, errno: i32) {
        self.error_word().store(errno as u32, Ordering::Release);
    }

    /// Server: takes every unread byte back (appended to `out`), as a consumer would, so
    /// that no client reads them afterwards. Call after setting [`StreamState::DETACHED`].
    pub fn take_back(&self, tail: u64, out: &mut Vec<u8>) {
        loop {
            let head = self.head().load(Ordering::Acquire);
            let u = tail.wrapping_sub(head);
            if u == 0 || u > STREAM_BYTES as u64 {
                return;
            }
            let start = out.len();
            let n = u as usize;
            out.resize(start + n, 0);
            let at = (head % STREAM_BYTES as u64) as usize;
            let first = n.min(STREAM_BYTES - at);
            self.mem
                .copy_out(self.data() + at, &mut out[start..start + first]);
            if n > first {
                self.mem
                    .copy_out(self.data(), &mut out[start + first..start + n]);
            }
            if self
                .head()
                .compare_exchange(head, tail, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
            out.truncate(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{PAGE, STREAM_SLOTS};
    use proptest::prelude::*;

    fn region() -> (SharedMem, Layout) {
        let l = Layout::new(1, 1, PAGE as u32)
            .unwrap()
            .with_streams(STREAM_SLOTS)
            .unwrap();
        (SharedMem::heap(l.region_len()), l)
    }

    /// A producer writing `data` into the iovecs, as recv would.
    fn put(data: &[u8]) -> impl FnOnce(&[libc::iovec]) -> Result<usize, i32> + '_ {
        move |iov| {
            let mut n = 0;
            for v in iov {
                let t = v.iov_len.min(data.len() - n);
                // SAFETY: the iovec lies inside the test's region (from raw_range).
                unsafe { std::ptr::copy_nonoverlapping(data[n..].as_ptr(), v.iov_base.cast(), t) };
                n += t;
            }
            Ok(n)
        }
    }

    fn read(s: &Stream<'_>, max: usize, peek: bool) -> Vec<u8> {
        let mut out = vec![0u8; max];
        let n = s.read_with(max, peek, |m, src, len, at| {
            m.copy_out(src, &mut out[at..at + len])
        });
        out.truncate(n);
        out
    }

    #[test]
    fn map_names_the_owner_only() {
        let (m, l) = region();
        assert!(Stream::of_handle(&m, &l, 5).is_none());
        let s = Stream::new(&m, &l, 1);
        s.reset(&l, 1, 5);
        assert_eq!(Stream::of_handle(&m, &l, 5).map(|s| s.owner()), Some(5));
        // A stale map word (the stream was given to another handle) names nothing.
        Stream::new(&m, &l, 1).reset(&l, 1, 6);
        assert!(Stream::of_handle(&m, &l, 5).is_none());
        Stream::unmap(&m, &l, 6);
        assert!(Stream::of_handle(&m, &l, 6).is_none());
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let (m, l) = region();
        let s = Stream::new(&m, &l, 0);
        s.reset(&l, 0, 1);
        let mut tail = 0u64;
        let mut expect = Vec::new();
        let mut got = Vec::new();
        for round in 0..40u32 {
            let chunk: Vec<u8> = (0..5000u32).map(|i| (i * 7 + round) as u8).collect();
            let n = s.fill(&mut tail, put(&chunk)).unwrap().0;
            expect.extend_from_slice(&chunk[..n]);
            assert_eq!(read(&s, 7, true), expect[got.len()..got.len() + 7.min(n)]);
            got.extend(read(&s, 3000, false));
            got.extend(read(&s, 3000, false));
        }
        got.extend(read(&s, STREAM_BYTES, false));
        assert_eq!(got, expect);
        assert_eq!(s.snapshot().ready, 0);
    }

    #[test]
    fn a_full_stream_takes_nothing_more() {
        let (m, l) = region();
        let s = Stream::new(&m, &l, 0);
        s.reset(&l, 0, 1);
        let mut tail = 0;
        let big = vec![1u8; STREAM_BYTES + 10];
        assert_eq!(
            s.fill(&mut tail, put(&big)),
            Ok((STREAM_BYTES, STREAM_BYTES))
        );
        assert_eq!(s.fill(&mut tail, put(&big)), Err(None));
        assert_eq!(read(&s, 10, false).len(), 10);
        assert_eq!(s.fill(&mut tail, put(&big)), Ok((10, 10)));
    }

    #[test]
    fn taking_back_leaves_nothing_to_read() {
        let (m, l) = region();
        let s = Stream::new(&m, &l, 0);
        s.reset(&l, 0, 1);
        let mut tail = 0;
        s.fill(&mut tail, put(b"hello world")).unwrap();
        assert_eq!(read(&s, 6, false), b"hello ");
        s.set(StreamState::DETACHED);
        let mut back = Vec::new();
        s.take_back(tail, &mut back);
        assert_eq!(back, b"world");
        assert_eq!(read(&s, 10, false), b"");
        assert!(s.snapshot().state.has(StreamState::DETACHED));
    }

    #[test]
    fn a_hostile_head_stops_the_server_not_the_bounds() {
        let (m, l) = region();
        let s = Stream::new(&m, &l, 0);
        s.reset(&l, 0, 1);
        let mut tail = 0;
        s.fill(&mut tail, put(b"abc")).unwrap();
        m.u64_at(l.stream_off(0) + off::HEAD)
            .store(1 << 40, Ordering::Relaxed);
        assert_eq!(s.unread(tail), None);
        assert_eq!(s.fill(&mut tail, put(b"x")), Err(None));
        assert_eq!(s.snapshot().ready, 0);
        assert_eq!(read(&s, 10, false), b"");
    }

    #[test]
    fn transmit_bytes_go_out_in_order() {
        let (m, l) = region();
        Stream::new(&m, &l, 1).reset(&l, 1, 9);
        let tx = Stream::tx_of_handle(&m, &l, 9).expect("paired transmit stream");
        assert!(tx.try_lock());
        assert!(!tx.try_lock());
        let data: Vec<u8> = (0..50000u32).map(|i| i as u8).collect();
        let mut at = 0;
        let mut head = 0u64;
        let mut sent = Vec::new();
        while sent.len() < data.len() {
            at += tx.write_with(data.len() - at, |mem, dst, len, k| {
                mem.copy_in(dst, &data[at + k..at + k + len])
            });
            assert!(tx.unsent());
            tx.mark_pending();
            tx.take_pending();
            let (n, q) = tx
                .drain(&mut head, |iov| {
                    let mut n = 0;
                    for v in iov {
                        let t = v.iov_len.min(7000);
                        // SAFETY: the iovec lies inside the test's region.
                        sent.extend_from_slice(unsafe {
                            std::slice::from_raw_parts(v.iov_base as *const u8, t)
                        });
                        n += t;
                        if t < v.iov_len {
                            break;
                        }
                    }
                    Ok(n)
                })
                .unwrap();
            assert!(n <= q);
        }
        tx.unlock();
        assert_eq!(sent, data);
        assert!(tx.mark_pending());
        assert!(!tx.mark_pending());
    }

    #[test]
    fn an_error_is_taken_once() {
        let (m, l) = region();
        let s = Stream::new(&m, &l, 0);
        s.reset(&l, 0, 1);
        s.set_error(104);
        assert!(s.snapshot().readable());
        assert_eq!(s.take_error(), 104);
        assert_eq!(s.take_error(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 64 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn any_interleaving_keeps_the_bytes(ops in proptest::collection::vec((0usize..9000, 0usize..9000, any::<bool>()), 1..40)) {
            let (m, l) = region();
            let s = Stream::new(&m, &l, 1);
            s.reset(&l, 1, 2);
            let mut tail = 0;
            let mut sent = Vec::new();
            let mut got = Vec::new();
            for (k, (w, r, peek)) in ops.into_iter().enumerate() {
                let chunk: Vec<u8> = (0..w).map(|i| (i + k) as u8).collect();
                if let Ok((n, _)) = s.fill(&mut tail, put(&chunk)) {
                    sent.extend_from_slice(&chunk[..n]);
                }
                let out = read(&s, r, peek);
                prop_assert_eq!(&out[..], &sent[got.len()..got.len() + out.len()]);
                if !peek {
                    got.extend(out);
                }
            }
            got.extend(read(&s, STREAM_BYTES, false));
            prop_assert_eq!(got, sent);
        }
    }
}
