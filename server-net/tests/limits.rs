//! No client can stop the network domain or starve the others: the real `virtuos-net` binary,
//! an unprivileged client (uid 65534, in a child process of this test binary) exhausting what it
//! may, and a root client served beside it.
//!
//! * 20,000 sockets asked for by uid 65534: its budget (3/4 of the server's fd limit) answers
//!   the rest with EMFILE, the server holds one fd per socket, and root is served.
//! * The server's process out of descriptors (budgets lifted): a new client waits instead of
//!   killing the acceptor, and is served once descriptors free up.
//! * 50 connections that never say hello do not delay a root client's session.
//!
//! Run as root (the tests switch uids); otherwise each test says why it skips.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use abi::{Errno, Opcode, Request};
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, Session};

/// Sockets uid 65534 asks for.
const SOCKETS: usize = 20_000;
/// The server's fd limit (hard; started with a soft limit of 1024, which it must raise).
const SERVER_NOFILE: u64 = 20_000;
/// A test still running after this long is hung: its server is killed.
const WATCHDOG: Duration = Duration::from_secs(240);
const NOBODY: u32 = 65534;

type R<T> = Result<T, Errno>;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip(why: &str) -> bool {
    eprintln!("SKIPPED: {why}");
    true
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn getrlimit() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a valid rlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    (l.rlim_cur, l.rlim_max)
}

fn setrlimit(cur: u64, max: u64) -> std::io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `l` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes sure this process's hard fd limit (inherited by the unprivileged child) is at least
/// `want`, raising it as root if need be; `Err` says why it cannot be.
fn ensure_hard_limit(want: u64) -> Result<(), String> {
    let (cur, max) = getrlimit();
    if max >= want {
        return Ok(());
    }
    setrlimit(cur, want)
        .map_err(|e| format!("the hard RLIMIT_NOFILE is {max} and cannot be raised to {want}: {e}"))
}

/// A `virtuos-net` process on a socket in a scratch directory, its log in a file.
struct Server {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    watchdog: Option<mpsc::Sender<()>>,
}

impl Server {
    /// Starts the server with `args`, its RLIMIT_NOFILE set to (`soft`, `hard`).
    fn start(name: &str, args: &[&str], soft: u64, hard: u64) -> Server {
        let dir =
            std::env::temp_dir().join(format!("virtuos-net-limits-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let sock = dir.join("sock");
        let log = dir.join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_virtuos-net"));
        cmd.arg("--listen")
            .arg(&sock)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || setrlimit(soft, hard));
        }
        let child = cmd.spawn().expect("start virtuos-net");
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!("watchdog: still running after {WATCHDOG:?}; killing virtuos-net {pid}");
                // SAFETY: kill(2) of our own child, not reaped while the Server lives.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut s = Server {
            child,
            dir,
            sock,
            log,
            watchdog: Some(tx),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while connect_session(&s.sock, &small()).is_err() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("virtuos-net exited before serving: {st}\n{}", s.log());
            }
            assert!(Instant::now() < deadline, "virtuos-net did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn assert_alive(&mut self, when: &str) {
        assert!(
            self.alive(),
            "virtuos-net died {when}: {:?}\n{}",
            self.child.try_wait(),
            self.log()
        );
        assert!(self.sock.exists(), "socket file gone {when}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Descriptors the server holds now.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The server's soft RLIMIT_NOFILE, from /proc.
    fn soft_limit(&self) -> u64 {
        let l = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = l.lines().find(|l| l.starts_with("Max open files")).unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

/// A light session: few channels, small windows (20,000 sockets need two sessions).
fn small() -> ClientConfig {
    ClientConfig {
        channels: 2,
        window: 16 << 10,
        ..ClientConfig::default()
    }
}

struct Client {
    s: Session,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        Client {
            s: connect_session(sock, &small()).unwrap_or_else(|e| panic!("session: {e}")),
        }
    }

    fn call(&self, op: Opcode, args: [u64; 5], input: &[u8], room: usize) -> (R<u64>, Vec<u8>) {
        let mut l = self.s.lease();
        l.write(0, input).unwrap();
        let r = l
            .call(Request {
                opcode: op as u16,
                data_off: 0,
                data_len: input.len().max(room) as u32,
                args,
                ..Request::default()
            })
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let mut buf = vec![0u8; r.data_len as usize];
        l.read(0, &mut buf).unwrap();
        (r.into_result(), buf)
    }

    fn nop(&self) -> R<u64> {
        self.call(Opcode::Nop, [7, 0, 0, 0, 0], &[], 0).0
    }

    fn socket(&self) -> R<u64> {
        let a = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0];
        self.call(Opcode::Socket, a, &[], 0).0
    }

    fn close(&self, h: u64) -> R<u64> {
        self.call(Opcode::Close, [h, 0, 0, 0, 0], &[], 0).0
    }
}

fn sin(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[2..4].copy_from_slice(&port.to_be_bytes());
    b[4..8].copy_from_slice(&ip.octets());
    b
}

/// Root's calls: probes, 100 sockets, a TCP listener accepting a native connection and
/// sending through it (io_uring). Returns how long the whole took.
fn root_is_served(sock: &Path) -> Duration {
    let t = Instant::now();
    let c = Client::connect(sock);
    assert_eq!(c.nop(), Ok(7));
    let hs: Vec<u64> = (0..100)
        .map(|i| {
            c.socket()
                .unwrap_or_else(|e| panic!("root's socket {i}: {e:?}"))
        })
        .collect();
    let l = hs[0];
    let addr = sin(Ipv4Addr::LOCALHOST, 0);
    let a = [l, 0, 0, 0, addr.len() as u64];
    assert_eq!(c.call(Opcode::Bind, a, &addr, 0).0, Ok(0));
    assert_eq!(c.call(Opcode::Listen, [l, 8, 0, 0, 0], &[], 0).0, Ok(0));
    let (r, name) = c.call(Opcode::GetSockName, [l, 0, 0, 128, 0], &[], 128);
    assert_eq!(r.map(|n| n >= 8), Ok(true));
    let port = u16::from_be_bytes([name[2], name[3]]);
    let mut peer = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).unwrap();
    let (r, _) = c.call(Opcode::Accept, [l, 0, 128, 0, 0], &[], 128);
    let conn = r.expect("root's accept");
    let (r, _) = c.call(Opcode::Send, [conn, 0, 0, 0, 4], b"ping", 0);
    assert_eq!(r, Ok(4));
    let mut got = [0u8; 4];
    std::io::Read::read_exact(&mut peer, &mut got).unwrap();
    assert_eq!(&got, b"ping");
    peer.write_all(b"pong").unwrap();
    let (r, b) = c.call(
        Opcode::Recv,
        [conn, libc::MSG_WAITALL as u64, 4, 0, 0],
        &[],
        4,
    );
    assert_eq!((r, &b[..4]), (Ok(4), &b"pong"[..]));
    for h in hs.into_iter().chain([conn]) {
        assert_eq!(c.close(h), Ok(0));
    }
    t.elapsed()
}

/// The unprivileged half, run as uid 65534 in a child process of this test binary.
struct Nobody {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Nobody {
    /// Starts the child with `role`: `sockets:N` asks for N sockets, `fill` until EMFILE.
    fn start(sock: &Path, role: &str) -> Nobody {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_role",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("VIRTUOS_LIMITS_ROLE", role)
            .env("VIRTUOS_LIMITS_SOCK", sock)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the unprivileged child");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Nobody {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the child reports (`key=value` words after `REPORT`).
    fn report(&mut self) -> Vec<(String, String)> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "the child ended without a report: {:?}",
                self.child.wait()
            );
            // libtest may have begun the line ("test child_role ... ").
            if let Some(at) = line.find("REPORT ") {
                return line[at + 7..]
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
        }
    }

    fn command(&mut self, c: &str) -> Vec<(String, String)> {
        writeln!(self.stdin.as_mut().unwrap(), "{c}").unwrap();
        self.report()
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the unprivileged child failed: {st}");
    }
}

fn get(r: &[(String, String)], k: &str) -> usize {
    r.iter()
        .find(|(key, _)| key == k)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {k} in {r:?}"))
}

/// The client halves run as uid 65534; a no-op in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var("VIRTUOS_LIMITS_ROLE") else {
        return;
    };
    let sock = PathBuf::from(std::env::var("VIRTUOS_LIMITS_SOCK").unwrap());
    // The client's own fd limit at its hard limit, as a program that wants many sockets sets it.
    let (_, hard) = getrlimit();
    setrlimit(hard, hard).unwrap();
    if let Some(n) = role.strip_prefix("sessions:") {
        // As many sessions as the server lets this uid have, of `n` asked for.
        let mut kept = Vec::new();
        let mut full = 0;
        for _ in 0..n.parse().unwrap() {
            match connect_session(&sock, &small()) {
                Ok(s) => kept.push(s),
                Err(xen_transport::control::ConnectError::Full { .. }) => full += 1,
                Err(e) => panic!("session: {e}"),
            }
        }
        println!("REPORT ok={} full={full}", kept.len());
        // Hold them until the test is done.
        for _ in std::io::stdin().lock().lines() {}
        return;
    }
    let sessions: Vec<Client> = (0..2).map(|_| Client::connect(&sock)).collect();
    let mut open: Vec<(usize, u64)> = Vec::new();
    // Asks for up to `n` sockets (0: until the first EMFILE), spread over both sessions.
    let ask = |open: &mut Vec<(usize, u64)>, n: usize| {
        let t = Instant::now();
        let (mut ok, mut emfile, mut other, mut first) = (0usize, 0usize, 0usize, None);
        let mut i = 0;
        while n == 0 || i < n {
            let s = i % 2;
            match sessions[s].socket() {
                Ok(h) => {
                    ok += 1;
                    open.push((s, h));
                }
                Err(e) if e == Errno::EMFILE => {
                    emfile += 1;
                    first.get_or_insert(i);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("socket {i}: {e:?}");
                    other += 1;
                }
            }
            i += 1;
        }
        println!(
            "REPORT ok={ok} emfile={emfile} other={other} first_emfile={} ms={} limit={hard}",
            first.unwrap_or(usize::MAX),
            t.elapsed().as_millis()
        );
    };
    match role.split_once(':') {
        Some(("sockets", n)) => ask(&mut open, n.parse().unwrap()),
        _ if role == "fill" => ask(&mut open, 0),
        _ => panic!("unknown role {role}"),
    }
    // Commands from the test: `close N`, `open N`, `nop`; end of input ends the child.
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let (cmd, n) = line.split_once(' ').unwrap_or((&line, "0"));
        let n: usize = n.parse().unwrap();
        match cmd {
            "close" => {
                let mut closed = 0;
                for _ in 0..n {
                    if let Some((s, h)) = open.pop() {
                        assert_eq!(sessions[s].close(h), Ok(0));
                        closed += 1;
                    }
                }
                println!("REPORT closed={closed}");
            }
            "open" => ask(&mut open, n),
            "session" => {
                let s = Client::connect(&sock);
                let ok = s.nop() == Ok(7);
                let errno = match s.socket() {
                    Ok(h) => {
                        s.close(h).unwrap();
                        0
                    }
                    Err(e) => e.get(),
                };
                println!("REPORT session_ok={} socket_errno={errno}", usize::from(ok));
            }
            "nop" => {
                let ok = sessions.iter().filter(|s| s.nop() == Ok(7)).count();
                println!("REPORT nop_ok={ok}");
            }
            _ => panic!("unknown command {line}"),
        }
    }
}

#[test]
fn one_uid_cannot_exhaust_the_server_and_root_is_served() {
    if !is_root() {
        skip("needs root (switches the client to uid 65534)");
        return;
    }
    if let Err(why) = ensure_hard_limit(SOCKETS as u64) {
        skip(&format!("{SOCKETS} sockets: {why}"));
        return;
    }
    let mut srv = Server::start("budget", &[], 1024, SERVER_NOFILE);
    let limit = srv.soft_limit();
    println!("server RLIMIT_NOFILE soft limit after start: {limit} (started with 1024)");
    assert_eq!(
        limit, SERVER_NOFILE,
        "the server raises its soft limit to the hard limit"
    );
    let budget = (SERVER_NOFILE as usize / 4) * 3;
    let base = srv.fds();

    let mut nobody = Nobody::start(&srv.sock, &format!("sockets:{SOCKETS}"));
    let r = nobody.report();
    let (ok, emfile, other) = (get(&r, "ok"), get(&r, "emfile"), get(&r, "other"));
    let held = srv.fds() - base;
    println!(
        "uid 65534 asked for {SOCKETS} sockets (its RLIMIT_NOFILE {}): {ok} created, {emfile} EMFILE \
         (first at #{}), {other} other errors, in {} ms; its budget {budget}; server fds {base} -> {} \
         ({held} for uid 65534: {:.3} per socket)",
        get(&r, "limit"),
        get(&r, "first_emfile"),
        get(&r, "ms"),
        srv.fds(),
        held as f64 / ok.max(1) as f64
    );
    assert_eq!(other, 0, "every refusal is EMFILE");
    assert_eq!(ok + emfile, SOCKETS);
    assert!(
        ok <= budget && ok + 64 >= budget,
        "uid 65534 got {ok} sockets; its budget is {budget}"
    );
    assert!(
        held <= ok + 16,
        "the server holds {held} fds for {ok} sockets: more than one per socket"
    );
    srv.assert_alive("after uid 65534 exhausted its budget");

    let t = root_is_served(&srv.sock);
    println!("root served beside it (session, 100 sockets, TCP round trip) in {t:?}");
    srv.assert_alive("after root's calls");
    // A new session of the exhausted uid is served too; its sockets get EMFILE.
    let r = nobody.command("session");
    println!("a new session of uid 65534 at its budget: {r:?}");
    assert_eq!(get(&r, "session_ok"), 1);
    assert_eq!(get(&r, "socket_errno"), libc::EMFILE as usize);
    // Closing frees the budget: as many sockets again.
    assert_eq!(get(&nobody.command("close 1000"), "closed"), 1000);
    let again = nobody.command("open 1000");
    println!(
        "after closing 1000: {} of 1000 created again",
        get(&again, "ok")
    );
    assert_eq!(get(&again, "ok"), 1000);
    assert_eq!(get(&nobody.command("nop"), "nop_ok"), 2);
    nobody.finish();
    // Everything of the client's is released once it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.fds() > base + 2 {
        assert!(
            Instant::now() < deadline,
            "server fds {} after the client left (baseline {base})",
            srv.fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("server fds back to {} (baseline {base})", srv.fds());
    srv.assert_alive("at the end");
}

#[test]
fn a_server_out_of_descriptors_keeps_accepting() {
    if !is_root() {
        skip("needs root (switches the client to uid 65534)");
        return;
    }
    // Budgets lifted, a small fd limit: uid 65534 can take every descriptor of the process.
    let mut srv = Server::start("emfile", &["--max-handles-per-uid", "1000000"], 1024, 1024);
    let mut nobody = Nobody::start(&srv.sock, "fill");
    let r = nobody.report();
    println!(
        "uid 65534 filled the server: {} sockets, then EMFILE ({} errors); server fds {}",
        get(&r, "ok"),
        get(&r, "emfile"),
        srv.fds()
    );
    assert_eq!(get(&r, "emfile"), 1, "the fill stops at the first EMFILE");
    assert!(get(&r, "ok") > 900, "{r:?}");
    // A new client now: the server cannot accept it yet, and must not die of it.
    let sock = srv.sock.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = connect_session(&sock, &small()).map(|s| {
            let c = Client { s };
            c.nop()
        });
        let _ = tx.send((r.map_err(|e| e.to_string()), t.elapsed()));
    });
    std::thread::sleep(Duration::from_millis(500));
    srv.assert_alive("with its descriptors exhausted and a client connecting");
    let waiting = rx.try_recv();
    println!("new client after 500 ms with the server out of fds: {waiting:?}");
    let log = srv.log();
    assert!(
        log.contains("accepting a client failed"),
        "the accept failed with EMFILE and was logged: {log}"
    );
    let warnings = log.matches("accepting a client failed").count();
    println!("accept-failure warnings logged in 500 ms: {warnings} (rate-limited: one a second)");
    assert!(warnings <= 3, "the warning is rate-limited");
    // Free some descriptors: the waiting client is served.
    let t = Instant::now();
    assert_eq!(get(&nobody.command("close 50"), "closed"), 50);
    let (r, total) = match waiting {
        Ok(x) => x,
        Err(_) => rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiting client is served once fds free up"),
    };
    println!(
        "waiting client served {:?} after 50 fds were freed ({total:?} after it connected): {r:?}",
        t.elapsed()
    );
    assert_eq!(r, Ok(Ok(7)));
    srv.assert_alive("after serving the waiting client");
    assert_eq!(get(&nobody.command("nop"), "nop_ok"), 2);
    nobody.finish();
    root_is_served(&srv.sock);
    srv.assert_alive("at the end");
}

/// Connects `n` raw clients that never say hello.
fn silent_clients(sock: &Path, n: usize) -> Vec<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(sock).unwrap();
    (0..n)
        .map(|_| {
            let fd = socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            connect(fd.as_raw_fd(), &addr).unwrap();
            fd
        })
        .collect()
}

/// Session and first reply for a new client.
fn first_reply(sock: &Path) -> Duration {
    let t = Instant::now();
    let c = Client::connect(sock);
    assert_eq!(c.nop(), Ok(7));
    t.elapsed()
}

#[test]
fn silent_clients_delay_nobody() {
    let mut srv = Server::start("silent", &[], 1024, 4096);
    let idle = first_reply(&srv.sock);
    let silent = silent_clients(&srv.sock, 50);
    let t = first_reply(&srv.sock);
    println!(
        "first reply of a new client: {idle:?} idle, {t:?} behind 50 silent connections (target 50 ms)"
    );
    assert!(
        t < Duration::from_millis(500),
        "a new client waited {t:?} behind 50 silent ones"
    );
    // A silent connection gets nothing but a hang-up once its hello is overdue.
    let t = Instant::now();
    let mut p = libc::pollfd {
        fd: silent[0].as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut p, 1, 10_000) };
    let mut buf = [0u8; 64];
    // SAFETY: a plain read into a stack buffer (the socket is readable or hung up).
    let n = (ready == 1)
        .then(|| unsafe { libc::read(silent[0].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) });
    println!(
        "silent connection closed by the server after {:?} (read {n:?})",
        t.elapsed()
    );
    assert_eq!(
        n,
        Some(0),
        "the server hangs up on a client whose hello is overdue"
    );
    srv.assert_alive("after the silent clients");
    drop(silent);
}

#[test]
fn help_documents_the_budgets() {
    let out = Command::new(env!("CARGO_BIN_EXE_virtuos-net"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--max-sessions-per-uid",
        "--max-handles-per-uid",
        "Root (uid 0)",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn one_uid_cannot_take_every_session() {
    if !is_root() {
        skip("needs root (switches the client to uid 65534)");
        return;
    }
    let mut srv = Server::start("sessions", &["--max-sessions-per-uid", "3"], 1024, 4096);
    let mut nobody = Nobody::start(&srv.sock, "sessions:5");
    let r = nobody.report();
    println!("uid 65534 asked for 5 sessions with --max-sessions-per-uid 3: {r:?}");
    assert_eq!((get(&r, "ok"), get(&r, "full")), (3, 2));
    // Root (exempt) and the server are fine.
    let t = first_reply(&srv.sock);
    let more: Vec<Client> = (0..5).map(|_| Client::connect(&srv.sock)).collect();
    println!("root's session beside them: first reply in {t:?}; 5 more root sessions started");
    drop(more);
    srv.assert_alive("after the session budget was reached");
    nobody.finish();
}
