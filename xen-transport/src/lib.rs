//! virtuos's shared-memory transport between applications and service domains.
//!
//! A *session* is one client process's connection to one server. Its region holds a header
//! and `channels` Xen-style rings ([`ring`]) with a data window each ([`layout`]). A client
//! thread leases a free channel for the length of a call ([`client::Lease`]), so many threads
//! submit at once without a global lock and every response lands on the ring of the thread
//! that waits for it. Server workers own disjoint sets of channels ([`server`]).
//!
//! Sessions start over a Unix socket ([`control`]): the server learns the client's credentials
//! from the kernel, creates the region and passes its file descriptors. Memory and doorbells
//! come from a [`backend`]: `local` (memfd, futex, eventfd) or `xen` (grants, event channels).
//!
//! The transport knows nothing about system calls: requests are opaque [`abi::Request`]s.

#![deny(missing_docs)]

pub mod backend;
pub mod client;
pub mod control;
pub mod events;
pub mod fdcell;
pub mod fdstore;
mod futex;
pub mod layout;
pub mod mem;
pub mod ring;
pub mod server;
pub mod stream;
pub mod wait;

pub use client::{CallError, ClientConfig, Lease, Session};
pub use events::Readiness;
pub use fdcell::{FdCell, FdHooks};
pub use layout::Layout;
pub use mem::SharedMem;
pub use server::{Credentials, ServerSession};
pub use stream::{Snapshot, Stream, StreamState};
pub use wait::{AdaptiveSpin, SpinPolicy, WaitSnapshot, WaitStats};

use thiserror::Error;

/// The server's state as published in the region header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ServerState {
    /// Serving requests.
    Running = 1,
    /// Shutting down: outstanding requests are answered with errors, new ones are refused.
    Closing = 2,
}

/// Transport set-up failures.
#[derive(Debug, Error)]
pub enum TransportError {
    /// Creating or mapping the shared region failed.
    #[error("cannot create or map the shared region: {0}")]
    Region(#[source] std::io::Error),
    /// The peer described a region that does not match what was mapped.
    #[error("peer's region is not acceptable: {0}")]
    BadRegion(String),
    /// The geometry is not acceptable.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// A Xen device is missing: this kernel is not running as a Xen domain.
    #[error("{path}: {source} (the xen backend needs a Linux kernel running as a Xen domain with the xen-gntalloc/xen-gntdev/xen-evtchn drivers; use the local backend here)")]
    XenUnavailable {
        /// The device that could not be opened.
        path: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A Xen device refused an operation.
    #[error("xen device operation failed: {0}")]
    Xen(#[source] std::io::Error),
}
