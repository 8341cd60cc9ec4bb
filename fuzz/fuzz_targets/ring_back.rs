//! A front and a back ring driven by an arbitrary sequence of operations, interleaved with
//! arbitrary (hostile) writes to the shared index words and slots.
//!
//! Neither side may panic, and the private indices must stay within the ring's bounds
//! whatever the shared words say.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering;
use xen_transport::layout::ring;
use xen_transport::ring::{BackState, FrontState, RingView};
use xen_transport::{Layout, SharedMem};

const CHANNELS: u32 = 2;
const RING_SIZE: u32 = 8;

#[derive(Arbitrary, Debug)]
enum Word {
    ReqProd,
    ReqEvent,
    RspProd,
    RspEvent,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A hostile peer scribbles on an index word.
    WriteIndex {
        ch: u8,
        word: Word,
        value: u32,
    },
    /// A hostile peer scribbles on a slot.
    WriteSlot {
        ch: u8,
        index: u32,
        slot: [u64; 8],
    },
    BackTake {
        ch: u8,
    },
    BackPush {
        ch: u8,
        slot: [u64; 8],
    },
    BackPublish {
        ch: u8,
    },
    BackArm {
        ch: u8,
    },
    BackPending {
        ch: u8,
    },
    FrontTake {
        ch: u8,
    },
    FrontPush {
        ch: u8,
        slot: [u64; 8],
    },
    FrontPublish {
        ch: u8,
    },
    FrontArm {
        ch: u8,
    },
}

fuzz_target!(|ops: Vec<Op>| {
    let layout = Layout::new(CHANNELS, RING_SIZE, 4096).unwrap();
    let mem = SharedMem::heap(layout.region_len());
    let rings: Vec<RingView<'_>> = (0..CHANNELS)
        .map(|c| RingView::new(&mem, &layout, c))
        .collect();
    let mut fronts = [FrontState::default(); CHANNELS as usize];
    let mut backs = [BackState::default(); CHANNELS as usize];

    for op in ops {
        match op {
            Op::WriteIndex { ch, word, value } => {
                let c = u32::from(ch) % CHANNELS;
                let off = match word {
                    Word::ReqProd => ring::REQ_PROD,
                    Word::ReqEvent => ring::REQ_EVENT,
                    Word::RspProd => ring::RSP_PROD,
                    Word::RspEvent => ring::RSP_EVENT,
                };
                mem.u32_at(layout.ring_off(c) + off)
                    .store(value, Ordering::Relaxed);
            }
            Op::WriteSlot { ch, index, slot } => {
                let c = u32::from(ch) % CHANNELS;
                mem.write_slot(layout.slot_off(c, index), &slot);
            }
            Op::BackTake { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let before = backs[c];
                match backs[c].take(&rings[c]) {
                    Ok(Some(_)) => {
                        assert!(
                            backs[c].in_flight() <= RING_SIZE,
                            "back ring has {} requests in flight (ring of {RING_SIZE}); before take: {before:?}, after: {:?}",
                            backs[c].in_flight(),
                            backs[c]
                        );
                    }
                    Ok(None) | Err(_) => assert_eq!(backs[c], before, "failed take moved indices"),
                }
            }
            Op::BackPush { ch, slot } => {
                let c = (ch as usize) % CHANNELS as usize;
                if backs[c].in_flight() > 0 {
                    backs[c].push(&rings[c], &slot);
                }
            }
            Op::BackPublish { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let _ = backs[c].publish(&rings[c]);
            }
            Op::BackArm { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let _ = backs[c].arm(&rings[c]);
            }
            Op::BackPending { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let _ = backs[c].pending(&rings[c]);
            }
            Op::FrontTake { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let before = fronts[c];
                match fronts[c].take(&rings[c]) {
                    Ok(Some(_)) => assert!(fronts[c].outstanding() < RING_SIZE),
                    Ok(None) | Err(_) => assert_eq!(fronts[c], before, "failed take moved indices"),
                }
            }
            Op::FrontPush { ch, slot } => {
                let c = (ch as usize) % CHANNELS as usize;
                let free = fronts[c].free(&rings[c]);
                let pushed = fronts[c].push(&rings[c], &slot);
                assert_eq!(pushed, free > 0);
            }
            Op::FrontPublish { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let _ = fronts[c].publish(&rings[c]);
            }
            Op::FrontArm { ch } => {
                let c = (ch as usize) % CHANNELS as usize;
                let _ = fronts[c].arm(&rings[c]);
            }
        }
        for c in 0..CHANNELS as usize {
            assert!(
                fronts[c].outstanding() <= RING_SIZE,
                "front outstanding {:?}",
                fronts[c]
            );
            assert!(
                backs[c].in_flight() <= RING_SIZE,
                "back in flight {:?}",
                backs[c]
            );
        }
    }
});
