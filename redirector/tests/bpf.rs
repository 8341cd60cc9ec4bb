//! eBPF attach/detach/status/top and `run --enforce` against the real kernel (issue #6).
//!
//! Needs root and the eBPF object (`scripts/build-ebpf.sh`, which `scripts/test.sh` runs
//! first); without them each test prints why and passes without checking anything, unless
//! `VIRTUOS_BPF_REQUIRE` is set (scripts/test.sh sets it when running as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_virtuos-redirect");

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if std::env::var_os("VIRTUOS_BPF_OBJ").is_none() {
        let obj = Path::new(BIN)
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("bpf/virtuos-ebpf.o"));
        let beside = Path::new(BIN).with_file_name("virtuos-ebpf.o");
        if !beside.is_file() && !obj.as_deref().is_some_and(Path::is_file) {
            return Some(format!(
                "eBPF object not built ({}): run scripts/build-ebpf.sh",
                obj.map(|p| p.display().to_string()).unwrap_or_default()
            ));
        }
    }
    if Command::new("python3").arg("-c").arg("").status().is_err() {
        return Some("python3 missing".into());
    }
    None
}

macro_rules! require_env {
    () => {
        if let Some(why) = skip_reason() {
            if std::env::var_os("VIRTUOS_BPF_REQUIRE").is_some() {
                panic!("VIRTUOS_BPF_REQUIRE is set but: {why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn redirect(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running virtuos-redirect")
}

fn ok(args: &[&str]) -> String {
    let o = redirect(args);
    assert!(
        o.status.success(),
        "virtuos-redirect {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A test cgroup (relative to the cgroup2 root), detached and removed on drop.
struct TestCgroup {
    rel: String,
    path: PathBuf,
}

impl TestCgroup {
    fn attach(tag: &str, enforce: bool) -> TestCgroup {
        let rel = format!("virtuos/test-{}-{tag}", std::process::id());
        let mut args = vec!["attach", "--cgroup", &rel, "--create"];
        if enforce {
            args.push("--enforce");
        }
        let out = ok(&args);
        let path = out
            .split_whitespace()
            .nth(3)
            .map(PathBuf::from)
            .expect("attach prints the cgroup path");
        assert!(path.join("cgroup.procs").exists(), "{out}");
        TestCgroup { rel, path }
    }

    /// Runs python3 code inside the cgroup; returns stdout.
    fn python(&self, code: &str) -> String {
        let procs = self.path.join("cgroup.procs");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec python3 -c \"$0\"",
                procs.display()
            ))
            .arg(code)
            .output()
            .expect("sh");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = redirect(&["detach", "--cgroup", &self.rel]);
        let _ = std::fs::remove_dir(&self.path);
    }
}

const SOCKET_PROBE: &str = "
import socket, errno
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); print('inet ok')
except OSError as e:
    print('inet', errno.errorcode.get(e.errno, e.errno))
try:
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close(); print('inet6 ok')
except OSError as e:
    print('inet6', errno.errorcode.get(e.errno, e.errno))
socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close(); print('unix ok')
";

fn status_json() -> Value {
    serde_json::from_str(&ok(&["status", "--json"])).expect("status JSON")
}

fn loaded_prog_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect()
}

#[test]
fn enforcement_denies_inet_inside_only_and_detach_leaves_nothing() {
    require_env!();
    let cg = TestCgroup::attach("enforce", true);
    let inside = cg.python(SOCKET_PROBE);
    assert!(inside.contains("inet EPERM"), "{inside}");
    assert!(inside.contains("inet6 EPERM"), "{inside}");
    assert!(inside.contains("unix ok"), "{inside}");
    let o = Command::new("python3")
        .arg("-c")
        .arg(SOCKET_PROBE)
        .output()
        .unwrap();
    let outside = String::from_utf8_lossy(&o.stdout);
    assert!(
        outside.contains("inet ok") && outside.contains("unix ok"),
        "{outside}"
    );

    // status: this cgroup, its programs, the hook states with the kernel's answers.
    let st = status_json();
    let me = st["attached"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["record"]["cgroup"].as_str() == cg.path.to_str())
        .expect("status lists the cgroup")
        .clone();
    let hooks = me["record"]["hooks"].as_array().unwrap();
    for attach in [
        "raw_tp/sys_enter",
        "raw_tp/sys_exit",
        "cgroup/sock_create",
        "cgroup/connect4",
        "cgroup/connect6",
        "cgroup/bind4",
        "cgroup/bind6",
    ] {
        let h = hooks.iter().find(|h| h["attach"] == attach).expect(attach);
        assert_eq!(h["state"], "active", "{h}");
    }
    for h in hooks.iter().filter(|h| h["role"] == "lsm") {
        // Active where the kernel allows BPF LSM; otherwise refused with its errno.
        assert!(
            h["state"] == "active" || (h["state"] == "refused" && h["errno"].as_i64().is_some()),
            "{h}"
        );
    }
    let ids: Vec<u32> = me["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap() as u32)
        .collect();
    assert!(ids.len() >= 7, "{me}");
    let loaded = loaded_prog_ids();
    assert!(ids.iter().all(|i| loaded.contains(i)));
    let pin_dir = PathBuf::from(me["pin_dir"].as_str().unwrap());
    assert!(pin_dir.is_dir());

    // Attaching twice is refused clearly.
    let twice = redirect(&["attach", "--cgroup", &cg.rel]);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already attached"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );

    ok(&["detach", "--cgroup", &cg.rel]);
    assert!(!pin_dir.exists(), "pins left in {}", pin_dir.display());
    let loaded = loaded_prog_ids();
    let left: Vec<&u32> = ids.iter().filter(|i| loaded.contains(i)).collect();
    assert!(left.is_empty(), "programs still loaded: {left:?}");
    if let Ok(o) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    {
        if o.status.success() {
            let progs: Value = serde_json::from_slice(&o.stdout).unwrap();
            for p in progs.as_array().unwrap() {
                let id = p["id"].as_u64().unwrap() as u32;
                assert!(!ids.contains(&id), "bpftool still lists {p}");
            }
        }
    }
    // And the cgroup is back to normal.
    let after = cg.python(SOCKET_PROBE);
    assert!(after.contains("inet ok"), "{after}");
}

#[test]
fn top_counts_a_known_workload_within_one_percent() {
    require_env!();
    let cg = TestCgroup::attach("top", false);
    let getppid_total = || -> u64 {
        let v: Value =
            serde_json::from_str(&ok(&["top", "--once", "--json", "--interval-ms", "50"]))
                .expect("top JSON");
        v["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cgroup"].as_str() == cg.path.to_str())
            .expect("top lists the cgroup")["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["nr"] == 110)
            .map(|s| s["total"].as_u64().unwrap())
            .unwrap_or(0)
    };
    let loop_code = |n: u32| format!("import os\nfor _ in range({n}): os.getppid()\n");
    let t0 = getppid_total();
    cg.python(&loop_code(0)); // the interpreter's own calls: the baseline
    let t1 = getppid_total();
    cg.python(&loop_code(10_000));
    let t2 = getppid_total();
    let counted = (t2 - t1) as i64 - (t1 - t0) as i64;
    assert!(
        (counted - 10_000).abs() <= 100,
        "counted {counted} getppid calls (totals {t0} {t1} {t2})"
    );
}

#[test]
fn run_enforce_denies_inet_and_io_uring_and_cleans_up() {
    require_env!();
    let code = "
import socket, ctypes, os, errno
try:
    socket.socket(); print('inet ok')
except OSError as e:
    print('inet', errno.errorcode[e.errno])
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
r = libc.syscall(425, 1, params)
print('io_uring_setup', r, errno.errorcode.get(ctypes.get_errno(), '?'))
print(open('/proc/self/cgroup').read().strip().splitlines()[-1])
";
    let o = Command::new(BIN)
        .args(["run", "--enforce", "--", "python3", "-c", code])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("inet EPERM"), "{out}");
    assert!(out.contains("io_uring_setup -1 EPERM"), "{out}");
    let cg_line = out
        .lines()
        .find(|l| l.starts_with("0::/virtuos/run-"))
        .expect("child ran in a virtuos run cgroup");
    let rel = cg_line.trim_start_matches("0::/");
    let o = redirect(&["detach", "--cgroup", rel]);
    assert!(!o.status.success(), "run --enforce left its attachment");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not exist") || err.contains("nothing of virtuos"),
        "{err}"
    );
}

#[test]
fn clear_errors_for_missing_cgroups_and_paths_off_cgroup2() {
    require_env!();
    let o = redirect(&["attach", "--cgroup", "virtuos/no-such-cgroup-here"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("does not exist") && e.contains("--create"),
        "{e}"
    );
    let o = redirect(&["attach", "--cgroup", "/tmp"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not on the cgroup2 hierarchy"), "{e}");
}

/// A native TCP echo server on 127.0.0.1 (upper-cases what it gets), in this test process:
/// outside every test cgroup. Returns its port.
fn echo_listener() -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 256];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n].to_ascii_uppercase()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A `virtuos-net` started by the test, outside the enforced cgroups; killed on drop.
struct NetDomain {
    child: std::process::Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl NetDomain {
    fn start(tag: &str) -> NetDomain {
        let bin = Path::new(BIN).with_file_name("virtuos-net");
        assert!(
            bin.is_file(),
            "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("virtuos-bpf-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("net.sock");
        let child = Command::new(bin)
            .arg("--listen")
            .arg(&sock)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("starting virtuos-net");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "virtuos-net did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        NetDomain { child, dir, sock }
    }
}

impl Drop for NetDomain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// argv: PORT N [wait STOPFILE]. Creates an AF_INET socket (printing the errno and exception
/// type if that fails), connects to the echo server, makes N round trips, prints its cgroup.
/// With `wait`: prints `ready`, waits for a line on stdin, echoes until STOPFILE exists
/// (printing `looping` once), then prints `done`.
const INET_ECHO: &str = "
import socket, sys, errno, os
port, n = int(sys.argv[1]), int(sys.argv[2])
try:
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
except OSError as e:
    print('socket', errno.errorcode.get(e.errno, e.errno), type(e).__name__)
    sys.exit(0)
c.connect(('127.0.0.1', port))
def echo(i):
    c.sendall(b'ping %d' % i)
    got = c.recv(100)
    assert got == b'PING %d' % i, got
for i in range(n):
    echo(i)
print('echo ok', n)
print(open('/proc/self/cgroup').read().strip().splitlines()[-1])
if len(sys.argv) > 3:
    print('ready', flush=True)
    sys.stdin.readline()
    i = 0
    while True:
        echo(i)
        i += 1
        if i == 50:
            print('looping', flush=True)
        if i % 50 == 0 and os.path.exists(sys.argv[4]):
            break
    print('done', i, flush=True)
c.close()
";

fn run_echo(args: &[&str], port: u16, n: u32) -> String {
    let (port, n) = (port.to_string(), n.to_string());
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--", "python3", "-c", INET_ECHO, &port, &n])
        .env("RUST_BACKTRACE", "0");
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn run_enforce_with_net_serves_inet_sockets_that_enforcement_denies_without_it() {
    require_env!();
    let port = echo_listener();
    let net = NetDomain::start("enforce-net");
    let sock = net.sock.to_str().unwrap();

    // In the enforced cgroup, through the network domain: the socket works.
    let out = run_echo(&["run", "--enforce", "--net", sock], port, 20);
    assert!(out.contains("echo ok 20"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("0::/virtuos/run-")),
        "not in a run cgroup: {out}"
    );

    // The same program in an enforced cgroup without the network domain: EPERM on socket().
    let out = run_echo(&["run", "--enforce"], port, 20);
    assert!(
        out.contains("socket EPERM PermissionError"),
        "enforcement did not deny the direct socket: {out}"
    );

    // Outside any cgroup of ours the same program is unaffected.
    let o = Command::new("python3")
        .args(["-c", INET_ECHO, &port.to_string(), "20"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("echo ok 20"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.lines().any(|l| l.starts_with("0::/virtuos/")), "{out}");

    // A statically linked program (busybox-static, supervised): in the enforced cgroup its
    // sockets work through the network domain, and without it they are denied.
    let busybox = "/usr/bin/busybox";
    assert!(
        Path::new(busybox).exists(),
        "{busybox} (busybox-static) is required: scripts/setup.sh installs it"
    );
    let script = format!(
        "echo ping | {busybox} nc 127.0.0.1 {port}; echo nc $?; {busybox} tail -n1 /proc/self/cgroup"
    );
    let static_run = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .args(["--", busybox, "sh", "-c", &script])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = static_run(&["run", "--enforce", "--net", sock]);
    assert!(
        out.contains("PING\nnc 0\n") && out.contains("0::/virtuos/run-"),
        "static nc in the enforced cgroup through the network domain: {out}"
    );
    let out = static_run(&["run", "--enforce"]);
    assert!(
        out.contains("Operation not permitted") && !out.contains("nc 0"),
        "enforcement did not deny the static program's direct socket: {out}"
    );
}

fn top_once(interval_ms: u32) -> Value {
    serde_json::from_str(&ok(&[
        "top",
        "--once",
        "--json",
        "--interval-ms",
        &interval_ms.to_string(),
    ]))
    .expect("top JSON")
}

/// The `routed.domains` entry of domain `name` for the cgroup whose path ends in `rel`.
fn routed_domain(v: &Value, rel: &str, name: &str) -> Value {
    let cg = v["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"].as_str().is_some_and(|p| p.ends_with(rel)))
        .unwrap_or_else(|| panic!("top does not list {rel}: {v}"));
    cg["routed"]["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == name)
        .unwrap_or_else(|| panic!("no routed calls to {name} in {}", cg["routed"]))
        .clone()
}

#[test]
fn top_shows_routed_calls_and_latency_percentiles_per_domain() {
    use std::io::{BufRead, BufReader, Write};
    require_env!();
    let port = echo_listener();
    let net = NetDomain::start("top-net");
    let stop = net.dir.join("stop");
    const N: u64 = 500;
    let started = std::time::Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "--enforce", "--net", net.sock.to_str().unwrap()])
        .args(["--", "python3", "-c", INET_ECHO])
        .arg(port.to_string())
        .arg(N.to_string())
        .arg("wait")
        .arg(&stop)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("program output").unwrap();
    let mut rel = None;
    loop {
        let l = next();
        if let Some(r) = l.strip_prefix("0::") {
            rel = Some(r.to_string());
        }
        if l == "ready" {
            break;
        }
    }
    // Every routed call so far happened before this point, one at a time.
    let wall_ns = started.elapsed().as_nanos() as u64;
    let rel = rel.expect("cgroup line");

    // Idle now: nothing routed in the interval, so the percentiles are those since start.
    let v = top_once(100);
    let d = routed_domain(&v, &rel, "virtuos-net");
    eprintln!("idle sample: {d}");
    assert_eq!(
        d["server_pid"].as_u64(),
        Some(u64::from(net.child.id())),
        "{d}"
    );
    assert!(d["sessions"].as_u64() >= Some(1), "{d}");
    let calls = d["calls_total"].as_u64().unwrap();
    let lat = &d["latency"];
    let timed = lat["timed_total"].as_u64().unwrap();
    // Each round trip is at least a send and a recv, both synchronous (timed) calls; posted
    // calls count as calls but are not timed.
    assert!(timed >= 2 * N && calls >= timed, "{d}");
    assert_eq!(lat["window"], "since_start", "{d}");
    assert_eq!(d["calls_per_sec"].as_f64(), Some(0.0), "{d}");
    let (p50, p99) = (
        lat["p50_ns"].as_u64().unwrap(),
        lat["p99_ns"].as_u64().unwrap(),
    );
    // Plausible: above a cross-process round trip's floor; the median is at most twice the
    // mean (Markov) and a percentile at most twice its value (bucket upper edge), and the
    // single-threaded program spent at most wall_ns in its timed calls.
    assert!(p50 >= 256 && p50 <= p99, "{d}");
    assert!(
        p50 <= 4 * wall_ns / timed,
        "p50 {p50} ns implausible for {timed} calls in {wall_ns} ns: {d}"
    );
    assert!(p99 <= 2 * wall_ns, "{d}");
    // The cgroup totals include the domain's.
    let cg = v["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"].as_str().is_some_and(|p| p.ends_with(&rel)))
        .unwrap();
    assert!(cg["routed"]["calls_total"].as_u64() >= Some(calls), "{cg}");
    assert!(cg["routed"]["latency"]["timed_total"].as_u64() >= Some(timed));

    // Busy: percentiles over the interval, with a non-zero rate.
    writeln!(stdin, "go").unwrap();
    assert_eq!(next(), "looping");
    let v = top_once(300);
    std::fs::write(&stop, "").unwrap();
    let d = routed_domain(&v, &rel, "virtuos-net");
    eprintln!("busy sample: {d}");
    let lat = &d["latency"];
    assert_eq!(lat["window"], "interval", "{d}");
    assert!(d["calls_per_sec"].as_f64() > Some(0.0), "{d}");
    assert!(lat["timed_interval"].as_u64() > Some(0), "{d}");
    let (p50, p99) = (
        lat["p50_ns"].as_u64().unwrap(),
        lat["p99_ns"].as_u64().unwrap(),
    );
    assert!(p50 >= 256 && p50 <= p99 && p99 <= 2_000_000_000, "{d}");

    assert!(next().starts_with("done"));
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
