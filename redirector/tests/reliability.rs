//! Reliability of the storage domain (issue 8, storage half): a supervised `virtuos-storage`
//! killed with SIGKILL under load, crash consistency of fsynced appends, thousands of clients
//! that exit or are killed mid-call, fairness under a flooding client, RLIMIT_NOFILE on remote
//! fds, and a soak with RSS sampled in client and server.
//!
//! Real processes only: `virtuos-redirect domains` supervises the server, clients are real
//! programs (python3, coreutils) with the preload shim. Needs the workspace's binaries
//! (`cargo build -p virtuos-storage -p virtuos-preload` or `cargo test --workspace`).
//! `VIRTUOS_SOAK_SECONDS` lengthens the soak (default 60).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MOUNT: &str = "/virtuos-rel-mnt";

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtuos-redirect"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A supervisor (`virtuos-redirect domains`) with its storage domain, in a temp dir.
struct Domains {
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
    let base = std::env::temp_dir().join(format!("virtuos-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("export");
    std::fs::create_dir_all(&root).unwrap();
    let sock = base.join("storage.sock");
    let state = base.join("domains.json");
    let log = base.join("domains.log");
    assert!(
        bin_dir().join("virtuos-storage").exists(),
        "virtuos-storage missing: cargo build -p virtuos-storage"
    );
    let sup = Command::new(bin_dir().join("virtuos-redirect"))
        .arg("domains")
        .arg("--storage-root")
        .arg(&root)
        .arg("--storage")
        .arg(&sock)
        .arg("--state")
        .arg(&state)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Domains {
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
                "the storage domain did not (re)start"
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
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
    // The bound: p99 under the flood at most 20x the idle p99 and at most 5 ms. On the 2-CPU
    // development VM the flooding client, the measuring client and the server share two
    // CPUs, so the measured ratio (see README) is dominated by CPU sharing, not by the server.
    assert!(
        p99 <= 20 * idle_p99.max(20_000) && p99 <= 5_000_000,
        "p99 under flood {p99} ns vs idle {idle_p99} ns"
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
