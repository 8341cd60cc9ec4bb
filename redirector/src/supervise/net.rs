//! The supervised mode's sockets: static programs served by the network domain.
//!
//! A remote TCP socket appears in the supervised program as one end of an `AF_UNIX` stream
//! socket pair; the supervisor holds the other end and *pumps* bytes between it and the socket
//! in the network domain. So everything a program does with the data and the readiness of a
//! socket — `read`/`write`/`recv`/`send*`, `poll`/`select`/`epoll` mixing it with local fds,
//! `O_NONBLOCK`, `fork`, `dup2` onto 0 and 1, passing it to an exec'd child — is done by the
//! kernel on the pair, without a notification, and the kernel's own reference counting tells
//! when the last holder closed it (the supervisor's end hangs up). Only the calls that make or
//! name a socket's identity are notified and executed on the network domain: `socket`,
//! `bind`, `listen`, `accept`/`accept4`, `connect`, `getsockname`, `getpeername`,
//! `getsockopt`, `setsockopt` (the supervised subset of shim-core's `Net` class).
//!
//! A listening socket's end of the pair holds one byte per connection the supervisor accepted
//! ahead (up to a backlog), so it polls readable exactly when `accept` would not block.
//!
//! A socket is recognised by the inode of the program's end (`/proc/TID/fd/N`), whatever fd
//! number, process or dup the program reaches it by.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use abi::Opcode;
use shim_core::{CallerMemory, UserPtr};
use xen_transport::Session;

use super::{add_fd, notif_id_valid, send_answer, Answer};

/// The calls of shim-core's network class that the supervised mode is notified of.
pub(super) const NOTIFIED: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
];

/// Connections accepted ahead of the program, per listener (the kernel's backlog does the
/// rest).
const ACCEPT_AHEAD: usize = 64;
/// Largest socket address exchanged.
const ADDR_MAX: usize = 128;

fn e(x: i32) -> Answer {
    Answer::Val(-i64::from(x))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Created, neither connected nor listening yet.
    Fresh,
    /// A connection: bytes pumped both ways.
    Stream,
    /// Listening: connections accepted ahead.
    Listener,
}

/// A connection accepted ahead: its handle, its peer's address and that address's full length.
struct Accepted {
    handle: u32,
    addr: Vec<u8>,
    full: u32,
}

struct State {
    kind: Kind,
    /// A connect or accept is in progress on a helper thread: the pump leaves it alone.
    busy: bool,
    /// Received from the network domain, not yet written into the pair.
    rx: Vec<u8>,
    /// The remote side's end of stream (or an error) has been passed on: the pair is shut
    /// down for writing.
    rx_eof: bool,
    /// Read from the pair, not yet sent.
    tx: Vec<u8>,
    /// The program's end of stream was passed on (remote `shutdown(SHUT_WR)`).
    tx_eof: bool,
    /// Accepted ahead, oldest first.
    queue: VecDeque<Accepted>,
    /// Closed in the network domain: the entry is about to go.
    gone: bool,
    /// Adopted from another session: readiness that arrived before (an edge this session's
    /// words never saw) is found by trying once.
    probe: bool,
}

struct Sock {
    handle: u32,
    /// The supervisor's end of the pair (non-blocking).
    ours: OwnedFd,
    st: Mutex<State>,
    /// Signalled when a connection is queued.
    queued: Condvar,
}

impl Sock {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The network domain as the supervisor uses it.
pub(super) struct Net {
    session: Session,
    /// Every remote socket, by the inode of the program's end of its pair.
    socks: Mutex<HashMap<u64, Arc<Sock>>>,
    /// Wakes the pump when a socket is added or changes kind.
    wake: OwnedFd,
}

/// What one remote call answered.
struct Reply {
    result: i64,
    aux: [u64; abi::RESPONSE_AUX],
    data: usize,
}

impl Net {
    pub(super) fn new(session: Session) -> std::io::Result<Arc<Net>> {
        // SAFETY: eventfd with constant flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let net = Arc::new(Net {
            session,
            socks: Mutex::new(HashMap::new()),
            // SAFETY: eventfd just returned this descriptor; we own it.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        });
        let pump = Arc::clone(&net);
        std::thread::Builder::new()
            .name("net-pump".into())
            .spawn(move || pump.pump())?;
        Ok(net)
    }

    fn socks(&self) -> MutexGuard<'_, HashMap<u64, Arc<Sock>>> {
        self.socks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// One call on the network domain: `input` at the window's start, up to `out.len()`
    /// bytes of result copied back.
    fn call(&self, op: Opcode, mut args: [u64; 5], input: &[u8], out: &mut [u8]) -> Reply {
        let mut lease = self.session.lease();
        if !input.is_empty() && lease.write(0, input).is_err() {
            return Reply::err(libc::EINVAL);
        }
        if op != Opcode::Send && !input.is_empty() {
            args[4] = input.len() as u64;
        }
        let len = input.len().max(out.len()).min(lease.window() as usize);
        let req = abi::Request {
            opcode: op as u16,
            data_len: len as u32,
            args,
            ..Default::default()
        };
        match lease.call(req) {
            Ok(r) => {
                let n = (r.data_len as usize).min(out.len()).min(len);
                if r.result >= 0 && n > 0 && lease.read(0, &mut out[..n]).is_err() {
                    return Reply::err(libc::EIO);
                }
                Reply {
                    result: r.result,
                    aux: r.aux,
                    data: n,
                }
            }
            Err(err) => Reply::err(err.errno().get()),
        }
    }

    fn close_remote(&self, h: u32) {
        self.call(Opcode::Close, [h.into(), 0, 0, 0, 0], &[], &mut []);
    }

    fn set_nonblocking(&self, h: u32) {
        self.call(
            Opcode::Fcntl,
            [
                h.into(),
                libc::F_SETFL as u64,
                (libc::O_RDWR | libc::O_NONBLOCK) as u64,
                0,
                0,
            ],
            &[],
            &mut [],
        );
    }

    fn window(&self) -> usize {
        self.session.layout().window as usize
    }

    /// The remote socket the program reaches as fd `fd` of thread `tid`, if it is one.
    fn lookup(&self, tid: i32, fd: i32) -> Option<Arc<Sock>> {
        if fd < 0 {
            return None;
        }
        let st = std::fs::metadata(format!("/proc/{tid}/fd/{fd}")).ok()?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if !st.file_type().is_socket() {
            return None;
        }
        self.socks().get(&st.ino()).cloned()
    }

    /// A new pair for remote handle `h`: the program's end (to install) and its inode, with
    /// the supervisor's end registered.
    fn pair(&self, h: u32, kind: Kind, nonblock: bool) -> std::io::Result<(OwnedFd, u64)> {
        let mut p = [0; 2];
        // SAFETY: `p` has room for the two descriptors socketpair writes.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                p.as_mut_ptr(),
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: socketpair just created both descriptors; we own them.
        let (theirs, ours) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        set_fl_nonblock(ours.as_raw_fd());
        if nonblock {
            set_fl_nonblock(theirs.as_raw_fd());
        }
        let ino = std::fs::File::from(theirs.try_clone()?).metadata()?;
        use std::os::unix::fs::MetadataExt;
        let ino = ino.ino();
        let sock = Arc::new(Sock {
            handle: h,
            ours,
            st: Mutex::new(State {
                kind,
                busy: false,
                rx: Vec::new(),
                rx_eof: false,
                tx: Vec::new(),
                tx_eof: false,
                queue: VecDeque::new(),
                gone: false,
                probe: false,
            }),
            queued: Condvar::new(),
        });
        self.socks().insert(ino, sock);
        self.kick();
        Ok((theirs, ino))
    }

    /// Redeems an exec token (a redirected program's sockets handed to the static program it
    /// exec'd): true when the handles are this session's now.
    pub(super) fn adopt_token(&self, token: u64) -> bool {
        token != 0
            && self
                .call(Opcode::Adopt, [token, 0, 0, 0, 0], &[], &mut [])
                .result
                >= 0
    }

    /// Serves adopted socket `h` (a connection, or a listener): the program's end of its new
    /// pair, non-blocking if the socket was.
    pub(super) fn adopt(&self, h: u32, listening: bool) -> std::io::Result<OwnedFd> {
        let fl = self.call(
            Opcode::Fcntl,
            [h.into(), libc::F_GETFL as u64, 0, 0, 0],
            &[],
            &mut [],
        );
        let nonblock = fl.result >= 0 && fl.result & i64::from(libc::O_NONBLOCK) != 0;
        self.set_nonblocking(h);
        let kind = if listening {
            Kind::Listener
        } else {
            Kind::Stream
        };
        let (theirs, ino) = self.pair(h, kind, nonblock)?;
        if let Some(s) = self.socks().get(&ino) {
            s.lock().probe = true;
        }
        self.kick();
        Ok(theirs)
    }

    fn forget(&self, ino: u64) {
        if let Some(s) = self.socks().remove(&ino) {
            s.lock().gone = true;
            self.close_remote(s.handle);
        }
    }

    /// Handles a notified network call; `None` when it is not about a remote socket (the
    /// kernel then runs it).
    pub(super) fn handle(
        self: &Arc<Self>,
        listener: &OwnedFd,
        pid: i32,
        n: &libc::seccomp_notif,
    ) -> Option<Answer> {
        let a = n.data.args;
        let nr = n.data.nr as i64;
        let tid = n.pid as i32;
        let mem = super::Supervisor::mem(pid);
        if nr == libc::SYS_socket {
            return self.socket(listener, n.id, a);
        }
        let sock = self.lookup(tid, a[0] as i32)?;
        let h = u64::from(sock.handle);
        Some(match nr {
            libc::SYS_bind | libc::SYS_connect => {
                let len = a[2] as usize;
                if len > ADDR_MAX {
                    return Some(e(libc::EINVAL));
                }
                let mut addr = vec![0u8; len];
                if mem.read(UserPtr(a[1]), &mut addr).is_err() {
                    return Some(e(libc::EFAULT));
                }
                if nr == libc::SYS_bind {
                    let r = self.call(Opcode::Bind, [h, 0, 0, 0, 0], &addr, &mut []);
                    return Some(Answer::Val(r.result));
                }
                if sock.lock().kind != Kind::Fresh {
                    let r = self.call(Opcode::Connect, [h, 0, 0, 0, 0], &addr, &mut []);
                    return Some(Answer::Val(r.result));
                }
                // A connect may take long: on a thread of its own, which answers it.
                sock.lock().busy = true;
                let (me, id) = (Arc::clone(self), n.id);
                let Ok(l) = listener.try_clone() else {
                    sock.lock().busy = false;
                    return Some(e(libc::ENOMEM));
                };
                std::thread::spawn(move || {
                    let r = me.call(Opcode::Connect, [h, 0, 0, 0, 0], &addr, &mut []);
                    {
                        let mut st = sock.lock();
                        st.busy = false;
                        if r.result == 0 {
                            me.set_nonblocking(sock.handle);
                            st.kind = Kind::Stream;
                        }
                    }
                    me.kick();
                    send_answer(l.as_raw_fd(), id, Answer::Val(r.result));
                });
                Answer::Sent
            }
            libc::SYS_listen => {
                let r = self.call(
                    Opcode::Listen,
                    [h, a[1] as i32 as i64 as u64, 0, 0, 0],
                    &[],
                    &mut [],
                );
                if r.result == 0 {
                    self.set_nonblocking(sock.handle);
                    sock.lock().kind = Kind::Listener;
                    self.kick();
                }
                Answer::Val(r.result)
            }
            libc::SYS_accept | libc::SYS_accept4 => {
                let flags = if nr == libc::SYS_accept4 { a[3] } else { 0 };
                if flags & !((libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64) != 0 {
                    return Some(e(libc::EINVAL));
                }
                if sock.lock().kind != Kind::Listener {
                    return Some(e(libc::EINVAL));
                }
                let job = AcceptJob {
                    pid,
                    tid,
                    fd: a[0] as i32,
                    addr: a[1],
                    lenp: a[2],
                    flags,
                    id: n.id,
                };
                if let Some(c) = self.take_queued(&sock, &job) {
                    return Some(self.finish_accept(listener.as_raw_fd(), &job, c));
                }
                if super::fd_has(pid, a[0] as i32, libc::O_NONBLOCK) {
                    return Some(e(libc::EAGAIN));
                }
                let Ok(l) = listener.try_clone() else {
                    return Some(e(libc::ENOMEM));
                };
                let me = Arc::clone(self);
                std::thread::spawn(move || me.wait_accept(l, sock, job));
                Answer::Sent
            }
            libc::SYS_getsockname | libc::SYS_getpeername => {
                let op = if nr == libc::SYS_getpeername {
                    Opcode::GetPeerName
                } else {
                    Opcode::GetSockName
                };
                let mut buf = [0u8; ADDR_MAX];
                let r = self.call(op, [h, 0, 0, ADDR_MAX as u64, 0], &[], &mut buf);
                if r.result < 0 {
                    return Some(Answer::Val(r.result));
                }
                addr_out(&mem, a[1], a[2], &buf[..r.data], r.result as u32)
            }
            libc::SYS_getsockopt | libc::SYS_setsockopt => {
                let (level, name) = (a[1] as i32, a[2] as i32);
                // Timeouts and the low-water mark govern the program's reads and writes,
                // which the kernel does on the pair.
                if level == libc::SOL_SOCKET && matches!(name, 18 | 19 | 20 | 21 | 66 | 67) {
                    return None;
                }
                if nr == libc::SYS_setsockopt {
                    let len = a[4] as usize;
                    if len > 4096 {
                        return Some(e(libc::EINVAL));
                    }
                    let mut v = vec![0u8; len];
                    if mem.read(UserPtr(a[3]), &mut v).is_err() {
                        return Some(e(libc::EFAULT));
                    }
                    let r = self.call(
                        Opcode::SetSockOpt,
                        [h, level as u64, name as u64, 0, 0],
                        &v,
                        &mut [],
                    );
                    return Some(Answer::Val(r.result));
                }
                let (val, lenp) = (a[3], a[4]);
                let mut lb = [0u8; 4];
                if mem.read(UserPtr(lenp), &mut lb).is_err() {
                    return Some(e(libc::EFAULT));
                }
                let room = (i32::from_ne_bytes(lb).max(0) as usize).min(4096);
                let mut buf = vec![0u8; room];
                let r = self.call(
                    Opcode::GetSockOpt,
                    [h, level as u64, name as u64, room as u64, 0],
                    &[],
                    &mut buf,
                );
                if r.result < 0 {
                    return Some(Answer::Val(r.result));
                }
                let k = (r.result as usize).min(room);
                if mem.write(UserPtr(val), &buf[..k]).is_err()
                    || mem.write(UserPtr(lenp), &(k as u32).to_ne_bytes()).is_err()
                {
                    return Some(e(libc::EFAULT));
                }
                Answer::Val(0)
            }
            _ => return None,
        })
    }

    /// socket(2): TCP over IPv4/IPv6 lives in the network domain; other families stay local.
    fn socket(&self, listener: &OwnedFd, id: u64, a: [u64; 6]) -> Option<Answer> {
        let (domain, ty) = (a[0] as i32, a[1] as i32);
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return None;
        }
        let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
        if base != libc::SOCK_STREAM {
            // Datagram sockets would need every send and receive notified (their addresses):
            // refused rather than created outside the network domain.
            return Some(e(libc::EPROTONOSUPPORT));
        }
        let r = self.call(
            Opcode::Socket,
            [domain as u64, base as u64, a[2], 0, 0],
            &[],
            &mut [],
        );
        if r.result < 0 {
            return Some(Answer::Val(r.result));
        }
        let h = r.result as u32;
        let (theirs, ino) = match self.pair(h, Kind::Fresh, ty & libc::SOCK_NONBLOCK != 0) {
            Ok(p) => p,
            Err(err) => {
                self.close_remote(h);
                return Some(e(err.raw_os_error().unwrap_or(libc::ENOMEM)));
            }
        };
        let fd = add_fd(
            listener.as_raw_fd(),
            id,
            None,
            ty & libc::SOCK_CLOEXEC != 0,
            theirs.as_raw_fd(),
        );
        if fd < 0 {
            self.forget(ino);
            return Some(Answer::Val(fd));
        }
        Some(Answer::Sent)
    }

    /// The oldest queued connection, with its byte taken from the program's end.
    fn take_queued(&self, sock: &Sock, job: &AcceptJob) -> Option<Accepted> {
        let mut st = sock.lock();
        if st.queue.is_empty() {
            return None;
        }
        // The byte that made the listener readable: read it through a copy of the program's
        // descriptor (the pump wrote it under the same lock as it queued the connection).
        let theirs = pidfd_getfd(job.pid, job.fd)?;
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live buffer, without blocking.
        let k = unsafe {
            libc::recv(
                theirs.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_DONTWAIT,
            )
        };
        if k != 1 {
            return None;
        }
        let c = st.queue.pop_front();
        drop(st);
        // Room in the queue again: the pump may accept the next one.
        self.kick();
        c
    }

    fn finish_accept(&self, listener: RawFd, job: &AcceptJob, c: Accepted) -> Answer {
        let nonblock = job.flags & libc::SOCK_NONBLOCK as u64 != 0;
        let (theirs, ino) = match self.pair(c.handle, Kind::Stream, nonblock) {
            Ok(p) => p,
            Err(err) => {
                self.close_remote(c.handle);
                return e(err.raw_os_error().unwrap_or(libc::ENOMEM));
            }
        };
        if job.addr != 0 && job.lenp != 0 {
            let mem = super::Supervisor::mem(job.pid);
            if let Answer::Val(x) = addr_out(&mem, job.addr, job.lenp, &c.addr, c.full) {
                if x < 0 {
                    self.forget(ino);
                    return Answer::Val(x);
                }
            }
        }
        let fd = add_fd(
            listener,
            job.id,
            None,
            job.flags & libc::SOCK_CLOEXEC as u64 != 0,
            theirs.as_raw_fd(),
        );
        if fd < 0 {
            self.forget(ino);
            return Answer::Val(fd);
        }
        Answer::Sent
    }

    /// A blocking accept with nothing queued: waits for the pump to queue a connection, or for
    /// the call to go away (the program killed).
    fn wait_accept(&self, listener: OwnedFd, sock: Arc<Sock>, job: AcceptJob) {
        loop {
            if let Some(c) = self.take_queued(&sock, &job) {
                let a = self.finish_accept(listener.as_raw_fd(), &job, c);
                send_answer(listener.as_raw_fd(), job.id, a);
                return;
            }
            if !notif_id_valid(listener.as_raw_fd(), job.id) {
                return;
            }
            if super::signal_pending(job.tid) {
                // As the kernel's own accept: the handler runs, then the call restarts
                // (SA_RESTART, or no handler) or fails with EINTR.
                send_answer(
                    listener.as_raw_fd(),
                    job.id,
                    Answer::Val(-super::ERESTARTSYS),
                );
                return;
            }
            let st = sock.lock();
            if st.gone {
                drop(st);
                send_answer(listener.as_raw_fd(), job.id, e(libc::EBADF));
                return;
            }
            if st.queue.is_empty() {
                let _ = sock.queued.wait_timeout(st, Duration::from_millis(20));
            }
        }
    }

    /// The pump: moves bytes, accepts ahead and closes what the programs closed.
    fn pump(&self) {
        let mut buf = vec![0u8; self.window().min(256 << 10)];
        loop {
            let epoch = self.session.event_epoch();
            let socks: Vec<(u64, Arc<Sock>)> = self
                .socks()
                .iter()
                .map(|(k, v)| (*k, Arc::clone(v)))
                .collect();
            let mut fds = vec![pollfd(self.wake.as_raw_fd(), libc::POLLIN)];
            if let Some(ev) = self.session.event_fd() {
                fds.push(pollfd(ev, libc::POLLIN));
            }
            let dead = self.session.server_gone();
            for (ino, s) in &socks {
                if dead {
                    // The network domain is gone: the program reads the end of its
                    // connections, its writes fail with EPIPE, and a blocked accept EBADF.
                    // SAFETY: shutdown on our own descriptor.
                    unsafe { libc::shutdown(s.ours.as_raw_fd(), libc::SHUT_RDWR) };
                    s.lock().gone = true;
                    s.queued.notify_all();
                    self.socks().remove(ino);
                    continue;
                }
                match self.step(s, &mut buf) {
                    Some(events) => fds.push(pollfd(s.ours.as_raw_fd(), events)),
                    None => self.forget(*ino),
                }
            }
            self.session.event_waiter(true);
            let timeout = if self.session.event_epoch() != epoch {
                0
            } else {
                1000
            };
            // SAFETY: `fds` is a valid array of pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            self.session.event_waiter(false);
            let mut v = [0u8; 8];
            for f in &fds[..fds.len().min(2)] {
                if f.revents & libc::POLLIN != 0 {
                    // SAFETY: reads 8 bytes into a live buffer from a non-blocking eventfd.
                    unsafe { libc::read(f.fd, v.as_mut_ptr().cast(), 8) };
                }
            }
        }
    }

    /// One pass over `s`; the events to wait for on our end, or `None` once it is closed.
    fn step(&self, s: &Sock, buf: &mut [u8]) -> Option<i16> {
        let mut st = s.lock();
        if st.busy {
            return Some(0);
        }
        let ours = s.ours.as_raw_fd();
        let hup = revents(ours, 0) & libc::POLLHUP != 0;
        let h = u64::from(s.handle);
        let probe = std::mem::take(&mut st.probe);
        let ready = |net: &Net| {
            if probe {
                return libc::POLLIN | libc::POLLOUT;
            }
            net.session
                .readiness(s.handle as usize)
                .map_or(0, |r| r.mask as i16)
        };
        match st.kind {
            Kind::Fresh => (!hup).then_some(0),
            Kind::Listener => {
                if hup {
                    for c in st.queue.drain(..) {
                        self.close_remote(c.handle);
                    }
                    return None;
                }
                while st.queue.len() < ACCEPT_AHEAD && ready(self) & libc::POLLIN != 0 {
                    let mut addr = [0u8; ADDR_MAX];
                    let r = self.call(
                        Opcode::Accept,
                        [h, libc::SOCK_NONBLOCK as u64, ADDR_MAX as u64, 0, 0],
                        &[],
                        &mut addr,
                    );
                    if r.result < 0 {
                        break;
                    }
                    st.queue.push_back(Accepted {
                        handle: r.result as u32,
                        addr: addr[..r.data].to_vec(),
                        full: r.aux[0] as u32,
                    });
                    // SAFETY: writes one byte from a live buffer to our own end.
                    unsafe { libc::write(ours, [1u8].as_ptr().cast(), 1) };
                    s.queued.notify_all();
                }
                Some(0)
            }
            Kind::Stream => {
                // The network → the program.
                loop {
                    if !st.rx.is_empty() {
                        // SAFETY: writes from a live buffer to our own non-blocking end.
                        let k = unsafe {
                            libc::send(ours, st.rx.as_ptr().cast(), st.rx.len(), libc::MSG_NOSIGNAL)
                        };
                        if k < 0 {
                            if errno() != libc::EAGAIN {
                                // The program shut its end for reading, or closed it.
                                st.rx.clear();
                                st.rx_eof = true;
                            }
                            break;
                        }
                        st.rx.drain(..k as usize);
                        continue;
                    }
                    if st.rx_eof
                        || ready(self)
                            & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP)
                            == 0
                    {
                        break;
                    }
                    let want = buf.len().min(64 << 10);
                    let r = self.call(
                        Opcode::Recv,
                        [h, libc::MSG_DONTWAIT as u64, want as u64, 0, 0],
                        &[],
                        &mut buf[..want],
                    );
                    if r.result == -i64::from(libc::EAGAIN) {
                        break;
                    }
                    if r.result <= 0 {
                        // End of stream, or an error (a reset): the program reads the end.
                        st.rx_eof = true;
                        // SAFETY: shutdown on our own descriptor.
                        unsafe { libc::shutdown(ours, libc::SHUT_WR) };
                        break;
                    }
                    let k = (r.result as usize).min(r.data);
                    st.rx.extend_from_slice(&buf[..k]);
                }
                // The program → the network.
                loop {
                    if !st.tx.is_empty() {
                        let n = st.tx.len().min(self.window());
                        let r = self.call(
                            Opcode::Send,
                            [
                                h,
                                (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64,
                                0,
                                0,
                                n as u64,
                            ],
                            &st.tx[..n],
                            &mut [],
                        );
                        if r.result == -i64::from(libc::EAGAIN) {
                            break;
                        }
                        if r.result < 0 {
                            // The connection is broken: the program's writes now fail with
                            // EPIPE, as after a reset.
                            st.tx.clear();
                            st.tx_eof = true;
                            // SAFETY: shutdown on our own descriptor.
                            unsafe { libc::shutdown(ours, libc::SHUT_RD) };
                            break;
                        }
                        st.tx.drain(..r.result as usize);
                        continue;
                    }
                    if st.tx_eof {
                        break;
                    }
                    let want = buf.len().min(self.window());
                    // SAFETY: reads into a live buffer from our own non-blocking end.
                    let k = unsafe {
                        libc::recv(ours, buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT)
                    };
                    if k < 0 {
                        break;
                    }
                    if k == 0 {
                        // The program shut its end for writing, or closed it.
                        st.tx_eof = true;
                        self.call(
                            Opcode::Shutdown,
                            [h, libc::SHUT_WR as u64, 0, 0, 0],
                            &[],
                            &mut [],
                        );
                        break;
                    }
                    st.tx.extend_from_slice(&buf[..k as usize]);
                }
                if hup && st.tx.is_empty() {
                    // Every holder closed it and what it wrote has been sent.
                    return None;
                }
                let mut ev = 0;
                if st.tx.is_empty() && !st.tx_eof {
                    ev |= libc::POLLIN;
                }
                if !st.rx.is_empty() {
                    ev |= libc::POLLOUT;
                }
                Some(ev)
            }
        }
    }
}

impl Reply {
    fn err(x: i32) -> Reply {
        Reply {
            result: -i64::from(x),
            aux: [0; abi::RESPONSE_AUX],
            data: 0,
        }
    }
}

struct AcceptJob {
    pid: i32,
    /// The calling thread.
    tid: i32,
    fd: i32,
    addr: u64,
    lenp: u64,
    flags: u64,
    id: u64,
}

/// Writes a socket address for accept/getsockname/getpeername: at most `*lenp` bytes of
/// `bytes` to `addr`, the full length `full` to `lenp` (truncation as Linux does it).
fn addr_out(mem: &impl CallerMemory, addr: u64, lenp: u64, bytes: &[u8], full: u32) -> Answer {
    let mut lb = [0u8; 4];
    if mem.read(UserPtr(lenp), &mut lb).is_err() {
        return e(libc::EFAULT);
    }
    let room = i32::from_ne_bytes(lb);
    if room < 0 {
        return e(libc::EINVAL);
    }
    let n = (room as usize).min(bytes.len());
    if (n > 0 && mem.write(UserPtr(addr), &bytes[..n]).is_err())
        || mem.write(UserPtr(lenp), &full.to_ne_bytes()).is_err()
    {
        return e(libc::EFAULT);
    }
    Answer::Val(0)
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `fd`'s poll bits now (`events` plus the ones always reported).
fn revents(fd: RawFd, events: i16) -> i16 {
    let mut p = pollfd(fd, events);
    // SAFETY: one valid pollfd, zero timeout.
    if unsafe { libc::poll(&mut p, 1, 0) } == 1 {
        p.revents
    } else {
        0
    }
}

fn set_fl_nonblock(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own, integer arguments only.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// A copy of process `pid`'s descriptor `fd` (`pidfd_getfd`).
pub(super) fn pidfd_getfd(pid: i32, fd: i32) -> Option<OwnedFd> {
    let pfd = super::pidfd_open(pid)?;
    // SAFETY: pidfd_getfd with integer arguments; the result is checked.
    let f = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), fd, 0) };
    // SAFETY: pidfd_getfd returned a new descriptor; we own it.
    (f >= 0).then(|| unsafe { OwnedFd::from_raw_fd(f as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shim_core::MemError;
    use std::cell::RefCell;

    /// The caller's memory as one buffer at address 0x1000.
    struct Buf(RefCell<Vec<u8>>);

    /// The buffer range `len` bytes at `addr` covers.
    fn range(addr: UserPtr, len: usize) -> Result<std::ops::Range<usize>, MemError> {
        let at = (addr.0 as usize)
            .checked_sub(0x1000)
            .ok_or(MemError::Fault)?;
        Ok(at..at + len)
    }

    impl CallerMemory for Buf {
        fn read(&self, addr: UserPtr, out: &mut [u8]) -> Result<(), MemError> {
            let b = self.0.borrow();
            let src = b.get(range(addr, out.len())?).ok_or(MemError::Fault)?;
            out.copy_from_slice(src);
            Ok(())
        }
        fn write(&self, addr: UserPtr, data: &[u8]) -> Result<(), MemError> {
            let mut b = self.0.borrow_mut();
            let dst = b.get_mut(range(addr, data.len())?).ok_or(MemError::Fault)?;
            dst.copy_from_slice(data);
            Ok(())
        }
    }

    fn val(a: Answer) -> i64 {
        match a {
            Answer::Val(v) => v,
            _ => panic!("not a value"),
        }
    }

    #[test]
    fn addresses_are_truncated_and_their_full_length_reported_as_linux_does() {
        // *lenp = 4 at 0x1000, the address buffer at 0x1010.
        let m = Buf(RefCell::new(vec![0; 64]));
        m.write(UserPtr(0x1000), &4u32.to_ne_bytes()).unwrap();
        let addr = [2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
        assert_eq!(val(addr_out(&m, 0x1010, 0x1000, &addr, 16)), 0);
        let b = m.0.borrow();
        assert_eq!(&b[0x10..0x14], &addr[..4], "only *lenp bytes written");
        assert_eq!(&b[0x14..0x18], &[0; 4]);
        assert_eq!(
            u32::from_ne_bytes(b[..4].try_into().unwrap()),
            16,
            "full length back"
        );
        drop(b);
        // A negative *lenp is EINVAL, an unreadable lenp or address EFAULT.
        m.write(UserPtr(0x1000), &(-1i32).to_ne_bytes()).unwrap();
        assert_eq!(
            val(addr_out(&m, 0x1010, 0x1000, &addr, 16)),
            -i64::from(libc::EINVAL)
        );
        assert_eq!(
            val(addr_out(&m, 0x1010, 0x10, &addr, 16)),
            -i64::from(libc::EFAULT)
        );
        m.write(UserPtr(0x1000), &8u32.to_ne_bytes()).unwrap();
        assert_eq!(
            val(addr_out(&m, 0x9000, 0x1000, &addr, 16)),
            -i64::from(libc::EFAULT)
        );
    }
}
