//! How the two sides share memory and ring each other's doorbells.
//!
//! The ring protocol is the same for every backend; a backend only supplies the region
//! ([`crate::SharedMem`]) and the two doorbell directions:
//!
//! * [`ClientBell`]: a client thread rings the server worker that serves its channel, and sleeps
//!   until its channel's published response index moves.
//! * [`ServerBell`]: a server worker wakes the client waiting on a channel, and owns a pollable
//!   file descriptor per worker that becomes readable when a client rings.
//!
//! `local` backs these with a memfd, futex words and eventfds between processes on one kernel;
//! `xen` with grant-shared pages and event channels between Xen domains.

pub mod local;
pub mod xen;
pub mod xen_session;
pub mod xenstore;

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// The client's side of the doorbells.
pub trait ClientBell: Send + Sync {
    /// Wakes the server worker that serves `channel`.
    fn notify_server(&self, channel: u32) -> io::Result<()>;
    /// Sleeps until `word` (a channel's published response index) differs from `seen`, a
    /// wake-up arrives, or `timeout` passes. Spurious returns are allowed; a signal handler
    /// that ran during the sleep makes it return an `ErrorKind::Interrupted` error.
    fn wait_response(&self, word: &AtomicU32, seen: u32, timeout: Duration) -> io::Result<()>;
    /// Replaces a kept descriptor's number `old` by `new` (see [`crate::FdCell`]); false when
    /// no descriptor of this bell has the number `old`.
    fn renumber(&self, _old: std::os::fd::RawFd, _new: std::os::fd::RawFd) -> bool {
        false
    }
    /// Calls `f` with the number of each descriptor the bell keeps.
    fn kept_fds(&self, _f: &mut dyn FnMut(std::os::fd::RawFd)) {}
}

/// The server's side of the doorbells.
pub trait ServerBell: Send + Sync {
    /// Wakes the client thread sleeping on `channel`'s response word `word`.
    fn notify_client(&self, channel: u32, word: &AtomicU32) -> io::Result<()>;
    /// The fd that becomes readable when a client rings worker `worker`.
    fn doorbell_fd(&self, worker: usize) -> BorrowedFd<'_>;
    /// Consumes pending rings of worker `worker` so its doorbell fd stops being readable.
    fn drain(&self, worker: usize);
    /// Number of workers this session's doorbells are split over.
    fn workers(&self) -> usize;
}
