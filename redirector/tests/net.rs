//! Real programs under `virtuos-redirect run --net` against a real `virtuos-net`, compared
//! with the same programs run natively: curl against Python's http.server, UDP echo, a
//! threaded TCP server with 64 connections, EINTR from a signal during a blocking accept, 16
//! forked children sharing a listener, nginx (with the storage domain) under wrk, a network
//! domain that dies under a program, and `run` without a network domain.
//!
//! The helper programs are the Python scripts in `tests/net/`. Needs the workspace's binaries
//! (`cargo build --workspace`); the nginx test also needs `nginx` and `wrk`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a domain server may take to start, or a server program to start listening.
const START: Duration = Duration::from_secs(60);
/// How long a helper program may run (the machine may be small and busy).
const LIMIT: Duration = Duration::from_secs(180);

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtuos-redirect"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A helper script in `tests/net/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/net")
        .join(name)
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("virtuos-net-redir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A domain server (`virtuos-net` or `virtuos-storage`), killed on drop.
struct Domain {
    child: Child,
    sock: PathBuf,
}

impl Domain {
    fn start(mut cmd: Command, sock: PathBuf) -> Domain {
        let child = cmd
            .arg("--listen")
            .arg(&sock)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Domain { child, sock };
        let deadline = Instant::now() + START;
        while !d.sock.exists() {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("{cmd:?} exited before serving: {st}");
            }
            assert!(Instant::now() < deadline, "{cmd:?} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// A `virtuos-net` listening in `dir`.
    fn net(dir: &Scratch) -> Domain {
        Domain::start(Command::new(bin("virtuos-net")), dir.path("net.sock"))
    }

    /// A `virtuos-storage` exporting `root`, listening in `dir`.
    fn storage(dir: &Scratch, root: &Path) -> Domain {
        let mut cmd = Command::new(bin("virtuos-storage"));
        cmd.arg("--root").arg(root);
        Domain::start(cmd, dir.path("storage.sock"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `virtuos-redirect run --net SOCK [--storage SOCK --mount PREFIX] -- prog`.
fn redirected(net: &Domain, storage: Option<(&Domain, &str)>, prog: &str) -> Command {
    let mut cmd = Command::new(bin("virtuos-redirect"));
    cmd.args(["run", "--net"]).arg(&net.sock);
    if let Some((s, mount)) = storage {
        cmd.arg("--storage").arg(&s.sock).args(["--mount", mount]);
    }
    cmd.arg("--")
        .arg(prog)
        .env("VIRTUOS_PRELOAD", bin("libvirtuos_preload.so"));
    cmd
}

/// A program with piped standard streams, in its own process group: everything it started
/// is killed on drop.
struct Running {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    chunks: mpsc::Receiver<Vec<u8>>,
    /// Standard output so far, and how much of it [`Running::line`] consumed.
    stdout: Vec<u8>,
    seen: usize,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// How a program ended.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Finished {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            self.out(),
            self.stderr
        )
    }
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let mut out = child.stdout.take().unwrap();
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        }));
        Running {
            what,
            stdin: child.stdin.take(),
            child,
            chunks,
            stdout: Vec::new(),
            seen: 0,
            stderr,
        }
    }

    /// Runs `cmd` to its end, within [`LIMIT`].
    fn output(cmd: Command) -> Finished {
        Running::spawn(cmd).finish(LIMIT)
    }

    /// The next line of standard output, without its newline.
    fn line(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.stdout[self.seen..].iter().position(|&b| b == b'\n') {
                let l = String::from_utf8_lossy(&self.stdout[self.seen..self.seen + i]);
                let l = l.into_owned();
                self.seen += i + 1;
                return l;
            }
            match self
                .chunks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(c) => self.stdout.extend_from_slice(&c),
                Err(e) => {
                    let f = self.kill_now();
                    panic!(
                        "{}: no line on stdout ({e:?}) within {limit:?}: {}",
                        self.what,
                        f.describe()
                    );
                }
            }
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends `sig` to the whole process group.
    fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) of the process group this test created (process_group(0)).
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }

    /// Fails the test with the program's stderr if it ended.
    fn check_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            let f = self.kill_now();
            panic!("{} ended early ({st}): {}", self.what, f.describe());
        }
    }

    /// Waits (within `limit`) for the program to end and its output to close; on timeout
    /// kills its process group and fails with what it printed.
    fn finish(mut self, limit: Duration) -> Finished {
        self.stdin.take();
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(c) => self.stdout.extend_from_slice(&c),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let f = self.kill_now();
                    panic!("{} hung (over {limit:?}): {}", self.what, f.describe());
                }
            }
        }
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let f = self.kill_now();
                panic!("{} hung (over {limit:?}): {}", self.what, f.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().unwrap();
        // Anything the program left running still has our stderr pipe open.
        self.signal_group(libc::SIGKILL);
        let stderr = self.stderr.take().unwrap().join().unwrap();
        Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Kills everything and collects what was printed so far.
    fn kill_now(&mut self) -> Finished {
        self.signal_group(libc::SIGKILL);
        let status = self.child.wait().unwrap();
        while let Ok(c) = self.chunks.recv_timeout(Duration::from_secs(2)) {
            self.stdout.extend_from_slice(&c);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A TCP port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`; `server` must keep running.
fn wait_listening(port: u16, server: &mut Running) {
    let deadline = Instant::now() + START;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        server.check_alive();
        if Instant::now() > deadline {
            let f = server.kill_now();
            panic!("nothing listens on port {port}: {}", f.describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the process holding the TCP socket listening on 127.0.0.1:`port` (from
/// /proc/net/tcp and the processes' fd tables).
fn listener_owner(port: u16) -> Option<u32> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        (local_port == port && f.get(3) == Some(&"0A")).then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let want = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

/// `curl -sS URL`, natively or redirected through `net`: the body's bytes.
fn curl(url: &str, net: Option<&Domain>) -> Vec<u8> {
    let mut cmd = match net {
        Some(n) => redirected(n, None, "curl"),
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "120", url]);
    let f = Running::output(cmd);
    assert!(
        f.status.success(),
        "curl {url} ({}): {}",
        if net.is_some() {
            "redirected"
        } else {
            "native"
        },
        f.stderr
    );
    f.stdout
}

/// Runs a helper script natively and redirected; both must succeed with the same stdout.
fn same_as_native(net: &Domain, name: &str, args: &[&str]) -> String {
    let mut cmd = redirected(net, None, "python3");
    cmd.arg(script(name)).args(args);
    let r = Running::output(cmd);
    let mut cmd = Command::new("python3");
    cmd.arg(script(name)).args(args);
    let n = Running::output(cmd);
    assert!(n.status.success(), "{name} natively: {}", n.describe());
    assert!(r.status.success(), "{name} redirected: {}", r.describe());
    assert_eq!(
        r.out(),
        n.out(),
        "{name}: output differs\nredirected: {}\nnative: {}",
        r.describe(),
        n.describe()
    );
    r.out()
}

#[test]
fn curl_against_http_server() {
    let dir = Scratch::new("http");
    let net = Domain::net(&dir);
    let www = dir.path("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    let files = [
        ("small.txt", b"hello from the network domain\n".to_vec()),
        ("sub/64k.bin", data(65536, 1)),
        ("1m.bin", data(1 << 20, 2)),
        ("odd.bin", data(1_234_567, 3)),
    ];
    for (name, bytes) in &files {
        std::fs::write(www.join(name), bytes).unwrap();
    }
    let port = free_port();
    let mut cmd = redirected(&net, None, "python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(&www);
    let mut server = Running::spawn(cmd);
    wait_listening(port, &mut server);
    assert_eq!(
        listener_owner(port),
        Some(net.pid()),
        "the listening socket is not held by virtuos-net"
    );
    for (name, bytes) in &files {
        let url = format!("http://127.0.0.1:{port}/{name}");
        let r = curl(&url, Some(&net));
        assert!(
            &r == bytes,
            "{url}: redirected curl got {} bytes, want {}",
            r.len(),
            bytes.len()
        );
        let n = curl(&url, None);
        assert!(
            &n == bytes,
            "{url}: native curl got {} bytes, want {}",
            n.len(),
            bytes.len()
        );
    }
    // A generated page (directory listing) and an error page: the same bytes either way.
    for path in ["", "sub/", "missing"] {
        let url = format!("http://127.0.0.1:{port}/{path}");
        let r = curl(&url, Some(&net));
        let n = curl(&url, None);
        assert_eq!(
            String::from_utf8_lossy(&r),
            String::from_utf8_lossy(&n),
            "{url}: redirected and native curl differ"
        );
    }
    server.check_alive();
}

#[test]
fn udp_echo() {
    let dir = Scratch::new("udp");
    let net = Domain::net(&dir);
    let pair = |net: Option<&Domain>| -> (String, String) {
        let cmd = |args: &[&str]| {
            let mut c = match net {
                Some(n) => redirected(n, None, "python3"),
                None => Command::new("python3"),
            };
            c.arg(script("udp_echo.py")).args(args);
            c
        };
        let mut server = Running::spawn(cmd(&["server"]));
        let port = server.line(START);
        let client = Running::output(cmd(&["client", &port]));
        assert!(client.status.success(), "udp client: {}", client.describe());
        let server = server.finish(LIMIT);
        assert!(server.status.success(), "udp server: {}", server.describe());
        let rest = server.out();
        (
            client.out(),
            rest.lines().skip(1).collect::<Vec<_>>().join("\n"),
        )
    };
    let r = pair(Some(&net));
    let n = pair(None);
    assert!(r.0.starts_with("client ok 3015168 "), "{r:?}");
    assert_eq!(r.1, "server echoed 100");
    assert_eq!(r, n, "redirected and native runs differ");
}

/// Ancillary data both ways: IP_PKTINFO, IP_RECVTOS/TTL, SO_TIMESTAMP, IPV6_RECVHOPLIMIT/
/// TCLASS/PKTINFO arrive as natively; IP_TOS/IP_TTL/IPV6_HOPLIMIT/IPV6_TCLASS given to sendmsg
/// act on the packet; MSG_CTRUNC exactly when the program's buffer is short; SCM_RIGHTS on an
/// internet socket is accepted and ignored, as Linux does.
#[test]
fn control_messages_as_native() {
    let dir = Scratch::new("cmsg");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "cmsg.py", &[]);
    assert!(
        out.contains("v4 got b'one' [(0, 1, '20'), (0, 2, '09000000')"),
        "{out}"
    );
    assert!(out.contains("v4 short b'three' 1 True"), "{out}");
}

/// An accepted connection's data, which the network domain receives ahead into a stream in
/// the program's shared memory, reads as natively: a burst larger than the stream (hash
/// kept), MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT and O_NONBLOCK (EAGAIN), FIONREAD, readiness
/// in select/poll/epoll (level and edge), zero-length reads and the end of the file, a reset
/// to a peer when closed with unread data, a peer's reset after its data (bytes, then
/// ECONNRESET, then the end), bytes that arrived before a fork read by the child, a recvmsg
/// with control room (which the server serves) in byte order, SO_RCVTIMEO, scatter reads,
/// a blocking read woken later, and two threads reading one connection. And sending through
/// the transmit stream of a non-blocking socket: a large send in partial writes, a close at
/// once after sending (nothing lost), a blocking send after non-blocking ones and a child's
/// send after a fork (both in order), ECONNRESET then EPIPE after the peer's reset.
#[test]
fn received_ahead_reads_as_native() {
    let dir = Scratch::new("streams");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "streams.py", &[]);
    assert!(out.contains("bulk 3145728 True"), "{out}");
    assert!(out.contains("fork child read b'before-fork'"), "{out}");
    assert!(
        out.contains("peer reset ok b'abc' error ECONNRESET ok b''"),
        "{out}"
    );
    assert!(out.contains("two readers 200000\n"), "{out}");
    assert!(out.contains("close after send 300000 True"), "{out}");
    assert!(
        out.contains("fork order b'parent-before-fork;child'"),
        "{out}"
    );
    assert!(
        out.contains("send after reset error ECONNRESET error EPIPE\ndone"),
        "{out}"
    );
}

/// sendmmsg/recvmmsg (glibc's resolver sends its A and AAAA queries with one sendmmsg): the
/// counts, lengths and bytes of a batch, MSG_WAITFORONE, and EAGAIN on an empty socket.
#[test]
fn mmsg_batches_as_native() {
    let dir = Scratch::new("mmsg");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "mmsg.py", &[]);
    assert!(out.contains("sendmmsg 5 [10, 20, 30, 40, 50]"), "{out}");
    assert!(out.contains("recvmmsg rest 2"), "{out}");
}

/// SCM_RIGHTS between unrelated processes: a listener, a connected socket (network domain), a
/// pipe and a file (storage domain when under the mount) sent over an AF_UNIX socket work in
/// the receiver as natively, and the listener closes with its last holder.
#[test]
fn remote_fds_pass_over_unix_sockets() {
    let dir = Scratch::new("pass");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "pass_fds.py", &["sender"]);
    assert!(
        out.contains("sender via listener: b'accepted by receiver\\n'"),
        "{out}"
    );
    assert!(out.contains("listener closed True"), "{out}");
    // With the file in the storage domain.
    const MOUNT: &str = "/virtuos-pass-test-mnt";
    let export = dir.path("export");
    std::fs::create_dir_all(&export).unwrap();
    let storage = Domain::storage(&dir, &export);
    let mut cmd = redirected(&net, Some((&storage, MOUNT)), "python3");
    cmd.arg(script("pass_fds.py")).args(["sender", MOUNT]);
    let r = Running::output(cmd);
    assert!(r.status.success(), "with storage: {}", r.describe());
    assert_eq!(r.out(), out, "with the file remote: {}", r.describe());
    assert_eq!(
        std::fs::read(export.join("file")).unwrap(),
        b"written by receiver\n"
    );
}

#[test]
fn remote_fds_pass_in_sendmmsg_and_recvmmsg() {
    let dir = Scratch::new("pass-mmsg");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "pass_fds_mmsg.py", &[]);
    assert!(
        out.contains("recvmmsg 2 [(b'listener', 1, 0), (b'connection', 1, 0)]")
            && out.contains("client got b'through the received listener\\n'")
            && out.contains("peer got b'through the received connection\\n'"),
        "{out}"
    );
}

#[test]
fn threaded_64_connections() {
    let dir = Scratch::new("threads");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "threaded_tcp.py", &[]);
    assert!(
        out.starts_with("ok 64 connections 12800 messages "),
        "{out}"
    );
}

#[test]
fn signal_interrupts_blocking_accept() {
    let dir = Scratch::new("signal");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "signal_accept.py", &[]);
    assert!(
        out.contains("accepted after the interruption: hello after EINTR HELLO AFTER EINTR"),
        "{out}"
    );
}

#[test]
fn fork_16_children_share_listener() {
    let dir = Scratch::new("fork");
    let net = Domain::net(&dir);
    let out = same_as_native(&net, "fork_listener.py", &[]);
    assert_eq!(out, "ok 64 replies\n");
}

/// Where a program is found in PATH (or the usual sbin directories).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn nginx_under_wrk() {
    let (Some(nginx), Some(wrk)) = (find_program("nginx"), find_program("wrk")) else {
        println!("skipping nginx_under_wrk: nginx or wrk is not installed");
        return;
    };
    const MOUNT: &str = "/virtuos-net-test-mnt";
    let dir = Scratch::new("nginx");
    let net = Domain::net(&dir);
    let export = dir.path("export");
    let www = dir.path("www");
    let sizes = [("1k", 1024), ("16k", 16 << 10), ("1m", 1 << 20)];
    for d in [&export, &www] {
        std::fs::create_dir_all(d).unwrap();
    }
    for (i, (name, len)) in sizes.iter().enumerate() {
        // Different bytes in the two trees: /s/ must come from the storage domain.
        std::fs::write(www.join(name), data(*len, 10 + i as u32)).unwrap();
        std::fs::write(export.join(name), data(*len, 20 + i as u32)).unwrap();
    }
    let storage = Domain::storage(&dir, &export);
    let port = free_port();
    let d = dir.0.display();
    let conf = format!(
        "worker_processes 2;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ use epoll; worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location /s/ {{ alias {MOUNT}/; }}
    }}
}}
",
        www = www.display()
    );
    std::fs::write(dir.path("nginx.conf"), conf).unwrap();
    let mut cmd = redirected(&net, Some((&storage, MOUNT)), nginx.to_str().unwrap());
    cmd.arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(dir.path("nginx.conf"))
        .arg("-e")
        .arg(dir.path("error.log"));
    let mut server = Running::spawn(cmd);
    wait_listening(port, &mut server);
    assert!(
        !Path::new(MOUNT).exists(),
        "{MOUNT} exists locally: nginx escaped redirection"
    );
    assert_eq!(
        listener_owner(port),
        Some(net.pid()),
        "the listening socket is not held by virtuos-net"
    );
    let error_log = || std::fs::read_to_string(dir.path("error.log")).unwrap_or_default();
    for (i, (name, len)) in sizes.iter().enumerate() {
        for (prefix, seed) in [("", 10), ("s/", 20)] {
            let url = format!("http://127.0.0.1:{port}/{prefix}{name}");
            let got = curl(&url, None);
            assert!(
                got == data(*len, seed + i as u32),
                "{url}: got {} bytes, want {len}\nerror.log:\n{}",
                got.len(),
                error_log()
            );
        }
    }
    for target in ["16k", "s/16k"] {
        let url = format!("http://127.0.0.1:{port}/{target}");
        let mut cmd = Command::new(&wrk);
        cmd.args(["-t2", "-c16", "-d3s", &url]);
        let w = Running::output(cmd);
        let out = w.out();
        assert!(w.status.success(), "wrk: {}", w.describe());
        let requests: u64 = out
            .lines()
            .find_map(|l| {
                l.split_once(" requests in ")
                    .map(|(n, _)| n.trim().to_owned())
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in wrk's output:\n{out}"));
        assert!(requests > 0, "wrk made no requests:\n{out}");
        assert!(
            !out.contains("Socket errors") && !out.contains("Non-2xx"),
            "wrk saw errors against {url}:\n{out}\nerror.log:\n{}",
            error_log()
        );
        println!("wrk {url}: {requests} requests in 3 s");
    }
    server.check_alive();
    // A graceful stop: SIGQUIT to the master (its pid from the pid file).
    let master: i32 = std::fs::read_to_string(dir.path("nginx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the nginx master this test started (still running: checked above).
    unsafe { libc::kill(master, libc::SIGQUIT) };
    let f = server.finish(Duration::from_secs(60));
    let log = error_log();
    assert!(
        f.status.success(),
        "nginx: {}\nerror.log:\n{log}",
        f.describe()
    );
    for bad in ["[emerg]", "[alert]", "[crit]"] {
        assert!(!log.contains(bad), "nginx logged {bad}:\n{log}");
    }
}

/// CPU time (utime + stime, clock ticks) of every process whose command line contains `key`.
fn cpu_ticks_of(key: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(key)
        {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
            // Fields after the ")" of the command: utime and stime are the 12th and 13th.
            if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn http_server_idles_after_its_domain_died() {
    // With no supervisor to restart it, a killed network domain leaves a redirected
    // http.server with a listener that looks idle: it waits, using (almost) no CPU, instead
    // of spinning on a listener that keeps reporting an error.
    let dir = Scratch::new("idle");
    let mut net = Domain::net(&dir);
    let port = free_port();
    let mut cmd = redirected(&net, None, "python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    let mut server = Running::spawn(cmd);
    wait_listening(port, &mut server);
    assert!(!curl(&format!("http://127.0.0.1:{port}/"), None).is_empty());
    net.kill();
    std::thread::sleep(Duration::from_millis(500));
    let key = format!("http.server {port}");
    let t0 = cpu_ticks_of(&key);
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_ticks_of(&key) - t0;
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let percent = used * 100 / (5 * hz);
    println!("http.server after its domain died: {used} ticks in 5 s ({percent}% of a CPU)");
    let f = server.kill_now();
    assert!(
        percent < 5,
        "a redirected http.server used {percent}% of a CPU over 5 s after its domain died: {}",
        f.describe()
    );
}

#[test]
fn dead_network_domain_fails_fast() {
    let dir = Scratch::new("dead");
    let mut net = Domain::net(&dir);
    let mut cmd = redirected(&net, None, "python3");
    cmd.arg(script("dead_domain.py"));
    let mut prog = Running::spawn(cmd);
    assert_eq!(prog.line(START), "ready");
    net.kill();
    prog.send("go\n");
    let f = prog.finish(Duration::from_secs(60));
    assert!(f.status.success(), "{}", f.describe());
    let out = f.out();
    // The dead domain's listener is idle: a timed accept times out, a non-blocking one
    // says EAGAIN at once.
    assert!(
        out.contains("accept: timeout ms=") && out.contains("accept nonblocking: EAGAIN ms="),
        "the listener of a dead domain must look idle: {}",
        f.describe()
    );
    for call in ["send", "recv"] {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{call}: ")))
            .unwrap_or_else(|| panic!("no result for {call}: {}", f.describe()));
        let (err, ms) = line
            .split_once(" ms=")
            .unwrap_or_else(|| panic!("{call} did not fail: {}", f.describe()));
        assert!(
            err == "ECONNRESET" || err == "EIO",
            "{call} failed with {err}: {}",
            f.describe()
        );
        let ms: u64 = ms.parse().unwrap();
        assert!(ms < 2000, "{call} took {ms} ms to fail: {}", f.describe());
    }
    assert!(
        out.contains("local file: local\nclosed\n"),
        "{}",
        f.describe()
    );
}

#[test]
fn run_net_refuses_missing_domain() {
    let o = Command::new(bin("virtuos-redirect"))
        .args(["run", "--net", "/nonexistent.sock", "--", "true"])
        .env("VIRTUOS_PRELOAD", bin("libvirtuos_preload.so"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "run started without a network domain");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("network domain at /nonexistent.sock"),
        "stderr does not name the network domain: {err}"
    );
}
