//! Control-plane messages exchanged over a server's Unix socket when a session starts.
//!
//! The client sends [`Hello`]; the server answers [`Welcome`] (with the session's shared-memory
//! and doorbell file descriptors attached as `SCM_RIGHTS`) or [`Refuse`]. Every message starts
//! with [`MAGIC`] and a kind word. Version compatibility follows the major number: servers
//! refuse clients whose major differs; minors only add capabilities.

use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "VRTS" in little-endian: every control message starts with it.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VRTS");
/// Protocol major version: a mismatch is refused.
pub const VERSION_MAJOR: u16 = 1;
/// Protocol minor version: informational.
pub const VERSION_MINOR: u16 = 0;

/// Capability: the server executes calls through io_uring.
pub const CAP_IO_URING: u64 = 1 << 0;
/// Capability: the server pushes readiness into the shared region (network domain).
pub const CAP_READINESS_PUSH: u64 = 1 << 1;
/// Capability: the region holds streams, byte rings into which the server receives a
/// socket's data ahead of the client's calls (network domain). A client asks for it only if
/// it reads them; the region then has `STREAM_SLOTS` of them.
pub const CAP_STREAMS: u64 = 1 << 2;
/// Capabilities this version of the transport knows (a client asks for streams itself).
pub const CAPS_KNOWN: u64 = CAP_IO_URING | CAP_READINESS_PUSH;

/// Kind word of a [`Hello`].
pub const KIND_HELLO: u32 = 1;
/// Kind word of a [`Welcome`].
pub const KIND_WELCOME: u32 = 2;
/// Kind word of a [`Refuse`].
pub const KIND_REFUSE: u32 = 3;

/// The largest control message, for receive buffers.
pub const MAX_MESSAGE: usize = 256;

/// First message of a session, client to server.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`KIND_HELLO`].
    pub kind: u32,
    /// Client's [`VERSION_MAJOR`].
    pub version_major: u16,
    /// Client's [`VERSION_MINOR`].
    pub version_minor: u16,
    /// Number of channels wanted; 0 lets the server choose.
    pub channels: u32,
    /// Capabilities the client can use.
    pub capabilities: u64,
    /// Bytes of data window wanted per channel; 0 lets the server choose.
    pub window: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Positive answer, server to client. `SCM_RIGHTS` carries the region's memfd followed by
/// `doorbells` eventfds (one per server worker).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Welcome {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`KIND_WELCOME`].
    pub kind: u32,
    /// Server's [`VERSION_MAJOR`].
    pub version_major: u16,
    /// Server's [`VERSION_MINOR`].
    pub version_minor: u16,
    /// Number of server doorbells (eventfds) attached.
    pub doorbells: u32,
    /// Capabilities both sides have.
    pub capabilities: u64,
    /// Server-chosen session identifier (for logs and tools).
    pub session_id: u64,
    /// Size of the shared region in bytes.
    pub region_len: u64,
    /// Number of channels in the region.
    pub channels: u32,
    /// Slots per channel ring.
    pub ring_size: u32,
    /// Bytes of data window per channel.
    pub window: u32,
    /// The client's pid as the kernel reported it to the server (`SO_PEERCRED`).
    pub peer_pid: u32,
    /// The client's uid as the kernel reported it to the server.
    pub peer_uid: u32,
    /// The client's gid as the kernel reported it to the server.
    pub peer_gid: u32,
}

/// Negative answer, server to client; the server closes the connection after sending it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Refuse {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`KIND_REFUSE`].
    pub kind: u32,
    /// A [`RefuseReason`] number.
    pub reason: u32,
    /// Server's [`VERSION_MAJOR`].
    pub version_major: u16,
    /// Server's [`VERSION_MINOR`].
    pub version_minor: u16,
    /// Reason-specific detail (for `Full`, the session limit).
    pub detail: u64,
}

/// Why a server refused a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RefuseReason {
    /// The client's major version differs from the server's.
    VersionMismatch = 1,
    /// The server already serves its maximum number of sessions.
    Full = 2,
    /// The hello was malformed.
    BadHello = 3,
    /// The server could not set the session up (out of memory, fd limit).
    Internal = 4,
    /// The server is shutting down.
    ShuttingDown = 5,
}

impl RefuseReason {
    /// Decodes a reason number.
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            1 => Self::VersionMismatch,
            2 => Self::Full,
            3 => Self::BadHello,
            4 => Self::Internal,
            5 => Self::ShuttingDown,
            _ => return None,
        })
    }
}

/// A decoded control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Refuse`].
    Refuse(Refuse),
}

/// Why a control message could not be decoded.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    /// Fewer bytes than the header or than the kind's record.
    #[error("control message truncated ({0} bytes)")]
    Truncated(usize),
    /// The magic word is wrong: not a virtuos peer.
    #[error("not a virtuos control message (magic {0:#010x})")]
    BadMagic(u32),
    /// Unknown kind word.
    #[error("unknown control message kind {0}")]
    UnknownKind(u32),
}

impl Message {
    /// The bytes to send for this message.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Hello(m) => m.as_bytes(),
            Message::Welcome(m) => m.as_bytes(),
            Message::Refuse(m) => m.as_bytes(),
        }
    }

    /// Decodes one received message; trailing bytes are rejected as truncation of another kind.
    pub fn decode(bytes: &[u8]) -> Result<Message, ControlError> {
        let header = bytes.get(..8).ok_or(ControlError::Truncated(bytes.len()))?;
        let magic = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let kind = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(ControlError::BadMagic(magic));
        }
        let trunc = ControlError::Truncated(bytes.len());
        Ok(match kind {
            KIND_HELLO => Message::Hello(Hello::read_from_bytes(bytes).map_err(|_| trunc)?),
            KIND_WELCOME => Message::Welcome(Welcome::read_from_bytes(bytes).map_err(|_| trunc)?),
            KIND_REFUSE => Message::Refuse(Refuse::read_from_bytes(bytes).map_err(|_| trunc)?),
            other => return Err(ControlError::UnknownKind(other)),
        })
    }
}

impl Hello {
    /// A hello for this version with the given wishes.
    pub fn new(channels: u32, window: u32, capabilities: u64) -> Self {
        Hello {
            magic: MAGIC,
            kind: KIND_HELLO,
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            channels,
            capabilities,
            window,
            reserved: 0,
        }
    }
}

impl Refuse {
    /// A refusal for `reason` with `detail`.
    pub fn new(reason: RefuseReason, detail: u64) -> Self {
        Refuse {
            magic: MAGIC,
            kind: KIND_REFUSE,
            reason: reason as u32,
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let h = Message::Hello(Hello::new(8, 4096, CAP_IO_URING));
        assert_eq!(Message::decode(h.as_bytes()), Ok(h));
        let r = Message::Refuse(Refuse::new(RefuseReason::Full, 3));
        assert_eq!(Message::decode(r.as_bytes()), Ok(r));
        assert_eq!(Message::decode(&[0; 4]), Err(ControlError::Truncated(4)));
        assert_eq!(Message::decode(&[0; 16]), Err(ControlError::BadMagic(0)));
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
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
        }
    }
}
