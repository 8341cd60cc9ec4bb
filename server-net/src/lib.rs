//! The network service domain: owns every TCP/UDP socket of its clients.
//!
//! [`Net`] is the [`service::Handler`] of `virtuos-net`. Sockets live in the server process
//! (in the network namespace it was started in); each client session names them by handles in
//! its own table. Data calls (send, recv, blocking accept and connect) run on the worker's
//! io_uring, straight between the socket and the session's shared window; calls that never
//! wait (socket, bind, listen, options, names, a non-blocking accept or connect) run inline on
//! the worker.
//!
//! **Blocking semantics.** io_uring ignores `O_NONBLOCK` (it waits for readiness whatever the
//! file's mode), so the server keeps each socket's `O_NONBLOCK` exactly as the client set it
//! (shared by every session that holds the socket, as Linux shares it between processes) and
//! reads it per call: a non-blocking client gets `MSG_DONTWAIT` or an inline attempt, a
//! blocking one an io_uring operation linked to its SO_RCVTIMEO/SO_SNDTIMEO and cancellable by
//! the client when a signal interrupts it.
//!
//! **Readiness.** A [`watch::Watcher`] keeps every socket of every session registered
//! (edge-triggered) in one epoll set, which worker 0 watches on its io_uring; on each edge the
//! socket's readiness goes into the session's shared readiness word, and workers republish
//! after every call. Clients merge these
//! words with their local fds in poll, select and epoll.

pub mod ahead;
pub mod store;
pub mod sys;
pub mod watch;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use abi::{Errno, Opcode, Response};
use io_uring::{opcode, types};
use service::fdtable::Handle;
use service::{Call, Handler, Outcome};
use xen_transport::Credentials;

use crate::ahead::Ahead;
use crate::store::Store;
use crate::sys::MsgBuf;
use crate::watch::Watcher;

/// Room for any socket address.
const ADDR_MAX: usize = 128;

/// The network domain's handler.
pub struct Net {
    watch: Arc<Watcher>,
    ahead: Arc<Ahead>,
    unprivileged_port: u16,
    store: Arc<Store>,
}

impl Net {
    /// A handler with its readiness watcher thread started, keeping no socket across a
    /// restart.
    pub fn new() -> std::io::Result<Net> {
        Net::with_store(Store::none())
    }

    /// As [`Net::new`], with listeners kept in the supervisor's fd `store` (see [`store`]);
    /// a thread forgets the sockets no session holds any more.
    pub fn with_store(store: Store) -> std::io::Result<Net> {
        let store = Arc::new(store);
        if store.enabled() {
            let s = Arc::downgrade(&store);
            std::thread::Builder::new()
                .name("virtuos-net-store".into())
                .spawn(move || loop {
                    std::thread::sleep(store::SWEEP);
                    let Some(s) = s.upgrade() else { return };
                    let n = s.sweep();
                    if n > 0 {
                        tracing::debug!(forgotten = n, "fd store: closed sockets forgotten");
                    }
                })?;
        }
        let ahead = Arc::new(Ahead::default());
        Ok(Net {
            watch: Watcher::start(ahead.clone())?,
            ahead,
            unprivileged_port: sys::unprivileged_port_start(),
            store,
        })
    }

    /// The fd store (tests and statistics).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps a socket that just became listening (or a bound datagram socket) in the fd
    /// store; the response carries its key.
    fn kept(&self, call: &Call<'_>, fd: &Handle, r: Result<i64, i32>) -> Outcome {
        match r {
            Ok(v) => {
                let mut rsp = Response::ok(call.id(), v);
                rsp.aux[0] = self.store.keep(fd, call.creds().uid);
                Outcome::Done(rsp)
            }
            Err(e) => err(call, e),
        }
    }

    /// `Reclaim`: the kept socket `args[0]` in this session's table.
    fn reclaim(&self, call: &Call<'_>) -> Outcome {
        let key = call.request().raw.args[0];
        let fd = match self.store.reclaim(key) {
            Ok(fd) => fd,
            Err(e) => return err(call, e),
        };
        match call.fds().insert(fd.clone()) {
            Ok(h) => {
                self.watch.add(&call.session(), h, &fd);
                Outcome::Done(Response::ok(call.id(), i64::from(h)))
            }
            Err(e) => err(call, e.get()),
        }
    }

    /// The streams (tests and statistics).
    pub fn ahead(&self) -> &Arc<Ahead> {
        &self.ahead
    }

    /// The readiness watcher (tests and statistics).
    pub fn watcher(&self) -> &Arc<Watcher> {
        &self.watch
    }
}

/// What an io_uring socket operation keeps alive until it completes.
struct Op {
    /// The socket (so a concurrent close cannot close it under the operation).
    fd: Handle,
    handle: u32,
    /// SENDMSG/RECVMSG header, or the address buffer of ACCEPT/CONNECT.
    msg: Option<Box<MsgBuf>>,
    addr: Option<Box<([u8; ADDR_MAX], libc::socklen_t)>>,
}

/// A send or recv entry to run: at once for a non-blocking socket, else waiting (linked to
/// the socket's SO_SNDTIMEO or SO_RCVTIMEO, cancellable by the client).
fn data_op(
    entry: io_uring::squeue::Entry,
    fd: Handle,
    handle: u32,
    msg: Option<Box<MsgBuf>>,
    nonblocking: bool,
    send: bool,
) -> Outcome {
    let timeout = (!nonblocking)
        .then(|| sys::timeout(fd.as_fd(), send))
        .flatten();
    let op = Box::new(Op {
        fd,
        handle,
        msg,
        addr: None,
    });
    if nonblocking {
        Outcome::SubmitKeep(entry, op)
    } else {
        Outcome::SubmitWaiting(entry, op, timeout)
    }
}

fn err(call: &Call<'_>, e: i32) -> Outcome {
    Outcome::Done(Response::err(
        call.id(),
        Errno::new(e).unwrap_or(Errno::EIO),
    ))
}

fn done(call: &Call<'_>, r: Result<i64, i32>) -> Outcome {
    match r {
        Ok(v) => Outcome::Done(Response::ok(call.id(), v)),
        Err(e) => err(call, e),
    }
}

fn int_arg(v: u64) -> i32 {
    v as u32 as i32
}

impl Net {
    fn socket_of(&self, call: &Call<'_>) -> Result<(u32, Handle), i32> {
        let h = call.request().raw.args[0];
        let fd = call.fds().get(h).map_err(|e| e.get())?;
        Ok((h as u32, fd))
    }

    /// Reads `len` bytes of the payload at `off` (bounded by the request's data length).
    fn payload(call: &Call<'_>, off: usize, len: usize) -> Result<Vec<u8>, i32> {
        let data_len = call.request().raw.data_len as usize;
        if off.checked_add(len).is_none_or(|end| end > data_len) {
            return Err(libc::EFAULT);
        }
        let mut v = vec![0u8; len];
        call.read_payload_at(off, &mut v);
        Ok(v)
    }

    /// Adds a new socket to the session's table (charged to the client's uid; `EMFILE`, the
    /// socket closed, past its budget) and starts watching it.
    fn install(&self, call: &Call<'_>, fd: OwnedFd) -> Result<i64, i32> {
        self.install_handle(call, fd).map(|(h, _)| i64::from(h))
    }

    fn install_handle(&self, call: &Call<'_>, fd: OwnedFd) -> Result<(u32, Handle), i32> {
        forget_flags(&fd);
        let (h, fd) = call.fds().insert_new(fd).map_err(|e| e.get())?;
        self.watch.add(&call.session(), h, &fd);
        Ok((h, fd))
    }

    /// After a call on socket `fd` (handle `h` of the caller): its readiness as every holder
    /// sees it (sessions that share it after a fork or an exec included).
    fn refresh(&self, call: &Call<'_>, h: u32, fd: &Handle) {
        if !self.watch.republish(fd) {
            call.session()
                .publish_event(h as usize, sys::readiness(fd.as_fd()), false);
        }
    }

    fn bind(&self, call: &Call<'_>) -> Outcome {
        let a = call.request().raw.args;
        let (_, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let addr = match Self::payload(call, 0, (a[4] as usize).min(ADDR_MAX)) {
            Ok(v) => v,
            Err(e) => return err(call, e),
        };
        if let Some(port) = inet_port(&addr) {
            if port != 0 && port < self.unprivileged_port && !privileged(call) {
                return err(call, libc::EACCES);
            }
        }
        let r = sys::bind(fd.as_fd(), &addr);
        if r.is_ok() && !stream(&fd) {
            // A bound datagram socket is a service endpoint, as a listener is: kept.
            return self.kept(call, &fd, r);
        }
        done(call, r)
    }

    fn accept(&self, call: &Call<'_>) -> Outcome {
        let a = call.request().raw.args;
        let (h, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let flags = int_arg(a[1]) & libc::SOCK_NONBLOCK;
        // No room for the new socket: leave the connection queued rather than take and drop
        // it, as Linux does for a process at its fd limit.
        if !call.fds().has_room() {
            return err(call, libc::EMFILE);
        }
        if nonblocking(&fd) {
            let mut addr = [0u8; ADDR_MAX];
            let r = sys::accept4(fd.as_fd(), &mut addr, flags);
            self.refresh(call, h, &fd);
            return match r {
                Ok((new, len)) => self.finish_accept(call, new, &addr, len),
                Err(e) => err(call, e),
            };
        }
        let timeout = sys::timeout(fd.as_fd(), false);
        let mut addr = Box::new(([0u8; ADDR_MAX], ADDR_MAX as libc::socklen_t));
        let entry = opcode::Accept::new(
            types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*fd)),
            addr.0.as_mut_ptr() as *mut libc::sockaddr,
            &mut addr.1,
        )
        .flags(flags | libc::SOCK_CLOEXEC)
        .build();
        let op = Op {
            fd,
            handle: h,
            msg: None,
            addr: Some(addr),
        };
        Outcome::SubmitWaiting(entry, Box::new(op), timeout)
    }

    fn finish_accept(&self, call: &Call<'_>, new: OwnedFd, addr: &[u8], len: usize) -> Outcome {
        let room = (call.request().raw.args[2] as usize)
            .min(call.request().raw.data_len as usize)
            .min(len)
            .min(addr.len());
        match self.install_handle(call, new) {
            Ok((h, fd)) => {
                // A connection accepted by this session alone: its data comes ahead.
                if stream(&fd) {
                    self.ahead.attach(&call.session(), h, &fd);
                }
                let n = call.write_payload(&addr[..room]);
                let mut r = Response::ok(call.id(), i64::from(h));
                r.aux[0] = len as u64;
                r.data_len = n as u32;
                Outcome::Done(r)
            }
            Err(e) => err(call, e),
        }
    }

    fn connect(&self, call: &Call<'_>) -> Outcome {
        let a = call.request().raw.args;
        let (h, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let addr = match Self::payload(call, 0, (a[4] as usize).min(ADDR_MAX)) {
            Ok(v) => v,
            Err(e) => return err(call, e),
        };
        if nonblocking(&fd) {
            let r = sys::connect(fd.as_fd(), &addr);
            self.refresh(call, h, &fd);
            return done(call, r);
        }
        let timeout = sys::timeout(fd.as_fd(), true);
        let mut buf = Box::new(([0u8; ADDR_MAX], addr.len() as libc::socklen_t));
        buf.0[..addr.len()].copy_from_slice(&addr);
        let entry = opcode::Connect::new(
            types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*fd)),
            buf.0.as_ptr() as *const libc::sockaddr,
            buf.1,
        )
        .build();
        let op = Op {
            fd,
            handle: h,
            msg: None,
            addr: Some(buf),
        };
        Outcome::SubmitWaiting(entry, Box::new(op), timeout)
    }

    fn send(&self, call: &Call<'_>) -> Outcome {
        let raw = call.request().raw;
        let a = raw.args;
        let (h, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let len = a[4] as usize;
        let name_len = a[3] as usize;
        let ctl_len = a[2] as usize;
        if len
            .checked_add(name_len)
            .and_then(|x| x.checked_add(ctl_len))
            .is_none_or(|end| end > raw.data_len as usize)
            || name_len > ADDR_MAX
        {
            return err(call, libc::EFAULT);
        }
        if ctl_len > abi::cmsg::MAX_CONTROL {
            return err(call, libc::ENOBUFS);
        }
        // Control messages: copied out of the window once, validated, and sent from the copy
        // (the client can change the window meanwhile); kinds that need a privilege are
        // checked against the client, since the kernel would check the server.
        let control = if ctl_len == 0 {
            Vec::new()
        } else {
            let c = match Self::payload(call, len + name_len, ctl_len) {
                Ok(v) => v,
                Err(e) => return err(call, e),
            };
            match abi::cmsg::parse(&c) {
                Ok(msgs) => {
                    let denied = msgs.iter().any(|m| {
                        m.needs_caps()
                            .is_some_and(|caps| !caps.iter().any(|&c| call.has_capability(c)))
                    });
                    if denied {
                        return err(call, libc::EPERM);
                    }
                    abi::cmsg::forwarded(&msgs)
                }
                Err(e) => return err(call, e.errno()),
            }
        };
        let nb = nonblocking(&fd) || int_arg(a[1]) & libc::MSG_DONTWAIT != 0;
        // Bytes the program sent through the socket's transmit stream go first; a send that
        // would overtake them waits for them, or (non-blocking) fails as a full socket does.
        if !self
            .ahead
            .before_send(&fd, if nb { 0 } else { ahead::DRAIN_WAIT_MS })
        {
            return err(call, libc::EAGAIN);
        }
        let nb = nonblocking(&fd);
        let mut flags = int_arg(a[1]) | libc::MSG_NOSIGNAL;
        if nb {
            flags |= libc::MSG_DONTWAIT;
        } else if stream(&fd) {
            // A blocking send on a stream returns when everything is sent, as on Linux.
            flags |= libc::MSG_WAITALL;
        }
        let base = call.window_ptr();
        let raw_fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*fd));
        let (entry, msg) = if name_len == 0 && control.is_empty() {
            (
                opcode::Send::new(raw_fd, base, len as u32)
                    .flags(flags)
                    .build(),
                None,
            )
        } else {
            let name = if name_len > 0 {
                // SAFETY: not dereferenced here; `len + name_len <= data_len` was checked, so
                // the address lies inside the request's window range.
                unsafe { base.add(len) }
            } else {
                std::ptr::null_mut()
            };
            let mut m = MsgBuf::new(base, len, name, name_len);
            m.send_control(control);
            (
                opcode::SendMsg::new(raw_fd, &m.hdr)
                    .flags(flags as u32)
                    .build(),
                Some(m),
            )
        };
        data_op(entry, fd, h, msg, nb, true)
    }

    fn recv(&self, call: &Call<'_>) -> Outcome {
        let raw = call.request().raw;
        let a = raw.args;
        let (h, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let len = a[2] as usize;
        let name_len = (a[3] as usize).min(ADDR_MAX);
        let want_flags = a[4] & 1 == 1;
        let ctl_room = ((a[4] >> 32) as usize).min(abi::cmsg::MAX_CONTROL);
        if len
            .checked_add(name_len)
            .and_then(|x| x.checked_add(ctl_room))
            .is_none_or(|end| end > raw.data_len as usize)
        {
            return err(call, libc::EFAULT);
        }
        // The server receives on the socket itself: its stream (if any) stops, and what the
        // stream held comes first.
        self.ahead.before_recv(&fd);
        let peek = int_arg(a[1]) & libc::MSG_PEEK != 0;
        if let Some(r) = self
            .ahead
            .recv_pushback(&fd, len, peek, |b| call.write_payload(b))
        {
            self.refresh(call, h, &fd);
            return match r {
                Ok(n) => Outcome::Done(Response {
                    data_len: raw.data_len,
                    ..Response::ok(call.id(), n as i64)
                }),
                Err(e) => err(call, e),
            };
        }
        let nb = nonblocking(&fd);
        let mut flags = int_arg(a[1]);
        if nb {
            flags |= libc::MSG_DONTWAIT;
        }
        let base = call.window_ptr();
        let raw_fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*fd));
        // RECVMSG when the caller wants the source address or the message flags.
        let want_msg = name_len > 0 || want_flags || ctl_room > 0;
        let (entry, msg) = if !want_msg {
            (
                opcode::Recv::new(raw_fd, base, len as u32)
                    .flags(flags)
                    .build(),
                None,
            )
        } else {
            let name = if name_len > 0 {
                // SAFETY: not dereferenced here; `len + name_len <= data_len` was checked.
                unsafe { base.add(len) }
            } else {
                std::ptr::null_mut()
            };
            let mut m = MsgBuf::new(base, len, name, name_len);
            if ctl_room > 0 {
                // SAFETY: not dereferenced here; `len + name_len + ctl_room <= data_len` was
                // checked: the control room lies inside the request's window range.
                m.recv_control(unsafe { base.add(len + name_len) }, ctl_room);
            }
            (
                opcode::RecvMsg::new(raw_fd, &mut m.hdr)
                    .flags(flags as u32)
                    .build(),
                Some(m),
            )
        };
        data_op(entry, fd, h, msg, nb, false)
    }

    fn sockopt(&self, call: &Call<'_>, set: bool) -> Outcome {
        let raw = call.request().raw;
        let a = raw.args;
        let (h, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let (level, name) = (int_arg(a[1]), int_arg(a[2]));
        if set {
            // A 4-byte int may travel in args[3] (no payload), so the call can be posted
            // without a reply.
            let val = if a[4] == 0 && raw.data_len == 0 {
                (a[3] as u32).to_ne_bytes().to_vec()
            } else {
                match Self::payload(call, 0, (a[4] as usize).min(4096)) {
                    Ok(v) => v,
                    Err(e) => return err(call, e),
                }
            };
            if let Some(caps) = option_caps(level, name, &val) {
                if !caps.iter().any(|&c| call.has_capability(c)) {
                    return err(call, libc::EPERM);
                }
            }
            let r = sys::setsockopt(fd.as_fd(), level, name, &val);
            self.refresh(call, h, &fd);
            done(call, r)
        } else {
            let room = (a[3] as usize).min(raw.data_len as usize).min(4096);
            let mut buf = vec![0u8; room];
            match sys::getsockopt(fd.as_fd(), level, name, &mut buf) {
                Ok(n) => {
                    let n = (n as usize).min(room);
                    let w = call.write_payload(&buf[..n]);
                    Outcome::Done(Response {
                        data_len: w as u32,
                        ..Response::ok(call.id(), n as i64)
                    })
                }
                Err(e) => err(call, e),
            }
        }
    }

    fn name(&self, call: &Call<'_>, peer: bool) -> Outcome {
        let (_, fd) = match self.socket_of(call) {
            Ok(x) => x,
            Err(e) => return err(call, e),
        };
        let mut addr = [0u8; ADDR_MAX];
        match sys::sockname(fd.as_fd(), peer, &mut addr) {
            Ok(len) => {
                let room = (call.request().raw.args[3] as usize).min(len as usize);
                let n = call.write_payload(&addr[..room]);
                Outcome::Done(Response {
                    data_len: n as u32,
                    ..Response::ok(call.id(), len)
                })
            }
            Err(e) => err(call, e),
        }
    }

    fn close(&self, call: &Call<'_>) -> Outcome {
        let h = call.request().raw.args[0];
        match call.fds().remove(h) {
            Ok(fd) => {
                let s = call.session();
                self.ahead.closed(s.id(), h as u32);
                self.watch.remove(s.id(), h as u32);
                s.clear_event(h as usize);
                drop(fd);
                Outcome::Done(Response::ok(call.id(), 0))
            }
            Err(e) => err(call, e.get()),
        }
    }
}

/// The port of an address the kernel binds as AF_INET/AF_INET6: AF_UNSPEC too, which an
/// AF_INET socket takes as AF_INET (with INADDR_ANY). `None` for other families and for
/// addresses too short to hold a port (the kernel refuses those).
fn inet_port(addr: &[u8]) -> Option<u16> {
    let [f0, f1, p0, p1, ..] = *addr else {
        return None;
    };
    let family = i32::from(u16::from_ne_bytes([f0, f1]));
    [libc::AF_INET, libc::AF_INET6, libc::AF_UNSPEC]
        .contains(&family)
        .then_some(u16::from_be_bytes([p0, p1]))
}

/// The capabilities (any one of them) Linux asks of a caller setting this option: the server
/// holds them, so it asks them of the client. `None` for options anybody may set.
fn option_caps(level: i32, name: i32, val: &[u8]) -> Option<&'static [u32]> {
    const ADMIN: &[u32] = &[sys::CAP_NET_ADMIN];
    const RAW_OR_ADMIN: &[u32] = &[sys::CAP_NET_RAW, sys::CAP_NET_ADMIN];
    let int = val
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_MARK) => Some(RAW_OR_ADMIN),
        (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE | libc::SO_SNDBUFFORCE) => Some(ADMIN),
        // TC_PRIO_BESTEFFORT..=TC_PRIO_INTERACTIVE are free.
        (libc::SOL_SOCKET, libc::SO_PRIORITY) if int.is_some_and(|p| !(0..=6).contains(&p)) => {
            Some(RAW_OR_ADMIN)
        }
        (libc::SOL_IP, libc::IP_TRANSPARENT) | (libc::SOL_IPV6, libc::IPV6_TRANSPARENT) => {
            Some(RAW_OR_ADMIN)
        }
        (libc::SOL_TCP, libc::TCP_REPAIR) => Some(ADMIN),
        _ => None,
    }
}

/// Whether the client may bind privileged ports (CAP_NET_BIND_SERVICE, checked as
/// [`Call::has_capability`] checks).
fn privileged(call: &Call<'_>) -> bool {
    call.has_capability(sys::CAP_NET_BIND_SERVICE)
}

// Flags of the server's own sockets, by fd number. Every change of a socket's O_NONBLOCK goes
// through this server (clients hold only placeholders), so the cache is authoritative and
// saves a system call or two per data call; `install` resets the entry of a reused number,
// F_SETFL and FIONBIO reset it too, and an unknown entry is filled from the kernel.
const F_KNOWN: u8 = 1;
const F_NONBLOCK: u8 = 2;
const F_STREAM: u8 = 4;
const FLAG_FDS: usize = 1 << 20;
static FLAGS: [AtomicU8; FLAG_FDS] = [const { AtomicU8::new(0) }; FLAG_FDS];

fn flags(fd: &impl AsFd) -> u8 {
    let fd = fd.as_fd();
    let slot = FLAGS.get(std::os::fd::AsRawFd::as_raw_fd(&fd) as usize);
    if let Some(f) = slot.map(|s| s.load(Ordering::Relaxed)) {
        if f & F_KNOWN != 0 {
            return f;
        }
    }
    let mut ty = [0u8; 4];
    let stream = sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, &mut ty).is_ok()
        && i32::from_ne_bytes(ty) == libc::SOCK_STREAM;
    let f = F_KNOWN
        | if sys::nonblocking(fd) { F_NONBLOCK } else { 0 }
        | if stream { F_STREAM } else { 0 };
    if let Some(s) = slot {
        s.store(f, Ordering::Relaxed);
    }
    f
}

fn forget_flags(fd: &impl AsFd) {
    if let Some(s) = FLAGS.get(std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()) as usize) {
        s.store(0, Ordering::Relaxed);
    }
}

fn nonblocking(fd: &Handle) -> bool {
    flags(fd) & F_NONBLOCK != 0
}

fn stream(fd: &Handle) -> bool {
    flags(fd) & F_STREAM != 0
}

impl Handler for Net {
    fn name(&self) -> &'static str {
        "net"
    }

    fn handle(&self, call: &Call<'_>) -> Outcome {
        let a = call.request().raw.args;
        match call.request().opcode {
            Opcode::Socket => {
                let (domain, ty, proto) = (int_arg(a[0]), int_arg(a[1]), int_arg(a[2]));
                if domain != libc::AF_INET && domain != libc::AF_INET6 {
                    return err(call, libc::EAFNOSUPPORT);
                }
                if !call.fds().has_room() {
                    return err(call, libc::EMFILE);
                }
                // The server may open raw sockets; the client needs CAP_NET_RAW for that.
                const SOCK_TYPE_MASK: i32 = 0xf;
                if ty & SOCK_TYPE_MASK == libc::SOCK_RAW && !call.has_capability(sys::CAP_NET_RAW) {
                    return err(call, libc::EPERM);
                }
                let r = sys::socket(domain, ty & !libc::SOCK_CLOEXEC, proto)
                    .and_then(|fd| self.install(call, fd));
                done(call, r)
            }
            Opcode::Bind => self.bind(call),
            Opcode::Listen => match self.socket_of(call) {
                Ok((h, fd)) => {
                    let r = sys::listen(fd.as_fd(), int_arg(a[1]));
                    self.refresh(call, h, &fd);
                    self.kept(call, &fd, r)
                }
                Err(e) => err(call, e),
            },
            Opcode::Reclaim => self.reclaim(call),
            Opcode::StoreKey => match self.socket_of(call) {
                Ok((_, fd)) => {
                    let mut rsp = Response::ok(call.id(), 0);
                    rsp.aux[0] = self.store.key_of(&fd);
                    Outcome::Done(rsp)
                }
                Err(e) => err(call, e),
            },
            Opcode::Accept => self.accept(call),
            Opcode::Connect => self.connect(call),
            Opcode::Send => self.send(call),
            Opcode::Recv => self.recv(call),
            Opcode::Shutdown => match self.socket_of(call) {
                Ok((h, fd)) => {
                    // What the program sent through its transmit stream goes first.
                    self.ahead.before_send(&fd, ahead::DRAIN_WAIT_MS);
                    let r = sys::shutdown(fd.as_fd(), int_arg(a[1]));
                    self.refresh(call, h, &fd);
                    done(call, r)
                }
                Err(e) => err(call, e),
            },
            Opcode::GetSockOpt => self.sockopt(call, false),
            Opcode::SetSockOpt => self.sockopt(call, true),
            Opcode::GetSockName => self.name(call, false),
            Opcode::GetPeerName => self.name(call, true),
            Opcode::Ioctl => match self.socket_of(call) {
                Ok((h, fd)) => {
                    let req = a[1];
                    let ok = [
                        libc::FIONBIO,
                        libc::FIONREAD,
                        libc::TIOCOUTQ, // SIOCOUTQ
                    ];
                    if !ok.contains(&(req as _)) {
                        return err(call, libc::ENOTTY);
                    }
                    let mut r = sys::ioctl_int(fd.as_fd(), req, int_arg(a[2]));
                    if req == libc::FIONBIO {
                        forget_flags(&fd);
                    }
                    if req == libc::TIOCOUTQ {
                        let unsent = self.ahead.unsent(&call.session(), h) as i64;
                        r = r.map(|v| v + unsent);
                    }
                    if req == libc::FIONREAD {
                        // What the stream or the pushback holds was received already.
                        let ahead = self.ahead.unread(&call.session(), h, &fd) as i64;
                        r = r.map(|v| v + ahead);
                    }
                    done(call, r.map(|v| if req == libc::FIONBIO { 0 } else { v }))
                }
                Err(e) => err(call, e),
            },
            Opcode::Fcntl => match self.socket_of(call) {
                Ok((_, fd)) => {
                    let cmd = int_arg(a[1]);
                    match cmd {
                        libc::F_GETFL => done(call, sys::fcntl_fl(fd.as_fd(), cmd, 0)),
                        libc::F_SETFL => {
                            // Only the status flags Linux lets F_SETFL change on a socket.
                            let keep = libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC;
                            let v = i64::from(int_arg(a[2]) & keep);
                            let r = sys::fcntl_fl(fd.as_fd(), cmd, v);
                            forget_flags(&fd);
                            done(call, r)
                        }
                        _ => err(call, libc::EINVAL),
                    }
                }
                Err(e) => err(call, e),
            },
            Opcode::FStat => match self.socket_of(call) {
                Ok((_, fd)) => {
                    let mut st = [0u8; 256];
                    match sys::fstatx(fd.as_fd(), &mut st) {
                        Ok(_) => {
                            let n = call.write_payload(&st);
                            Outcome::Done(Response {
                                data_len: n as u32,
                                ..Response::ok(call.id(), 0)
                            })
                        }
                        Err(e) => err(call, e),
                    }
                }
                Err(e) => err(call, e),
            },
            Opcode::Close => self.close(call),
            Opcode::Flush => match self.socket_of(call) {
                Ok((h, _)) => {
                    self.ahead.flush(&call.session(), h);
                    Outcome::Done(Response::ok(call.id(), 0))
                }
                Err(e) => err(call, e),
            },
            Opcode::Refill => match self.socket_of(call) {
                Ok((h, _)) => {
                    self.ahead.refill(&call.session(), h);
                    Outcome::Done(Response::ok(call.id(), 0))
                }
                Err(e) => err(call, e),
            },
            Opcode::NetTable => {
                let name = match a[0] {
                    0 => "tcp",
                    1 => "tcp6",
                    2 => "udp",
                    3 => "udp6",
                    _ => return err(call, libc::EINVAL),
                };
                // The server's own namespace: the one its sockets live in.
                match std::fs::read(format!("/proc/self/net/{name}")) {
                    Ok(t) => {
                        let from = (a[1] as usize).min(t.len());
                        let n = call.write_payload(&t[from..]);
                        Outcome::Done(Response {
                            data_len: n as u32,
                            ..Response::ok(call.id(), n as i64)
                        })
                    }
                    Err(e) => err(call, e.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
            _ => err(call, libc::ENOSYS),
        }
    }

    fn complete(&self, call: &Call<'_>, result: i32) -> Outcome {
        let Some(op) = call.kept::<Op>() else {
            return Outcome::Done(Response::ok(call.id(), i64::from(result)));
        };
        let opc = call.request().opcode;
        let a = call.request().raw.args;
        // A send that sent everything almost always leaves the socket writable, and if it did
        // not, the next send's EAGAIN republishes: skip the poll. Everything else may have
        // changed what the client must see (a recv may have drained the socket).
        let unchanged = opc == Opcode::Send && result > 0 && result as u64 >= a[4];
        if !unchanged {
            self.refresh(call, op.handle, &op.fd);
        }
        if result < 0 {
            let e = match (opc, -result) {
                // A blocking connect that timed out is still in progress, as on Linux.
                (Opcode::Connect, libc::EAGAIN) => libc::EINPROGRESS,
                (_, e) => e,
            };
            return err(call, e);
        }
        match opc {
            Opcode::Accept => {
                // SAFETY: io_uring returned this fd for the accept just completed.
                let new = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(result) };
                let (addr, len) = op.addr.as_deref().copied().unwrap_or(([0; ADDR_MAX], 0));
                self.finish_accept(call, new, &addr, len as usize)
            }
            Opcode::Recv => {
                let mut r = Response::ok(call.id(), i64::from(result));
                if let Some(m) = &op.msg {
                    r.aux[0] = u64::from(m.hdr.msg_namelen);
                    r.aux[1] = m.hdr.msg_flags as u32 as u64;
                    r.aux[2] = m.hdr.msg_controllen as u64;
                }
                r.data_len = call.request().raw.data_len;
                Outcome::Done(r)
            }
            _ => Outcome::Done(Response::ok(call.id(), i64::from(result))),
        }
    }

    fn event_source(&self) -> Option<std::os::fd::RawFd> {
        Some(self.watch.fd())
    }

    fn service_events(&self) {
        self.watch.drain();
    }

    fn adopted(&self, call: &Call<'_>) {
        let s = call.session();
        self.ahead.session_closed(s.id());
        // The table was replaced: stop watching the old sockets (the watcher's references
        // would keep them open) and clear their words, then watch the adopted ones.
        for h in self.watch.remove_session(s.id()) {
            s.clear_event(h as usize);
        }
        for (h, fd) in call.fds().snapshot().iter().enumerate() {
            if let Some(fd) = fd {
                self.watch.add(&s, h as u32, fd);
            }
        }
    }

    fn imported(&self, call: &Call<'_>, handles: &[u32]) {
        let s = call.session();
        for &h in handles {
            if let Ok(fd) = call.fds().get(u64::from(h)) {
                self.watch.add(&s, h, &fd);
            }
        }
    }

    fn session_closed(&self, id: u64, _creds: Credentials) {
        self.ahead.session_closed(id);
        self.watch.remove_session(id);
    }

    fn wants_streams(&self) -> bool {
        true
    }

    fn cloning(&self, id: u64, handles: &[u32]) {
        self.ahead.cloning(id, handles);
    }
}

/// Default idle spin of the network domain's workers.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
