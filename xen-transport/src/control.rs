//! The control plane: starting a session over a server's Unix socket.
//!
//! The socket is `SOCK_SEQPACKET`, so each message arrives whole. The client sends a
//! [`Hello`]; the server takes the client's credentials from the kernel (`SO_PEERCRED`), never
//! from the message, and answers [`Welcome`] with the region memfd and the doorbell eventfds
//! attached (`SCM_RIGHTS`), or [`Refuse`]. The connection then stays open for the session's
//! life: its hang-up tells each side that the other is gone.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use abi::control::{
    Hello, Message, Refuse, RefuseReason, Welcome, KIND_WELCOME, MAGIC, MAX_MESSAGE, VERSION_MAJOR,
    VERSION_MINOR,
};
use nix::errno::Errno as NixErrno;
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg, socket, sockopt, AddressFamily,
    Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use thiserror::Error;

use crate::backend::local::{self, LocalBell};
use crate::client::{ClientConfig, Session};
use crate::layout::{header, Layout, REGION_MAGIC, REGION_VERSION};
use crate::server::{Credentials, ServerSession};
use crate::TransportError;

/// Most doorbells (server workers) a session may carry.
pub const MAX_DOORBELLS: usize = 64;

/// Why a client could not start a session.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Nothing listens at the path.
    #[error("no service domain listening at {path} ({source}); start the server first, e.g. `virtuos-storage --root DIR --listen {path}` or `virtuos-net --listen {path}`", path = path.display())]
    NoServer {
        /// The socket path.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The server speaks another major version.
    #[error("protocol version mismatch: this client speaks {client}.x, the server at {path} speaks {server_major}.{server_minor}; use matching virtuos builds", client = VERSION_MAJOR, path = path.display())]
    VersionMismatch {
        /// The socket path.
        path: PathBuf,
        /// Server major.
        server_major: u16,
        /// Server minor.
        server_minor: u16,
    },
    /// The server is at its session limit.
    #[error("service domain at {path} is full ({limit} sessions); raise --max-sessions or end other clients", path = path.display())]
    Full {
        /// The socket path.
        path: PathBuf,
        /// Its session limit.
        limit: u64,
    },
    /// The server refused for another reason.
    #[error("service domain at {path} refused the session: {reason:?}", path = path.display())]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// Its reason.
        reason: RefuseReason,
    },
    /// The server's answer was not a valid virtuos message or its region is unacceptable.
    #[error("service domain at {path} answered badly: {detail}", path = path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A socket operation failed.
    #[error("control socket {path}: {source}", path = path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Receives one message and any passed fds.
fn recv_with_fds(fd: RawFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_DOORBELLS + 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us; nobody else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

/// Connects to the server at `path` and starts a session.
pub fn connect_session(path: &Path, cfg: &ClientConfig) -> Result<Session, ConnectError> {
    let io = |source: NixErrno| ConnectError::Io {
        path: path.into(),
        source: source.into(),
    };
    let proto = |detail: String| ConnectError::Protocol {
        path: path.into(),
        detail,
    };
    let sock = seqpacket().map_err(io)?;
    let addr = UnixAddr::new(path).map_err(io)?;
    connect(sock.as_raw_fd(), &addr).map_err(|e| ConnectError::NoServer {
        path: path.into(),
        source: e.into(),
    })?;
    let hello = Message::Hello(Hello::new(cfg.channels, cfg.window, cfg.capabilities));
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(hello.as_bytes())],
        &[],
        MsgFlags::empty(),
        None,
    )
    .map_err(io)?;
    let (bytes, mut fds) = recv_with_fds(sock.as_raw_fd()).map_err(io)?;
    if bytes.is_empty() {
        return Err(proto("connection closed before an answer".into()));
    }
    let w: Welcome = match Message::decode(&bytes).map_err(|e| proto(e.to_string()))? {
        Message::Welcome(w) => w,
        Message::Refuse(r) => return Err(refusal(path, r)),
        Message::Hello(_) => return Err(proto("server sent a hello".into())),
    };
    if w.version_major != VERSION_MAJOR {
        return Err(ConnectError::VersionMismatch {
            path: path.into(),
            server_major: w.version_major,
            server_minor: w.version_minor,
        });
    }
    let streams = if w.capabilities & abi::control::CAP_STREAMS != 0 {
        crate::layout::STREAM_SLOTS
    } else {
        0
    };
    let layout = Layout::new(w.channels, w.ring_size, w.window)
        .and_then(|l| l.with_streams(streams))
        .map_err(|e| proto(e.to_string()))?;
    if w.region_len != layout.region_len() as u64 {
        return Err(proto(format!(
            "region of {} bytes for {layout:?}",
            w.region_len
        )));
    }
    let doorbells = w.doorbells as usize;
    // memfd, one doorbell per worker, the readiness eventfd.
    if doorbells == 0 || doorbells > MAX_DOORBELLS || fds.len() != doorbells + 2 {
        return Err(proto(format!(
            "{} fds for {doorbells} doorbells",
            fds.len()
        )));
    }
    let memfd = fds.remove(0);
    let event_fd = fds.pop().expect("counted above");
    let mem = local::map_region(memfd, layout.region_len()).map_err(|e| proto(e.to_string()))?;
    check_header(&mem, &layout).map_err(proto)?;
    let mut s = Session::new(
        mem,
        layout,
        Box::new(LocalBell::with_hooks(fds, cfg.fd_hooks)),
        sock,
        cfg.spin,
        w.session_id,
        cfg.fd_hooks,
    );
    s.set_event_fd(event_fd);
    Ok(s)
}

fn check_header(mem: &crate::SharedMem, l: &Layout) -> Result<(), String> {
    use std::sync::atomic::Ordering::Acquire;
    let get = |off| mem.u32_at(off).load(Acquire);
    let found = (get(header::MAGIC), get(header::VERSION));
    let geometry = (
        get(header::CHANNELS),
        get(header::RING_SIZE),
        get(header::WINDOW),
    );
    if found != (REGION_MAGIC, REGION_VERSION) || geometry != (l.channels, l.ring_size, l.window) {
        return Err(format!(
            "region header {found:x?}/{geometry:?} does not match {l:?}"
        ));
    }
    Ok(())
}

fn refusal(path: &Path, r: Refuse) -> ConnectError {
    match RefuseReason::from_u32(r.reason) {
        Some(RefuseReason::VersionMismatch) => ConnectError::VersionMismatch {
            path: path.into(),
            server_major: r.version_major,
            server_minor: r.version_minor,
        },
        Some(RefuseReason::Full) => ConnectError::Full {
            path: path.into(),
            limit: r.detail,
        },
        Some(reason) => ConnectError::Refused {
            path: path.into(),
            reason,
        },
        None => ConnectError::Protocol {
            path: path.into(),
            detail: format!("unknown refusal reason {}", r.reason),
        },
    }
}

/// Why a server could not listen or set up a session.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another server already listens at the path.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// A socket operation failed.
    #[error("listening socket {path}: {source}", path = path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the region failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A server's listening socket.
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

/// A connected client that has said hello and awaits an answer.
pub struct Pending {
    stream: OwnedFd,
    /// The client's credentials, from the kernel.
    pub creds: Credentials,
    /// A pidfd of the client process (SO_PEERPIDFD, else pidfd_open of its pid): what the
    /// server checks the pid against before it reads anything of the process by pid.
    pub pidfd: Option<OwnedFd>,
    /// What the client asked for (already checked to be a well-formed hello).
    pub hello: Hello,
}

impl Listener {
    /// Listens at `path`, replacing a stale socket file that nobody answers on. The file
    /// appears only once the socket listens: it is bound under a random name beside `path`
    /// and renamed into place after `listen`, so whoever waits for the file to exist (a
    /// script, a test) never connects in between and gets ECONNREFUSED. (Where the random
    /// name would not fit in `sun_path`, or the rename fails, it is bound at `path` itself.)
    pub fn bind(path: &Path) -> Result<Listener, ListenError> {
        let io = |source: NixErrno| ListenError::Io {
            path: path.into(),
            source: source.into(),
        };
        let addr = UnixAddr::new(path).map_err(io)?;
        if path.exists() {
            let probe = seqpacket().map_err(io)?;
            if connect(probe.as_raw_fd(), &addr).is_ok() {
                return Err(ListenError::InUse(path.into()));
            }
            std::fs::remove_file(path).map_err(|source| ListenError::Io {
                path: path.into(),
                source,
            })?;
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io)?;
        let staged = staging_name(path).and_then(|tmp| {
            let a = UnixAddr::new(&tmp).ok()?;
            bind(fd.as_raw_fd(), &a).ok()?;
            Some(tmp)
        });
        if staged.is_none() {
            bind(fd.as_raw_fd(), &addr).map_err(io)?;
        }
        let listening = listen(&fd, Backlog::new(128).map_err(io)?).map_err(io);
        if let Some(tmp) = &staged {
            if let Err(e) = listening.and_then(|()| {
                std::fs::rename(tmp, path).map_err(|source| ListenError::Io {
                    path: path.into(),
                    source,
                })
            }) {
                let _ = std::fs::remove_file(tmp);
                return Err(e);
            }
        } else {
            listening?;
        }
        Ok(Listener {
            fd,
            path: path.into(),
        })
    }

    /// The listening fd (non-blocking, pollable).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection and reads its hello. `Ok(None)` when nothing is pending.
    /// A malformed hello is refused here and reported as `Ok(None)`. A process with fewer
    /// than [`ACCEPT_HEADROOM`] free descriptors accepts nothing (EMFILE): the client waits in
    /// the backlog, as at a kernel's fd limit, instead of being accepted and then hung up on
    /// because its session cannot be set up.
    pub fn accept(&self) -> Result<Option<Pending>, ListenError> {
        let io = |source: NixErrno| ListenError::Io {
            path: self.path.clone(),
            source: source.into(),
        };
        if !headroom(self.fd.as_raw_fd(), ACCEPT_HEADROOM) {
            return Err(io(NixErrno::EMFILE));
        }
        let raw = match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(NixErrno::EAGAIN) | Err(NixErrno::ECONNABORTED) | Err(NixErrno::EINTR) => {
                return Ok(None)
            }
            Err(e) => return Err(io(e)),
        };
        // SAFETY: accept4 returned a new descriptor that we now own.
        let stream = unsafe { OwnedFd::from_raw_fd(raw) };
        let cred = getsockopt(&stream, sockopt::PeerCredentials).map_err(io)?;
        let creds = Credentials {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let pidfd = peer_pidfd(&stream, creds.pid);
        // The client sends its hello right after connecting; do not let a silent client stall
        // the accepting thread.
        set_recv_timeout(&stream);
        let hello = match recv_with_fds(stream.as_raw_fd()) {
            Ok((bytes, _)) => Message::decode(&bytes),
            Err(e) => {
                tracing::warn!(pid = creds.pid, %e, "client sent no hello");
                return Ok(None);
            }
        };
        match hello {
            Ok(Message::Hello(hello)) if hello.reserved == 0 => Ok(Some(Pending {
                stream,
                creds,
                pidfd,
                hello,
            })),
            other => {
                tracing::warn!(pid = creds.pid, ?other, "malformed hello refused");
                let _ = send(
                    &stream,
                    &Message::Refuse(Refuse::new(RefuseReason::BadHello, 0)),
                    &[],
                );
                Ok(None)
            }
        }
    }
}

/// A random, hidden name beside `path` to bind under before the socket listens.
fn staging_name(path: &Path) -> Option<PathBuf> {
    use std::hash::{BuildHasher, Hasher};
    let name = path.file_name()?.to_str()?;
    // RandomState's keys come from the operating system's random source.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let tmp = path.with_file_name(format!(".{name}.{:016x}", h.finish()));
    (tmp.as_os_str().len() < 108).then_some(tmp)
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn set_recv_timeout(fd: &OwnedFd) {
    let tv = nix::sys::time::TimeVal::new(1, 0);
    let _ = nix::sys::socket::setsockopt(fd, sockopt::ReceiveTimeout, &tv);
}

fn send(fd: &OwnedFd, m: &Message, fds: &[RawFd]) -> nix::Result<()> {
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        fd.as_raw_fd(),
        &[IoSlice::new(m.as_bytes())],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
}

/// Free descriptors a server needs before it accepts a client: its socket, its pidfd, the
/// region's memfd, a doorbell or two, the readiness eventfd and one for reading the client's
/// `/proc` status.
pub const ACCEPT_HEADROOM: usize = 8;

/// Whether `n` descriptors can be opened now (probed with duplicates of `fd`, closed again).
fn headroom(fd: RawFd, n: usize) -> bool {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: F_DUPFD_CLOEXEC of a descriptor we own; the duplicate is closed below.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if d < 0 {
            break;
        }
        got.push(d);
    }
    let ok = got.len() == n;
    for d in got {
        // SAFETY: closing the duplicates just made.
        unsafe { libc::close(d) };
    }
    ok
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected, race-free.
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd of the peer of `stream`: from the socket where the kernel has SO_PEERPIDFD, else
/// `pidfd_open` of the pid SO_PEERCRED reported (which a pid reuse between the two could
/// mislead, a window of one accept).
fn peer_pidfd(stream: &OwnedFd, pid: i32) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the int we pass.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && fd >= 0 {
        // SAFETY: the kernel just installed this pidfd for us.
        return Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: as above, a new descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Pending {
    /// Refuses the session with `reason` (`detail` is reason-specific).
    pub fn refuse(self, reason: RefuseReason, detail: u64) {
        let _ = send(
            &self.stream,
            &Message::Refuse(Refuse::new(reason, detail)),
            &[],
        );
    }

    /// Checks the client's version; refuses and returns `None` on a mismatch.
    pub fn check_version(self) -> Option<Pending> {
        if self.hello.version_major != VERSION_MAJOR {
            tracing::warn!(
                pid = self.creds.pid,
                client = self.hello.version_major,
                "refusing client with another protocol major version"
            );
            self.refuse(RefuseReason::VersionMismatch, 0);
            return None;
        }
        Some(self)
    }

    /// Creates the region for `layout` with `workers` doorbells, sends the welcome and
    /// returns the server side of the session.
    pub fn accept(
        self,
        id: u64,
        layout: Layout,
        workers: usize,
        capabilities: u64,
    ) -> Result<ServerSession, ListenError> {
        let workers = workers.clamp(1, MAX_DOORBELLS);
        debug_assert_eq!(
            layout.streams > 0,
            capabilities & self.hello.capabilities & abi::control::CAP_STREAMS != 0,
            "a region has streams exactly when both sides asked for them"
        );
        let (memfd, mem) = local::create_region(layout.region_len())?;
        let doorbells = local::create_doorbells(workers)?;
        let bell = LocalBell::new(doorbells);
        let mut session =
            ServerSession::new(id, self.creds, mem, layout, Box::new(bell), self.stream);
        let event_fd = local::create_event_fd()?;
        session.set_event_fd(event_fd);
        let welcome = Welcome {
            magic: MAGIC,
            kind: KIND_WELCOME,
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            doorbells: workers as u32,
            capabilities: capabilities & self.hello.capabilities,
            session_id: id,
            region_len: layout.region_len() as u64,
            channels: layout.channels,
            ring_size: layout.ring_size,
            window: layout.window,
            peer_pid: self.creds.pid as u32,
            peer_uid: self.creds.uid,
            peer_gid: self.creds.gid,
        };
        let mut fds = vec![memfd.as_raw_fd()];
        fds.extend((0..workers).map(|w| session.bell().doorbell_fd(w).as_raw_fd()));
        fds.extend(session.event_fd().map(|f| f.as_raw_fd()));
        send(session.control(), &Message::Welcome(welcome), &fds).map_err(|e| ListenError::Io {
            path: PathBuf::from("<client>"),
            source: e.into(),
        })?;
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // a real socket and directory (Miri's isolation refuses them)
    fn the_socket_file_appears_listening_and_alone() {
        let dir = std::env::temp_dir().join(format!("xt-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let l = Listener::bind(&path).unwrap();
        // The file is there and answers at once; no staging name is left beside it.
        let probe = seqpacket().unwrap();
        connect(probe.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s.sock")]);
        // A second server on the same path is refused while the first listens.
        assert!(matches!(Listener::bind(&path), Err(ListenError::InUse(_))));
        drop(l);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
