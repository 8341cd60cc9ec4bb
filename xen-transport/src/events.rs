//! Readiness pushed by a server into shared memory.
//!
//! A server that owns pollable objects (the network domain's sockets) keeps, for each handle
//! `h` of a session, the word `events_off + 8h` up to date: `seq << 32 | mask`, where `mask`
//! holds the `POLL*` bits the object is ready for *now* and `seq` grows each time new readiness
//! arrived (an edge, for edge-triggered waits). After changing words it bumps the header's
//! `EVENT_EPOCH`, and if a client thread announced (in `EVENT_WAITERS`) that it is about to
//! sleep, it writes that many units into the session's readiness eventfd (a semaphore-mode
//! eventfd that the client polls beside its local file descriptors).
//!
//! The protocol for a waiting client thread (see [`crate::Session::event_wait_prepare`]):
//! read the epoch, scan the words, and if nothing is ready, register in `EVENT_WAITERS`,
//! re-read the epoch (sequentially consistent on both sides, so either the server sees the
//! waiter or the waiter sees the new epoch), and only then sleep in `poll` on its local fds
//! plus the eventfd; after waking it deregisters and takes at most one unit. Units left over
//! cause one spurious wake-up, never a lost one.

/// A readiness word: what is ready now, and how many times readiness arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// `POLLIN`, `POLLOUT`, `POLLRDHUP`, `POLLHUP`, `POLLERR`, `POLLPRI` bits.
    pub mask: u32,
    /// Edge counter: grows whenever readiness arrives.
    pub seq: u32,
}

impl Readiness {
    /// Decodes a word read (once) from shared memory.
    pub fn from_word(w: u64) -> Readiness {
        Readiness {
            mask: w as u32,
            seq: (w >> 32) as u32,
        }
    }

    /// Encodes the word.
    pub fn to_word(self) -> u64 {
        (u64::from(self.seq) << 32) | u64::from(self.mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        fn words_round_trip(mask: u32, seq: u32) {
            let r = Readiness { mask, seq };
            prop_assert_eq!(Readiness::from_word(r.to_word()), r);
        }
    }
}
