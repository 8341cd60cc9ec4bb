//! The fd-store protocol between the supervisor (`virtuos-redirect domains`) and the network
//! domain: fixed 24-byte [`Record`]s on a Unix `SOCK_SEQPACKET` pair, a socket attached with
//! SCM_RIGHTS to `KEEP` and `RESTORE`. The domain's side is `virtuos_net::store`; the
//! supervisor's is `redirector/src/domains.rs`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// One message of the store protocol (24 bytes, native endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// What it says.
    pub op: Op,
    /// The uid that made the socket listen.
    pub uid: u32,
    /// The socket's key.
    pub key: u64,
}

/// The kinds of [`Record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Keep the attached socket under `key`.
    Keep = 1,
    /// Drop the socket kept under `key`.
    Forget = 2,
    /// A socket kept before this domain started (attached).
    Restore = 3,
    /// No more restores follow.
    End = 4,
}

impl Record {
    /// Size on the wire.
    pub const SIZE: usize = 24;

    /// The wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..4].copy_from_slice(&(self.op as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&self.uid.to_ne_bytes());
        b[8..16].copy_from_slice(&self.key.to_ne_bytes());
        b
    }

    /// Decodes a record; None for anything else.
    pub fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != Self::SIZE {
            return None;
        }
        let op = match u32::from_ne_bytes(b[..4].try_into().ok()?) {
            1 => Op::Keep,
            2 => Op::Forget,
            3 => Op::Restore,
            4 => Op::End,
            _ => return None,
        };
        Some(Record {
            op,
            uid: u32::from_ne_bytes(b[4..8].try_into().ok()?),
            key: u64::from_ne_bytes(b[8..16].try_into().ok()?),
        })
    }
}

/// Sends `rec` on `sock`, with `fd` attached if given.
pub fn send(sock: BorrowedFd<'_>, rec: Record, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let b = rec.encode();
    let iov = [std::io::IoSlice::new(&b)];
    let fds = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage<'_>> = fds
        .as_ref()
        .map(|f| vec![ControlMessage::ScmRights(f)])
        .unwrap_or_default();
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one record and the fd attached to it (blocking); None at end of stream or for a
/// malformed message.
pub fn recv(sock: BorrowedFd<'_>) -> std::io::Result<Option<(Record, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut b = [0u8; Record::SIZE];
    let mut iov = [std::io::IoSliceMut::new(&mut b)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for (i, f) in fds.into_iter().enumerate() {
                // SAFETY: the kernel just installed this descriptor for us.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if i == 0 && fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    if n == 0 {
        return Ok(None);
    }
    Ok(Record::decode(&b[..n]).map(|r| (r, fd)))
}
