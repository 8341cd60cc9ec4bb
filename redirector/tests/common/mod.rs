//! Scaffolding for the integration tests that run real programs under `virtuos-redirect run
//! --net` against a real `virtuos-net`: scratch directories, domain servers, programs with
//! piped output in their own process group, ports, and what `virtuos-net` still holds.
//!
//! A copy of what `tests/net.rs` uses, plus helpers of its own; used by `tests/descend.rs`.
// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a domain server may take to start, or a server program to start listening.
pub const START: Duration = Duration::from_secs(30);
/// How long a helper program may run (the machine may be small and busy).
pub const LIMIT: Duration = Duration::from_secs(60);
/// How long `virtuos-net` may take to close the sockets of a program that ended or closed
/// them (a close travels from the shim to the domain asynchronously).
pub const RELEASE: Duration = Duration::from_secs(3);

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtuos-redirect"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A workspace binary (or the preload library), which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Where a program is found in PATH (or the usual sbin directories).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether all of `programs` are installed; prints why `test` is skipped when not.
pub fn have(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    println!("skipping {test}: not installed: {}", missing.join(", "));
    false
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after the test binary's pid and `name`.
    pub fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("virtuos-descend-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A domain server (`virtuos-net`), killed on drop.
pub struct Domain {
    child: Child,
    /// Where it listens for sessions.
    pub sock: PathBuf,
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
    pub fn net(dir: &Scratch) -> Domain {
        Domain::start(Command::new(bin("virtuos-net")), dir.path("net.sock"))
    }

    /// A `virtuos-net` listening in `dir`, serving in network namespace `netns`.
    pub fn net_in(dir: &Scratch, netns: &str) -> Domain {
        let mut cmd = Command::new(bin("virtuos-net"));
        cmd.args(["--netns", netns]);
        Domain::start(cmd, dir.path("net-ns.sock"))
    }

    /// A `virtuos-storage` exporting `root`, listening in `dir`.
    pub fn storage(dir: &Scratch, root: &Path) -> Domain {
        let mut cmd = Command::new(bin("virtuos-storage"));
        cmd.arg("--root").arg(root);
        Domain::start(cmd, dir.path("storage.sock"))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test if the domain server died.
    pub fn check_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("virtuos-net died: {st}");
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `virtuos-redirect run --net SOCK -- prog`.
pub fn redirected(net: &Domain, prog: &str) -> Command {
    let mut cmd = Command::new(bin("virtuos-redirect"));
    cmd.args(["run", "--net"])
        .arg(&net.sock)
        .arg("--")
        .arg(prog)
        .env("VIRTUOS_PRELOAD", bin("libvirtuos_preload.so"));
    cmd
}

/// `prog` run natively (`None`) or redirected through `net`.
pub fn program(net: Option<&Domain>, prog: &str) -> Command {
    match net {
        Some(n) => redirected(n, prog),
        None => Command::new(prog),
    }
}

/// "redirected" or "native", for messages.
pub fn how(net: Option<&Domain>) -> &'static str {
    if net.is_some() {
        "redirected"
    } else {
        "native"
    }
}

/// A program with piped standard streams, in its own process group: everything it started
/// (that stayed in the group) is killed on drop.
pub struct Running {
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
pub struct Finished {
    /// Its wait status.
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: String,
}

impl Finished {
    /// Standard output as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Status and both outputs, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            self.out(),
            self.stderr
        )
    }
}

impl Running {
    /// Starts `cmd` with piped standard streams in a process group of its own.
    pub fn spawn(mut cmd: Command) -> Running {
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
    pub fn output(cmd: Command) -> Finished {
        Running::spawn(cmd).finish(LIMIT)
    }

    /// The pid of the program.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The next line of standard output, without its newline.
    pub fn line(&mut self, limit: Duration) -> String {
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

    /// Writes `text` to the program's standard input.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends `sig` to the whole process group.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) of the process group this test created (process_group(0)).
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }

    /// Fails the test with the program's stderr if it ended.
    pub fn check_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            let f = self.kill_now();
            panic!("{} ended early ({st}): {}", self.what, f.describe());
        }
    }

    /// Waits (within `limit`) for the program to end and its output to close; on timeout
    /// kills its process group and fails with what it printed.
    pub fn finish(mut self, limit: Duration) -> Finished {
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
    pub fn kill_now(&mut self) -> Finished {
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
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`; `server` must keep running.
pub fn wait_listening(port: u16, server: &mut Running) {
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
pub fn listener_owner(port: u16) -> Option<u32> {
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

/// Asserts that `virtuos-net` holds the listener on 127.0.0.1:`port` (seen both in /proc and
/// by [`sockets_held`], which so is checked to see what it must).
pub fn assert_net_listens(net: &Domain, port: u16) {
    assert_eq!(
        listener_owner(port),
        Some(net.pid()),
        "the socket listening on port {port} is not held by virtuos-net (pid {})",
        net.pid()
    );
    let held = sockets_held(net.pid(), &[port]);
    assert!(
        held.iter().any(|l| l.starts_with("LISTEN")),
        "ss -tanp does not show virtuos-net (pid {}) listening on port {port}: {held:?}",
        net.pid()
    );
}

/// The TCP sockets (lines of `ss -tanp`) that process `pid` holds with a local or peer port
/// in `ports` (any port when `ports` is empty). A socket in TIME-WAIT belongs to no process,
/// so it is never listed.
pub fn sockets_held(pid: u32, ports: &[u16]) -> Vec<String> {
    let out = Command::new("ss")
        .arg("-tanp")
        .output()
        .unwrap_or_else(|e| panic!("running ss -tanp: {e}"));
    assert!(out.status.success(), "ss -tanp: {out:?}");
    let owner = format!("pid={pid},");
    let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.contains(&owner))
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            ports.is_empty()
                || f.get(3..5).is_some_and(|addrs| {
                    addrs
                        .iter()
                        .any(|a| port_of(a).is_some_and(|p| ports.contains(&p)))
                })
        })
        .map(str::to_owned)
        .collect()
}

/// Asserts that, within [`RELEASE`], `virtuos-net` holds no listener or connection of
/// `ports` (of any port when `ports` is empty).
pub fn assert_released(net: &mut Domain, ports: &[u16]) {
    net.check_alive();
    let deadline = Instant::now() + RELEASE;
    loop {
        let left = sockets_held(net.pid(), ports);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "virtuos-net (pid {}) still holds sockets of ports {ports:?} {RELEASE:?} after \
             the test's programs closed them:\n{}",
            net.pid(),
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
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

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (everything after the header, up to the end of the connection).
    pub body: Vec<u8>,
}

/// `GET path` over a fresh HTTP/1.0 connection to 127.0.0.1:`port` (closed by the server
/// after the response), within `limit`.
pub fn http_get(port: u16, path: &str, limit: Duration) -> std::io::Result<Response> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{what} in a response of {} bytes: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ),
        )
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of header"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(Response {
        status,
        body: raw[end + 4..].to_vec(),
    })
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped).
pub fn process_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits up to `limit` for `cond`; false if it did not become true.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pid read from a pid file, if the file is there and holds one.
pub fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Sends `sig` to process `pid` (one this test started).
pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory arguments; the pid is a process this test started.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The processes descended from `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let p: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                    Some((p, ppid.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    found.remove(0);
    found
}
