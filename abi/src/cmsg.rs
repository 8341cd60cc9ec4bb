//! Ancillary data (control messages) a client hands the network domain with a `sendmsg`.
//!
//! The bytes are the program's `msg_control`, copied as they are into the session window (the
//! client and the server run on the same kernel, so the `cmsghdr` layout is the kernel's own).
//! The server passes them to its own `sendmsg`, where the kernel checks capabilities against
//! *the server*: so they are decoded and validated here first ([`parse`]), once, and only a
//! buffer whose every message is well formed and of a kind an internet socket takes is sent.
//! Kinds that need a privilege ([`Cmsg::needs_caps`]) are checked against the client.

/// Most control bytes one call carries.
pub const MAX_CONTROL: usize = 4096;

/// `sizeof(struct cmsghdr)` on 64-bit Linux: `cmsg_len` (size_t), `cmsg_level`, `cmsg_type`.
pub const HDR: usize = 16;

/// `CMSG_ALIGN`: control messages are aligned to `size_t`.
pub const fn align(n: usize) -> usize {
    (n + 7) & !7
}

/// One decoded control message: its level, type and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmsg<'a> {
    /// `cmsg_level` (SOL_SOCKET, SOL_IP, SOL_IPV6, SOL_UDP).
    pub level: i32,
    /// `cmsg_type`.
    pub kind: i32,
    /// The message's data (`cmsg_len - HDR` bytes).
    pub data: &'a [u8],
}

/// Why a control buffer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmsgError {
    /// Longer than [`MAX_CONTROL`].
    #[error("control data longer than {MAX_CONTROL} bytes")]
    TooLong,
    /// A header whose length is shorter than the header or runs past the buffer.
    #[error("malformed control message header")]
    Malformed,
    /// A kind an internet socket does not take on send (SCM_RIGHTS, SCM_CREDENTIALS, unknown).
    #[error("control message level {level} type {kind} is not for an internet socket")]
    Unsupported {
        /// `cmsg_level`.
        level: i32,
        /// `cmsg_type`.
        kind: i32,
    },
}

impl CmsgError {
    /// The errno Linux gives a `sendmsg` with such control data.
    pub fn errno(self) -> i32 {
        match self {
            CmsgError::TooLong => libc::ENOBUFS,
            CmsgError::Malformed | CmsgError::Unsupported { .. } => libc::EINVAL,
        }
    }
}

impl Cmsg<'_> {
    /// The capabilities one of which the sender must hold for this message (None: free), as
    /// the kernel requires them of a native sender.
    pub fn needs_caps(&self) -> Option<&'static [u32]> {
        const CAP_NET_ADMIN: u32 = 12;
        const CAP_NET_RAW: u32 = 13;
        const RAW_OR_ADMIN: &[u32] = &[CAP_NET_RAW, CAP_NET_ADMIN];
        let int = self
            .data
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match (self.level, self.kind) {
            (libc::SOL_SOCKET, libc::SO_MARK) => Some(RAW_OR_ADMIN),
            (libc::SOL_SOCKET, libc::SO_PRIORITY) if int.is_some_and(|p| !(0..=6).contains(&p)) => {
                Some(RAW_OR_ADMIN)
            }
            // IPv6 extension headers the kernel lets only CAP_NET_RAW set; IPv4 options
            // (some of which need it: security labels), conservatively likewise.
            (libc::SOL_IPV6, libc::IPV6_HOPOPTS | libc::IPV6_DSTOPTS | libc::IPV6_RTHDRDSTOPTS)
            | (libc::SOL_IP, libc::IP_RETOPTS) => Some(&[CAP_NET_RAW]),
            _ => None,
        }
    }

    /// Whether Linux ignores this message on an internet socket (descriptors and credentials
    /// travel only over AF_UNIX): it is accepted and dropped, never handed to the server's
    /// kernel.
    pub fn ignored(&self) -> bool {
        self.level == libc::SOL_SOCKET
            && matches!(self.kind, libc::SCM_RIGHTS | libc::SCM_CREDENTIALS)
    }
}

/// Whether an internet socket's `sendmsg` takes control messages of this level and type.
fn sendable(level: i32, kind: i32) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(
            kind,
            libc::SO_MARK | libc::SO_PRIORITY | libc::SO_TIMESTAMPING | libc::SCM_TXTIME
        ),
        libc::SOL_IP => matches!(
            kind,
            libc::IP_PKTINFO | libc::IP_TTL | libc::IP_TOS | libc::IP_RETOPTS
        ),
        libc::SOL_IPV6 => matches!(
            kind,
            libc::IPV6_PKTINFO
                | libc::IPV6_HOPLIMIT
                | libc::IPV6_TCLASS
                | libc::IPV6_DONTFRAG
                | libc::IPV6_NEXTHOP
                | libc::IPV6_HOPOPTS
                | libc::IPV6_RTHDRDSTOPTS
                | libc::IPV6_RTHDR
                | libc::IPV6_DSTOPTS
        ),
        libc::SOL_UDP => kind == libc::UDP_SEGMENT,
        _ => false,
    }
}

/// Decodes `buf` (a `msg_control`) into its messages, refusing anything malformed or not for
/// an internet socket. An empty buffer is no messages.
pub fn parse(buf: &[u8]) -> Result<Vec<Cmsg<'_>>, CmsgError> {
    if buf.len() > MAX_CONTROL {
        return Err(CmsgError::TooLong);
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    // As the kernel walks it (CMSG_FIRSTHDR/CMSG_NXTHDR): a trailing piece shorter than a
    // header ends the list.
    while buf.len() - at >= HDR {
        let h = &buf[at..at + HDR];
        let len = u64::from_ne_bytes(h[..8].try_into().expect("8 bytes")) as usize;
        let level = i32::from_ne_bytes(h[8..12].try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(h[12..16].try_into().expect("4 bytes"));
        if len < HDR || len > buf.len() - at {
            return Err(CmsgError::Malformed);
        }
        let ignored =
            level == libc::SOL_SOCKET && matches!(kind, libc::SCM_RIGHTS | libc::SCM_CREDENTIALS);
        if !ignored && !sendable(level, kind) {
            return Err(CmsgError::Unsupported { level, kind });
        }
        out.push(Cmsg {
            level,
            kind,
            data: &buf[at + HDR..at + len],
        });
        at = at.saturating_add(align(len));
        if at >= buf.len() {
            break;
        }
    }
    Ok(out)
}

/// The messages of `msgs` the server's kernel is to get, encoded again (the ignored ones left
/// out); empty when none is left.
pub fn forwarded(msgs: &[Cmsg<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs.iter().filter(|m| !m.ignored()) {
        encode(m.level, m.kind, m.data, &mut out);
    }
    out
}

/// Encodes one control message (for tests and clients that build their own).
pub fn encode(level: i32, kind: i32, data: &[u8], out: &mut Vec<u8>) {
    let len = HDR + data.len();
    out.extend_from_slice(&(len as u64).to_ne_bytes());
    out.extend_from_slice(&level.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + (align(len) - len), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn well_formed_messages_decode() {
        let mut b = Vec::new();
        encode(
            libc::SOL_IPV6,
            libc::IPV6_HOPLIMIT,
            &7i32.to_ne_bytes(),
            &mut b,
        );
        encode(libc::SOL_IP, libc::IP_TOS, &[0x10], &mut b);
        let m = parse(&b).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].data, 7i32.to_ne_bytes());
        assert_eq!(
            (m[1].level, m[1].kind, m[1].data),
            (libc::SOL_IP, libc::IP_TOS, &[0x10][..])
        );
        assert!(parse(&[]).unwrap().is_empty());
        // A last message without its alignment padding is still whole (the kernel agrees).
        let mut c = Vec::new();
        encode(libc::SOL_IP, libc::IP_TOS, &[1], &mut c);
        assert_eq!(parse(&c[..HDR + 1]).unwrap().len(), 1);
    }

    #[test]
    fn descriptors_and_credentials_are_dropped_and_garbage_refused() {
        let mut b = Vec::new();
        encode(
            libc::SOL_SOCKET,
            libc::SCM_RIGHTS,
            &3i32.to_ne_bytes(),
            &mut b,
        );
        encode(libc::SOL_SOCKET, libc::SCM_CREDENTIALS, &[0; 12], &mut b);
        encode(libc::SOL_IP, libc::IP_TTL, &9i32.to_ne_bytes(), &mut b);
        let m = parse(&b).unwrap();
        assert_eq!(m.len(), 3);
        let mut ttl = Vec::new();
        encode(libc::SOL_IP, libc::IP_TTL, &9i32.to_ne_bytes(), &mut ttl);
        assert_eq!(
            forwarded(&m),
            ttl,
            "only what the kernel acts on is forwarded"
        );
        let mut c = Vec::new();
        encode(libc::SOL_SOCKET, 12345, &[0; 4], &mut c);
        assert_eq!(parse(&c).unwrap_err().errno(), libc::EINVAL);
        let mut d = Vec::new();
        encode(libc::SOL_IP, libc::IP_TTL, &[0; 4], &mut d);
        d[..8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(parse(&d).unwrap_err(), CmsgError::Malformed);
        d[..8].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(parse(&d).unwrap_err(), CmsgError::Malformed);
        assert_eq!(
            parse(&[0; MAX_CONTROL + 1]).unwrap_err(),
            CmsgError::TooLong
        );
    }

    #[test]
    fn privileged_kinds_name_their_capabilities() {
        let caps = |level, kind, v: i32| {
            let b = v.to_ne_bytes();
            Cmsg {
                level,
                kind,
                data: &b,
            }
            .needs_caps()
        };
        assert!(caps(libc::SOL_SOCKET, libc::SO_MARK, 1).is_some());
        assert!(caps(libc::SOL_SOCKET, libc::SO_PRIORITY, 7).is_some());
        assert!(caps(libc::SOL_SOCKET, libc::SO_PRIORITY, 6).is_none());
        assert!(caps(libc::SOL_IP, libc::IP_TTL, 9).is_none());
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
        fn any_bytes_decode_or_refuse_within_bounds(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(msgs) = parse(&b) {
                let mut total = 0usize;
                for m in &msgs {
                    prop_assert!(sendable(m.level, m.kind) || m.ignored());
                    total += HDR + m.data.len();
                }
                prop_assert!(total <= b.len());
            }
        }
    }
}
