//! Where everything lives in a session region.
//!
//! ```text
//! page 0              region header: magic, geometry, server state, counters, the
//!                     client's routed-call latency histograms
//! rings_off           channel 0 ring, channel 1 ring, ...   (channel_bytes each)
//! data_off            channel 0 data window, channel 1 window, ... (window bytes each)
//! events_off          readiness words, one u64 per handle (EVENT_SLOTS of them)
//! stream_map_off      (sessions with streams only) one u32 per handle: 0, or 1 + the
//!                     stream that receives ahead for it
//! streams_off         stream 0, stream 1, ... (STREAM_SPAN bytes each: a header of
//!                     STREAM_HEADER bytes, then STREAM_BYTES of data)
//! ```
//!
//! Streams ([`crate::stream`]) are byte rings in which a server receives a socket's data
//! ahead of the client's calls; a session has them only when both sides asked for
//! [`abi::control::CAP_STREAMS`], and then exactly [`STREAM_SLOTS`] of them.
//!
//! The readiness words let a server push the readiness of the client's sockets into shared
//! memory (see [`crate::events`]): word `h` holds `seq << 32 | mask` for handle `h`.
//!
//! A channel ring is four cache lines of indices and two of counters (each line written by one
//! side only) followed by
//! `ring_size` 64-byte slots, in the manner of Xen's `io/ring.h`: a slot holds a request until
//! the server consumes it and then the response that reuses it.

use abi::SLOT_SIZE;
use thiserror::Error;

/// Page size the layout rounds to (and the Xen grant granularity).
pub const PAGE: usize = 4096;
/// "VRTR": region magic.
pub const REGION_MAGIC: u32 = u32::from_le_bytes(*b"VRTR");
/// Region layout version.
pub const REGION_VERSION: u32 = 1;

/// Largest number of channels in a region.
pub const MAX_CHANNELS: u32 = 1024;
/// Largest ring size (slots per channel).
pub const MAX_RING_SIZE: u32 = 1024;
/// Largest data window per channel.
pub const MAX_WINDOW: u32 = 16 << 20;
/// Largest region, to bound a session's memory.
pub const MAX_REGION: usize = 1 << 30;

/// Header field offsets (bytes from the region start).
pub mod header {
    /// `u32` magic ([`super::REGION_MAGIC`]).
    pub const MAGIC: usize = 0;
    /// `u32` layout version.
    pub const VERSION: usize = 4;
    /// `u32` channel count.
    pub const CHANNELS: usize = 8;
    /// `u32` ring size.
    pub const RING_SIZE: usize = 12;
    /// `u32` window size.
    pub const WINDOW: usize = 16;
    /// `u32` server state (see [`crate::ServerState`]); its own cache line.
    pub const SERVER_STATE: usize = 64;
    /// `u64` session id, written by the server.
    pub const SESSION_ID: usize = 24;
    /// `u32` readiness epoch: bumped by the server after every change of a readiness word;
    /// its own cache line.
    pub const EVENT_EPOCH: usize = 128;
    /// `u32` number of client threads about to sleep for readiness (client writes); its own
    /// cache line.
    pub const EVENT_WAITERS: usize = 192;
    /// Routed-call latency histograms, written by the client only: [`LAT_STRIPES`] stripes of
    /// [`LAT_BUCKETS`] `u64` counters each; counter `b` of a stripe counts calls whose round
    /// trip (request published to response seen) took `[2^b, 2^(b+1))` ns, the last bucket
    /// everything longer. A call on channel `c` counts in stripe `c % LAT_STRIPES`, so threads
    /// on different channels rarely share a line. Readers (`virtuos-redirect top`) sum the
    /// stripes. Bytes 256..1024 of this page stay free for further fields.
    pub const LAT_HIST: usize = 1024;
    /// Stripes of [`LAT_HIST`].
    pub const LAT_STRIPES: usize = 8;
    /// Buckets per stripe (log2 ns, as the eBPF syscall histograms).
    pub const LAT_BUCKETS: usize = 32;
    /// Bytes of one stripe (four cache lines).
    pub const LAT_STRIPE_BYTES: usize = LAT_BUCKETS * 8;
    /// Offset of counter `bucket` of stripe `stripe`.
    pub const fn lat_bucket(stripe: usize, bucket: usize) -> usize {
        LAT_HIST + stripe * LAT_STRIPE_BYTES + bucket * 8
    }
    // The histograms fill whole cache lines of page 0, after the other header fields.
    const _: () = assert!(
        LAT_HIST.is_multiple_of(64)
            && LAT_STRIPE_BYTES.is_multiple_of(64)
            && LAT_HIST >= EVENT_WAITERS + 64
            && lat_bucket(LAT_STRIPES, 0) <= super::PAGE
    );
}

/// Readiness words per session: handles at or above this have none (a server that pushes
/// readiness limits its handles to this many).
pub const EVENT_SLOTS: usize = 16384;

/// Streams in a session that has them. (Under Miri, four: the tests' regions are
/// process-private memory that Miri would take minutes to allocate at the real size; the
/// code is the same for any count.)
pub const STREAM_SLOTS: u32 = if cfg!(miri) { 4 } else { 512 };
/// A socket's transmit stream is its receive stream's index plus this (the first half of
/// the streams receive, the second half transmit).
pub const TX_OFFSET: u32 = STREAM_SLOTS / 2;
/// Data bytes of one stream (a power of two).
pub const STREAM_BYTES: usize = 32 << 10;
/// Header bytes before a stream's data: four cache lines, each written by one side.
pub const STREAM_HEADER: usize = 256;
/// Bytes of one stream, header and data.
pub const STREAM_SPAN: usize = STREAM_HEADER + STREAM_BYTES;

/// Offsets inside one stream's header.
pub mod stream {
    /// `u64` bytes consumed (client threads advance it with compare-and-swap; the server
    /// too, when it takes a stream's unread bytes back).
    pub const HEAD: usize = 0;
    /// `u64` bytes produced (server writes).
    pub const TAIL: usize = 64;
    /// `u32` state bits (server writes): see [`crate::stream::StreamState`].
    pub const STATE: usize = 128;
    /// `u32` the handle this stream receives for (server writes).
    pub const OWNER: usize = 132;
    /// `u32` pending socket error, an errno (server sets it, a client takes it with a
    /// compare-and-swap to 0).
    pub const ERROR: usize = 192;
    /// `u32` transmit streams only: held (1) by the client thread copying in.
    pub const WLOCK: usize = 196;
}

/// Offsets inside one channel ring.
pub mod ring {
    /// `u32` requests produced (client writes).
    pub const REQ_PROD: usize = 0;
    /// `u32` "wake me when req_prod reaches this" (server writes).
    pub const REQ_EVENT: usize = 64;
    /// `u32` responses produced (server writes); also the client's futex word.
    pub const RSP_PROD: usize = 128;
    /// `u32` "wake me when rsp_prod reaches this" (client writes).
    pub const RSP_EVENT: usize = 192;
    /// Client counters (`u64`), on a line of their own that only the client writes, so that
    /// counting never moves the index lines between cores: calls made.
    pub const CLIENT_CALLS: usize = 256;
    /// Client counter: waits that ended while spinning.
    pub const CLIENT_SPINS: usize = CLIENT_CALLS + 8;
    /// Client counter: times the client slept.
    pub const CLIENT_SLEEPS: usize = CLIENT_CALLS + 16;
    /// Client counter: doorbells the client rang.
    pub const CLIENT_WAKEUPS: usize = CLIENT_CALLS + 24;
    /// `u64` id of an in-flight request the client asks the server to cancel (its caller was
    /// interrupted by a signal); written by the client before it rings the doorbell.
    pub const CLIENT_CANCEL: usize = CLIENT_CALLS + 32;
    /// Server counters (`u64`), on a line only the server writes: requests answered.
    pub const SERVER_REQUESTS: usize = 320;
    /// Server counter: requests rejected by validation.
    pub const SERVER_REJECTED: usize = SERVER_REQUESTS + 8;
    /// Server counter: doorbells the server rang.
    pub const SERVER_WAKEUPS: usize = SERVER_REQUESTS + 16;
    /// `u32`, server-written: its request consumer index after its latest take. A hint for a
    /// spinning client (its request is being worked on, so the server is running), never
    /// trusted for anything else.
    pub const SERVER_TAKEN: usize = SERVER_REQUESTS + 24;
    /// First slot.
    pub const SLOTS: usize = 384;
}

/// The geometry of a session region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of channels.
    pub channels: u32,
    /// Slots per channel ring (a power of two).
    pub ring_size: u32,
    /// Data window bytes per channel (a multiple of [`PAGE`]).
    pub window: u32,
    /// Streams (0 or [`STREAM_SLOTS`]).
    pub streams: u32,
}

/// Why a geometry is not acceptable.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Channel count is zero or above [`MAX_CHANNELS`].
    #[error("channel count {0} outside 1..={MAX_CHANNELS}")]
    Channels(u32),
    /// Ring size is not a power of two in range.
    #[error("ring size {0} is not a power of two in 1..={MAX_RING_SIZE}")]
    RingSize(u32),
    /// Window is not a page multiple in range.
    #[error("data window {0} is not a multiple of {PAGE} up to {MAX_WINDOW}")]
    Window(u32),
    /// The whole region would be too large.
    #[error("region of {0} bytes exceeds the {MAX_REGION}-byte limit")]
    TooLarge(usize),
    /// A stream count other than 0 or [`STREAM_SLOTS`].
    #[error("stream count {0} is neither 0 nor {STREAM_SLOTS}")]
    Streams(u32),
    /// The mapping is smaller than the geometry requires.
    #[error("region is {have} bytes but the geometry needs {need}")]
    Short {
        /// Bytes mapped.
        have: usize,
        /// Bytes required.
        need: usize,
    },
}

impl Layout {
    /// Validates a geometry (from a peer or from the command line).
    pub fn new(channels: u32, ring_size: u32, window: u32) -> Result<Self, LayoutError> {
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(LayoutError::Channels(channels));
        }
        if !ring_size.is_power_of_two() || ring_size > MAX_RING_SIZE {
            return Err(LayoutError::RingSize(ring_size));
        }
        if !(window as usize).is_multiple_of(PAGE) || window > MAX_WINDOW {
            return Err(LayoutError::Window(window));
        }
        let l = Layout {
            channels,
            ring_size,
            window,
            streams: 0,
        };
        if l.region_len() > MAX_REGION {
            return Err(LayoutError::TooLarge(l.region_len()));
        }
        Ok(l)
    }

    /// This geometry with `streams` streams (0 or [`STREAM_SLOTS`]).
    pub fn with_streams(self, streams: u32) -> Result<Self, LayoutError> {
        if streams != 0 && streams != STREAM_SLOTS {
            return Err(LayoutError::Streams(streams));
        }
        let l = Layout { streams, ..self };
        if l.region_len() > MAX_REGION {
            return Err(LayoutError::TooLarge(l.region_len()));
        }
        Ok(l)
    }

    /// Bytes of one channel ring, cache-line aligned.
    pub fn channel_bytes(&self) -> usize {
        ring::SLOTS + self.ring_size as usize * SLOT_SIZE
    }

    /// Offset of the first channel ring.
    pub fn rings_off(&self) -> usize {
        PAGE
    }

    /// Offset of channel `c`'s ring.
    pub fn ring_off(&self, c: u32) -> usize {
        assert!(c < self.channels);
        self.rings_off() + c as usize * self.channel_bytes()
    }

    /// Offset of the first data window (page aligned).
    pub fn data_off(&self) -> usize {
        (self.rings_off() + self.channels as usize * self.channel_bytes()).next_multiple_of(PAGE)
    }

    /// Offset of channel `c`'s data window.
    pub fn window_off(&self, c: u32) -> usize {
        assert!(c < self.channels);
        self.data_off() + c as usize * self.window as usize
    }

    /// Offset of the readiness words (page aligned).
    pub fn events_off(&self) -> usize {
        self.data_off() + self.channels as usize * self.window as usize
    }

    /// Offset of handle `h`'s readiness word.
    pub fn event_off(&self, h: usize) -> usize {
        assert!(h < EVENT_SLOTS);
        self.events_off() + h * 8
    }

    /// Offset of the stream map (page aligned; meaningful only with streams).
    pub fn stream_map_off(&self) -> usize {
        self.events_off() + EVENT_SLOTS * 8
    }

    /// Offset of handle `h`'s stream-map word.
    pub fn stream_map_word(&self, h: usize) -> usize {
        assert!(h < EVENT_SLOTS && self.streams > 0);
        self.stream_map_off() + h * 4
    }

    /// Offset of stream `i` (its header; the data follows at `+ STREAM_HEADER`).
    pub fn stream_off(&self, i: u32) -> usize {
        assert!(i < self.streams);
        self.stream_map_off() + EVENT_SLOTS * 4 + i as usize * STREAM_SPAN
    }

    /// Total region size in bytes (page multiple).
    pub fn region_len(&self) -> usize {
        if self.streams == 0 {
            return self.stream_map_off();
        }
        (self.stream_map_off() + EVENT_SLOTS * 4 + self.streams as usize * STREAM_SPAN)
            .next_multiple_of(PAGE)
    }

    /// Offset of slot `index` (taken modulo the ring size) of channel `c`.
    pub fn slot_off(&self, c: u32, index: u32) -> usize {
        self.ring_off(c) + ring::SLOTS + (index & (self.ring_size - 1)) as usize * SLOT_SIZE
    }

    /// Checks that a mapping of `have` bytes can hold this geometry.
    pub fn check_len(&self, have: usize) -> Result<(), LayoutError> {
        let need = self.region_len();
        if have < need {
            return Err(LayoutError::Short { have, need });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_geometry() {
        assert_eq!(
            Layout::new(0, 8, PAGE as u32),
            Err(LayoutError::Channels(0))
        );
        assert_eq!(
            Layout::new(1, 6, PAGE as u32),
            Err(LayoutError::RingSize(6))
        );
        assert_eq!(Layout::new(1, 8, 100), Err(LayoutError::Window(100)));
        assert!(matches!(
            Layout::new(1024, 1024, MAX_WINDOW),
            Err(LayoutError::TooLarge(_))
        ));
        let l = Layout::new(1, 8, PAGE as u32).unwrap();
        assert_eq!(l.with_streams(3), Err(LayoutError::Streams(3)));
        assert_eq!(l.with_streams(0), Ok(l));
    }

    proptest! {
        // Miri is ~1000x slower and isolates the file system (no failure persistence there).
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { ProptestConfig::default().cases },
            failure_persistence: if cfg!(miri) {
                None
            } else {
                ProptestConfig::default().failure_persistence
            },
            ..ProptestConfig::default()
        })]
        #[test]
        fn parts_never_overlap(ch in 1u32..64, rs_log in 0u32..8, pages in 0u32..8) {
            let l = Layout::new(ch, 1 << rs_log, pages * PAGE as u32).unwrap();
            let last_slot = l.slot_off(ch - 1, u32::MAX) + SLOT_SIZE;
            prop_assert!(last_slot <= l.data_off());
            prop_assert!(l.ring_off(0) >= header::EVENT_WAITERS + 64);
            prop_assert!(header::EVENT_EPOCH >= header::SERVER_STATE + 64);
            prop_assert!(header::LAT_HIST >= header::EVENT_WAITERS + 64);
            prop_assert!(
                header::lat_bucket(header::LAT_STRIPES - 1, header::LAT_BUCKETS - 1) + 8
                    <= l.rings_off()
            );
            prop_assert_eq!(l.region_len() % PAGE, 0);
            prop_assert_eq!(l.window_off(ch - 1) + l.window as usize, l.events_off());
            prop_assert_eq!(l.event_off(EVENT_SLOTS - 1) + 8, l.region_len());
            let s = l.with_streams(STREAM_SLOTS).unwrap();
            prop_assert_eq!(s.stream_map_off(), l.region_len());
            prop_assert_eq!(s.stream_map_word(EVENT_SLOTS - 1) + 4, s.stream_off(0));
            prop_assert!(s.stream_off(STREAM_SLOTS - 1) + STREAM_SPAN <= s.region_len());
            prop_assert_eq!(s.region_len() % PAGE, 0);
            prop_assert_eq!(s.stream_off(1) % 64, 0);
        }
    }
}
