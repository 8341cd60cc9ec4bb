//! Wire records shared by every virtuos component.
//!
//! Everything in here is plain data: the 64-byte request and response slots that travel in the
//! shared rings, the control-plane messages exchanged over the servers' Unix sockets, the opcode
//! numbers, and the mapping between Linux errno values and the signed results carried in
//! responses. Nothing here performs a system call.
//!
//! Both sides treat the other as hostile. A slot read out of shared memory is first copied into
//! a private [`RawSlot`], then decoded and validated once ([`decode_request`],
//! [`decode_response`]); only the decoded, validated values are acted upon.

#![deny(missing_docs)]

pub mod cmsg;
pub mod control;
mod errno;
mod opcode;

pub use errno::{Errno, ESCAPE, MAX_ERRNO};
pub use opcode::Opcode;

use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size in bytes of one ring slot: one x86-64 cache line.
pub const SLOT_SIZE: usize = 64;

/// Number of argument words carried by a request.
pub const REQUEST_ARGS: usize = 5;

/// Number of auxiliary result words carried by a response.
pub const RESPONSE_AUX: usize = 5;

/// One ring slot exactly as it lies in shared memory: eight little-endian words.
///
/// The transport copies slots word by word with atomic loads, so a slot is never observed
/// through a reference into memory the peer may be writing.
pub type RawSlot = [u64; SLOT_SIZE / 8];

/// A request as written by a client into a ring slot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Request {
    /// Caller-chosen identifier echoed in the response.
    pub id: u64,
    /// An [`Opcode`] number.
    pub opcode: u16,
    /// `REQ_FLAG_*` bits.
    pub flags: u16,
    /// Offset of the payload inside the channel's data window.
    pub data_off: u32,
    /// Length of the payload inside the channel's data window.
    pub data_len: u32,
    /// Reserved, must be zero.
    pub reserved: u32,
    /// Opcode-specific arguments.
    pub args: [u64; REQUEST_ARGS],
}

/// A response as written by a server into a ring slot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Response {
    /// The identifier of the request this answers.
    pub id: u64,
    /// Non-negative on success, `-errno` on failure (as a Linux system call returns it).
    pub result: i64,
    /// `RSP_FLAG_*` bits.
    pub flags: u32,
    /// Bytes of result payload the server wrote at the request's `data_off`.
    pub data_len: u32,
    /// Opcode-specific extra results.
    pub aux: [u64; RESPONSE_AUX],
}

const _: () = assert!(core::mem::size_of::<Request>() == SLOT_SIZE);
const _: () = assert!(core::mem::size_of::<Response>() == SLOT_SIZE);

/// Request flag: the client will not wait for this response (fire and forget).
pub const REQ_FLAG_NO_REPLY_WAIT: u16 = 1 << 0;
/// `args[2]` of a [`Opcode::Write`]/[`Opcode::PWrite`] chunk that more chunks of the same
/// write follow (see [`Opcode::Write`]).
pub const WRITE_MORE: u64 = 1;
/// `args[2]` of a [`Opcode::Read`]/[`Opcode::Write`] whose handle the client opened as a FIFO
/// or character device: the server asks the file's status flags and honours `O_NONBLOCK`
/// (io_uring alone would wait for such a file to be ready, whatever its flags say).
pub const RW_MAY_BLOCK: u64 = 1 << 1;
/// The largest write the storage domain assembles from chunks into one system call; larger
/// ones are written chunk by chunk.
pub const WRITE_ASSEMBLE_MAX: usize = 16 << 20;
/// All request flags this version understands.
pub const REQ_FLAGS_KNOWN: u16 = REQ_FLAG_NO_REPLY_WAIT;

/// Response flag: the server is shutting down; no further requests will be served.
pub const RSP_FLAG_SHUTDOWN: u32 = 1 << 0;
/// Response flag: the request was rejected by validation before execution.
pub const RSP_FLAG_REJECTED: u32 = 1 << 1;
/// All response flags this version understands.
pub const RSP_FLAGS_KNOWN: u32 = RSP_FLAG_SHUTDOWN | RSP_FLAG_REJECTED;

impl Request {
    /// Encodes the request as the words of a ring slot.
    pub fn to_slot(&self) -> RawSlot {
        let mut slot = RawSlot::default();
        slot.as_mut_bytes().copy_from_slice(self.as_bytes());
        slot
    }

    /// Reinterprets a copied slot as a request without any validation.
    pub fn from_slot_unchecked(slot: &RawSlot) -> Self {
        Self::read_from_bytes(slot.as_bytes()).expect("slot and request have the same size")
    }
}

impl Response {
    /// Encodes the response as the words of a ring slot.
    pub fn to_slot(&self) -> RawSlot {
        let mut slot = RawSlot::default();
        slot.as_mut_bytes().copy_from_slice(self.as_bytes());
        slot
    }

    /// Reinterprets a copied slot as a response without any validation.
    pub fn from_slot_unchecked(slot: &RawSlot) -> Self {
        Self::read_from_bytes(slot.as_bytes()).expect("slot and response have the same size")
    }

    /// A successful response with `result` for request `id`.
    pub fn ok(id: u64, result: i64) -> Self {
        Self {
            id,
            result,
            ..Self::default()
        }
    }

    /// A failed response carrying `errno` for request `id`.
    pub fn err(id: u64, errno: Errno) -> Self {
        Self {
            id,
            result: -i64::from(errno.get()),
            ..Self::default()
        }
    }

    /// Splits the result the way libc does: `Ok(value)` or `Err(errno)`.
    pub fn into_result(self) -> Result<u64, Errno> {
        errno::split_result(self.result)
    }
}

/// Why a request slot was rejected.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The opcode number is not one this server knows.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// Flag bits outside [`REQ_FLAGS_KNOWN`] were set.
    #[error("unknown request flags {0:#x}")]
    UnknownFlags(u16),
    /// The reserved word was not zero.
    #[error("reserved field is {0:#x}, must be zero")]
    Reserved(u32),
    /// The payload range does not lie inside the channel's data window.
    #[error("payload {off}+{len} outside the {window}-byte data window")]
    DataOutOfBounds {
        /// Claimed offset.
        off: u32,
        /// Claimed length.
        len: u32,
        /// Size of the data window.
        window: u32,
    },
}

impl RequestError {
    /// The errno a server answers a rejected request with.
    pub fn errno(&self) -> Errno {
        match self {
            RequestError::UnknownOpcode(_) => Errno::ENOSYS,
            RequestError::UnknownFlags(_) | RequestError::Reserved(_) => Errno::EINVAL,
            RequestError::DataOutOfBounds { .. } => Errno::EFAULT,
        }
    }
}

/// A request that passed validation: its opcode is known and its payload lies in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidRequest {
    /// The raw fields, copied once out of shared memory.
    pub raw: Request,
    /// The decoded opcode.
    pub opcode: Opcode,
}

/// Decodes and validates a request slot copied out of shared memory.
///
/// `window` is the size of the channel's data window; a payload must lie entirely inside it.
/// The caller copies the slot exactly once before calling this, so the peer cannot change a
/// field between its check and its use.
pub fn decode_request(slot: &RawSlot, window: u32) -> Result<ValidRequest, (u64, RequestError)> {
    let raw = Request::from_slot_unchecked(slot);
    let fail = |e| Err((raw.id, e));
    let Some(opcode) = Opcode::from_u16(raw.opcode) else {
        return fail(RequestError::UnknownOpcode(raw.opcode));
    };
    if raw.flags & !REQ_FLAGS_KNOWN != 0 {
        return fail(RequestError::UnknownFlags(raw.flags));
    }
    if raw.reserved != 0 {
        return fail(RequestError::Reserved(raw.reserved));
    }
    if !range_fits(raw.data_off, raw.data_len, window) {
        return fail(RequestError::DataOutOfBounds {
            off: raw.data_off,
            len: raw.data_len,
            window,
        });
    }
    Ok(ValidRequest { raw, opcode })
}

/// Why a response slot was rejected by a client.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ResponseError {
    /// The result is negative but not a valid `-errno`.
    #[error("result {0} is neither a value nor -errno")]
    BadResult(i64),
    /// Flag bits outside [`RSP_FLAGS_KNOWN`] were set.
    #[error("unknown response flags {0:#x}")]
    UnknownFlags(u32),
    /// The server claims to have written more payload than the request's window allows.
    #[error("response payload of {len} bytes exceeds the {limit} bytes offered")]
    DataTooLong {
        /// Claimed length.
        len: u32,
        /// What the request offered.
        limit: u32,
    },
}

/// Decodes and validates a response slot copied out of shared memory.
///
/// `offered` is the payload length of the request it answers: a server may not claim more.
pub fn decode_response(slot: &RawSlot, offered: u32) -> Result<Response, ResponseError> {
    let rsp = Response::from_slot_unchecked(slot);
    if rsp.result < 0 && rsp.result < -i64::from(MAX_ERRNO) {
        return Err(ResponseError::BadResult(rsp.result));
    }
    if rsp.flags & !RSP_FLAGS_KNOWN != 0 {
        return Err(ResponseError::UnknownFlags(rsp.flags));
    }
    if rsp.data_len > offered {
        return Err(ResponseError::DataTooLong {
            len: rsp.data_len,
            limit: offered,
        });
    }
    Ok(rsp)
}

/// True when `off..off+len` lies inside `0..window`, without overflow.
pub fn range_fits(off: u32, len: u32, window: u32) -> bool {
    u64::from(off) + u64::from(len) <= u64::from(window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips_through_a_slot() {
        let req = Request {
            id: 7,
            opcode: Opcode::Echo as u16,
            flags: 0,
            data_off: 64,
            data_len: 10,
            reserved: 0,
            args: [1, 2, 3, 4, 5],
        };
        let decoded = decode_request(&req.to_slot(), 4096).unwrap();
        assert_eq!(decoded.raw, req);
        assert_eq!(decoded.opcode, Opcode::Echo);
    }

    #[test]
    fn rejects_each_kind_of_bad_request() {
        let good = Request {
            id: 9,
            opcode: Opcode::Nop as u16,
            ..Request::default()
        };
        let mut r = good;
        r.opcode = 0xfff0;
        assert_eq!(
            decode_request(&r.to_slot(), 64),
            Err((9, RequestError::UnknownOpcode(0xfff0)))
        );
        let mut r = good;
        r.flags = 0x8000;
        assert_eq!(
            decode_request(&r.to_slot(), 64).unwrap_err().1.errno(),
            Errno::EINVAL
        );
        let mut r = good;
        r.reserved = 1;
        assert_eq!(
            decode_request(&r.to_slot(), 64).unwrap_err().1,
            RequestError::Reserved(1)
        );
        let mut r = good;
        r.data_off = u32::MAX;
        r.data_len = 2;
        assert_eq!(
            decode_request(&r.to_slot(), 64).unwrap_err().1.errno(),
            Errno::EFAULT
        );
        let mut r = good;
        r.data_off = 60;
        r.data_len = 5;
        assert!(decode_request(&r.to_slot(), 64).is_err());
        r.data_len = 4;
        assert!(decode_request(&r.to_slot(), 64).is_ok());
    }

    #[test]
    fn response_results_split_like_libc() {
        assert_eq!(Response::ok(1, 5).into_result(), Ok(5));
        assert_eq!(Response::err(1, Errno::EIO).into_result(), Err(Errno::EIO));
        let bad = Response {
            result: -5000,
            ..Response::default()
        };
        assert_eq!(
            decode_response(&bad.to_slot(), 0),
            Err(ResponseError::BadResult(-5000))
        );
        let long = Response {
            data_len: 9,
            ..Response::default()
        };
        assert!(decode_response(&long.to_slot(), 8).is_err());
        assert!(decode_response(&long.to_slot(), 9).is_ok());
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
        fn any_slot_decodes_without_panic_and_accepted_ones_fit(words in any::<[u64; 8]>(), window in any::<u32>()) {
            if let Ok(v) = decode_request(&words, window) {
                prop_assert!(u64::from(v.raw.data_off) + u64::from(v.raw.data_len) <= u64::from(window));
                prop_assert_eq!(v.raw.opcode, v.opcode as u16);
            }
            if let Ok(r) = decode_response(&words, window) {
                prop_assert!(r.data_len <= window);
                prop_assert!(r.result >= -i64::from(MAX_ERRNO));
            }
        }
    }
}
