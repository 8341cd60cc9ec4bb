//! The Xen-style single-producer/single-consumer ring of one channel.
//!
//! Indices are free-running `u32`s; a slot is `index & (ring_size - 1)`. Each side keeps its
//! private indices in its own memory ([`FrontState`], [`BackState`]) and only publishes the
//! producer index. Notification suppression works as in Xen's `io/ring.h`: before sleeping, a
//! consumer writes "wake me at index N" into the event word; a producer rings the doorbell only
//! if its publication crossed that index.
//!
//! Every index read from shared memory is checked against what the reader knows must hold; a
//! violation is a [`RingError`], never an out-of-bounds access.

use std::sync::atomic::{fence, Ordering};

use abi::RawSlot;
use thiserror::Error;

use crate::layout::{ring, Layout};
use crate::mem::SharedMem;

/// A peer broke the ring protocol.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RingError {
    /// The client published more requests than the ring can hold.
    #[error("peer published request index {prod} with {cons} consumed and {rsp} answered (ring of {size})")]
    RequestOverflow {
        /// Published producer index.
        prod: u32,
        /// Our consumer index.
        cons: u32,
        /// Our response producer index.
        rsp: u32,
        /// Ring size.
        size: u32,
    },
    /// The server published more responses than there are outstanding requests.
    #[error(
        "peer published response index {prod} with {cons} consumed and {outstanding} outstanding"
    )]
    ResponseOverflow {
        /// Published producer index.
        prod: u32,
        /// Our consumer index.
        cons: u32,
        /// Requests we have outstanding.
        outstanding: u32,
    },
}

/// A view of channel `c`'s ring inside a region.
#[derive(Clone, Copy)]
pub struct RingView<'a> {
    mem: &'a SharedMem,
    layout: &'a Layout,
    channel: u32,
    base: usize,
}

impl<'a> RingView<'a> {
    /// The ring of `channel`; the region must hold `layout`.
    pub fn new(mem: &'a SharedMem, layout: &'a Layout, channel: u32) -> Self {
        debug_assert!(layout.check_len(mem.len()).is_ok());
        RingView {
            mem,
            layout,
            channel,
            base: layout.ring_off(channel),
        }
    }

    /// The channel this ring belongs to.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// The published request index (what the client last published).
    pub fn req_prod_word(&self) -> &'a std::sync::atomic::AtomicU32 {
        self.mem.u32_at(self.base + ring::REQ_PROD)
    }

    /// The published response index: the word a sleeping client waits on.
    pub fn rsp_prod_word(&self) -> &'a std::sync::atomic::AtomicU32 {
        self.mem.u32_at(self.base + ring::RSP_PROD)
    }

    /// The server's consumer index as it last published it ([`ring::SERVER_TAKEN`]).
    pub fn taken_word(&self) -> &'a std::sync::atomic::AtomicU32 {
        self.mem.u32_at(self.base + ring::SERVER_TAKEN)
    }

    fn word(&self, off: usize) -> &'a std::sync::atomic::AtomicU32 {
        self.mem.u32_at(self.base + off)
    }

    fn slot_off(&self, index: u32) -> usize {
        self.layout.slot_off(self.channel, index)
    }

    fn size(&self) -> u32 {
        self.layout.ring_size
    }
}

/// Client-side private indices of one ring ("front ring" in Xen terms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontState {
    /// Next request index to fill.
    pub req_prod_pvt: u32,
    /// Next response index to read.
    pub rsp_cons: u32,
}

impl FrontState {
    /// Requests pushed whose responses have not been consumed.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Free request slots.
    pub fn free(&self, ring: &RingView<'_>) -> u32 {
        ring.size() - self.outstanding()
    }

    /// Writes a request into the next slot; `false` when the ring is full.
    pub fn push(&mut self, ring: &RingView<'_>, slot: &RawSlot) -> bool {
        if self.free(ring) == 0 {
            return false;
        }
        ring.mem.write_slot(ring.slot_off(self.req_prod_pvt), slot);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        true
    }

    /// Publishes pushed requests; returns whether the server asked to be woken.
    pub fn publish(&self, ring: &RingView<'_>) -> bool {
        let prod = ring.word(ring::REQ_PROD);
        let old = prod.load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = ring.word(ring::REQ_EVENT).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Takes the next response, if the server published one.
    pub fn take(&mut self, ring: &RingView<'_>) -> Result<Option<RawSlot>, RingError> {
        let prod = ring.word(ring::RSP_PROD).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.rsp_cons);
        if avail == 0 {
            return Ok(None);
        }
        if avail > self.outstanding() {
            return Err(RingError::ResponseOverflow {
                prod,
                cons: self.rsp_cons,
                outstanding: self.outstanding(),
            });
        }
        let slot = ring.mem.read_slot(ring.slot_off(self.rsp_cons));
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(slot))
    }

    /// Asks to be woken at the next response; returns whether one is already there, in which
    /// case the caller must not sleep (Xen's `RING_FINAL_CHECK_FOR_RESPONSES`).
    pub fn arm(&self, ring: &RingView<'_>) -> bool {
        ring.word(ring::RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        ring.word(ring::RSP_PROD).load(Ordering::Acquire) != self.rsp_cons
    }
}

/// Server-side private indices of one ring ("back ring" in Xen terms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackState {
    /// Next request index to consume.
    pub req_cons: u32,
    /// Next response index to fill.
    pub rsp_prod_pvt: u32,
}

impl BackState {
    /// Requests consumed but not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Takes the next request, if the client published one.
    pub fn take(&mut self, ring: &RingView<'_>) -> Result<Option<RawSlot>, RingError> {
        let prod = ring.word(ring::REQ_PROD).load(Ordering::Acquire);
        if prod == self.req_cons {
            return Ok(None);
        }
        // Xen's RING_REQUEST_PROD_OVERFLOW: the client can have at most ring_size requests
        // that we have not answered. Nor can its index fall behind what we already consumed
        // (fewer unanswered than in flight): left unchecked, a client that moves `req_prod`
        // backwards would make us consume stale slots without bound. Anything else is a
        // corrupt or hostile index.
        let unanswered = prod.wrapping_sub(self.rsp_prod_pvt);
        if unanswered > ring.size() || unanswered < self.in_flight() {
            return Err(RingError::RequestOverflow {
                prod,
                cons: self.req_cons,
                rsp: self.rsp_prod_pvt,
                size: ring.size(),
            });
        }
        let slot = ring.mem.read_slot(ring.slot_off(self.req_cons));
        self.req_cons = self.req_cons.wrapping_add(1);
        ring.taken_word().store(self.req_cons, Ordering::Relaxed);
        Ok(Some(slot))
    }

    /// Writes a response into the next slot. Panics if no consumed request is unanswered
    /// (a server bug, not something a peer can cause).
    pub fn push(&mut self, ring: &RingView<'_>, slot: &RawSlot) {
        assert!(self.in_flight() > 0, "response without a consumed request");
        ring.mem.write_slot(ring.slot_off(self.rsp_prod_pvt), slot);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// Publishes pushed responses; returns whether the client asked to be woken.
    pub fn publish(&self, ring: &RingView<'_>) -> bool {
        let prod = ring.word(ring::RSP_PROD);
        let old = prod.load(Ordering::Relaxed);
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = ring.word(ring::RSP_EVENT).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Asks to be woken at the next request; returns whether one is already there
    /// (Xen's `RING_FINAL_CHECK_FOR_REQUESTS`).
    pub fn arm(&self, ring: &RingView<'_>) -> bool {
        ring.word(ring::REQ_EVENT)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        ring.word(ring::REQ_PROD).load(Ordering::Acquire) != self.req_cons
    }

    /// True when the client has published requests we have not consumed.
    pub fn pending(&self, ring: &RingView<'_>) -> bool {
        ring.word(ring::REQ_PROD).load(Ordering::Relaxed) != self.req_cons
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PAGE;
    use abi::{Request, Response};

    fn region(ring_size: u32) -> (SharedMem, Layout) {
        let l = Layout::new(2, ring_size, PAGE as u32).unwrap();
        (SharedMem::heap(l.region_len()), l)
    }

    fn req(id: u64) -> RawSlot {
        Request {
            id,
            ..Request::default()
        }
        .to_slot()
    }

    /// Sets every index of both sides to `start` so tests can exercise wrap-around.
    fn start_at(mem: &SharedMem, l: &Layout, start: u32) -> (FrontState, BackState) {
        let base = l.ring_off(0);
        for off in [
            ring::REQ_PROD,
            ring::REQ_EVENT,
            ring::RSP_PROD,
            ring::RSP_EVENT,
        ] {
            mem.u32_at(base + off).store(start, Ordering::Relaxed);
        }
        let f = FrontState {
            req_prod_pvt: start,
            rsp_cons: start,
        };
        let b = BackState {
            req_cons: start,
            rsp_prod_pvt: start,
        };
        (f, b)
    }

    #[test]
    fn full_and_empty_edges() {
        let (mem, l) = region(4);
        let r = RingView::new(&mem, &l, 0);
        let (mut f, mut b) = start_at(&mem, &l, u32::MAX - 1);
        assert_eq!(f.take(&r), Ok(None));
        assert_eq!(b.take(&r), Ok(None));
        for i in 0..4 {
            assert!(f.push(&r, &req(i)));
        }
        assert!(
            !f.push(&r, &req(99)),
            "fifth push into a 4-slot ring must fail"
        );
        f.publish(&r);
        for i in 0..4 {
            let s = b.take(&r).unwrap().unwrap();
            assert_eq!(Request::from_slot_unchecked(&s).id, i);
            assert_eq!(
                r.taken_word().load(Ordering::Relaxed),
                b.req_cons,
                "each take is published for spinning clients"
            );
        }
        assert_eq!(r.taken_word().load(Ordering::Relaxed), f.req_prod_pvt);
        assert_eq!(b.take(&r), Ok(None));
        assert!(
            !f.push(&r, &req(99)),
            "still full until responses are consumed"
        );
        for i in 0..4 {
            b.push(&r, &Response::ok(i, 0).to_slot());
        }
        b.publish(&r);
        for i in 0..4 {
            assert_eq!(
                Response::from_slot_unchecked(&f.take(&r).unwrap().unwrap()).id,
                i
            );
        }
        assert_eq!(f.take(&r), Ok(None));
        assert_eq!(f.outstanding(), 0);
        assert!(f.req_prod_pvt < 10, "indices wrapped past u32::MAX");
    }

    #[test]
    fn notification_only_when_the_peer_armed() {
        let (mem, l) = region(8);
        let r = RingView::new(&mem, &l, 1);
        let mut f = FrontState::default();
        let mut b = BackState::default();
        // Server armed at start (req_event = 0 + 1 after arm).
        assert!(!b.arm(&r));
        f.push(&r, &req(1));
        assert!(f.publish(&r), "server was asleep: notify");
        f.push(&r, &req(2));
        assert!(!f.publish(&r), "server has not re-armed: no notify");
        b.take(&r).unwrap().unwrap();
        b.take(&r).unwrap().unwrap();
        b.push(&r, &Response::ok(1, 0).to_slot());
        assert!(!b.publish(&r), "client never armed");
        f.take(&r).unwrap().unwrap();
        assert!(!f.arm(&r), "nothing pending when arming");
        b.push(&r, &Response::ok(2, 0).to_slot());
        assert!(b.publish(&r), "client armed: notify");
        assert!(!b.arm(&r));
    }

    #[test]
    fn hostile_indices_are_errors() {
        let (mem, l) = region(8);
        let r = RingView::new(&mem, &l, 0);
        let mut b = BackState::default();
        mem.u32_at(l.ring_off(0) + ring::REQ_PROD)
            .store(9, Ordering::Relaxed);
        assert!(matches!(b.take(&r), Err(RingError::RequestOverflow { .. })));
        mem.u32_at(l.ring_off(0) + ring::REQ_PROD)
            .store(u32::MAX, Ordering::Relaxed);
        assert!(matches!(b.take(&r), Err(RingError::RequestOverflow { .. })));
        // A producer index that moves backwards behind what was consumed (found by fuzzing).
        mem.u32_at(l.ring_off(0) + ring::REQ_PROD)
            .store(2, Ordering::Relaxed);
        assert!(b.take(&r).unwrap().is_some());
        assert!(b.take(&r).unwrap().is_some());
        mem.u32_at(l.ring_off(0) + ring::REQ_PROD)
            .store(1, Ordering::Relaxed);
        assert!(matches!(b.take(&r), Err(RingError::RequestOverflow { .. })));
        assert_eq!(b.in_flight(), 2);
        b.push(&r, &Response::ok(0, 0).to_slot());
        b.push(&r, &Response::ok(1, 0).to_slot());
        mem.u32_at(l.ring_off(0) + ring::REQ_PROD)
            .store(0, Ordering::Relaxed);
        assert!(matches!(b.take(&r), Err(RingError::RequestOverflow { .. })));
        assert_eq!(
            b,
            BackState {
                req_cons: 2,
                rsp_prod_pvt: 2
            }
        );
        let mut f = FrontState::default();
        f.push(&r, &req(1));
        mem.u32_at(l.ring_off(0) + ring::RSP_PROD)
            .store(2, Ordering::Relaxed);
        assert!(matches!(
            f.take(&r),
            Err(RingError::ResponseOverflow { .. })
        ));
    }

    /// A front and a back ring on two threads over one region, with payloads in the data
    /// window: under Miri this checks that the producer indices' Release/Acquire pairs and the
    /// fences order the slot words and the plain (non-atomic) payload copies, i.e. no data race
    /// and no stale slot. Indices start just below `u32::MAX` so they wrap during the run.
    #[test]
    fn concurrent_front_and_back_keep_order() {
        const N: u64 = 200;
        const RING: u32 = 4;
        let (mem, l) = region(RING);
        let (mut f, mut b) = start_at(&mem, &l, u32::MAX - 50);
        let window = l.window_off(0);
        // Each outstanding request owns its own 16 bytes of the window.
        let payload_off = |id: u64| window + (id % u64::from(RING)) as usize * 16;
        std::thread::scope(|s| {
            let mut back = Some(s.spawn(|| {
                let r = RingView::new(&mem, &l, 0);
                let mut answered = 0u64;
                while answered < N {
                    let Some(slot) = b.take(&r).unwrap() else {
                        std::thread::yield_now();
                        continue;
                    };
                    let q = Request::from_slot_unchecked(&slot);
                    assert_eq!(q.id, answered, "requests arrive in order");
                    let mut data = [0u8; 8];
                    mem.copy_out(payload_off(q.id), &mut data);
                    assert_eq!(u64::from_le_bytes(data), q.args[0]);
                    let answer = q.args[0].wrapping_mul(2);
                    mem.copy_in(payload_off(q.id) + 8, &answer.to_le_bytes());
                    b.push(&r, &Response::ok(q.id, q.id as i64 + 1).to_slot());
                    b.publish(&r);
                    answered += 1;
                }
            }));
            let r = RingView::new(&mem, &l, 0);
            let (mut sent, mut received) = (0u64, 0u64);
            while received < N {
                while sent < N && f.free(&r) > 0 {
                    let token = sent.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    mem.copy_in(payload_off(sent), &token.to_le_bytes());
                    let q = Request {
                        id: sent,
                        args: [token, 0, 0, 0, 0],
                        ..Request::default()
                    };
                    assert!(f.push(&r, &q.to_slot()));
                    sent += 1;
                }
                f.publish(&r);
                let Some(slot) = f.take(&r).unwrap() else {
                    if back.as_ref().is_some_and(|h| h.is_finished()) {
                        // Propagate a panic of the back side instead of spinning forever; if
                        // it simply finished, its last responses are visible after the join.
                        back.take().unwrap().join().expect("back side panicked");
                    } else if back.is_none() {
                        panic!("back side finished but only {received} of {N} responses came");
                    }
                    std::thread::yield_now();
                    continue;
                };
                let rsp = Response::from_slot_unchecked(&slot);
                assert_eq!(rsp.id, received, "responses arrive in order");
                assert_eq!(rsp.result, received as i64 + 1);
                let mut data = [0u8; 8];
                mem.copy_out(payload_off(received) + 8, &mut data);
                let token = received.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                assert_eq!(u64::from_le_bytes(data), token.wrapping_mul(2));
                received += 1;
            }
        });
        assert_eq!(f.outstanding(), 0);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(f.req_prod_pvt, (u32::MAX - 50).wrapping_add(N as u32));
    }
}
