//! The network domain end to end: the real `virtuos-net` binary, driven over a session with
//! hand-built requests, against native sockets of the test process. Covers TCP and UDP data
//! paths, blocking and non-blocking semantics, the readiness words, interruption and
//! SO_RCVTIMEO, bad input, the client's privileges, and sharing sockets through
//! PrepareClone/Adopt.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi::{Errno, Opcode, Request, Response};
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, Readiness, Session};

/// How long anything that should happen "now" may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(5);
/// A test still running after this long is hung: its server is killed, so waiting calls fail.
const WATCHDOG: Duration = Duration::from_secs(90);
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

const POLLIN: u32 = libc::POLLIN as u32;
const POLLOUT: u32 = libc::POLLOUT as u32;
const POLLRDHUP: u32 = libc::POLLRDHUP as u32;

type R<T> = Result<T, Errno>;

/// A `virtuos-net` process serving on a socket in a scratch directory.
struct Server {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    watchdog: Option<mpsc::Sender<()>>,
}

impl Server {
    fn start(name: &str) -> Server {
        let dir =
            std::env::temp_dir().join(format!("virtuos-net-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Clients running as other users must reach the socket.
        set_mode(&dir, 0o755);
        let sock = dir.join("sock");
        let child = Command::new(env!("CARGO_BIN_EXE_virtuos-net"))
            .arg("--listen")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("start virtuos-net");
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!(
                    "watchdog: test still running after {WATCHDOG:?}; killing virtuos-net {pid}"
                );
                // SAFETY: kill(2) of our own child, not reaped while the Server (and so this
                // thread's sender) lives.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut s = Server {
            child,
            dir,
            sock,
            watchdog: Some(tx),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.sock.exists() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("virtuos-net exited before serving: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "virtuos-net did not create {}",
                s.sock.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// A new session (the socket file exists once bound; it accepts once listening).
    fn connect(&self) -> Client {
        Client::connect(&self.sock)
    }

    /// Sends SIGTERM and returns whether the server exited successfully within the deadline.
    fn terminate(&mut self) -> bool {
        // SAFETY: kill(2) of our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.watchdog.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process has `cap` in its effective set.
fn has_cap(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// An errno as the server reports it.
fn e(n: i32) -> Errno {
    Errno::new(n).unwrap()
}

/// An int argument as the server reads it back (`v as u32 as i32`).
fn u(v: i32) -> u64 {
    u64::from(v as u32)
}

/// `struct sockaddr_in` bytes.
fn sin(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    sin_family(libc::AF_INET, ip, port)
}

fn sin_family(family: i32, ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[..2].copy_from_slice(&(family as u16).to_ne_bytes());
    b[2..4].copy_from_slice(&port.to_be_bytes());
    b[4..8].copy_from_slice(&ip.octets());
    b
}

fn sin_of(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(a) => sin(*a.ip(), a.port()),
        SocketAddr::V6(_) => panic!("an IPv4 address expected, got {a}"),
    }
}

fn parse_sin(b: &[u8]) -> SocketAddrV4 {
    assert!(
        b.len() >= 8 && i32::from(u16::from_ne_bytes([b[0], b[1]])) == libc::AF_INET,
        "not a sockaddr_in: {b:?}"
    );
    SocketAddrV4::new(
        Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        u16::from_be_bytes([b[2], b[3]]),
    )
}

/// `struct timeval` bytes.
fn timeval(d: Duration) -> Vec<u8> {
    let mut v = (d.as_secs() as i64).to_ne_bytes().to_vec();
    v.extend_from_slice(&i64::from(d.subsec_micros()).to_ne_bytes());
    v
}

/// Polls `cond` until it holds; fails the test after [`DEADLINE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Joins `t`, failing the test if it does not finish within [`DEADLINE`].
fn join_within<T>(t: JoinHandle<T>, what: &str) -> T {
    let deadline = Instant::now() + DEADLINE;
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "{what} did not return in time");
        std::thread::sleep(Duration::from_millis(2));
    }
    t.join().unwrap()
}

/// A client session (cloneable, so calls can wait on other threads).
#[derive(Clone)]
struct Client {
    s: Arc<Session>,
}

fn request(op: Opcode, args: [u64; 5], data_len: usize) -> Request {
    Request {
        opcode: op as u16,
        data_off: 0,
        data_len: data_len as u32,
        args,
        ..Request::default()
    }
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match connect_session(sock, &ClientConfig::default()) {
                Ok(s) => return Client { s: Arc::new(s) },
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot start a session: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// One call: `input` at window offset 0, `room` bytes offered for results; returns the
    /// response and the `data_len` bytes it reports.
    fn raw(&self, op: Opcode, args: [u64; 5], input: &[u8], room: usize) -> (Response, Vec<u8>) {
        let mut l = self.s.lease();
        l.write(0, input).unwrap();
        let r = l
            .call(request(op, args, input.len().max(room)))
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let mut buf = vec![0u8; r.data_len as usize];
        l.read(0, &mut buf).unwrap();
        (r, buf)
    }

    fn res(&self, op: Opcode, args: [u64; 5], input: &[u8]) -> R<u64> {
        self.raw(op, args, input, 0).0.into_result()
    }

    fn nop(&self) -> R<u64> {
        self.res(Opcode::Nop, [7, 0, 0, 0, 0], &[])
    }

    fn socket(&self, domain: i32, ty: i32, proto: i32) -> R<u64> {
        self.res(Opcode::Socket, [u(domain), u(ty), u(proto), 0, 0], &[])
    }

    fn bind(&self, h: u64, addr: &[u8]) -> R<u64> {
        self.res(Opcode::Bind, [h, 0, 0, 0, addr.len() as u64], addr)
    }

    fn listen(&self, h: u64, backlog: i32) -> R<u64> {
        self.res(Opcode::Listen, [h, u(backlog), 0, 0, 0], &[])
    }

    /// A TCP socket listening on an ephemeral loopback port.
    fn listener(&self) -> (u64, SocketAddr) {
        let l = self
            .socket(libc::AF_INET, libc::SOCK_STREAM, 0)
            .expect("socket");
        assert_eq!(
            self.setsockopt(l, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32.to_ne_bytes()),
            Ok(0)
        );
        assert_eq!(self.bind(l, &sin(LOCALHOST, 0)), Ok(0));
        assert_eq!(self.listen(l, 16), Ok(0));
        let a = self.sockname(l).expect("getsockname");
        assert_eq!(*a.ip(), LOCALHOST);
        assert_ne!(a.port(), 0, "an ephemeral port was chosen");
        (l, SocketAddr::V4(a))
    }

    /// Accept: (new handle, peer address bytes, full address length).
    fn accept(&self, h: u64, flags: i32) -> R<(u64, Vec<u8>, u64)> {
        let (r, addr) = self.raw(Opcode::Accept, [h, u(flags), 128, 0, 0], &[], 128);
        r.into_result().map(|nh| (nh, addr, r.aux[0]))
    }

    fn connect_to(&self, h: u64, addr: &[u8]) -> R<u64> {
        self.res(Opcode::Connect, [h, 0, 0, 0, addr.len() as u64], addr)
    }

    fn send(&self, h: u64, data: &[u8], flags: i32) -> R<u64> {
        self.res(Opcode::Send, [h, u(flags), 0, 0, data.len() as u64], data)
    }

    fn sendto(&self, h: u64, data: &[u8], addr: &[u8]) -> R<u64> {
        let mut input = data.to_vec();
        input.extend_from_slice(addr);
        let args = [h, 0, 0, addr.len() as u64, data.len() as u64];
        self.res(Opcode::Send, args, &input)
    }

    fn recv(&self, h: u64, n: usize, flags: i32) -> R<Vec<u8>> {
        let (r, mut b) = self.raw(Opcode::Recv, [h, u(flags), n as u64, 0, 0], &[], n);
        r.into_result().map(|got| {
            assert!(got as usize <= n, "more bytes than asked for");
            b.truncate(got as usize);
            b
        })
    }

    /// Receives exactly `n` bytes (several calls if need be).
    fn recv_exact(&self, h: u64, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} bytes", got.len());
            let b = self.recv(h, n - got.len(), 0).expect("recv");
            assert!(
                !b.is_empty(),
                "end of stream after {} of {n} bytes",
                got.len()
            );
            got.extend_from_slice(&b);
        }
        got
    }

    /// recvmsg with room for a source address: (bytes, address bytes, response).
    fn recvfrom(&self, h: u64, n: usize, room: usize) -> R<(Vec<u8>, Vec<u8>, Response)> {
        let args = [h, 0, n as u64, room as u64, 1];
        let (r, b) = self.raw(Opcode::Recv, args, &[], n + room);
        r.into_result().map(|got| {
            let alen = (r.aux[0] as usize).min(room);
            (b[..got as usize].to_vec(), b[n..n + alen].to_vec(), r)
        })
    }

    fn shutdown(&self, h: u64, how: i32) -> R<u64> {
        self.res(Opcode::Shutdown, [h, u(how), 0, 0, 0], &[])
    }

    fn setsockopt(&self, h: u64, level: i32, name: i32, val: &[u8]) -> R<u64> {
        let args = [h, u(level), u(name), 0, val.len() as u64];
        self.res(Opcode::SetSockOpt, args, val)
    }

    fn getsockopt(&self, h: u64, level: i32, name: i32, room: usize) -> R<Vec<u8>> {
        let args = [h, u(level), u(name), room as u64, 0];
        let (r, b) = self.raw(Opcode::GetSockOpt, args, &[], room);
        r.into_result().map(|n| {
            assert_eq!(n as usize, b.len());
            b
        })
    }

    fn getsockopt_int(&self, h: u64, level: i32, name: i32) -> R<i32> {
        self.getsockopt(h, level, name, 4)
            .map(|b| i32::from_ne_bytes(b[..4].try_into().unwrap()))
    }

    fn name(&self, h: u64, peer: bool) -> R<SocketAddrV4> {
        let op = if peer {
            Opcode::GetPeerName
        } else {
            Opcode::GetSockName
        };
        let (r, b) = self.raw(op, [h, 0, 0, 128, 0], &[], 128);
        r.into_result().map(|len| {
            assert_eq!(len, 16, "a sockaddr_in's length");
            parse_sin(&b)
        })
    }

    fn sockname(&self, h: u64) -> R<SocketAddrV4> {
        self.name(h, false)
    }

    fn peername(&self, h: u64) -> R<SocketAddrV4> {
        self.name(h, true)
    }

    fn ioctl(&self, h: u64, req: u64, val: i32) -> R<u64> {
        self.res(Opcode::Ioctl, [h, req, u(val), 0, 0], &[])
    }

    fn fcntl(&self, h: u64, cmd: i32, arg: i32) -> R<u64> {
        self.res(Opcode::Fcntl, [h, u(cmd), u(arg), 0, 0], &[])
    }

    fn nonblocking(&self, h: u64) -> bool {
        self.fcntl(h, libc::F_GETFL, 0).expect("F_GETFL") as i32 & libc::O_NONBLOCK != 0
    }

    /// The socket's st_mode (FStat: a `struct statx`).
    fn fstat_mode(&self, h: u64) -> R<u32> {
        let (r, b) = self.raw(Opcode::FStat, [h, 0, 0, 0, 0], &[], 256);
        r.into_result().map(|_| {
            assert_eq!(b.len(), 256, "a whole struct statx");
            u32::from(u16::from_ne_bytes([b[28], b[29]]))
        })
    }

    fn close(&self, h: u64) -> R<u64> {
        self.res(Opcode::Close, [h, 0, 0, 0, 0], &[])
    }

    fn prepare_clone(&self, kind: u64) -> R<u64> {
        let (r, _) = self.raw(Opcode::PrepareClone, [kind, 0, 0, 0, 0], &[], 0);
        r.into_result().map(|_| r.aux[0])
    }

    fn adopt(&self, token: u64) -> R<u64> {
        let (r, _) = self.raw(Opcode::Adopt, [token, 0, 0, 0, 0], &[], 0);
        r.into_result().map(|_| r.aux[0])
    }

    fn ready(&self, h: u64) -> Readiness {
        self.s
            .readiness(h as usize)
            .expect("a handle with a readiness word")
    }
}

/// Connects a native stream to `addr`, with a read deadline.
fn native_peer(addr: SocketAddr) -> TcpStream {
    let p = TcpStream::connect(addr).expect("native connect");
    p.set_read_timeout(Some(DEADLINE)).unwrap();
    p
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// A no-op SIGUSR1 handler installed without SA_RESTART, so a signal interrupts waits.
fn install_sigusr1() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is valid; the handler is async-signal-safe (it does
        // nothing) and the struct outlives the call.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    });
}

/// Issues `req` with `call_interruptible` on a thread of its own and signals that thread
/// until the call returns (a signal that lands before the caller sleeps, while it spins, is
/// not an interruption, as a signal before a system call is not); returns its response.
fn interrupted(c: &Client, req: Request) -> Response {
    install_sigusr1();
    let (tx, rx) = mpsc::channel();
    let cc = c.clone();
    let t = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        let mut lease = cc.s.lease();
        lease
            .call_interruptible(req, &mut || true)
            .expect("interruptible call")
    });
    let tid = rx.recv().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !t.is_finished() {
        assert!(
            Instant::now() < deadline,
            "a signalled call did not return within {DEADLINE:?}"
        );
        // SAFETY: `tid` names a thread that has not been joined, so it is still valid.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(20));
    }
    t.join().unwrap()
}

/// Makes a call that should end by itself (a timeout) on a thread of its own, failing the
/// test if it does not return within [`DEADLINE`]; returns its response and duration.
fn timed(c: &Client, req: Request) -> (Response, Duration) {
    let cc = c.clone();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let r = cc.s.lease().call(req).expect("call");
        (r, start.elapsed())
    });
    join_within(t, "a call bounded by SO_RCVTIMEO")
}

#[test]
fn tcp_round_trip() {
    let srv = Server::start("tcp");
    let c = srv.connect();
    let (l, addr) = c.listener();
    assert_eq!(
        c.getsockopt_int(l, libc::SOL_SOCKET, libc::SO_REUSEADDR),
        Ok(1)
    );
    assert_eq!(
        c.getsockopt_int(l, libc::SOL_SOCKET, libc::SO_ACCEPTCONN),
        Ok(1)
    );
    assert_eq!(
        c.fstat_mode(l).map(|m| m & libc::S_IFMT),
        Ok(libc::S_IFSOCK)
    );
    assert!(!c.nonblocking(l), "sockets are blocking by default");

    // Accept (blocking) of a connection already queued.
    let mut peer = native_peer(addr);
    let (a, paddr, full) = c.accept(l, 0).unwrap();
    assert_ne!(a, l);
    assert_eq!(full, 16, "full length of the peer address");
    assert_eq!(
        SocketAddr::V4(parse_sin(&paddr)),
        peer.local_addr().unwrap()
    );
    assert_eq!(
        c.peername(a).map(SocketAddr::V4),
        Ok(peer.local_addr().unwrap())
    );
    assert_eq!(c.sockname(a).map(SocketAddr::V4), Ok(addr));
    assert!(!c.nonblocking(a));

    // Server to peer, peer to server.
    let msg = b"hello from the network domain";
    assert_eq!(c.send(a, msg, 0), Ok(msg.len() as u64));
    let mut buf = vec![0u8; msg.len()];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
    peer.write_all(b"hello from the peer").unwrap();
    assert_eq!(c.recv_exact(a, 19), b"hello from the peer");

    // FIONREAD reports what is queued; MSG_PEEK leaves it there.
    peer.write_all(b"12345").unwrap();
    wait_for("FIONREAD = 5", || c.ioctl(a, libc::FIONREAD, 0) == Ok(5));
    assert_eq!(c.recv(a, 3, libc::MSG_PEEK).unwrap(), b"123");
    assert_eq!(c.recv(a, 64, 0).unwrap(), b"12345");
    assert_eq!(c.ioctl(a, libc::FIONREAD, 0), Ok(0));

    // A large blocking send returns only when everything is sent (the peer reads meanwhile).
    let big: Vec<u8> = (0..200usize << 10).map(|i| (i * 7 % 251) as u8).collect();
    let reader = {
        let p = peer.try_clone().unwrap();
        let n = big.len();
        std::thread::spawn(move || {
            let mut v = vec![0u8; n];
            (&p).read_exact(&mut v).map(|_| v)
        })
    };
    assert_eq!(c.send(a, &big, 0), Ok(big.len() as u64));
    assert!(join_within(reader, "the native reader").unwrap() == big);

    // A blocking Accept issued before the peer connects waits for it; SOCK_NONBLOCK applies
    // to the new socket.
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.accept(l, libc::SOCK_NONBLOCK))
    };
    std::thread::sleep(Duration::from_millis(100)); // let the Accept reach the server
    let peer2 = native_peer(addr);
    let (b, paddr, _) = join_within(waiter, "the waiting accept").unwrap();
    assert_eq!(
        SocketAddr::V4(parse_sin(&paddr)),
        peer2.local_addr().unwrap()
    );
    assert!(c.nonblocking(b), "accept4(SOCK_NONBLOCK)");
    assert!(!c.nonblocking(l), "the listener is unchanged");
    assert_eq!(c.close(b), Ok(0));
    let mut one = [0u8; 1];
    assert_eq!(
        (&peer2).read(&mut one).unwrap(),
        0,
        "closing the handle closes the connection"
    );

    // A blocking Connect from the server to a native listener.
    let native = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let k = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    assert_eq!(
        c.connect_to(k, &sin_of(native.local_addr().unwrap())),
        Ok(0)
    );
    let (mut n, from) = native.accept().unwrap();
    n.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(c.sockname(k).map(SocketAddr::V4), Ok(from));
    assert_eq!(
        c.peername(k).map(SocketAddr::V4),
        Ok(native.local_addr().unwrap())
    );
    n.write_all(b"ping").unwrap();
    assert_eq!(c.recv_exact(k, 4), b"ping");
    assert_eq!(c.send(k, b"pong", 0), Ok(4));
    let mut pong = [0u8; 4];
    n.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");
    // Shutdown(SHUT_WR): the peer reads the end of the stream; the other way still works.
    assert_eq!(c.shutdown(k, libc::SHUT_WR), Ok(0));
    assert_eq!(n.read(&mut pong).unwrap(), 0);
    n.write_all(b"late").unwrap();
    assert_eq!(c.recv_exact(k, 4), b"late");
    drop(n);
    assert_eq!(
        c.recv(k, 16, 0),
        Ok(vec![]),
        "end of stream after the peer closed"
    );
    // Nobody listening: refused.
    let closed_port = native.local_addr().unwrap();
    drop(native);
    let k2 = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    assert_eq!(
        c.connect_to(k2, &sin_of(closed_port)),
        Err(e(libc::ECONNREFUSED))
    );

    // Close: the handle is gone, the peer sees the end of the stream.
    for h in [a, k, k2, l] {
        assert_eq!(c.close(h), Ok(0));
    }
    assert_eq!(c.close(a), Err(e(libc::EBADF)));
    assert_eq!(c.send(a, b"x", 0), Err(e(libc::EBADF)));
    assert_eq!(peer.read(&mut one).unwrap(), 0);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listening socket was closed"
    );
}

#[test]
fn non_blocking_calls_do_not_wait() {
    let srv = Server::start("nonblock");
    let c = srv.connect();
    let (l, addr) = c.listener();

    // FIONBIO on the listener: Accept answers EAGAIN at once.
    assert_eq!(c.ioctl(l, libc::FIONBIO, 1), Ok(0));
    assert!(c.nonblocking(l));
    let t = Instant::now();
    assert_eq!(c.accept(l, 0), Err(e(libc::EAGAIN)));
    assert!(t.elapsed() < DEADLINE);

    // A queued connection is accepted without waiting; the new socket is blocking.
    let mut peer = native_peer(addr);
    let mut got = Err(e(libc::EAGAIN));
    wait_for("the queued connection", || {
        got = c.accept(l, 0);
        got != Err(e(libc::EAGAIN))
    });
    let (a, ..) = got.unwrap();
    assert!(!c.nonblocking(a));

    // Fcntl F_SETFL O_NONBLOCK: Recv with nothing queued answers EAGAIN at once.
    assert_eq!(c.fcntl(a, libc::F_SETFL, libc::O_NONBLOCK), Ok(0));
    assert!(c.nonblocking(a));
    let t = Instant::now();
    assert_eq!(c.recv(a, 16, 0), Err(e(libc::EAGAIN)));
    assert!(t.elapsed() < DEADLINE);
    peer.write_all(b"x").unwrap();
    let mut r = Err(e(libc::EAGAIN));
    wait_for("the byte", || {
        r = c.recv(a, 16, 0);
        r != Err(e(libc::EAGAIN))
    });
    assert_eq!(r, Ok(b"x".to_vec()));

    // A non-blocking Send fills the socket buffers, then answers EAGAIN (the peer is not
    // reading).
    let chunk = vec![0x5au8; 64 << 10];
    let mut sent = 0u64;
    let full = (0..4096).any(|_| match c.send(a, &chunk, 0) {
        Ok(n) => {
            sent += n;
            false
        }
        Err(err) => {
            assert_eq!(err, e(libc::EAGAIN));
            true
        }
    });
    assert!(full, "{sent} bytes sent without the buffers filling up");
    assert!(sent > 0);
    // MSG_DONTWAIT on a blocking socket does not wait either.
    assert_eq!(c.fcntl(a, libc::F_SETFL, 0), Ok(0));
    assert!(!c.nonblocking(a));
    assert_eq!(c.send(a, &chunk, libc::MSG_DONTWAIT), Err(e(libc::EAGAIN)));

    // Back to blocking: FIONBIO 0.
    assert_eq!(c.ioctl(l, libc::FIONBIO, 0), Ok(0));
    assert!(!c.nonblocking(l));

    // SOCK_NONBLOCK at creation, and a non-blocking Connect.
    let k = c
        .socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)
        .unwrap();
    assert!(c.nonblocking(k));
    let r = c.connect_to(k, &sin_of(addr));
    assert!(
        r == Ok(0) || r == Err(e(libc::EINPROGRESS)),
        "non-blocking connect: {r:?}"
    );
    wait_for("the connection to complete", || {
        c.ready(k).mask & POLLOUT != 0
    });
    assert_eq!(c.getsockopt_int(k, libc::SOL_SOCKET, libc::SO_ERROR), Ok(0));
    let (b, paddr, _) = c.accept(l, 0).unwrap();
    assert_eq!(parse_sin(&paddr), c.sockname(k).unwrap());
    assert_eq!(c.send(k, b"nb", 0), Ok(2));
    assert_eq!(c.recv_exact(b, 2), b"nb");
}

#[test]
fn readiness_words_follow_the_socket() {
    let srv = Server::start("ready");
    let c = srv.connect();
    let (l, addr) = c.listener();
    let w0 = c.ready(l);
    assert_eq!(w0.mask & POLLIN, 0, "nothing to accept yet: {w0:?}");
    let e0 = c.s.event_epoch();

    // A connection arrives: the listener's word gets POLLIN without any call.
    let mut peer = native_peer(addr);
    wait_for("POLLIN on the listener", || c.ready(l).mask & POLLIN != 0);
    assert_ne!(c.s.event_epoch(), e0, "the event epoch moved");
    assert!(c.ready(l).seq > w0.seq, "an edge was counted");

    // Accept drains the queue: the worker republishes the word before answering.
    let (a, ..) = c.accept(l, 0).unwrap();
    assert_eq!(c.ready(l).mask & POLLIN, 0, "accepted: {:?}", c.ready(l));
    let r = c.ready(a);
    assert_ne!(r.mask & POLLOUT, 0, "a new connection is writable: {r:?}");
    assert_eq!(r.mask & POLLIN, 0, "nothing to read yet: {r:?}");

    // A thread that announced it sleeps is woken through the eventfd.
    let efd = c.s.event_fd().expect("the session has a readiness eventfd");
    c.s.event_waiter(true);
    peer.write_all(b"data").unwrap();
    let mut pfd = libc::pollfd {
        fd: efd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as i32) };
    c.s.event_waiter(false);
    assert_eq!(n, 1, "the readiness eventfd did not wake the waiter");
    let mut unit = [0u8; 8];
    // SAFETY: reads 8 bytes into a local buffer.
    let got = unsafe { libc::read(efd, unit.as_mut_ptr() as *mut libc::c_void, 8) };
    assert_eq!(got, 8);
    assert_eq!(
        u64::from_ne_bytes(unit),
        1,
        "semaphore mode: one unit per read"
    );

    wait_for("POLLIN on the connection", || c.ready(a).mask & POLLIN != 0);
    assert!(c.ready(a).seq > r.seq, "the edge was counted");
    assert_eq!(c.recv_exact(a, 4), b"data");
    wait_for("POLLIN to clear once drained", || {
        c.ready(a).mask & POLLIN == 0
    });

    // The peer closes: POLLRDHUP and POLLIN (end of stream is readable).
    let before = c.ready(a).seq;
    drop(peer);
    wait_for("POLLRDHUP", || {
        let m = c.ready(a).mask;
        m & POLLRDHUP != 0 && m & POLLIN != 0
    });
    assert!(c.ready(a).seq > before);
    assert_eq!(c.recv(a, 8, 0), Ok(vec![]));

    // Close clears the word.
    assert_eq!(c.close(a), Ok(0));
    assert_eq!(c.ready(a), Readiness::default());
}

#[test]
fn interrupted_and_timed_out_calls() {
    let srv = Server::start("intr");
    let c = srv.connect();
    let (l, addr) = c.listener();

    // A blocking Accept interrupted by a signal: -EINTR.
    let req = request(Opcode::Accept, [l, 0, 128, 0, 0], 128);
    let r = interrupted(&c, req);
    assert_eq!(r.result, -i64::from(libc::EINTR), "{r:?}");
    // The cancelled Accept took no connection: the next one gets it.
    let mut peer = native_peer(addr);
    let (a, paddr, _) = c.accept(l, 0).unwrap();
    assert_eq!(
        SocketAddr::V4(parse_sin(&paddr)),
        peer.local_addr().unwrap()
    );

    // A blocking Recv interrupted: -EINTR, and no data is lost.
    let req = request(Opcode::Recv, [a, 0, 64, 0, 0], 64);
    let r = interrupted(&c, req);
    assert_eq!(r.result, -i64::from(libc::EINTR), "{r:?}");
    peer.write_all(b"after").unwrap();
    assert_eq!(c.recv_exact(a, 5), b"after");
    assert_eq!(c.nop(), Ok(7), "the session still works");

    // SO_RCVTIMEO bounds a blocking Recv: -EAGAIN after about that long.
    let tv = timeval(Duration::from_millis(200));
    assert_eq!(
        c.setsockopt(a, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv),
        Ok(0)
    );
    assert_eq!(
        c.getsockopt(a, libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16),
        Ok(tv.clone())
    );
    let (r, took) = timed(&c, request(Opcode::Recv, [a, 0, 16, 0, 0], 16));
    assert_eq!(r.into_result(), Err(e(libc::EAGAIN)));
    assert!(
        took >= Duration::from_millis(150),
        "timed out after {took:?}"
    );
    // The timeout took nothing either.
    peer.write_all(b"still there").unwrap();
    assert_eq!(c.recv_exact(a, 11), b"still there");

    // And a blocking Accept.
    assert_eq!(
        c.setsockopt(l, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv),
        Ok(0)
    );
    let (r, took) = timed(&c, request(Opcode::Accept, [l, 0, 128, 0, 0], 128));
    assert_eq!(r.into_result(), Err(e(libc::EAGAIN)));
    assert!(
        took >= Duration::from_millis(150),
        "timed out after {took:?}"
    );
}

#[test]
fn udp_datagrams_carry_addresses() {
    let srv = Server::start("udp");
    let c = srv.connect();
    let u1 = c.socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
    let u2 = c.socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
    assert_eq!(c.bind(u1, &sin(LOCALHOST, 0)), Ok(0));
    assert_eq!(c.bind(u2, &sin(LOCALHOST, 0)), Ok(0));
    let a1 = c.sockname(u1).unwrap();
    let a2 = c.sockname(u2).unwrap();
    assert_ne!(a1.port(), a2.port());
    assert_eq!(
        c.getsockopt_int(u1, libc::SOL_SOCKET, libc::SO_TYPE),
        Ok(libc::SOCK_DGRAM)
    );

    // sendto with the address after the data; recvfrom reports the source.
    let sa2 = sin(*a2.ip(), a2.port());
    assert_eq!(c.sendto(u1, b"datagram one", &sa2), Ok(12));
    let (data, from, r) = c.recvfrom(u2, 64, 16).unwrap();
    assert_eq!(data, b"datagram one");
    assert_eq!(r.aux[0], 16, "full source address length");
    assert_eq!(parse_sin(&from), a1);
    assert_eq!(r.aux[1] as i32 & libc::MSG_TRUNC, 0);

    // To and from a native socket of the test.
    let native = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    native.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        c.sendto(u1, b"to native", &sin_of(native.local_addr().unwrap())),
        Ok(9)
    );
    let mut buf = [0u8; 64];
    let (n, src) = native.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to native");
    assert_eq!(src, SocketAddr::V4(a1));
    native.send_to(b"from native", SocketAddr::V4(a2)).unwrap();
    let (data, from, _) = c.recvfrom(u2, 64, 16).unwrap();
    assert_eq!(data, b"from native");
    assert_eq!(
        SocketAddr::V4(parse_sin(&from)),
        native.local_addr().unwrap()
    );

    // A datagram longer than asked for: truncated, and MSG_TRUNC says so.
    assert_eq!(c.sendto(u1, &[7u8; 100], &sa2), Ok(100));
    let (data, _, r) = c.recvfrom(u2, 10, 16).unwrap();
    assert_eq!(data, [7u8; 10]);
    assert_ne!(
        r.aux[1] as i32 & libc::MSG_TRUNC,
        0,
        "flags {:#x}",
        r.aux[1]
    );

    // Connected UDP: Send without an address, Recv without one.
    assert_eq!(c.connect_to(u1, &sa2), Ok(0));
    assert_eq!(c.send(u1, b"connected", 0), Ok(9));
    assert_eq!(c.recv(u2, 64, 0), Ok(b"connected".to_vec()));
    wait_for("u2 idle", || c.ready(u2).mask & POLLIN == 0);
    native.send_to(b"ready?", SocketAddr::V4(a2)).unwrap();
    wait_for("POLLIN on the UDP socket", || {
        c.ready(u2).mask & POLLIN != 0
    });
    assert_eq!(c.recv(u2, 64, 0), Ok(b"ready?".to_vec()));
}

#[test]
fn bad_input_is_refused() {
    let srv = Server::start("bad");
    let c = srv.connect();
    // Families and types the domain does not serve, or the kernel refuses.
    assert_eq!(
        c.socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
        Err(e(libc::EAFNOSUPPORT))
    );
    assert_eq!(
        c.socket(libc::AF_NETLINK, libc::SOCK_RAW, 0),
        Err(e(libc::EAFNOSUPPORT))
    );
    assert_eq!(c.socket(libc::AF_INET, 99, 0), Err(e(libc::EINVAL)));
    assert_eq!(
        c.socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_UDP),
        Err(e(libc::EPROTONOSUPPORT))
    );

    let h = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    // Addresses that are not sockaddr_in.
    let mut unix = sin(LOCALHOST, 0);
    unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    assert_eq!(c.bind(h, &unix), Err(e(libc::EAFNOSUPPORT)));
    let short = (libc::AF_INET as u16).to_ne_bytes();
    assert_eq!(c.bind(h, &short), Err(e(libc::EINVAL)), "2-byte address");
    assert_eq!(c.bind(h, &sin(LOCALHOST, 0)[..3]), Err(e(libc::EINVAL)));
    assert_eq!(c.bind(h, &[]), Err(e(libc::EINVAL)));
    assert_eq!(
        c.connect_to(h, &short),
        Err(e(libc::EINVAL)),
        "2-byte address"
    );
    // An address length beyond the payload.
    assert_eq!(
        c.res(Opcode::Bind, [h, 0, 0, 0, 16], &[0u8; 8]),
        Err(e(libc::EFAULT))
    );
    assert_eq!(c.nop(), Ok(7), "the session survived");

    // Handles that do not exist.
    let h2 = c.socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
    for bad in [42u64, 1 << 40, u64::MAX] {
        let ops = [
            Opcode::Bind,
            Opcode::Listen,
            Opcode::Accept,
            Opcode::Connect,
            Opcode::Send,
            Opcode::Recv,
            Opcode::Shutdown,
            Opcode::GetSockOpt,
            Opcode::SetSockOpt,
            Opcode::GetSockName,
            Opcode::GetPeerName,
            Opcode::Ioctl,
            Opcode::Fcntl,
            Opcode::FStat,
            Opcode::Close,
        ];
        for op in ops {
            let (r, _) = c.raw(op, [bad, 0, 0, 0, 0], &[], 256);
            assert_eq!(r.into_result(), Err(e(libc::EBADF)), "{op:?} on {bad}");
        }
    }

    // Lengths beyond the payload.
    assert_eq!(
        c.res(Opcode::Send, [h2, 0, 0, 0, 64], &[1u8; 16]),
        Err(e(libc::EFAULT)),
        "Send with args[4] > data_len"
    );
    assert_eq!(
        c.res(Opcode::Send, [h2, 0, 0, 16, 16], &[1u8; 16]),
        Err(e(libc::EFAULT)),
        "the address does not fit"
    );
    assert_eq!(
        c.res(Opcode::Send, [h2, 0, 0, u64::MAX, 1], &[1u8; 16]),
        Err(e(libc::EFAULT))
    );
    assert_eq!(
        c.res(Opcode::Send, [h2, 0, 0, 0, u64::MAX], &[1u8; 16]),
        Err(e(libc::EFAULT))
    );
    assert_eq!(
        c.raw(Opcode::Recv, [h2, 0, 64, 0, 0], &[], 16)
            .0
            .into_result(),
        Err(e(libc::EFAULT))
    );
    assert_eq!(
        c.raw(Opcode::Recv, [h2, 0, u64::MAX, 16, 0], &[], 16)
            .0
            .into_result(),
        Err(e(libc::EFAULT))
    );
    assert_eq!(
        c.res(Opcode::SetSockOpt, [h2, 1, 2, 0, 64], &[0u8; 4]),
        Err(e(libc::EFAULT))
    );

    // Operations the socket or the domain does not support.
    assert_eq!(c.ioctl(h, libc::SIOCGIFCONF, 0), Err(e(libc::ENOTTY)));
    assert_eq!(c.fcntl(h, libc::F_DUPFD, 0), Err(e(libc::EINVAL)));
    assert_eq!(
        c.res(Opcode::OpenAt, [0, 0, 0, 0, 1], b"x"),
        Err(e(libc::ENOSYS)),
        "storage opcodes are not served here"
    );
    assert_eq!(c.listen(h2, 1), Err(e(libc::EOPNOTSUPP)), "listen on UDP");
    assert_eq!(
        c.accept(h, 0),
        Err(e(libc::EINVAL)),
        "accept on a non-listener"
    );
    assert_eq!(c.recv(h, 16, 0), Err(e(libc::ENOTCONN)));
    assert_eq!(c.peername(h), Err(e(libc::ENOTCONN)));
    assert_eq!(c.send(h, b"x", 0), Err(e(libc::EPIPE)));

    // Privileged ports: this client's capabilities decide (the server has its own).
    let p = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    let r = c.bind(p, &sin(LOCALHOST, 80));
    if 80 >= unprivileged_port_start() {
        assert!(r == Ok(0) || r == Err(e(libc::EADDRINUSE)), "{r:?}");
    } else if is_root() && has_cap(10) {
        // CAP_NET_BIND_SERVICE
        assert!(r == Ok(0) || r == Err(e(libc::EADDRINUSE)), "{r:?}");
    } else {
        assert_eq!(r, Err(e(libc::EACCES)));
    }
    assert_eq!(c.nop(), Ok(7), "the session survived all of it");
}

/// Runs this test binary's `child_role` with `role`, as `uid` if given.
fn child(role: &str, sock: &Path, extra: &[(&str, String)], as_user: Option<u32>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("VIRTUOS_NET_TEST_ROLE", role)
    .env("VIRTUOS_NET_TEST_SOCK", sock);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    if let Some(id) = as_user {
        cmd.uid(id).gid(id);
    }
    let out = cmd.output().expect("spawn the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child {role} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// The client halves of the multi-process tests; a no-op in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var("VIRTUOS_NET_TEST_ROLE") else {
        return;
    };
    let sock = PathBuf::from(std::env::var("VIRTUOS_NET_TEST_SOCK").unwrap());
    let c = Client::connect(&sock);
    match role.as_str() {
        "fork-child" => {
            let token = env_u64("VIRTUOS_NET_TEST_TOKEN");
            let l = env_u64("VIRTUOS_NET_TEST_HANDLE");
            let port = env_u64("VIRTUOS_NET_TEST_PORT") as u16;
            assert_eq!(
                c.sockname(l),
                Err(e(libc::EBADF)),
                "nothing before adopting"
            );
            assert_eq!(c.adopt(token), Ok(1), "the parent's one socket");
            assert_eq!(c.adopt(token), Err(e(libc::ENOENT)), "one-time");
            assert_eq!(c.sockname(l).map(|a| a.port()), Ok(port));
            // The adopted socket's readiness is pushed to this session too.
            wait_for("POLLIN in the child", || c.ready(l).mask & POLLIN != 0);
            let (a, ..) = c.accept(l, 0).unwrap();
            assert_eq!(c.send(a, b"from the child", 0), Ok(14));
            assert_eq!(c.close(a), Ok(0));
        }
        "orphan" => {
            let dir = PathBuf::from(std::env::var("VIRTUOS_NET_TEST_DIR").unwrap());
            let h = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
            std::fs::write(dir.join("pid"), std::process::id().to_string()).unwrap();
            // SAFETY: the child only polls the file system and makes ring calls, then exits.
            match unsafe { libc::fork() } {
                0 => {
                    // Out of the way of the runner, which reads the parent's output to the end.
                    // SAFETY: dup2 of /dev/null over our own stdio.
                    unsafe {
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                        libc::dup2(null, 1);
                        libc::dup2(null, 2);
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !dir.join("go").exists() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let r = c.bind(h, &sin(LOCALHOST, 80));
                    let _ = std::fs::write(dir.join("result"), format!("{r:?}\n"));
                    // SAFETY: ends the forked child without the test harness's teardown.
                    unsafe { libc::_exit(0) };
                }
                pid => assert!(pid > 0, "fork"),
            }
        }
        "unprivileged" => {
            let h = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
            let expect = if 80 < unprivileged_port_start() {
                Err(e(libc::EACCES))
            } else {
                Ok(0)
            };
            if expect.is_err() {
                assert_eq!(c.bind(h, &sin(LOCALHOST, 80)), expect);
                // An AF_INET socket binds AF_UNSPEC with INADDR_ANY as AF_INET.
                let unspec = sin_family(libc::AF_UNSPEC, Ipv4Addr::UNSPECIFIED, 80);
                assert_eq!(c.bind(h, &unspec), expect, "AF_UNSPEC port 80");
                // (IPv6 may be disabled: then there is no AF_INET6 socket to bind.)
                if let Ok(h6) = c.socket(libc::AF_INET6, libc::SOCK_STREAM, 0) {
                    let mut sin6 = vec![0u8; 28];
                    sin6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                    sin6[2..4].copy_from_slice(&80u16.to_be_bytes());
                    sin6[23] = 1; // ::1
                    assert_eq!(c.bind(h6, &sin6), expect, "AF_INET6 port 80");
                }
            }
            assert_eq!(c.bind(h, &sin(LOCALHOST, 0)), Ok(0));
            // Raw sockets need CAP_NET_RAW, which this client lacks.
            assert_eq!(
                c.socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
                Err(e(libc::EPERM))
            );
            assert_eq!(
                c.socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                    libc::IPPROTO_RAW
                ),
                Err(e(libc::EPERM))
            );
            // Socket options Linux reserves to CAP_NET_ADMIN / CAP_NET_RAW.
            for (level, name, val) in [
                (libc::SOL_SOCKET, libc::SO_MARK, 1),
                (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 1 << 20),
                (libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 1 << 20),
                (libc::SOL_SOCKET, libc::SO_PRIORITY, 7),
                (libc::SOL_IP, libc::IP_TRANSPARENT, 1),
                (libc::SOL_TCP, libc::TCP_REPAIR, 1),
            ] {
                assert_eq!(
                    c.setsockopt(h, level, name, &i32::to_ne_bytes(val)),
                    Err(e(libc::EPERM)),
                    "setsockopt({level}, {name})"
                );
            }
            // ...but what anybody may set still works.
            assert_eq!(
                c.setsockopt(h, libc::SOL_SOCKET, libc::SO_PRIORITY, &6i32.to_ne_bytes()),
                Ok(0)
            );
            assert_eq!(
                c.setsockopt(h, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &1i32.to_ne_bytes()),
                Ok(0)
            );
        }
        other => panic!("unknown role {other}"),
    }
    println!("CHILD-OK");
}

#[test]
fn privileged_operations_need_the_clients_capabilities() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let srv = Server::start("priv");
    // The server is root: binding port 80 for a root client is the kernel's business.
    let c = srv.connect();
    let h = c.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    let r = c.bind(h, &sin(LOCALHOST, 80));
    assert!(r == Ok(0) || r == Err(e(libc::EADDRINUSE)), "{r:?}");
    child("unprivileged", &srv.sock, &[], Some(65534));
}

/// The capabilities of a session are those of the process that connected, never of a process
/// that got its pid later: a client forks a child that keeps the session, exits, and its pid is
/// given to a root process (through `ns_last_pid`); the child's `bind(80)` must still fail.
#[test]
fn a_reused_pid_lends_no_capabilities() {
    if !is_root() || 80 >= unprivileged_port_start() {
        eprintln!("skipped: needs root (to hand the pid to a root process) and port 80 privileged");
        return;
    }
    let srv = Server::start("pidreuse");
    let dir = std::env::temp_dir().join(format!("virtuos-pidreuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    child(
        "orphan",
        &srv.sock,
        &[("VIRTUOS_NET_TEST_DIR", dir.display().to_string())],
        None,
    );
    // The client process has exited (and been reaped): give its pid to a root process.
    let gone: i32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut holder = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (gone - 1).to_string()).unwrap();
        let c = Command::new("sleep").arg("30").spawn().unwrap();
        if c.id() as i32 == gone {
            holder = Some(c);
            break;
        }
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut holder = holder.expect("could not hand the pid to a root process in 50 tries");
    std::fs::write(dir.join("go"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Ok(r) = std::fs::read_to_string(dir.join("result")) {
            if r.ends_with('\n') {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned client did not report"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        got.trim(),
        format!("{:?}", Err::<u64, _>(e(libc::EACCES))),
        "bind(80) through the session of exited pid {gone}, now a root process's"
    );
}

#[test]
fn clone_and_adopt_share_sockets() {
    let srv = Server::start("clone");
    let a = srv.connect();
    let (l, addr) = a.listener();
    assert_eq!(l, 0);

    // fork: only a child of the creator may redeem.
    assert_eq!(a.prepare_clone(7), Err(e(libc::EINVAL)));
    let token = a.prepare_clone(0).unwrap();
    assert_ne!(token, 0);
    let b = srv.connect();
    assert_eq!(
        b.adopt(token),
        Err(e(libc::EPERM)),
        "not a child of the creator"
    );
    assert_eq!(b.adopt(12345), Err(e(libc::ENOENT)), "unknown token");
    // A queued connection, accepted by the child on the shared socket.
    let mut peer = native_peer(addr);
    child(
        "fork-child",
        &srv.sock,
        &[
            ("VIRTUOS_NET_TEST_TOKEN", token.to_string()),
            ("VIRTUOS_NET_TEST_HANDLE", l.to_string()),
            ("VIRTUOS_NET_TEST_PORT", addr.port().to_string()),
        ],
        None,
    );
    let mut buf = [0u8; 14];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the child");

    // exec: the same process adopts in a new session; both hold the one socket. B's own
    // sockets are replaced, and so closed: a native peer of one sees the end of the stream.
    let native = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let b0 = b.socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
    let b1 = b.socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    assert_eq!((b0, b1), (0, 1));
    assert_eq!(
        b.connect_to(b1, &sin_of(native.local_addr().unwrap())),
        Ok(0)
    );
    let (n, _) = native.accept().unwrap();
    n.set_read_timeout(Some(DEADLINE)).unwrap();
    let token = a.prepare_clone(1).unwrap();
    assert_eq!(b.adopt(token), Ok(1));
    assert_eq!(b.sockname(b1), Err(e(libc::EBADF)), "replaced");
    assert_eq!(
        (&n).read(&mut [0u8; 1]).map_err(|e| e.kind()),
        Ok(0),
        "B's replaced socket was closed"
    );
    assert_eq!(
        b.ready(b1),
        Readiness::default(),
        "and its readiness word cleared"
    );
    assert_eq!(b.adopt(token), Err(e(libc::ENOENT)), "one-time");
    assert_eq!(b.sockname(l).map(SocketAddr::V4), Ok(addr));
    let peer2 = native_peer(addr);
    wait_for("POLLIN in both sessions", || {
        a.ready(l).mask & POLLIN != 0 && b.ready(l).mask & POLLIN != 0
    });
    let (h, paddr, _) = b.accept(l, 0).unwrap();
    assert_eq!(
        SocketAddr::V4(parse_sin(&paddr)),
        peer2.local_addr().unwrap()
    );
    // Closing in one session leaves the socket open in the other.
    assert_eq!(a.close(l), Ok(0));
    assert_eq!(a.sockname(l), Err(e(libc::EBADF)));
    let _peer3 = native_peer(addr);
    let (h3, ..) = b.accept(l, 0).unwrap();
    assert_ne!(h3, h);
    // O_NONBLOCK is the open file's, shared as Linux shares it.
    let token = b.prepare_clone(1).unwrap();
    assert_eq!(a.adopt(token), Ok(3));
    assert_eq!(b.ioctl(l, libc::FIONBIO, 1), Ok(0));
    assert!(a.nonblocking(l));
    assert_eq!(a.accept(l, 0), Err(e(libc::EAGAIN)));
}

#[test]
fn binary_serves_until_sigterm_and_answers_waiting_calls() {
    let bin = env!("CARGO_BIN_EXE_virtuos-net");
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--netns", "--cpus", "--threads"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = Command::new(bin)
        .args([
            "--listen",
            "/nonexistent/dir/sock",
            "--netns",
            "no-such-netns",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-netns"), "{err}");

    let mut srv = Server::start("sigterm");
    let c = srv.connect();
    let (l, _) = c.listener();
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || {
            let mut lease = c.s.lease();
            lease.call(request(Opcode::Accept, [l, 0, 128, 0, 0], 128))
        })
    };
    std::thread::sleep(Duration::from_millis(100)); // let the Accept reach the server
    assert!(
        srv.terminate(),
        "virtuos-net did not exit cleanly on SIGTERM"
    );
    match join_within(waiter, "the accept waiting through shutdown") {
        Ok(r) => assert_eq!(r.into_result(), Err(e(libc::EIO)), "{r:?}"),
        Err(err) => assert_eq!(err.errno(), e(libc::EIO), "{err}"),
    }
    let err = c.s.call(request(Opcode::Nop, [0; 5], 0)).unwrap_err();
    assert_eq!(err.errno(), e(libc::EIO));
}
