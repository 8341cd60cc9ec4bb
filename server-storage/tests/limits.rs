//! No client can stop the storage domain or starve the others: the real `virtuos-storage`
//! binary, an unprivileged client (uid 65534, in a child process of this test binary)
//! exhausting what it may, and a root client served beside it.
//!
//! * One file opened 20,000 times by uid 65534: its budget (3/4 of the server's fd limit)
//!   answers the rest with EMFILE, and root's calls are served.
//! * The server's process out of descriptors (budgets lifted): a new client waits instead of
//!   killing the acceptor, and is served once descriptors free up.
//! * 50 connections that never say hello do not delay root's `cat a.txt`.
//!
//! Run as root (the tests switch uids and the server acts as each client); otherwise each test
//! says why it skips.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use abi::Errno;
use common::{is_root, set_mode, Client, Scratch};
use xen_transport::control::connect_session;
use xen_transport::ClientConfig;

/// Opens of one file by uid 65534.
const OPENS: usize = 20_000;
/// The server's fd limit (hard; started with a soft limit of 1024, which it must raise).
const SERVER_NOFILE: u64 = 20_000;
/// A test still running after this long is hung: its server is killed.
const WATCHDOG: Duration = Duration::from_secs(240);
const NOBODY: u32 = 65534;
const CONTENT: &[u8] = b"served beside an exhausted user\n";

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
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

/// A `virtuos-storage` process exporting a scratch directory, its log in a file.
struct Server {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    watchdog: Option<mpsc::Sender<()>>,
    _scratch: Scratch,
}

impl Server {
    /// Starts the server with `args`, its RLIMIT_NOFILE set to (`soft`, `hard`), exporting a
    /// directory with `a.txt` (0644, root's).
    fn start(name: &str, args: &[&str], soft: u64, hard: u64) -> Server {
        let sc = Scratch::new(&format!("limits-{name}"));
        let root = sc.path("root");
        std::fs::create_dir(&root).unwrap();
        set_mode(&root, 0o755);
        std::fs::write(root.join("a.txt"), CONTENT).unwrap();
        set_mode(&root.join("a.txt"), 0o644);
        let sock = sc.path("sock");
        let log = sc.path("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_virtuos-storage"));
        cmd.arg("--root")
            .arg(&root)
            .arg("--listen")
            .arg(&sock)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || setrlimit(soft, hard));
        }
        let child = cmd.spawn().expect("start virtuos-storage");
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!(
                    "watchdog: still running after {WATCHDOG:?}; killing virtuos-storage {pid}"
                );
                // SAFETY: kill(2) of our own child, not reaped while the Server lives.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut s = Server {
            child,
            sock,
            log,
            watchdog: Some(tx),
            _scratch: sc,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while connect_session(&s.sock, &ClientConfig::default()).is_err() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("virtuos-storage exited before serving: {st}\n{}", s.log());
            }
            assert!(Instant::now() < deadline, "virtuos-storage did not come up");
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
            "virtuos-storage died {when}: {:?}\n{}",
            self.child.try_wait(),
            self.log()
        );
        assert!(self.sock.exists(), "socket file gone {when}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

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
    }
}

/// Root's calls: `cat a.txt`, a stat, 100 opens and closes. Returns how long they took.
fn root_is_served(sock: &Path) -> std::time::Duration {
    let t = Instant::now();
    let c = Client::connect(sock);
    assert_eq!(c.slurp("a.txt").unwrap(), CONTENT);
    assert_eq!(c.stat("a.txt").unwrap().size, CONTENT.len() as u64);
    let hs: Vec<u64> = (0..100)
        .map(|i| {
            c.open("a.txt", libc::O_RDONLY, 0)
                .unwrap_or_else(|e| panic!("root's open {i}: {e:?}"))
        })
        .collect();
    for h in hs {
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
    /// Starts the child with `role`: `opens:N` opens a.txt N times, `fill` until EMFILE.
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

    /// The next report of the child (`key=value` words after `REPORT`).
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
    let (_, hard) = getrlimit();
    setrlimit(hard, hard).unwrap();
    let c = Client::connect(&sock);
    let mut open: Vec<u64> = Vec::new();
    let ask = |open: &mut Vec<u64>, n: usize| {
        let t = Instant::now();
        let (mut ok, mut emfile, mut other, mut first) = (0usize, 0usize, 0usize, None);
        let mut i = 0;
        while n == 0 || i < n {
            match c.open("a.txt", libc::O_RDONLY, 0) {
                Ok(h) => {
                    ok += 1;
                    open.push(h);
                }
                Err(e) if e == Errno::EMFILE => {
                    emfile += 1;
                    first.get_or_insert(i);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("open {i}: {e:?}");
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
        Some(("opens", n)) => ask(&mut open, n.parse().unwrap()),
        _ if role == "fill" => ask(&mut open, 0),
        _ => panic!("unknown role {role}"),
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let (cmd, n) = line.split_once(' ').unwrap_or((&line, "0"));
        let n: usize = n.parse().unwrap();
        match cmd {
            "close" => {
                let mut closed = 0;
                for _ in 0..n {
                    if let Some(h) = open.pop() {
                        assert_eq!(c.close(h), Ok(0));
                        closed += 1;
                    }
                }
                println!("REPORT closed={closed}");
            }
            "open" => ask(&mut open, n),
            "session" => {
                let s = Client::connect(&sock);
                let uid = s.whoami().1;
                let errno = match s.open("a.txt", libc::O_RDONLY, 0) {
                    Ok(h) => {
                        s.close(h).unwrap();
                        0
                    }
                    Err(e) => e.get(),
                };
                println!(
                    "REPORT session_ok={} open_errno={errno}",
                    usize::from(uid == NOBODY)
                );
            }
            "read" => {
                let ok = c.slurp("a.txt").map(|b| b == CONTENT) == Ok(true);
                println!("REPORT read_ok={}", usize::from(ok));
            }
            _ => panic!("unknown command {line}"),
        }
    }
}

#[test]
fn one_uid_cannot_exhaust_the_server_and_root_is_served() {
    if !is_root() {
        return skip("needs root (switches the client to uid 65534)");
    }
    if let Err(why) = ensure_hard_limit(OPENS as u64) {
        return skip(&format!("{OPENS} opens: {why}"));
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

    let mut nobody = Nobody::start(&srv.sock, &format!("opens:{OPENS}"));
    let r = nobody.report();
    let (ok, emfile, other) = (get(&r, "ok"), get(&r, "emfile"), get(&r, "other"));
    println!(
        "uid 65534 opened a.txt {OPENS} times (its RLIMIT_NOFILE {}): {ok} opened, {emfile} EMFILE \
         (first at #{}), {other} other errors, in {} ms; its budget {budget}; server fds {base} -> {}",
        get(&r, "limit"),
        get(&r, "first_emfile"),
        get(&r, "ms"),
        srv.fds(),
    );
    assert_eq!(other, 0, "every refusal is EMFILE");
    assert_eq!(ok + emfile, OPENS);
    assert!(
        ok <= budget && ok + 64 >= budget,
        "uid 65534 opened {ok} files; its budget is {budget}"
    );
    srv.assert_alive("after uid 65534 exhausted its budget");

    let t = root_is_served(&srv.sock);
    println!("root served beside it (session, cat a.txt, stat, 100 opens) in {t:?}");
    srv.assert_alive("after root's calls");
    // A new session of the exhausted uid starts, and its opens get EMFILE.
    let r = nobody.command("session");
    println!("a new session of uid 65534 at its budget: {r:?}");
    assert_eq!(get(&r, "session_ok"), 1);
    assert_eq!(get(&r, "open_errno"), libc::EMFILE as usize);
    // Closing frees the budget: as many opens again.
    assert_eq!(get(&nobody.command("close 1000"), "closed"), 1000);
    let again = nobody.command("open 1000");
    println!(
        "after closing 1000: {} of 1000 opened again",
        get(&again, "ok")
    );
    assert_eq!(get(&again, "ok"), 1000);
    assert_eq!(get(&nobody.command("close 10"), "closed"), 10);
    assert_eq!(get(&nobody.command("read"), "read_ok"), 1);
    nobody.finish();
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
        return skip("needs root (switches the client to uid 65534)");
    }
    let mut srv = Server::start("emfile", &["--max-handles-per-uid", "1000000"], 1024, 1024);
    let mut nobody = Nobody::start(&srv.sock, "fill");
    let r = nobody.report();
    println!(
        "uid 65534 filled the server: {} opens, then EMFILE ({} errors); server fds {}",
        get(&r, "ok"),
        get(&r, "emfile"),
        srv.fds()
    );
    assert_eq!(get(&r, "emfile"), 1, "the fill stops at the first EMFILE");
    assert!(get(&r, "ok") > 900, "{r:?}");
    let sock = srv.sock.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = connect_session(&sock, &ClientConfig::default()).map(|s| {
            let c = Client { s };
            c.slurp("a.txt").map(|b| b == CONTENT)
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
    assert_eq!(r, Ok(Ok(true)));
    srv.assert_alive("after serving the waiting client");
    assert_eq!(get(&nobody.command("read"), "read_ok"), 1);
    nobody.finish();
    root_is_served(&srv.sock);
    srv.assert_alive("at the end");
}

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

/// A new client's session and `cat a.txt`.
fn cat(sock: &Path) -> Duration {
    let t = Instant::now();
    let c = Client::connect(sock);
    assert_eq!(c.slurp("a.txt").unwrap(), CONTENT);
    t.elapsed()
}

#[test]
fn silent_clients_delay_nobody() {
    if !is_root() {
        // The server's sessions act as each client (it refuses others when not root); a
        // same-user client is served either way.
        eprintln!("not root: the client is the server's own user");
    }
    let mut srv = Server::start("silent", &[], 1024, 4096);
    let idle = cat(&srv.sock);
    let silent = silent_clients(&srv.sock, 50);
    let t = cat(&srv.sock);
    println!(
        "session + cat a.txt: {idle:?} idle, {t:?} behind 50 silent connections (target 50 ms)"
    );
    assert!(
        t < Duration::from_millis(500),
        "cat waited {t:?} behind 50 silent connections"
    );
    srv.assert_alive("after the silent clients");
    drop(silent);
}

#[test]
fn help_documents_the_budgets() {
    let out = Command::new(env!("CARGO_BIN_EXE_virtuos-storage"))
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
