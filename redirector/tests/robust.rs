//! Robustness of the preload shim against what real programs do, each test comparing a
//! redirected run (`virtuos-redirect run --net SOCK --storage SOCK --mount PREFIX`) with a
//! native run of the same thing (on a local copy of the exported tree):
//!
//! * redis-server and redis-benchmark, both through the network domain;
//! * programs that bring their own allocator (jemalloc, tcmalloc: linked in and preloaded);
//! * Python's `subprocess.run` (close_fds=True) 500 times next to remote fds;
//! * dash's `exec 3< FILE`;
//! * a daemon that closes every fd above stderr before opening anything;
//! * `dup2` onto every fd number 0..1023;
//! * fd numbering of the first socket and the first open (3 and 4, as Linux);
//! * a 10 kHz SIGALRM handler doing file and socket I/O while main does the same;
//! * 2,000 forks from a program whose 8 threads do remote I/O;
//! * entries planted by an unprivileged user at every shared path the shim might use
//!   (`/dev/shm/virtuos-exec-<pid>`, `/tmp/virtuos*`) for the next pids.
//!
//! The helper programs are the C and Python files in `tests/robust/`, compiled with `cc` into
//! a scratch directory at test time. Every program runs in its own process group under a
//! watchdog: a hang kills everything it started and fails the test with what it printed.
//!
//! Needs the workspace's binaries (`cargo build --workspace`: `cargo test` does not build the
//! shim). redis-server, redis-benchmark, libjemalloc.so.2 and libtcmalloc.so.4 come from the
//! Debian packages redis-server, redis-tools, libjemalloc2 and libgoogle-perftools4
//! (`scripts/setup.sh` installs them); a test whose program is absent fails, naming the
//! package, unless `VIRTUOS_ALLOW_SKIP=1`. The planted-files test needs root.
//! `ROBUST_SIGNAL_SECS` sets the length of each run of the signal test (default 60).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The mount prefix routed to the storage domain.
const MOUNT: &str = "/virtuos-robust-mnt";
/// How long a domain server may take to start, or a server program to start listening.
const START: Duration = Duration::from_secs(60);
/// The default watchdog of a helper program.
const LIMIT: Duration = Duration::from_secs(120);

/// Held by the tests that load both cores for long (the 10 kHz signal tests, 2,000 forks,
/// redis-benchmark), so that they do not run at the same time and starve each other into
/// their own timeouts on a 2-core machine.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// A helper source in `tests/robust/`.
fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/robust")
        .join(name)
}

/// True when absent programs may skip their test (`VIRTUOS_ALLOW_SKIP=1`).
fn skip_allowed() -> bool {
    std::env::var_os("VIRTUOS_ALLOW_SKIP").is_some_and(|v| v == "1")
}

/// `what` (a program or library) is missing: fails naming the Debian package, or (with
/// `VIRTUOS_ALLOW_SKIP=1`) says the test is skipped.
fn missing(test: &str, what: &str, package: &str) {
    assert!(
        skip_allowed(),
        "{test}: {what} is not installed: `apt-get install {package}` (scripts/setup.sh does), \
         or set VIRTUOS_ALLOW_SKIP=1 to skip this test"
    );
    println!("skipping {test}: {what} is not installed (Debian package {package})");
}

/// Where a program is found in PATH (or the usual sbin directories).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The program `name`, or None (after [`missing`]) when it is not installed.
fn need_program(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let p = find_program(name);
    if p.is_none() {
        missing(test, name, package);
    }
    p
}

/// The shared library at `path`, or None (after [`missing`]) when it is not installed.
fn need_library(test: &str, path: &str, package: &str) -> Option<PathBuf> {
    if Path::new(path).is_file() {
        Some(PathBuf::from(path))
    } else {
        missing(test, path, package);
        None
    }
}

/// The real python3 executable (not a pyenv shim script, which would add a shell and
/// pyenv's own process tree to every run).
fn python() -> PathBuf {
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed");
    assert!(o.status.success(), "python3: {o:?}");
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

/// A scratch directory (world-readable, so that an unprivileged user can run the helpers
/// built in it), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("virtuos-robust-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
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
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which domains a redirected run uses.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// `--net` only.
    Net,
    /// `--storage` and `--mount` only.
    Storage,
    /// Both.
    Both,
}

/// A storage domain exporting `export/`, a network domain, and `local/`: the native copy of
/// the exported tree. Programs get the tree's path as an argument: [`MOUNT`] when
/// redirected, `local/` when native.
struct Env {
    storage: Domain,
    net: Domain,
    dir: Scratch,
    /// Redirected runs use the supervised mode (`run --supervised`) instead of the shim.
    supervised: bool,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = Scratch::new(name);
        for d in ["export", "local", "bin"] {
            std::fs::create_dir_all(dir.path(d)).unwrap();
            std::fs::set_permissions(dir.path(d), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = Command::new(bin("virtuos-storage"));
        cmd.arg("--root").arg(dir.path("export"));
        let storage = Domain::start(cmd, dir.path("storage.sock"));
        let net = Domain::start(Command::new(bin("virtuos-net")), dir.path("net.sock"));
        Env {
            storage,
            net,
            dir,
            supervised: false,
        }
    }

    /// As [`Env::new`], with redirected runs in the supervised mode.
    fn supervised(name: &str) -> Env {
        Env {
            supervised: true,
            ..Env::new(name)
        }
    }

    fn export(&self) -> PathBuf {
        self.dir.path("export")
    }

    fn local(&self) -> PathBuf {
        self.dir.path("local")
    }

    /// The tree's path as the program sees it.
    fn tree(&self, redirected: bool) -> String {
        if redirected {
            MOUNT.to_owned()
        } else {
            self.local().to_str().unwrap().to_owned()
        }
    }

    /// Writes `rel` with `bytes` into both the export and the local copy.
    fn put(&self, rel: &str, bytes: &[u8]) {
        for root in [self.export(), self.local()] {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
    }

    /// `virtuos-redirect run [--net SOCK] [--storage SOCK --mount MOUNT] -- prog`.
    fn redirected(&self, route: Route, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(bin("virtuos-redirect"));
        cmd.arg("run");
        if self.supervised {
            cmd.arg("--supervised");
        }
        if route != Route::Storage {
            cmd.arg("--net").arg(&self.net.sock);
        }
        if route != Route::Net {
            cmd.arg("--storage")
                .arg(&self.storage.sock)
                .args(["--mount", MOUNT]);
        }
        cmd.arg("--")
            .arg(prog)
            .env("VIRTUOS_PRELOAD", bin("libvirtuos_preload.so"));
        cmd
    }

    /// `prog` natively, or redirected through both domains.
    fn command(&self, redirected: bool, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        if redirected {
            self.redirected(Route::Both, prog)
        } else {
            Command::new(prog)
        }
    }

    /// Compiles `tests/robust/{src}` into `bin/{name}` with `cc` (and `extra` arguments).
    fn cc(&self, name: &str, src: &str, extra: &[&str]) -> PathBuf {
        let out = self.dir.path("bin").join(name);
        let o = Command::new("cc")
            .args(["-O2", "-g", "-Wall", "-pthread", "-o"])
            .arg(&out)
            .arg(source(src))
            .args(extra)
            .output()
            .expect("running cc (install build-essential)");
        assert!(
            o.status.success(),
            "cc {src} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }

    /// Standard output with the tree's path written as `$D`.
    fn normalized(&self, f: &Finished, redirected: bool) -> String {
        f.out().replace(&self.tree(redirected), "$D")
    }

    /// Fails when something exists at [`MOUNT`] locally: a program escaped redirection.
    fn assert_not_escaped(&self) {
        assert!(
            !Path::new(MOUNT).exists(),
            "{MOUNT} exists locally: a redirected program escaped redirection"
        );
    }
}

/// How a program ended.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    /// It ran past its watchdog and was killed.
    hung: bool,
}

impl Finished {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn ok(&self) -> bool {
        !self.hung && self.status.success()
    }

    fn describe(&self) -> String {
        format!(
            "{}{}\n--- stdout\n{}--- stderr\n{}",
            if self.hung {
                "HUNG (killed by the watchdog), "
            } else {
                ""
            },
            self.status,
            self.out(),
            self.stderr
        )
    }
}

/// A program with piped standard streams, in its own process group: everything it started
/// is killed on drop.
struct Running {
    child: Child,
    chunks: mpsc::Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
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
            child,
            chunks,
            stdout: Vec::new(),
            stderr,
        }
    }

    fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) of the process group this test created (process_group(0)).
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }

    /// Reads standard output until it contains `marker` (within `limit`): all of it so far,
    /// or None when the program closed its output or the time ran out.
    fn until(&mut self, marker: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while !String::from_utf8_lossy(&self.stdout).contains(marker) {
            let left = deadline.saturating_duration_since(Instant::now());
            self.stdout.extend(self.chunks.recv_timeout(left).ok()?);
        }
        Some(String::from_utf8_lossy(&self.stdout).into_owned())
    }

    /// Waits (within `limit`) for the program to end and its output to close; on timeout
    /// kills its process group and returns what it printed, marked `hung`.
    fn wait(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(c) => self.stdout.extend_from_slice(&c),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => return self.kill_now(true),
            }
        }
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                return self.kill_now(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Anything the program left running still has our stderr pipe open.
        self.kill_now(false)
    }

    /// Kills the whole group and collects what was printed so far.
    fn kill_now(&mut self, hung: bool) -> Finished {
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
            hung,
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

/// Runs `cmd` to its end under a watchdog of `limit`.
fn run(cmd: Command, limit: Duration) -> Finished {
    Running::spawn(cmd).wait(limit)
}

/// Prints a run for the log.
fn show(label: &str, f: &Finished) {
    println!("=== {label}: {}", f.describe());
}

/// Compares a redirected run with the native one: the native run must succeed, the
/// redirected one must succeed with the same (normalized) standard output. Returns the
/// difference, if any, as a failure message.
fn compare(env: &Env, what: &str, r: &Finished, n: &Finished) -> Result<(), String> {
    assert!(n.ok(), "{what}: the native run failed: {}", n.describe());
    let (rs, ns) = (env.normalized(r, true), env.normalized(n, false));
    if r.ok() && rs == ns {
        return Ok(());
    }
    Err(format!(
        "{what}: the redirected run {}\n--- redirected: {}\n--- native stdout:\n{ns}",
        if r.hung {
            "hung"
        } else if !r.status.success() {
            "failed"
        } else {
            "printed something else"
        },
        r.describe()
    ))
}

/// Panics with every failure collected.
fn conclude(test: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{test}: {} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A TCP port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`; `server` must keep
/// running. If it ends or nothing listens within [`START`], it is killed and what it printed
/// is returned.
fn wait_listening(port: u16, server: &mut Running) -> Result<(), Finished> {
    let deadline = Instant::now() + START;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if server.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return Err(server.kill_now(Instant::now() > deadline));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A native TCP echo server on 127.0.0.1 (a thread per connection) counting the bytes it
/// echoed. It lives until the test process ends.
fn echo_server() -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let t = t.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            t.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    (port, total)
}

/// The value of `key=` in a `counts: k=v ...` line of `text`.
fn count(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("counts: "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

// ---------------------------------------------------------------------------------------

/// The `requests per second` lines of redis-benchmark's `-q` output (progress lines end with
/// `\r`).
fn rps_lines(out: &str) -> Vec<String> {
    out.split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn redis_benchmark_through_net_domain() {
    let _heavy = heavy();
    const TEST: &str = "redis_benchmark_through_net_domain";
    let Some(server) = need_program(TEST, "redis-server", "redis-server") else {
        return;
    };
    let Some(bench) = need_program(TEST, "redis-benchmark", "redis-tools") else {
        return;
    };
    let env = Env::new("redis");
    let mut failures = Vec::new();
    let mut results = Vec::new();
    for redirected in [false, true] {
        let label = if redirected { "redirected" } else { "native" };
        let port = free_port().to_string();
        let wd = env.dir.path(&format!("redis-{label}"));
        std::fs::create_dir_all(&wd).unwrap();
        let mut cmd = if redirected {
            env.redirected(Route::Net, &server)
        } else {
            Command::new(&server)
        };
        cmd.args(["--port", &port, "--save", "", "--appendonly", "no"])
            .current_dir(&wd);
        let mut srv = Running::spawn(cmd);
        if let Err(f) = wait_listening(port.parse().unwrap(), &mut srv) {
            let msg = format!(
                "{label} redis-server: nothing listens on port {port} after {START:?}: {}",
                f.describe()
            );
            assert!(redirected, "{msg}");
            failures.push(msg);
            continue;
        }
        let mut cmd = if redirected {
            env.redirected(Route::Net, &bench)
        } else {
            Command::new(&bench)
        };
        cmd.args(["-p", &port, "-t", "set,get", "-n", "100000", "-q"]);
        let started = Instant::now();
        let b = run(cmd, LIMIT);
        let took = started.elapsed();
        let lines = rps_lines(&b.out());
        println!("{label} redis-benchmark ({took:.1?}):");
        for l in &lines {
            println!("  {label}: {l}");
        }
        let complete = lines.iter().any(|l| l.starts_with("SET:"))
            && lines.iter().any(|l| l.starts_with("GET:"));
        if !b.ok() || !complete {
            let msg = format!(
                "{label} redis-benchmark {}: {}",
                if b.hung {
                    "hung (over 120 s)"
                } else {
                    "did not report SET and GET"
                },
                b.describe()
            );
            assert!(redirected, "{msg}");
            failures.push(msg);
        }
        // SHUTDOWN NOSAVE over a native connection: redis-server must exit 0.
        let shut = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
            .and_then(|mut s| s.write_all(b"SHUTDOWN NOSAVE\r\n"));
        let s = srv.wait(Duration::from_secs(30));
        if shut.is_err() || !s.ok() {
            let msg = format!(
                "{label} redis-server did not shut down cleanly ({shut:?}): {}",
                s.describe()
            );
            assert!(redirected, "{msg}");
            failures.push(msg);
        }
        results.push((label, lines));
    }
    for (label, lines) in &results {
        println!("{label}: {}", lines.join(" / "));
    }
    conclude(TEST, failures);
}

#[test]
fn own_malloc_programs_do_remote_io() {
    const TEST: &str = "own_malloc_programs_do_remote_io";
    let Some(je) = need_library(
        TEST,
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "libjemalloc2",
    ) else {
        return;
    };
    let Some(tc) = need_library(
        TEST,
        "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
        "libgoogle-perftools4",
    ) else {
        return;
    };
    let env = Env::new("malloc");
    let plain = env.cc("malloc_io", "malloc_io.c", &[]);
    // Linked against the allocator (--no-as-needed: nothing references it by name).
    let link = |name: &str, lib: &Path| {
        env.cc(
            name,
            "malloc_io.c",
            &["-Wl,--no-as-needed", lib.to_str().unwrap()],
        )
    };
    let cases = [
        (
            "jemalloc-linked",
            link("malloc_io_je", &je),
            None,
            "jemalloc",
        ),
        (
            "tcmalloc-linked",
            link("malloc_io_tc", &tc),
            None,
            "tcmalloc",
        ),
        ("jemalloc-preloaded", plain.clone(), Some(&je), "jemalloc"),
        ("tcmalloc-preloaded", plain.clone(), Some(&tc), "tcmalloc"),
    ];
    let mut failures = Vec::new();
    for (tag, prog, preload, alloc) in &cases {
        let mut finished = Vec::new();
        for redirected in [false, true] {
            // `run` puts the shim first in LD_PRELOAD and keeps what the caller had after it.
            let mut cmd = env.command(redirected, prog);
            cmd.arg(env.tree(redirected)).arg(tag);
            if let Some(lib) = preload {
                cmd.env("LD_PRELOAD", lib);
            }
            let f = run(cmd, Duration::from_secs(30));
            show(
                &format!("{tag} {}", if redirected { "redirected" } else { "native" }),
                &f,
            );
            finished.push(f);
        }
        let (n, r) = (&finished[0], &finished[1]);
        assert!(
            n.out().starts_with(&format!("allocator {alloc}\n")),
            "{tag}: the native run does not use {alloc}: {}",
            n.describe()
        );
        if let Err(e) = compare(&env, tag, r, n) {
            failures.push(e);
            continue;
        }
        // The redirected run's file went to the export, with the native run's bytes.
        let name = format!("malloc-{tag}.dat");
        let (exported, local) = (
            std::fs::read(env.export().join(&name)).unwrap_or_default(),
            std::fs::read(env.local().join(&name)).unwrap(),
        );
        if exported != local {
            failures.push(format!(
                "{tag}: export/{name} has {} bytes, the native run wrote {} (other bytes?)",
                exported.len(),
                local.len()
            ));
        }
    }
    env.assert_not_escaped();
    conclude(TEST, failures);
}

#[test]
fn subprocess_keeps_parent_remote_fds() {
    let env = Env::new("subprocess");
    env.put("sub.txt", b"first line of sub.txt\nsecond line\n");
    let py = python();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &py);
        cmd.arg(source("subprocess_fds.py"))
            .arg(env.tree(redirected))
            .arg("500");
        let started = Instant::now();
        let f = run(cmd, LIMIT);
        show(
            &format!(
                "{} ({:.1?})",
                if redirected { "redirected" } else { "native" },
                started.elapsed()
            ),
            &f,
        );
        runs.push(f);
    }
    env.assert_not_escaped();
    let r = compare(&env, "subprocess_fds.py", &runs[1], &runs[0]);
    conclude(
        "subprocess_keeps_parent_remote_fds",
        r.err().into_iter().collect(),
    );
}

#[test]
fn shell_exec_3_reads_remote_file() {
    let env = Env::new("exec3");
    env.put("f", b"the first line\nthe second line\n");
    let script = r#"exec 3< "$D/f"; read l <&3; echo "$l""#;
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, "/bin/sh");
        cmd.args(["-c", script]).env("D", env.tree(redirected));
        let f = run(cmd, Duration::from_secs(20));
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert_eq!(
        runs[0].out(),
        "the first line\n",
        "native: {}",
        runs[0].describe()
    );
    let r = compare(&env, script, &runs[1], &runs[0]);
    conclude(
        "shell_exec_3_reads_remote_file",
        r.err().into_iter().collect(),
    );
}

/// Every image of an exec chain stacks a seccomp filter that outlives it. At the end of a
/// chain 34 execs deep (shell levels, then coreutils) a libc-internal call (`ls`'s `opendir`)
/// is still routed, no image was killed by a trap that an earlier image's filter set, and the
/// shim printed nothing.
#[test]
fn deep_exec_chain_keeps_routing() {
    let env = Env::new("deepexec");
    env.put("d/one", b"1\n");
    env.put("d/two", b"22\n");
    let script = r#"n=$1; if [ "$n" -gt 0 ]; then exec /bin/sh -c "$0" "$0" $((n-1)); fi; exec ls -l "$D/d""#;
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, "/bin/sh");
        cmd.args(["-c", script, script, "33"])
            .env("D", env.tree(redirected))
            .env("LC_ALL", "C");
        let f = run(cmd, Duration::from_secs(60));
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    let mut failures: Vec<String> = compare(&env, script, &runs[1], &runs[0])
        .err()
        .into_iter()
        .collect();
    if !runs[1].stderr.is_empty() {
        failures.push(format!("the redirected chain printed: {}", runs[1].stderr));
    }
    conclude("deep_exec_chain_keeps_routing", failures);
}

#[test]
fn daemon_closing_every_fd_then_reopening() {
    let env = Env::new("closeall");
    env.put("daemon.txt", b"the daemon's configuration\n");
    let prog = env.cc("close_all", "close_all.c", &[]);
    let mut failures = Vec::new();
    for mode in ["loop", "close_range"] {
        let mut runs = Vec::new();
        for redirected in [false, true] {
            let mut cmd = env.command(redirected, &prog);
            cmd.arg(mode).arg(env.tree(redirected));
            let f = run(cmd, Duration::from_secs(30));
            show(
                &format!(
                    "{mode} {}",
                    if redirected { "redirected" } else { "native" }
                ),
                &f,
            );
            runs.push(f);
        }
        if let Err(e) = compare(&env, &format!("close_all {mode}"), &runs[1], &runs[0]) {
            failures.push(e);
        }
    }
    env.assert_not_escaped();
    conclude("daemon_closing_every_fd_then_reopening", failures);
}

#[test]
fn dup2_onto_every_fd_number() {
    let env = Env::new("dup2");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    env.put("dup.dat", &pattern);
    let local_file = env.dir.path("local-dup.dat");
    std::fs::write(&local_file, &pattern).unwrap();
    let prog = env.cc("dup2_all", "dup2_all.c", &[]);
    let mut failures = Vec::new();
    for variant in ["remote file", "local file"] {
        let mut runs = Vec::new();
        for redirected in [false, true] {
            let file = if variant == "remote file" {
                format!("{}/dup.dat", env.tree(redirected))
            } else {
                local_file.to_str().unwrap().to_owned()
            };
            let label = if redirected { "redirected" } else { "native" };
            let progress = env.dir.path(&format!("dup2-progress-{label}"));
            let mut cmd = env.command(redirected, &prog);
            cmd.arg(file).arg(&progress);
            let mut f = run(cmd, Duration::from_secs(30));
            if !f.ok() {
                let last = std::fs::read_to_string(&progress).unwrap_or_default();
                let last = last.lines().last().unwrap_or("none");
                f.stderr += &format!("(dup2_all was at fd number {last} when it ended)\n");
            }
            show(&format!("{variant} {label}"), &f);
            runs.push(f);
        }
        if let Err(e) = compare(&env, &format!("dup2_all, {variant}"), &runs[1], &runs[0]) {
            failures.push(e);
        }
    }
    env.assert_not_escaped();
    conclude("dup2_onto_every_fd_number", failures);
}

#[test]
fn first_socket_is_fd_3() {
    let env = Env::new("firstfd");
    env.put("f", b"x\n");
    let prog = env.cc("first_fd", "first_fd.c", &[]);
    let mut failures = Vec::new();
    for (mode, want) in [
        ("socket-first", "socket=3 open=4\n"),
        ("open-first", "open=3 socket=4\n"),
    ] {
        let mut runs = Vec::new();
        for redirected in [false, true] {
            let mut cmd = env.command(redirected, &prog);
            cmd.arg(mode).arg(format!("{}/f", env.tree(redirected)));
            let f = run(cmd, Duration::from_secs(30));
            show(
                &format!(
                    "{mode} {}",
                    if redirected { "redirected" } else { "native" }
                ),
                &f,
            );
            runs.push(f);
        }
        assert_eq!(runs[0].out(), want, "native {mode}: {}", runs[0].describe());
        if let Err(e) = compare(&env, &format!("first_fd {mode}"), &runs[1], &runs[0]) {
            failures.push(e);
        }
    }
    conclude("first_socket_is_fd_3", failures);
}

#[test]
fn signal_handler_does_io_while_main_does_io() {
    let _heavy = heavy();
    let secs: u64 = std::env::var("ROBUST_SIGNAL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let env = Env::new("signal");
    let prog = env.cc("signal_io", "signal_io.c", &[]);
    let (port, echoed) = echo_server();
    let mut failures = Vec::new();
    for redirected in [false, true] {
        let label = if redirected { "redirected" } else { "native" };
        let local = env.dir.path(&format!("signal-{label}"));
        std::fs::create_dir_all(&local).unwrap();
        let before = echoed.load(Ordering::Relaxed);
        let mut cmd = env.command(redirected, &prog);
        cmd.arg(env.tree(redirected))
            .arg(&local)
            .arg(port.to_string())
            .arg(secs.to_string());
        let f = run(cmd, Duration::from_secs(secs + 60));
        show(label, &f);
        println!(
            "{label}: the handler ran {:?} times, main made {:?} iterations",
            count(&f.stderr, "handler_runs"),
            count(&f.stderr, "main_iterations")
        );
        // The echo server's count catches up once the connection is closed.
        let sent = count(&f.stderr, "socket_bytes");
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent.is_some_and(|s| echoed.load(Ordering::Relaxed) - before < s)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = echoed.load(Ordering::Relaxed) - before;
        let mut problems = Vec::new();
        if !f.ok() {
            problems.push(format!(
                "{label}: signal_io {}",
                if f.hung { "hung" } else { "failed" }
            ));
        }
        if sent != Some(got) {
            problems.push(format!(
                "{label}: the program sent {sent:?} socket bytes, the echo server got {got}"
            ));
        }
        // The remote files, as the storage domain (or the native run) left them.
        let root = if redirected {
            env.export()
        } else {
            env.local()
        };
        for (file, key) in [
            ("sig-handler.dat", "remote_handler_bytes"),
            ("sig-main.dat", "remote_main_bytes"),
        ] {
            let size = std::fs::metadata(root.join(file)).map(|m| m.len()).ok();
            let want = count(&f.stderr, key);
            if want.is_some_and(|w| w > 0) && size != want {
                problems.push(format!(
                    "{label}: {file} is {size:?} bytes in the tree, the program wrote {want:?}"
                ));
            }
        }
        if problems.is_empty() {
            continue;
        }
        let msg = format!("{}\n{}", problems.join("\n"), f.describe());
        assert!(redirected, "the native run must pass first: {msg}");
        failures.push(msg);
    }
    env.assert_not_escaped();
    conclude("signal_handler_does_io_while_main_does_io", failures);
}

#[test]
fn signal_handler_runs_every_entry_point_inside_every_other() {
    let _heavy = heavy();
    // Twenty kinds of interposed call from a 10 kHz SIGALRM handler, while main runs the
    // same kinds in the opposite order (robust/signal_all.c): every result checked.
    let secs: u64 = std::env::var("ROBUST_SIGNAL_ALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let env = Env::new("sigall");
    let prog = env.cc("signal_all", "signal_all.c", &[]);
    let (port, _) = echo_server();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let label = if redirected { "redirected" } else { "native" };
        let local = env.dir.path(&format!("sigall-{label}"));
        std::fs::create_dir_all(&local).unwrap();
        let mut cmd = env.command(redirected, &prog);
        cmd.arg(env.tree(redirected))
            .arg(&local)
            .arg(port.to_string())
            .arg(secs.to_string());
        let f = run(cmd, Duration::from_secs(secs + 60));
        show(label, &f);
        println!(
            "{label}: the handler ran {:?} times, main made {:?} iterations",
            count(&f.stderr, "handler_runs"),
            count(&f.stderr, "main_iterations")
        );
        runs.push(f);
    }
    let mut failures = Vec::new();
    if let Err(e) = compare(&env, "signal_all", &runs[1], &runs[0]) {
        failures.push(e);
    }
    env.assert_not_escaped();
    conclude(
        "signal_handler_runs_every_entry_point_inside_every_other",
        failures,
    );
}

/// Runs `prog TREE` natively and redirected through both domains, and concludes `test`: the
/// native run must say `native_says` (the case is real on this kernel) and the redirected one
/// must print exactly what it printed.
fn native_beside_redirected(env: &Env, test: &str, prog: &Path, native_says: &str) {
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, prog);
        cmd.arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains(native_says),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(env, test, &runs[1], &runs[0]);
    conclude(test, r.err().into_iter().collect());
}

#[test]
fn full_signal_masks_never_block_the_trap() {
    // Daemons install handlers with sigfillset(&sa.sa_mask), block every signal around
    // critical sections and wait in sigsuspend with all but one blocked (robust/sigmask.c): a
    // SIGSYS blocked by any of these would have the kernel kill the process at its next routed
    // call. Each runs file calls under the mount, and the masks read back are Linux's.
    let env = Env::new("sigmask");
    env.put("sigmask/r", b"hello sigmask\n");
    let prog = env.cc("sigmask", "sigmask.c", &[]);
    native_beside_redirected(
        &env,
        "full_signal_masks_never_block_the_trap",
        &prog,
        "full-mask handler: ran 1, read 14",
    );
}

#[test]
fn small_stacks_are_enough() {
    // A thread with PTHREAD_STACK_MIN and a handler on a 16 KiB sigaltstack make file and
    // socket calls under the mount (robust/small_stacks.c): natively a system call takes no
    // user stack; the shim's routing runs on stacks of its own (a thread's 128 KiB overflowed
    // before), which go away with their threads.
    let env = Env::new("small");
    env.put("small/r", b"small stacks\n");
    env.put("small/d/a", b"");
    env.put("small/d/b", b"");
    let prog = env.cc("small_stacks", "small_stacks.c", &[]);
    native_beside_redirected(
        &env,
        "small_stacks_are_enough",
        &prog,
        "trapped open/read 13",
    );
}

#[test]
fn run_starts_programs_that_live_under_the_mount() {
    // `virtuos-redirect run -- /vt/bin/x` (and a bare name found through a PATH entry under
    // the mount): only the shim can reach the file, so run execs it from a process the shim
    // is loaded into. A script and an ELF program run as their local copies do, with the pid
    // run had; a missing one is 127 and one without execute permission 126, as from a shell.
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("runmount");
    env.put(
        "runbin/hello.sh",
        b"#!/bin/sh\necho \"hello $*\"\necho \"pid $$\" >&2\n",
    );
    env.put("runbin/plain", b"not a program\n");
    let elf = std::fs::read("/bin/echo").expect("reading /bin/echo");
    env.put("runbin/echo-copy", &elf);
    for root in [env.export(), env.local()] {
        for (f, mode) in [("hello.sh", 0o755), ("echo-copy", 0o755), ("plain", 0o644)] {
            let p = root.join("runbin").join(f);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let mut failures = Vec::new();
    let mut outs = Vec::new();
    for redirected in [false, true] {
        let tree = env.tree(redirected);
        let mut out = String::new();
        for (prog, args, path) in [
            (format!("{tree}/runbin/hello.sh"), vec!["a", "b"], None),
            (format!("{tree}/runbin/echo-copy"), vec!["elf", "too"], None),
            (
                "hello.sh".to_owned(),
                vec!["through", "PATH"],
                Some(format!("{tree}/runbin:/usr/bin:/bin")),
            ),
        ] {
            let mut cmd = env.command(redirected, &prog);
            cmd.args(&args);
            if let Some(p) = &path {
                cmd.env("PATH", p);
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let child = cmd.spawn().expect("starting the program");
            let pid = child.id();
            let o = child.wait_with_output().unwrap();
            out.push_str(&format!(
                "{prog} -> {} {}",
                o.status,
                String::from_utf8_lossy(&o.stdout)
            ));
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            if prog.contains("hello") && err.trim() != format!("pid {pid}") {
                failures.push(format!(
                    "{prog} (redirected {redirected}): it ran as {err:?}, not as pid {pid}"
                ));
            }
        }
        println!("redirected {redirected}:\n{out}");
        outs.push(out.replace(&tree, "TREE"));
    }
    if outs[0] != outs[1] {
        failures.push(format!("native:\n{}redirected:\n{}", outs[0], outs[1]));
    }
    for (prog, code, says) in [
        ("runbin/missing", 127, "No such file or directory"),
        ("runbin/plain", 126, "Permission denied"),
    ] {
        let f = run(
            env.redirected(Route::Both, format!("{MOUNT}/{prog}")),
            LIMIT,
        );
        if f.status.code() != Some(code) || !f.stderr.contains(says) {
            failures.push(format!(
                "{prog}: want exit {code} and {says:?}: {}",
                f.describe()
            ));
        }
    }
    env.assert_not_escaped();
    conclude("run_starts_programs_that_live_under_the_mount", failures);
}

#[test]
fn lock_waits_are_interrupted_by_signals() {
    // flock and F_SETLKW on a file a forked child holds locked (robust/lock_intr.c): a
    // handler without SA_RESTART interrupts the wait with EINTR, one with SA_RESTART lets it
    // go on until the holder lets go. The wait is in the storage domain, which the client
    // asks to cancel it; the domain interrupts its waiting thread.
    let env = Env::new("lockintr");
    env.put("lock/f", b"x\n");
    let prog = env.cc("lock_intr", "lock_intr.c", &[]);
    native_beside_redirected(
        &env,
        "lock_waits_are_interrupted_by_signals",
        &prog,
        "flock plain: = -1 (EINTR), alarm 1, returned at the alarm",
    );
}

#[test]
fn fifo_waits_are_interrupted_by_signals() {
    // A read of an empty FIFO and a write into a full one, under the mount
    // (robust/fifo_intr.c): a handler without SA_RESTART interrupts the wait with EINTR, one
    // with SA_RESTART lets it go on until a child moves bytes at the other end. The wait is in
    // the storage domain, which the client asks to cancel it.
    let env = Env::new("fifointr");
    env.put("fifo/.keep", b"");
    let prog = env.cc("fifo_intr", "fifo_intr.c", &[]);
    native_beside_redirected(
        &env,
        "fifo_waits_are_interrupted_by_signals",
        &prog,
        "write plain: = -1 (EINTR), alarm 1, returned at the alarm",
    );
}

#[test]
fn a_handler_that_longjmps_out_of_a_call_leaves_nothing_taken() {
    // 100 reads of an empty FIFO, each left by a SIGALRM handler's siglongjmp, each followed
    // by file calls (robust/longjmp.c): with more jumps than a session has channels, a call
    // left behind that kept its channel lease (or its stack slot) would hang the program.
    let env = Env::new("longjmp");
    env.put("lj/.keep", b"");
    let prog = env.cc("longjmp", "longjmp.c", &[]);
    native_beside_redirected(
        &env,
        "a_handler_that_longjmps_out_of_a_call_leaves_nothing_taken",
        &prog,
        "jumps 100; the file reads back 14 bytes: after jump 99",
    );
}

#[test]
fn the_shims_fds_are_closed_to_every_probe() {
    // fstat and F_GETFD over every fd number, before and after lowering RLIMIT_NOFILE, and a
    // close_fds child's own fstat loop (robust/fd_probe.py; CPython's test_subprocess found
    // the shim's descriptors at the top of the range this way): Linux's view, the shim's
    // descriptors closed to all of them.
    let env = Env::new("fdprobe");
    std::fs::create_dir_all(env.export().join("fp")).unwrap();
    std::fs::create_dir_all(env.local().join("fp")).unwrap();
    let runs = python_both_ways(&env, "fd_probe.py", "fp");
    assert!(
        runs[0].out().contains("a close_fds child sees [0, 1, 2] 0"),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(&env, "fd_probe.py", &runs[1], &runs[0]);
    conclude(
        "the_shims_fds_are_closed_to_every_probe",
        r.err().into_iter().collect(),
    );
}

#[test]
fn bad_pointers_are_efault() {
    // Unmapped path pointers (low, the last page, a string running into a protected page):
    // the kernel answers EFAULT; so must the shim, under the mount and outside it.
    let env = Env::new("badptr");
    let prog = env.cc("bad_ptr", "bad_ptr.c", &[]);
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &prog);
        cmd.arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("open(low) = -1 (EFAULT)"),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(&env, "bad_ptr", &runs[1], &runs[0]);
    conclude("bad_pointers_are_efault", r.err().into_iter().collect());
}

#[test]
fn unix_socket_under_the_mount_and_children_with_a_routed_cwd() {
    // AF_UNIX bind under the mount: EOPNOTSUPP, and no socket file anywhere else (the
    // storage domain cannot host a socket). Children started with a cwd under the mount
    // (subprocess cwd=, posix_spawn's chdir action through os.posix_spawn's analogue in
    // subprocess, system() after chdir) run there, and the parent's cwd does not move.
    let env = Env::new("unixcwd");
    env.put("d/f.txt", b"in d\n");
    let py = python();
    let script = r#"
import os, socket, subprocess, sys
tree = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
try:
    s.bind(os.path.join(tree, "u.sock"))
    print("bind under the tree: ok")
except OSError as e:
    print("bind under the tree:", e.strerror)
start = os.getcwd()
out = subprocess.run(["cat", "f.txt"], cwd=os.path.join(tree, "d"), capture_output=True)
print("child in d:", out.stdout.decode().strip(), out.returncode)
print("parent cwd unchanged:", os.getcwd() == start)
out = subprocess.run(["pwd"], cwd="/tmp", capture_output=True)
print("child in /tmp:", out.stdout.decode().strip())
os.chdir(os.path.join(tree, "d"))
print("system:", os.system("cat f.txt >/dev/null && exit 7") >> 8)
out = subprocess.run(["cat", "f.txt"], capture_output=True)
print("child inherits cwd d:", out.stdout.decode().strip())
out = subprocess.run(["pwd"], cwd="/tmp", capture_output=True)
print("child in /tmp from d:", out.stdout.decode().strip(), "parent still in d:", os.path.basename(os.getcwd()))
"#;
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &py);
        cmd.arg("-c").arg(script).arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    let mut failures = Vec::new();
    let (n, r) = (
        env.normalized(&runs[0], false),
        env.normalized(&runs[1], true),
    );
    assert!(
        runs[0].ok() && n.contains("bind under the tree: ok"),
        "native: {}",
        runs[0].describe()
    );
    // The one difference allowed: the bind.
    let want = n.replace(
        "bind under the tree: ok",
        "bind under the tree: Operation not supported",
    );
    if !runs[1].ok() || r != want {
        failures.push(format!(
            "redirected differs:\n--- redirected:\n{r}\n--- wanted:\n{want}\n{}",
            runs[1].describe()
        ));
    }
    if env.export().join("u.sock").exists() {
        failures.push("a u.sock appeared in the export".into());
    }
    env.assert_not_escaped();
    conclude(
        "unix_socket_under_the_mount_and_children_with_a_routed_cwd",
        failures,
    );
}

/// Runs `tests/robust/SCRIPT` with python natively on the local copy and redirected on the
/// mount, each given `TREE/SUB`: [native, redirected].
fn python_both_ways(env: &Env, script: &str, sub: &str) -> Vec<Finished> {
    python_both_ways_with(env, script, sub, |_| Vec::new())
}

/// As [`python_both_ways`], with `extra(redirected)` appended to the script's arguments.
fn python_both_ways_with(
    env: &Env,
    script: &str,
    sub: &str,
    extra: impl Fn(bool) -> Vec<PathBuf>,
) -> Vec<Finished> {
    let py = python();
    [false, true]
        .into_iter()
        .map(|redirected| {
            let mut cmd = env.command(redirected, &py);
            cmd.arg(source(script))
                .arg(format!("{}/{sub}", env.tree(redirected)))
                .args(extra(redirected));
            let f = run(cmd, LIMIT);
            show(if redirected { "redirected" } else { "native" }, &f);
            f
        })
        .collect()
}

#[test]
fn file_calls_beyond_read_and_write_as_native() {
    file_calls_beyond_read_and_write_as_native_in(false);
}

#[test]
fn file_calls_beyond_read_and_write_as_native_supervised() {
    file_calls_beyond_read_and_write_as_native_in(true);
}

fn file_calls_beyond_read_and_write_as_native_in(supervised: bool) {
    // copy_file_range between two routed files (file and explicit offsets, EINVAL, EBADF),
    // posix_fadvise, readahead, sync_file_range, a read-only shared mmap and a private one,
    // flock (shared by a dup, conflicting between open files, a wait), sendfile offsets.
    let env = if supervised {
        Env::supervised("fileops-sup")
    } else {
        Env::new("fileops")
    };
    for root in [env.export(), env.local()] {
        std::fs::create_dir_all(root.join("fo")).unwrap();
    }
    let runs = python_both_ways(&env, "fileops.py", "fo");
    assert!(
        runs[0]
            .out()
            .contains("copy_file_range explicit offsets ok 5000"),
        "native: {}",
        runs[0].describe()
    );
    if let Err(e) = compare(&env, "fileops.py", &runs[1], &runs[0]) {
        panic!("{e}");
    }
    assert_eq!(
        std::fs::read(env.export().join("fo/dst")).unwrap(),
        std::fs::read(env.local().join("fo/dst")).unwrap(),
        "the copied bytes differ"
    );
}

#[test]
fn extended_attributes_as_native() {
    extended_attributes_as_native_in(false);
}

#[test]
fn extended_attributes_as_native_supervised() {
    extended_attributes_as_native_in(true);
}

fn extended_attributes_as_native_in(supervised: bool) {
    // get/set/list/remove on paths, through and on symlinks, on fds, with every error
    // (EEXIST, ENODATA, ERANGE, EPERM on a symlink, ENOTSUP for a bad namespace).
    let env = if supervised {
        Env::supervised("xattrs-sup")
    } else {
        Env::new("xattrs")
    };
    for root in [env.export(), env.local()] {
        std::fs::create_dir_all(root.join("xa")).unwrap();
    }
    let runs = python_both_ways(&env, "xattrs.py", "xa");
    if runs[0].out().contains("set ENOTSUP") {
        println!("skipping the comparison: the file system here has no user xattrs");
        return;
    }
    if let Err(e) = compare(&env, "xattrs.py", &runs[1], &runs[0]) {
        panic!("{e}");
    }
}

#[test]
fn a_close_that_returned_released_the_files_locks() {
    // Closes of read-only files are posted without waiting for the answer (#17); a lock
    // taken through a descriptor must be free for another process once close returned.
    let env = Env::new("close-release");
    for root in [env.export(), env.local()] {
        std::fs::create_dir_all(root.join("cr")).unwrap();
    }
    let runs = python_both_ways(&env, "close_release.py", "cr");
    assert!(
        runs[0].out().contains("flock after close: refused 0 of"),
        "native baseline: {}",
        runs[0].out()
    );
    if let Err(e) = compare(&env, "close_release.py", &runs[1], &runs[0]) {
        panic!("{e}");
    }
}

#[test]
fn path_semantics_are_the_file_systems() {
    path_semantics_are_the_file_systems_in(false);
}

#[test]
fn path_semantics_are_the_file_systems_supervised() {
    path_semantics_are_the_file_systems_in(true);
}

fn path_semantics_are_the_file_systems_in(supervised: bool) {
    // rmdir a/b/. (EINVAL) and a/b/.. (ENOTEMPTY, never a removed directory), rename a/.,
    // touch through a symlink then .., open("newdir/", O_CREAT) (EISDIR), a file with a
    // trailing slash (ENOTDIR), an absolute symlink into the tree followed and read back.
    let env = if supervised {
        Env::supervised("paths-sup")
    } else {
        Env::new("paths")
    };
    for root in [env.export(), env.local()] {
        for d in ["pt/a/b", "pt/x/y/z", "pt/d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("x/y/z", root.join("pt/s")).unwrap();
    }
    let runs = python_both_ways(&env, "paths.py", "pt");
    assert!(
        runs[0].out().contains("rmdir a/b/.. ENOTEMPTY"),
        "native: {}",
        runs[0].describe()
    );
    let mut failures: Vec<String> = compare(&env, "paths.py", &runs[1], &runs[0])
        .err()
        .into_iter()
        .collect();
    // The trees the two runs left behind are the same.
    let tree = |root: PathBuf| {
        let mut v: Vec<String> = walk(&root.join("pt"))
            .into_iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    };
    if tree(env.export()) != tree(env.local()) {
        failures.push(format!(
            "trees differ: export {:?} vs native {:?}",
            tree(env.export()),
            tree(env.local())
        ));
    }
    env.assert_not_escaped();
    conclude("path_semantics_are_the_file_systems", failures);
}

/// Symlinks that lead out of the export and back are followed as Linux's path walk follows
/// them: an absolute target outside the mount in the program's own file system (read, write,
/// create through a dangling link, mkdir, rename, chdir, exec), a relative one that climbs
/// out with `..`, absolute targets into the mount, a loop (ELOOP); readlink returns what was
/// written. Native beside redirected (links.py), and the directory outside is left alike.
#[test]
fn symlinks_leave_the_export_and_come_back_as_linux_walks_them() {
    let env = Env::new("links");
    for root in [env.export(), env.local()] {
        std::fs::create_dir_all(root.join("lk/d")).unwrap();
        std::fs::write(root.join("lk/d/g"), "inside g\n").unwrap();
    }
    let outs = [env.dir.path("out-native"), env.dir.path("out-redirected")];
    for o in &outs {
        std::fs::create_dir_all(o).unwrap();
        std::fs::write(o.join("f"), "outside f\n").unwrap();
    }
    let runs = python_both_ways_with(&env, "links.py", "lk", |redirected| {
        vec![outs[usize::from(redirected)].clone()]
    });
    assert!(
        runs[0].out().contains("read out/f ok outside f") && runs[0].out().contains("loop ELOOP"),
        "native: {}",
        runs[0].describe()
    );
    let norm = |f: &Finished, i: usize| f.out().replace(outs[i].to_str().unwrap(), "$OUT");
    let mut failures: Vec<String> = Vec::new();
    if !runs[1].ok() || norm(&runs[1], 1) != norm(&runs[0], 0) {
        failures.push(format!(
            "links.py: redirected {}\n--- native:\n{}",
            runs[1].describe(),
            runs[0].out()
        ));
    }
    let listing = |d: &Path| {
        let mut v: Vec<String> = walk(d)
            .into_iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    };
    if listing(&outs[0]) != listing(&outs[1]) {
        failures.push(format!(
            "outside trees differ: native {:?} vs redirected {:?}",
            listing(&outs[0]),
            listing(&outs[1])
        ));
    }
    env.assert_not_escaped();
    conclude("symlinks_leave_the_export_and_come_back", failures);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn make_builds_and_runs_programs_inside_the_mount() {
    // GNU make building a small C project inside the mount (its recipes are posix_spawn'ed
    // with the routed cwd), then the built binary and a #! script run from there: the kernel
    // cannot open them, so the shim executes their image from a memfd.
    let env = Env::new("make");
    env.put(
        "proj/main.c",
        b"int f(void);\nint main(void) { return f(); }\n",
    );
    env.put("proj/f.c", b"int f(void) { return 3; }\n");
    env.put(
        "proj/Makefile",
        b"all: prog\nprog: main.o f.o\n\tcc -o $@ $^\n%.o: %.c\n\tcc -c -o $@ $<\nclean:\n\trm -f *.o prog\n",
    );
    for root in [env.export(), env.local()] {
        let s = root.join("proj/s.sh");
        std::fs::write(&s, b"#!/bin/sh\necho \"script: $*\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("proj/noexec"), b"x").unwrap();
    }
    let script = "cd \"$1/proj\" && make -s && ./prog; echo prog=$?; ./s.sh a b; ./noexec 2>/dev/null; echo noexec=$?; make -s clean; ls";
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, "/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("prog=3"),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(&env, "make", &runs[1], &runs[0]);
    conclude(
        "make_builds_and_runs_programs_inside_the_mount",
        r.err().into_iter().collect(),
    );
}

#[test]
fn capabilities_dropped_by_a_root_program_reach_the_domains() {
    // A root program that drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its effective
    // set (capset, as libcap does) stays uid 0 but can no longer read another user's 0600
    // file, or bind port 80 once CAP_NET_BIND_SERVICE goes too: in the domains exactly as
    // natively.
    let env = Env::new("caps");
    env.put("theirs.txt", b"nobody's\n");
    for root in [env.export(), env.local()] {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join("theirs.txt");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let script = r#"
import ctypes, os, socket, struct, sys
t = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def drop(*caps):
    hdr = struct.pack("II", 0x20080522, 0)
    data = ctypes.create_string_buffer(24)
    if libc.capget(hdr, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    eff0, perm0, inh0, eff1, perm1, inh1 = struct.unpack("6I", data.raw)
    eff = eff0 | eff1 << 32
    for c in caps:
        eff &= ~(1 << c)
    new = struct.pack("6I", eff & 0xffffffff, perm0, inh0, eff >> 32, perm1, inh1)
    if libc.capset(hdr, new) != 0:
        raise OSError(ctypes.get_errno(), "capset")
def attempt(what, f):
    try:
        f(); print(what, "ok")
    except OSError as e:
        print(what, e.strerror)
attempt("read before", lambda: open(os.path.join(t, "theirs.txt")).read())
drop(1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
attempt("read after", lambda: open(os.path.join(t, "theirs.txt")).read())
s = socket.socket()
drop(10)  # CAP_NET_BIND_SERVICE
attempt("bind 80", lambda: s.bind(("127.0.0.1", 80)))
print("uid", os.getuid())
"#;
    let py = python();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &py);
        cmd.arg("-c").arg(script).arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("read after Permission denied"),
        "native (run as root?): {}",
        runs[0].describe()
    );
    if let Err(e) = compare(&env, "caps", &runs[1], &runs[0]) {
        panic!("{e}");
    }
}

#[test]
fn credentials_dropped_inside_the_program_reach_the_domains() {
    // A root program that drops to uid 65534 after its first routed calls: root's 0600 file
    // is EACCES, new files belong to 65534, a file opened before stays readable, and a
    // socket can no longer bind port 80 — in the domains exactly as natively.
    let env = Env::new("creds");
    env.put("secret.txt", b"root only\n");
    env.put("open.txt", b"opened before\n");
    for root in [env.export(), env.local()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("secret.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let p = root.join("pub");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let script = r#"
import os, socket, sys
t = sys.argv[1]
f = open(os.path.join(t, "open.txt"))
print("before:", open(os.path.join(t, "secret.txt")).read().strip())
s = socket.socket()
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    open(os.path.join(t, "secret.txt")).read(); print("after: readable")
except OSError as e:
    print("after:", e.strerror)
p = os.path.join(t, "pub", "made.txt")
open(p, "w").write("x")
st = os.stat(p)
print("made by", st.st_uid, st.st_gid)
print("open file:", f.read().strip())
try:
    s.bind(("127.0.0.1", 80)); print("bind 80: ok")
except OSError as e:
    print("bind 80:", e.strerror)
"#;
    let py = python();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &py);
        cmd.arg("-c").arg(script).arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("after: Permission denied"),
        "native (run as root?): {}",
        runs[0].describe()
    );
    let mut failures: Vec<String> = compare(&env, "creds", &runs[1], &runs[0])
        .err()
        .into_iter()
        .collect();
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(env.export().join("pub/made.txt")) {
        Ok(m) if m.uid() == 65534 && m.gid() == 65534 => {}
        other => failures.push(format!("pub/made.txt in the export: {other:?}")),
    }
    env.assert_not_escaped();
    conclude(
        "credentials_dropped_inside_the_program_reach_the_domains",
        failures,
    );
}

#[test]
fn large_o_append_writes_are_not_torn() {
    // Two processes append 40 records of 600,000 bytes (more than the data window) with
    // O_APPEND at once: as on Linux, no record is torn (the storage domain assembles the
    // chunks of a large write and writes them with one system call).
    let env = Env::new("append");
    let py = python();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &py);
        cmd.arg(source("append.py"))
            .arg(format!("{}/records.dat", env.tree(redirected)));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("records 80 torn 0"),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(&env, "append.py", &runs[1], &runs[0]);
    conclude(
        "large_o_append_writes_are_not_torn",
        r.err().into_iter().collect(),
    );
}

#[test]
fn mknod_and_mkfifo_under_the_mount() {
    mknod_and_mkfifo_under_the_mount_in(false);
}

#[test]
fn mknod_and_mkfifo_under_the_mount_supervised() {
    mknod_and_mkfifo_under_the_mount_in(true);
}

fn mknod_and_mkfifo_under_the_mount_in(supervised: bool) {
    // FIFOs, regular files, sockets and (as root) device nodes, with their modes and errors,
    // and a FIFO in the tree carrying bytes between two processes: as natively.
    let env = if supervised {
        Env::supervised("mknod-sup")
    } else {
        Env::new("mknod")
    };
    let py = python();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &py);
        cmd.arg(source("mknod.py")).arg(env.tree(redirected));
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("read: through the fifo"),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(&env, "mknod.py", &runs[1], &runs[0]);
    conclude(
        "mknod_and_mkfifo_under_the_mount",
        r.err().into_iter().collect(),
    );
}

#[test]
fn sigterm_to_a_supervising_run_ends_the_program() {
    // `virtuos-redirect run` of a static program stays its parent (the supervised mode):
    // a SIGTERM to run's pid (a service manager stopping it) reaches the program, which ends
    // as it would natively, and run exits with its status (128 + 15). Nothing is left.
    let Some(bb) = need_program(
        "sigterm_to_a_supervising_run_ends_the_program",
        "busybox",
        "busybox-static",
    ) else {
        return;
    };
    let env = Env::new("supterm");
    let mut cmd = env.redirected(Route::Storage, &bb);
    cmd.args([
        "sh",
        "-c",
        "cd \"$1\" && echo started > mark && exec busybox sleep 30",
        "sh",
    ])
    .arg(env.tree(true));
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.export().join("mark").exists() {
        assert!(
            Instant::now() < deadline,
            "the supervised program did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "run and its program still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "supervised program ended {:?} after SIGTERM to run: {status}",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
}

#[test]
fn supervised_pipeline_loop_leaks_nothing() {
    // busybox (static: the supervised mode) running `echo a | cat | cat` 1,000 times inside
    // the mount: it finishes, and its shell ends with as many fds as natively (an interrupted
    // close must never leave a pipe end open).
    let Some(bb) = need_program(
        "supervised_pipeline_loop_leaks_nothing",
        "busybox",
        "busybox-static",
    ) else {
        return;
    };
    let env = Env::new("pipeloop");
    let script = "cd \"$1\" && i=0; while [ $i -lt 1000 ]; do echo a | busybox cat | busybox cat > out; i=$((i+1)); done; echo done $i; cat out; ls /proc/$$/fd | wc -l";
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = if redirected {
            env.redirected(Route::Storage, &bb)
        } else {
            Command::new(&bb)
        };
        cmd.args(["sh", "-c", script, "sh"])
            .arg(env.tree(redirected));
        let started = Instant::now();
        let f = run(cmd, Duration::from_secs(120));
        show(
            &format!(
                "{} ({:.1?})",
                if redirected { "redirected" } else { "native" },
                started.elapsed()
            ),
            &f,
        );
        runs.push(f);
    }
    assert!(
        runs[0].out().contains("done 1000"),
        "native: {}",
        runs[0].describe()
    );
    env.assert_not_escaped();
    let r = compare(&env, "pipeline loop", &runs[1], &runs[0]);
    conclude(
        "supervised_pipeline_loop_leaks_nothing",
        r.err().into_iter().collect(),
    );
}

#[test]
fn static_programs_started_by_redirected_ones_are_supervised() {
    // A redirected (dynamic) shell starting static busybox, by absolute path and from a cwd
    // under the mount: the shim hands it to the supervised mode, so its files are the
    // storage domain's, never local ones of the same name.
    let Some(bb) = need_program(
        "static_programs_started_by_redirected_ones_are_supervised",
        "busybox",
        "busybox-static",
    ) else {
        return;
    };
    let env = Env::new("static");
    env.put("d/f.txt", b"from the tree\n");
    let script =
        "B=$2; $B touch \"$1/x\" && cd \"$1/d\" && $B touch y && $B cat f.txt && $B pwd && $B ls";
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = if redirected {
            env.redirected(Route::Storage, "/bin/sh")
        } else {
            Command::new("/bin/sh")
        };
        cmd.args(["-c", script, "sh"])
            .arg(env.tree(redirected))
            .arg(&bb);
        let f = run(cmd, LIMIT);
        show(if redirected { "redirected" } else { "native" }, &f);
        runs.push(f);
    }
    let mut failures: Vec<String> = compare(&env, "static from sh", &runs[1], &runs[0])
        .err()
        .into_iter()
        .collect();
    for f in ["x", "d/y"] {
        if !env.export().join(f).exists() {
            failures.push(format!("{f} is not in the export"));
        }
    }
    env.assert_not_escaped();
    conclude(
        "static_programs_started_by_redirected_ones_are_supervised",
        failures,
    );
}

#[test]
fn forks_from_threaded_program() {
    let _heavy = heavy();
    let env = Env::new("forks");
    env.put("ft.txt", b"read by every thread and every child\n");
    let prog = env.cc("fork_threads", "fork_threads.c", &[]);
    let (port, _) = echo_server();
    let mut runs = Vec::new();
    for redirected in [false, true] {
        let mut cmd = env.command(redirected, &prog);
        cmd.arg(format!("{}/ft.txt", env.tree(redirected)))
            .arg(port.to_string())
            .args(["2000", "8"]);
        let started = Instant::now();
        let f = run(cmd, LIMIT);
        show(
            &format!(
                "{} ({:.1?})",
                if redirected { "redirected" } else { "native" },
                started.elapsed()
            ),
            &f,
        );
        runs.push(f);
    }
    env.assert_not_escaped();
    let r = compare(&env, "fork_threads", &runs[1], &runs[0]);
    conclude("forks_from_threaded_program", r.err().into_iter().collect());
}

/// What the shim's exec state file looks like (`exec.rs`): magic, storage and network
/// tokens, the routed cwd, then (fd, handle, flags, dir path) entries. This one claims
/// stdin/stdout/stderr and fds 3..9 are the storage handle 0 and the cwd is inside the
/// mount: a new image that believes it makes the program write its output to a remote file.
fn forged_exec_state() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x5649_5254_4558_4543u64.to_ne_bytes());
    v.extend_from_slice(&0u64.to_ne_bytes());
    v.extend_from_slice(&0u64.to_ne_bytes());
    let cwd = format!("{MOUNT}/planted");
    v.extend_from_slice(&(cwd.len() as u32).to_ne_bytes());
    v.extend_from_slice(cwd.as_bytes());
    for fd in 0..10i32 {
        v.extend_from_slice(&fd.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.push(0);
        v.extend_from_slice(&0u32.to_ne_bytes());
    }
    v
}

/// The paths an unprivileged user plants for each pid.
const PLANT_TEMPLATES: [&str; 6] = [
    "/dev/shm/virtuos-exec-%d",
    "/dev/shm/virtuos-%d",
    "/dev/shm/virtuos-exec-%d.tmp",
    "/tmp/virtuos-exec-%d",
    "/tmp/virtuos-%d",
    "/tmp/virtuos-exec-%d.tmp",
];

/// Planted paths, removed on drop (also when the test fails).
#[derive(Default)]
struct Planted(Vec<PathBuf>);

impl Planted {
    fn remove(&mut self) {
        for p in self.0.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn unprivileged_planted_files_do_not_affect_root() {
    const TEST: &str = "unprivileged_planted_files_do_not_affect_root";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            skip_allowed(),
            "{TEST} needs root (it plants files as uid 65534 and runs the program as root); \
             set VIRTUOS_ALLOW_SKIP=1 to skip it"
        );
        println!("skipping {TEST}: not root");
        return;
    }
    let env = Env::new("planted");
    env.put("f", b"the file's contents\nline two\n");
    env.put("d/inner", b"inside d\n");
    let planter = env.cc("plant", "plant.c", &[]);
    let target = env.dir.path("root-owned-target");
    let target_text = b"root's file: must never change\n";
    std::fs::write(&target, target_text).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.mode() & 0o7777, m.mtime(), m.mtime_nsec())
    };
    let mut target_stamp = stamp(&target);
    let forged = env.dir.path("forged-state");
    std::fs::write(&forged, forged_exec_state()).unwrap();
    std::fs::set_permissions(&forged, std::fs::Permissions::from_mode(0o644)).unwrap();

    let scripts = [
        r#"cd "$D/d" && exec cat "$D/f""#,
        r#"exec 3<"$D/f"; exec cat <&3"#,
    ];
    let native: Vec<Finished> = scripts
        .iter()
        .map(|s| {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", s]).env("D", env.tree(false));
            let f = run(cmd, Duration::from_secs(20));
            assert!(f.ok(), "native {s}: {}", f.describe());
            assert_eq!(f.out(), "the file's contents\nline two\n", "native {s}");
            f
        })
        .collect();

    // Control: each script redirected with nothing planted, to tell a failure the planted
    // entries cause from one the script has anyway.
    let control: Vec<bool> = scripts
        .iter()
        .zip(&native)
        .map(|(s, n)| {
            let mut cmd = env.redirected(Route::Both, "/bin/sh");
            cmd.args(["-c", s]).env("D", MOUNT);
            let f = run(cmd, Duration::from_secs(20));
            let r = compare(&env, &format!("control (nothing planted): {s}"), &f, n);
            println!(
                "control, nothing planted: {s}: {}",
                match &r {
                    Ok(()) => "same as native".to_owned(),
                    Err(e) => e.clone(),
                }
            );
            r.is_ok()
        })
        .collect();

    let mut failures = Vec::new();
    // A script that fails without planted files would only fail (or hang, 20 s each) again:
    // the planted runs use the scripts that work.
    let usable: Vec<usize> = (0..scripts.len()).filter(|&i| control[i]).collect();
    for (i, s) in scripts.iter().enumerate() {
        if !control[i] {
            failures.push(format!(
                "{s} fails redirected even with nothing planted (see the control run above); \
                 the planted runs use only the other script"
            ));
        }
    }
    let mut planted = Planted::default();
    for kind in ["file", "symlink", "fifo"] {
        let (mut hangs, mut runs, mut same) = (0, 0, 0);
        for i in 0..if usable.is_empty() { 0 } else { 20 } {
            let which = usable[i % usable.len()];
            // Plant for the next 200 pids, as uid/gid 65534 without supplementary groups, and
            // keep re-planting what disappears while the program runs.
            let mut cmd = Command::new(&planter);
            cmd.arg(kind)
                .args(["200", "25"])
                .arg(&target)
                .arg(&forged)
                .args(PLANT_TEMPLATES)
                .uid(65534)
                .gid(65534);
            let mut attacker = Running::spawn(cmd);
            let listed = attacker.until("ready\n", Duration::from_secs(20));
            let Some(listed) = listed else {
                let f = attacker.kill_now(false);
                panic!("planting {kind} as uid 65534: {}", f.describe());
            };
            let mut lines = listed.lines();
            let first_pid: u32 = lines.next().unwrap().parse().unwrap();
            planted
                .0
                .extend(lines.filter(|l| *l != "ready").map(PathBuf::from));
            assert!(
                !planted.0.is_empty(),
                "uid 65534 could plant nothing (are /dev/shm and /tmp world-writable?)"
            );
            let s = scripts[which];
            let mut cmd = env.redirected(Route::Both, "/bin/sh");
            cmd.args(["-c", s]).env("D", MOUNT);
            let running = Running::spawn(cmd);
            let pid = running.child.id();
            let f = running.wait(Duration::from_secs(20));
            attacker.kill_now(false);
            planted.remove();
            let covered = if (first_pid..first_pid + 200).contains(&pid) {
                ""
            } else {
                ": NOT COVERED"
            };
            let what = format!(
                "{kind}s planted, run {i}: {s} (planted for pids {first_pid}..+200, \
                 virtuos-redirect got {pid}{covered})"
            );
            runs += 1;
            match compare(&env, &what, &f, &native[which]) {
                Ok(()) => same += 1,
                Err(e) => failures.push(e),
            }
            if f.hung {
                hangs += 1;
                if hangs == 2 {
                    failures.push(format!("{kind}s: stopped after 2 hung runs (of {})", i + 1));
                    break;
                }
            }
        }
        println!("{kind}s planted: {same} of {runs} redirected runs same as native");
        let now = std::fs::read(&target).unwrap();
        if now != target_text {
            failures.push(format!(
                "after planting {kind}s: the root-owned symlink target {} was overwritten: {:?}",
                target.display(),
                String::from_utf8_lossy(&now)
            ));
            std::fs::write(&target, target_text).unwrap();
        } else if stamp(&target) != target_stamp {
            failures.push(format!(
                "after planting {kind}s: the root-owned symlink target was touched: \
                 (uid, mode, mtime) {:?}, was {target_stamp:?}",
                stamp(&target)
            ));
        }
        target_stamp = stamp(&target);
    }
    env.assert_not_escaped();
    conclude(TEST, failures);
}
