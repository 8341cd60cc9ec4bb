//! Sockets handed to children: real servers whose sockets travel through fork and exec (git
//! daemon and its per-connection children, python's http.server running CGI scripts,
//! double-forking daemons, an inetd-style server that puts a connection on a shell's
//! standard streams, nginx daemonizing and upgrading its binary, an exec with a sanitised
//! environment), each run natively and under `virtuos-redirect run --net` with the same
//! results; after each test `virtuos-net` must hold no listener or connection of the test's
//! ports (TIME-WAIT sockets belong to no process and are fine).
//!
//! The helper programs are the Python scripts in `tests/descend/`. Needs the workspace's
//! binaries (`cargo build --workspace`); a test whose programs (git, python3, nginx, curl,
//! ss) are not installed says so and passes.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A helper script in `tests/descend/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/descend")
        .join(name)
}

/// Connects to 127.0.0.1:`port`, sends `send`, and reads until the server closes (within
/// `limit`).
fn exchange(port: u16, send: &[u8], limit: Duration) -> std::io::Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(send)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(got)
}

// ---------------------------------------------------------------------------------------
// git

/// The git configuration every git of these tests gets: no system or user configuration,
/// `safe.directory=*` (the repositories belong to whoever runs the test; a CGI runs as
/// nobody), an identity and fixed dates (the same commits every run).
fn git_env(cmd: &mut Command, home: &Path) {
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", home)
        .env("GIT_CONFIG_COUNT", "4")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .env("GIT_CONFIG_KEY_1", "user.name")
        .env("GIT_CONFIG_VALUE_1", "Virtuos Test")
        .env("GIT_CONFIG_KEY_2", "user.email")
        .env("GIT_CONFIG_VALUE_2", "test@virtuos.invalid")
        .env("GIT_CONFIG_KEY_3", "init.defaultBranch")
        .env("GIT_CONFIG_VALUE_3", "main")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
}

/// A native git command in `cwd`.
fn git_cmd(home: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    git_env(&mut cmd, home);
    cmd.current_dir(cwd).args(args);
    cmd
}

/// Runs native git; it must succeed. Its standard output.
fn git(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let f = Running::output(git_cmd(home, cwd, args));
    assert!(f.status.success(), "git {args:?}: {}", f.describe());
    f.out()
}

/// A repository with 3 commits (text files and a 256 KiB binary one) at `path`; its log.
fn make_repo(home: &Path, path: &Path) -> String {
    std::fs::create_dir_all(path).unwrap();
    git(home, path, &["init", "-q"]);
    for i in 1..=3u32 {
        std::fs::write(
            path.join(format!("file{i}.txt")),
            format!("commit {i}\n").repeat(100 * i as usize),
        )
        .unwrap();
        if i == 2 {
            std::fs::write(path.join("blob.bin"), data(256 << 10, i)).unwrap();
        }
        git(home, path, &["add", "-A"]);
        git(home, path, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    let log = git(home, path, &["log", "--format=%H %s"]);
    assert_eq!(log.lines().count(), 3, "{log}");
    log
}

/// Clones `url` into `dest` with a native git; the clone must pass `git fsck --full
/// --strict` and have the log `want_log`.
fn clone_and_check(home: &Path, url: &str, dest: &Path, want_log: &str, server: &str) {
    let parent = dest.parent().unwrap();
    let f = Running::output(git_cmd(
        home,
        parent,
        &["clone", "-q", url, dest.to_str().unwrap()],
    ));
    assert!(
        f.status.success(),
        "git clone {url} ({server}): {}",
        f.describe()
    );
    let fsck = Running::output(git_cmd(home, dest, &["fsck", "--full", "--strict"]));
    let said = format!("{}{}", fsck.out(), fsck.stderr);
    assert!(
        fsck.status.success()
            && !["error", "missing", "broken", "dangling", "corrupt"]
                .iter()
                .any(|w| said.contains(w)),
        "git fsck of a clone of {url} ({server}): {}",
        fsck.describe()
    );
    let log = git(home, dest, &["log", "--format=%H %s"]);
    assert_eq!(
        log, want_log,
        "the clone of {url} ({server}) has another log"
    );
    assert_eq!(
        std::fs::read(dest.join("blob.bin")).unwrap(),
        data(256 << 10, 2),
        "blob.bin of the clone of {url} ({server})"
    );
}

#[test]
fn git_daemon_clone() {
    if !have("git_daemon_clone", &["git", "ss"]) {
        return;
    }
    let dir = Scratch::new("git-daemon");
    let mut net = Domain::net(&dir);
    let base = dir.path("repos");
    let log = make_repo(&dir.0, &base.join("repo"));
    let mut ports = Vec::new();
    for n in [None, Some(&net)] {
        let port = free_port();
        ports.push(port);
        let mut cmd = program(n, "git");
        git_env(&mut cmd, &dir.0);
        cmd.args([
            "daemon",
            "--reuseaddr",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
            "--export-all",
        ])
        .arg(&base);
        let mut daemon = Running::spawn(cmd);
        wait_listening(port, &mut daemon);
        if let Some(n) = n {
            assert_net_listens(n, port);
        }
        for k in 0..2 {
            let dest = dir.path(&format!("clone-{}-{k}", how(n)));
            clone_and_check(
                &dir.0,
                &format!("git://127.0.0.1:{port}/repo"),
                &dest,
                &log,
                &format!("git daemon, {}", how(n)),
            );
        }
        daemon.check_alive();
        daemon.kill_now();
    }
    assert_released(&mut net, &ports);
}

// ---------------------------------------------------------------------------------------
// python's http.server with CGI scripts

/// Writes an executable script.
fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// POSTs `body` to `url` with a native curl; the response body.
fn curl_post(url: &str, body_file: &Path, server: &str) -> Vec<u8> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--fail",
        "--noproxy",
        "*",
        "--max-time",
        "30",
        "-H",
        "Expect:",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
    ])
    .arg(format!("@{}", body_file.display()))
    .arg(url);
    let f = Running::output(cmd);
    assert!(
        f.status.success(),
        "POST {url} ({server}): {}",
        f.describe()
    );
    f.stdout
}

#[test]
fn cgi_http_server_git_clone() {
    if !have(
        "cgi_http_server_git_clone",
        &["git", "python3", "curl", "ss"],
    ) {
        return;
    }
    let dir = Scratch::new("cgi");
    let mut net = Domain::net(&dir);
    let repos = dir.path("repos");
    let log = make_repo(&dir.0, &repos.join("repo"));
    let www = dir.path("www");
    let cgi = www.join("cgi-bin");
    std::fs::create_dir_all(&cgi).unwrap();
    let git_bin = find_program("git").unwrap();
    // python's CGI runs the scripts as nobody when it runs as root: everything must be
    // readable to others, and git must trust a repository of another user.
    write_script(
        &cgi.join("git"),
        &format!(
            "#!/bin/sh
export GIT_PROJECT_ROOT='{repos}'
export GIT_HTTP_EXPORT_ALL=1
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME='{repos}'
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'
exec '{git}' http-backend
",
            repos = repos.display(),
            git = git_bin.display()
        ),
    );
    write_script(
        &cgi.join("echo"),
        "#!/bin/sh
printf 'Content-Type: application/octet-stream\\r\\n\\r\\n'
head -c \"$CONTENT_LENGTH\"
",
    );
    let st = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(&dir.0)
        .status()
        .unwrap();
    assert!(st.success());
    let bodies = [
        (dir.path("body-10"), b"0123456789".to_vec()),
        (dir.path("body-100k"), data(100_000, 7)),
    ];
    for (p, b) in &bodies {
        std::fs::write(p, b).unwrap();
    }
    let mut ports = Vec::new();
    for n in [None, Some(&net)] {
        let port = free_port();
        ports.push(port);
        let mut cmd = program(n, "python3");
        cmd.args([
            "-m",
            "http.server",
            "--cgi",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&www);
        let mut server = Running::spawn(cmd);
        wait_listening(port, &mut server);
        if let Some(n) = n {
            assert_net_listens(n, port);
        }
        let what = format!("http.server --cgi, {}", how(n));
        for (p, b) in &bodies {
            let got = curl_post(&format!("http://127.0.0.1:{port}/cgi-bin/echo"), p, &what);
            if got != *b {
                let f = server.kill_now();
                panic!(
                    "POST of {} bytes to cgi-bin/echo ({what}) came back as {} bytes{}: {}",
                    b.len(),
                    got.len(),
                    if got.len() <= 64 {
                        format!(" ({:?})", String::from_utf8_lossy(&got))
                    } else {
                        String::new()
                    },
                    f.describe()
                );
            }
        }
        let dest = dir.path(&format!("clone-{}", how(n)));
        clone_and_check(
            &dir.0,
            &format!("http://127.0.0.1:{port}/cgi-bin/git/repo"),
            &dest,
            &log,
            &what,
        );
        server.check_alive();
        let f = server.kill_now();
        assert!(
            !f.stderr.contains("CGI script exit code") && !f.stderr.contains("Traceback"),
            "{what}: {}",
            f.describe()
        );
    }
    assert_released(&mut net, &ports);
}

// ---------------------------------------------------------------------------------------
// A double-forking daemon

/// Starts `double_fork.py` on a fresh port; its starter must exit at once and the daemon it
/// leaves must answer 3 connections with its pid, then end. The port.
fn double_fork_round(net: Option<&Domain>, dir: &Scratch, round: usize) -> u16 {
    let port = free_port();
    let log = dir.path(&format!("daemon-{}-{round}.log", how(net)));
    let mut cmd = program(net, "python3");
    cmd.arg(script("double_fork.py"))
        .arg(port.to_string())
        .arg(&log);
    let starter = Running::spawn(cmd);
    let starter_pid = starter.id();
    let f = starter.finish(Duration::from_secs(20));
    let what = format!("double-forking daemon, {}, round {round}", how(net));
    assert!(f.status.success(), "{what}: starter: {}", f.describe());
    if let Some(n) = net {
        // Its starter is gone: the listener lives on for the daemon.
        assert_net_listens(n, port);
    }
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut pids = Vec::new();
    for k in 0..3 {
        let got = exchange(port, b"", Duration::from_secs(10)).unwrap_or_else(|e| {
            panic!(
                "{what}: connection {k} to port {port}: {e}\ndaemon log:\n{}",
                log_text()
            )
        });
        let text = String::from_utf8_lossy(&got);
        let pid: u32 = text.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{what}: connection {k} got {text:?}, not a pid\ndaemon log:\n{}",
                log_text()
            )
        });
        pids.push(pid);
    }
    assert!(
        pids.iter().all(|&p| p == pids[0]) && pids[0] != starter_pid,
        "{what}: pids {pids:?} (the starter was {starter_pid}): not one daemon"
    );
    assert!(
        wait_for(Duration::from_secs(10), || process_ended(pids[0])),
        "{what}: the daemon {} did not end after its 3 connections",
        pids[0]
    );
    assert_eq!(log_text(), "", "{what}: the daemon complained");
    port
}

#[test]
fn daemon_double_fork() {
    if !have("daemon_double_fork", &["python3", "ss"]) {
        return;
    }
    let dir = Scratch::new("double-fork");
    let mut net = Domain::net(&dir);
    let mut ports = vec![double_fork_round(None, &dir, 0)];
    for round in 0..10 {
        ports.push(double_fork_round(Some(&net), &dir, round));
    }
    assert_released(&mut net, &ports);
}

// ---------------------------------------------------------------------------------------
// A child killed before it adopted

/// How long after `fork_killed.py` closed its listener (with its child killed at once after
/// the fork) port `port` could be listened on again, by this test process (not redirected).
fn free_again_after(port: u16) -> Duration {
    let t = Instant::now();
    loop {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            drop(l);
            return t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(40) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_child_killed_before_it_adopted_keeps_nothing() {
    if !have(
        "a_child_killed_before_it_adopted_keeps_nothing",
        &["python3"],
    ) {
        return;
    }
    let dir = Scratch::new("fork-killed");
    let net = Domain::net(&dir);
    for n in [None, Some(&net)] {
        let mut cmd = program(n, "python3");
        cmd.arg(script("fork_killed.py"));
        let mut p = Running::spawn(cmd);
        let mut slowest = Duration::ZERO;
        for round in 0..10 {
            let port: u16 = p.line(START).parse().unwrap_or_else(|e| {
                let f = p.kill_now();
                panic!("{}: round {round}: no port ({e}): {}", how(n), f.describe())
            });
            let took = free_again_after(port);
            slowest = slowest.max(took);
            // Linux frees the port at the close (the child died first). Through the network
            // domain the snapshot a fork token held goes at the next purge (each second).
            assert!(
                took < Duration::from_secs(4),
                "{}: round {round}: port {port} stayed bound {took:?} after its last holder closed it",
                how(n)
            );
            p.send("next\n");
        }
        assert_eq!(p.line(START), "done");
        println!("{}: slowest release {slowest:?}", how(n));
        let f = p.finish(LIMIT);
        assert!(f.status.success(), "{}: {}", how(n), f.describe());
    }
}

// ---------------------------------------------------------------------------------------
// An inetd-style server

/// Runs `inetd.py` for 5 connections; what each connection got back.
fn inetd_round(net: Option<&Domain>) -> (u16, Vec<Vec<u8>>) {
    let port = free_port();
    let mut cmd = program(net, "python3");
    cmd.arg(script("inetd.py")).arg(port.to_string()).arg("5");
    let mut server = Running::spawn(cmd);
    assert_eq!(server.line(START), "ready");
    if let Some(n) = net {
        assert_net_listens(n, port);
    }
    let mut replies = Vec::new();
    for i in 0..5 {
        match exchange(
            port,
            format!("hello {i}\n").as_bytes(),
            Duration::from_secs(10),
        ) {
            Ok(r) => replies.push(r),
            Err(e) => {
                let f = server.kill_now();
                panic!(
                    "inetd-style server ({}): connection {i}: {e}: {}",
                    how(net),
                    f.describe()
                );
            }
        }
    }
    let f = server.finish(Duration::from_secs(20));
    assert!(
        f.status.success() && f.out() == "ready\nserved 5, 0 failed\n",
        "inetd-style server ({}): {}",
        how(net),
        f.describe()
    );
    (port, replies)
}

#[test]
fn inetd_style_server() {
    if !have("inetd_style_server", &["python3", "ss"]) {
        return;
    }
    let dir = Scratch::new("inetd");
    let mut net = Domain::net(&dir);
    let hostname =
        String::from_utf8_lossy(&std::fs::read("/etc/hostname").unwrap_or_default()).into_owned();
    let (native_port, native) = inetd_round(None);
    let (port, redirected) = inetd_round(Some(&net));
    for (i, (r, n)) in redirected.iter().zip(&native).enumerate() {
        let want = format!("got hello {i}\n{hostname}bye\n");
        assert_eq!(
            String::from_utf8_lossy(n),
            want,
            "native connection {i} got another answer"
        );
        assert_eq!(
            String::from_utf8_lossy(r),
            String::from_utf8_lossy(n),
            "redirected connection {i} differs from the native one"
        );
    }
    assert_released(&mut net, &[native_port, port]);
}

// ---------------------------------------------------------------------------------------
// nginx as a daemon

/// The small file every nginx test fetches.
const SMALL: &[u8] = b"a small file served by nginx\n";

/// An nginx configuration `NAME.conf` in `dir` for a daemonizing nginx (master and 2
/// workers) on 127.0.0.1:`port`, with pid file `NAME.pid` and error log `NAME.error.log`,
/// serving `DIR/www`.
fn nginx_conf(dir: &Scratch, name: &str, port: u16) -> PathBuf {
    let d = dir.0.display();
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("small.txt"), SMALL).unwrap();
    let conf = format!(
        "worker_processes 2;
daemon on;
master_process on;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log notice;
events {{ use epoll; worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/{name}-client_body;
    proxy_temp_path {d}/{name}-proxy;
    fastcgi_temp_path {d}/{name}-fastcgi;
    uwsgi_temp_path {d}/{name}-uwsgi;
    scgi_temp_path {d}/{name}-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"
    );
    let path = dir.path(&format!("{name}.conf"));
    std::fs::write(&path, conf).unwrap();
    path
}

/// A daemonized nginx this test started.
struct Nginx {
    what: String,
    pidfile: PathBuf,
    error_log: PathBuf,
    master: u32,
}

impl Nginx {
    /// Starts nginx (by its full path, which its binary upgrade execs) with `NAME.conf`;
    /// the starter must exit 0 once the daemon is on its way, and the daemon must write its
    /// pid file.
    fn start(nginx: &Path, net: Option<&Domain>, dir: &Scratch, name: &str, port: u16) -> Nginx {
        let conf = nginx_conf(dir, name, port);
        let pidfile = dir.path(&format!("{name}.pid"));
        let error_log = dir.path(&format!("{name}.error.log"));
        let what = format!("nginx {name} ({}) on port {port}", how(net));
        let mut cmd = program(net, nginx.to_str().unwrap());
        cmd.arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log);
        let f = Running::spawn(cmd).finish(Duration::from_secs(20));
        let log = || std::fs::read_to_string(&error_log).unwrap_or_default();
        assert!(
            f.status.success(),
            "{what}: the starter failed: {}\nerror log:\n{}",
            f.describe(),
            log()
        );
        assert!(
            wait_for(Duration::from_secs(10), || read_pid(&pidfile).is_some()),
            "{what}: no pid file\nerror log:\n{}",
            log()
        );
        let master = read_pid(&pidfile).unwrap();
        Nginx {
            what,
            pidfile,
            error_log,
            master,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// A GET of the small file must succeed.
    fn check_serves(&self, port: u16) {
        match http_get(port, "/small.txt", Duration::from_secs(10)) {
            Ok(r) if r.status == 200 && r.body == SMALL => {}
            other => panic!(
                "{}: GET /small.txt: {other:?}\nerror log:\n{}",
                self.what,
                self.log()
            ),
        }
    }

    /// A graceful stop (SIGQUIT to the master): the pid file must vanish and the master
    /// end; nothing worse than a warning may have been logged.
    fn stop(self) {
        kill(self.master, libc::SIGQUIT);
        assert!(
            wait_for(Duration::from_secs(10), || !self.pidfile.exists()),
            "{}: the pid file stayed after SIGQUIT\nerror log:\n{}",
            self.what,
            self.log()
        );
        assert!(
            wait_for(Duration::from_secs(10), || process_ended(self.master)),
            "{}: the master {} did not end after SIGQUIT",
            self.what,
            self.master
        );
        self.check_log();
    }

    fn check_log(&self) {
        let log = self.log();
        for bad in ["[emerg]", "[alert]", "[crit]"] {
            assert!(!log.contains(bad), "{}: logged {bad}:\n{log}", self.what);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A failed test must not leave a daemon behind, nor its workers (they outlive a
        // killed master) or a new master it started.
        if !process_ended(self.master) {
            for p in descendants(self.master).into_iter().chain([self.master]) {
                // SAFETY: kill(2) of the nginx master this test started, or a process it
                // started.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn nginx_daemon_on_starts_20_times() {
    let Some(nginx) = find_program("nginx") else {
        println!("skipping nginx_daemon_on_starts_20_times: nginx is not installed");
        return;
    };
    if !have("nginx_daemon_on_starts_20_times", &["ss"]) {
        return;
    }
    let dir = Scratch::new("nginx-starts");
    let mut net = Domain::net(&dir);
    let native_port = free_port();
    let n = Nginx::start(&nginx, None, &dir, "native", native_port);
    n.check_serves(native_port);
    n.stop();
    let port = free_port();
    let t0 = Instant::now();
    for round in 0..20 {
        let n = Nginx::start(&nginx, Some(&net), &dir, "redirected", port);
        assert_net_listens(&net, port);
        n.check_serves(port);
        n.stop();
        let left = {
            let deadline = Instant::now() + RELEASE;
            loop {
                let left = sockets_held(net.pid(), &[port]);
                if left.is_empty() || Instant::now() > deadline {
                    break left;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        assert!(
            left.is_empty(),
            "round {round}: virtuos-net still holds sockets of port {port} after nginx \
             stopped:\n{}",
            left.join("\n")
        );
    }
    println!("20 redirected nginx starts and stops in {:?}", t0.elapsed());
    assert_released(&mut net, &[native_port, port]);
}

/// What a load loop saw.
struct Load {
    ok: u64,
    failures: Vec<String>,
}

/// Two threads doing sequential GETs of the small file, a fresh connection each, until
/// `stop`.
fn load(port: u16, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Load>> {
    (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut l = Load {
                    ok: 0,
                    failures: Vec::new(),
                };
                while !stop.load(Ordering::Relaxed) {
                    match http_get(port, "/small.txt", Duration::from_secs(10)) {
                        Ok(r) if r.status == 200 && r.body == SMALL => l.ok += 1,
                        Ok(r) => l.failures.push(format!(
                            "status {} with {} bytes",
                            r.status,
                            r.body.len()
                        )),
                        Err(e) => l.failures.push(format!("{:?}: {e}", e.kind())),
                    }
                }
                l
            })
        })
        .collect()
}

/// An nginx binary upgrade (USR2, then QUIT to the old master) under a load of sequential
/// GETs; no GET may fail, and the new master must serve afterwards. The port.
fn upgrade_round(nginx: &Path, net: Option<&Domain>, dir: &Scratch) -> u16 {
    let port = free_port();
    let name = how(net);
    let n = Nginx::start(nginx, net, dir, name, port);
    n.check_serves(port);
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = load(port, stop.clone());
    let finish_load = |stop: &AtomicBool, loaders: Vec<std::thread::JoinHandle<Load>>| {
        stop.store(true, Ordering::Relaxed);
        let mut all = Load {
            ok: 0,
            failures: Vec::new(),
        };
        for l in loaders {
            let l = l.join().unwrap();
            all.ok += l.ok;
            all.failures.extend(l.failures);
        }
        all
    };
    std::thread::sleep(Duration::from_millis(700));
    let oldbin = dir.path(&format!("{name}.pid.oldbin"));
    kill(n.master, libc::SIGUSR2);
    let upgraded = wait_for(Duration::from_secs(10), || {
        read_pid(&oldbin) == Some(n.master) && read_pid(&n.pidfile).is_some_and(|p| p != n.master)
    });
    if !upgraded {
        let l = finish_load(&stop, loaders);
        panic!(
            "{}: no new master within 10 s of SIGUSR2 ({} GETs, failures {:?})\nerror log:\n{}",
            n.what,
            l.ok,
            l.failures,
            n.log()
        );
    }
    let new_master = read_pid(&n.pidfile).unwrap();
    let new = Nginx {
        what: format!("{} (the upgraded master {new_master})", n.what),
        pidfile: n.pidfile.clone(),
        error_log: n.error_log.clone(),
        master: new_master,
    };
    // Both generations serve for a while.
    std::thread::sleep(Duration::from_millis(700));
    kill(n.master, libc::SIGQUIT);
    let old_ended = wait_for(Duration::from_secs(10), || process_ended(n.master));
    let oldbin_gone = wait_for(Duration::from_secs(5), || !oldbin.exists());
    // The new generation alone.
    std::thread::sleep(Duration::from_millis(700));
    let l = finish_load(&stop, loaders);
    println!(
        "{}: {} GETs during the binary upgrade, {} failed",
        n.what,
        l.ok,
        l.failures.len()
    );
    assert!(
        old_ended && oldbin_gone,
        "{}: the old master {} did not end after SIGQUIT\nerror log:\n{}",
        n.what,
        n.master,
        n.log()
    );
    assert!(
        l.failures.is_empty() && l.ok > 0,
        "{}: {} GETs succeeded, {} failed during the binary upgrade: {:?}\nerror log:\n{}",
        n.what,
        l.ok,
        l.failures.len(),
        &l.failures[..l.failures.len().min(20)],
        n.log()
    );
    if let Some(net) = net {
        assert_net_listens(net, port);
    }
    n.check_log();
    new.check_serves(port);
    new.stop();
    port
}

#[test]
fn nginx_binary_upgrade_under_load() {
    let Some(nginx) = find_program("nginx") else {
        println!("skipping nginx_binary_upgrade_under_load: nginx is not installed");
        return;
    };
    if !have("nginx_binary_upgrade_under_load", &["ss"]) {
        return;
    }
    let dir = Scratch::new("nginx-upgrade");
    let mut net = Domain::net(&dir);
    let native_port = upgrade_round(&nginx, None, &dir);
    let port = upgrade_round(&nginx, Some(&net), &dir);
    assert_released(&mut net, &[native_port, port]);
}

/// Three configuration reloads (SIGHUP: new workers, old ones finish gracefully) under a
/// load of sequential GETs on fresh connections: none may fail. The port.
fn reload_round(nginx: &Path, net: Option<&Domain>, dir: &Scratch) -> u16 {
    let port = free_port();
    let name = format!("reload-{}", how(net));
    let n = Nginx::start(nginx, net, dir, &name, port);
    n.check_serves(port);
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = load(port, stop.clone());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        kill(n.master, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for l in loaders {
        let l = l.join().unwrap();
        ok += l.ok;
        failures.extend(l.failures);
    }
    println!(
        "{}: {ok} GETs during 3 reloads, {} failed",
        n.what,
        failures.len()
    );
    assert!(
        failures.is_empty() && ok > 0,
        "{}: {ok} GETs succeeded, {} failed during reloads: {:?}\nerror log:\n{}",
        n.what,
        failures.len(),
        &failures[..failures.len().min(20)],
        n.log()
    );
    n.check_log();
    n.check_serves(port);
    n.stop();
    port
}

#[test]
fn nginx_reload_under_load() {
    let Some(nginx) = find_program("nginx") else {
        println!("skipping nginx_reload_under_load: nginx is not installed");
        return;
    };
    if !have("nginx_reload_under_load", &["ss"]) {
        return;
    }
    let dir = Scratch::new("nginx-reload");
    let mut net = Domain::net(&dir);
    let native_port = reload_round(&nginx, None, &dir);
    let port = reload_round(&nginx, Some(&net), &dir);
    assert_released(&mut net, &[native_port, port]);
}

// ---------------------------------------------------------------------------------------
// run is the program

/// `sh -c SCRIPT`, natively or redirected, its stdout piped: the child and its output.
fn sh(net: Option<&Domain>, script: &str) -> std::process::Child {
    let mut cmd = program(net, "sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().unwrap()
}

/// Waits for `child` within [`LIMIT`] (killing it after that).
fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not end within {LIMIT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_is_the_program() {
    if !have("run_is_the_program", &["sh", "ss"]) {
        return;
    }
    let dir = Scratch::new("run-is");
    let mut net = Domain::net(&dir);
    for n in [None, Some(&net)] {
        // The program's pid is the one its starter knows.
        let mut child = sh(n, "echo $$");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let st = wait_child(&mut child);
        assert!(st.success(), "sh -c 'echo $$' ({}): {st}", how(n));
        assert_eq!(
            out.trim(),
            child.id().to_string(),
            "sh -c 'echo $$' ({}): the program's pid is not the one spawned",
            how(n)
        );
        // Its exit status is the one its starter sees.
        let mut child = sh(n, "exit 7");
        let st = wait_child(&mut child);
        assert_eq!(st.code(), Some(7), "sh -c 'exit 7' ({}): {st}", how(n));
        let mut child = sh(n, "kill -TERM $$; sleep 10");
        let st = wait_child(&mut child);
        assert_eq!(
            st.signal(),
            Some(libc::SIGTERM),
            "sh -c 'kill -TERM $$' ({}): {st}",
            how(n)
        );
        // A signal sent to the pid it was spawned as reaches the program.
        let mut child = sh(n, "echo $$; exec sleep 30");
        let mut line = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut b = [0u8; 1];
        while stdout.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
        assert_eq!(line, child.id().to_string(), "({})", how(n));
        // The shell prints before it execs: wait until `sleep`'s own image is loaded (its
        // comm, then libc mapped by the loader, which maps a preload before libc).
        let mut maps = String::new();
        for _ in 0..200 {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
            maps =
                std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap_or_default();
            if comm.trim() == "sleep" && maps.contains("libc.so") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            maps.contains("libvirtuos_preload"),
            n.is_some(),
            "({}): the shim is {}loaded in the program",
            how(n),
            if n.is_some() { "not " } else { "" }
        );
        kill(child.id(), libc::SIGTERM);
        let st = wait_child(&mut child);
        assert_eq!(
            st.signal(),
            Some(libc::SIGTERM),
            "sleep killed by SIGTERM ({}): {st}",
            how(n)
        );
    }
    assert_released(&mut net, &[]);
}

// ---------------------------------------------------------------------------------------
// exec with a sanitised environment

/// Runs `exec_env.py`: a listener, an execve with the environment {X: 1}, the listener
/// taken by its number after it. Its output.
fn exec_env_round(net: Option<&Domain>) -> (u16, String) {
    let port = free_port();
    let mut cmd = program(net, "python3");
    cmd.arg(script("exec_env.py"))
        .arg("start")
        .arg(port.to_string());
    let mut prog = Running::spawn(cmd);
    let what = format!("exec with a sanitised environment ({})", how(net));
    for _ in 0..3 {
        prog.line(START);
    }
    assert_eq!(prog.line(START), "ready", "{what}");
    if let Some(n) = net {
        assert_net_listens(n, port);
    }
    let got = match exchange(port, b"ping\n", Duration::from_secs(10)) {
        Ok(g) => g,
        Err(e) => {
            let f = prog.kill_now();
            panic!("{what}: connecting to port {port}: {e}: {}", f.describe());
        }
    };
    let f = prog.finish(Duration::from_secs(20));
    assert!(f.status.success(), "{what}: {}", f.describe());
    assert_eq!(
        String::from_utf8_lossy(&got),
        "echo: ping\n",
        "{what}: {}",
        f.describe()
    );
    (port, f.out())
}

#[test]
fn exec_with_sanitised_env_keeps_sockets() {
    if !have("exec_with_sanitised_env_keeps_sockets", &["python3", "ss"]) {
        return;
    }
    let dir = Scratch::new("exec-env");
    let mut net = Domain::net(&dir);
    let (native_port, native) = exec_env_round(None);
    assert_eq!(
        native,
        "env X=1\nfamily AF_INET type SOCK_STREAM\nname 127.0.0.1 port ok\nready\ndone\n"
    );
    let (port, redirected) = exec_env_round(Some(&net));
    assert_eq!(redirected, native, "redirected and native runs differ");
    assert_released(&mut net, &[native_port, port]);
}

// ---------------------------------------------------------------------------------------
// sshd: privilege separation (a child that chroots, then drops its uid), remote commands,
// scp and sftp

/// One sshd round (native or redirected) on a fresh port: a remote command's stdout, stderr
/// and exit status, a file up with `scp -O` and with sftp, one down with `cat`, compared
/// byte for byte. Returns the port.
fn sshd_round(sshd: &Path, net: Option<&Domain>, dir: &Scratch) -> u16 {
    let port = free_port();
    let d = dir.path(&format!("ssh-{}", how(net)));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    for key in ["host", "client"] {
        let k = d.join(key);
        if !k.exists() {
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&k)
                .output()
                .unwrap();
            assert!(o.status.success(), "ssh-keygen: {o:?}");
        }
    }
    std::fs::copy(d.join("client.pub"), d.join("authorized")).unwrap();
    let conf = d.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nPidFile {d}/sshd.pid\n\
             Subsystem sftp internal-sftp\n",
            d = d.display()
        ),
    )
    .unwrap();
    let mut cmd = program(net, sshd.to_str().unwrap());
    cmd.arg("-D").arg("-e").arg("-f").arg(&conf);
    let mut server = Running::spawn(cmd);
    wait_listening(port, &mut server);
    if let Some(n) = net {
        assert_net_listens(n, port);
    }
    let client = |prog: &str| {
        let mut c = Command::new(prog);
        c.arg("-i")
            .arg(d.join("client"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]);
        c
    };
    let target = "root@127.0.0.1";
    let mut c = client("ssh");
    c.args([
        "-p",
        &port.to_string(),
        target,
        "echo out; echo err >&2; exit 3",
    ]);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(3), "ssh {}: {o:?}", how(net));
    assert_eq!(o.stdout, b"out\n", "ssh {}: {o:?}", how(net));
    assert_eq!(o.stderr, b"err\n", "ssh {}: {o:?}", how(net));
    let blob = data(300_000, 7);
    std::fs::write(d.join("blob"), &blob).unwrap();
    for (name, legacy) in [("scp-copy", true), ("sftp-copy", false)] {
        let mut c = client("scp");
        if legacy {
            c.arg("-O");
        }
        c.args(["-P", &port.to_string()])
            .arg(d.join("blob"))
            .arg(format!("{target}:{}", d.join(name).display()));
        let o = c.output().unwrap();
        assert!(o.status.success(), "{name} {}: {o:?}", how(net));
        assert_eq!(
            std::fs::read(d.join(name)).unwrap(),
            blob,
            "{name} {}",
            how(net)
        );
    }
    let mut c = client("ssh");
    c.args(["-p", &port.to_string(), target])
        .arg(format!("cat {}", d.join("blob").display()));
    let o = c.output().unwrap();
    assert!(o.status.success(), "ssh cat {}: {o:?}", how(net));
    assert_eq!(o.stdout, blob, "ssh cat {}", how(net));
    let f = server.kill_now();
    let log = f.describe();
    assert!(
        !log.contains("virtuos:"),
        "the shim complained ({}): {log}",
        how(net)
    );
    port
}

#[test]
fn sshd_commands_scp_and_sftp() {
    if !have(
        "sshd_commands_scp_and_sftp",
        &["ssh", "scp", "ssh-keygen", "ss"],
    ) {
        return;
    }
    let Some(sshd) = find_program("sshd").or_else(|| {
        Path::new("/usr/sbin/sshd")
            .exists()
            .then(|| PathBuf::from("/usr/sbin/sshd"))
    }) else {
        println!("skipping sshd_commands_scp_and_sftp: sshd is not installed (openssh-server)");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipping sshd_commands_scp_and_sftp: sshd needs root");
        return;
    }
    let dir = Scratch::new("sshd");
    let mut net = Domain::net(&dir);
    let native = sshd_round(&sshd, None, &dir);
    let port = sshd_round(&sshd, Some(&net), &dir);
    assert_released(&mut net, &[native, port]);
}

#[test]
fn socket_tables_show_the_programs_own_sockets() {
    // A redirected program's sockets live in the network domain's namespace: its own
    // /proc/net/tcp and `ss -tln` must list its listener there, as a native program's list its
    // own; from outside the namespace the listener is not in this one's tables.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating a network namespace needs root");
        return;
    }
    if !have(
        "socket_tables_show_the_programs_own_sockets",
        &["ip", "ss", "python3"],
    ) {
        return;
    }
    let ns = format!("virtuos-tab{}", std::process::id());
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok(Command::new("ip").args(["netns", "add", &ns])),
        "ip netns add {ns}"
    );
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(ns.clone());
    assert!(ok(
        Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
    ));
    let dir = Scratch::new("net-tables");
    let mut net = Domain::net_in(&dir, &ns);
    let expect =
        "/proc/net/tcp lists it: True\n/proc/self/net/tcp lists it: True\nss -tln lists it: True\n";
    let mut ports = Vec::new();
    for via in [None, Some(&net)] {
        let mut cmd = program(via, "python3");
        cmd.arg(script("net_tables.py"));
        let mut p = Running::spawn(cmd);
        let first = p.line(START);
        let port: u16 = first
            .strip_prefix("port ")
            .and_then(|x| x.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: {first:?}", how(via)));
        let mut seen = String::new();
        for _ in 0..3 {
            seen.push_str(&p.line(START));
            seen.push('\n');
        }
        assert_eq!(seen, expect, "{}: the program's own view", how(via));
        // From this namespace: a native listener is here, a redirected one is not.
        let here = Command::new("ss")
            .args(["-Htln", "sport", "=", &format!(":{port}")])
            .output()
            .unwrap();
        let here = String::from_utf8_lossy(&here.stdout).trim().to_string();
        assert_eq!(
            !here.is_empty(),
            via.is_none(),
            "{}: ss here shows {here:?}",
            how(via)
        );
        p.send("done\n");
        let f = p.finish(LIMIT);
        assert!(f.status.success(), "{}: {}", how(via), f.describe());
        if via.is_some() {
            ports.push(port);
        }
    }
    assert_released(&mut net, &ports);
}
