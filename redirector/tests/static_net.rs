//! Statically linked programs through the network domain (the supervised mode, which the
//! preload shim cannot replace for them): busybox `httpd` forking per connection, busybox `nc`
//! as a server and, under a static busybox `sh`, as a client, and a Go program (`net/http`
//! over epoll and non-blocking sockets) serving and fetching. Each is compared with the same
//! program run natively; the redirected sockets must be held by `virtuos-net` while in use
//! and released after.
//!
//! Needs the workspace's binaries (`cargo build --workspace`), busybox-static and golang-go
//! (scripts/setup.sh installs both).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BUSYBOX: &str = "/usr/bin/busybox";

fn need_busybox() {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} (busybox-static) is required: scripts/setup.sh installs it"
    );
}

/// `prog args` run natively, or supervised through `net`.
fn cmd(net: Option<&Domain>, prog: &str, args: &[&str]) -> Command {
    let mut c = program(net, prog);
    c.args(args);
    c
}

/// The pid holding a TCP socket listening on `port` (IPv4 or IPv6), from `ss -tlnp`.
fn listening_pid(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Htlnp", "sport", "=", &format!(":{port}")])
        .output()
        .expect("running ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")?;
    text[at + 4..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Waits until something listens on TCP port `port` without connecting to it (a program
/// that accepts once would take the probe for its client); returns the listener's holder.
fn wait_bound(port: u16, server: &mut Running) -> u32 {
    let mut pid = None;
    let ok = wait_for(START, || {
        server.check_alive();
        pid = listening_pid(port);
        pid.is_some()
    });
    if !ok {
        let f = server.kill_now();
        panic!("nothing listens on port {port}: {}", f.describe());
    }
    pid.unwrap()
}

/// A small site in `dir`/www: an index page and a MiB of pseudo-random bytes.
fn site(dir: &Path) -> (PathBuf, Vec<u8>) {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("index.html"),
        b"<p>hello from a static program</p>\n",
    )
    .unwrap();
    let big = data(1 << 20, 7);
    std::fs::write(www.join("big.bin"), &big).unwrap();
    (www, big)
}

/// Status and body of each path, `rounds` times, from the server on `port`.
fn fetch_all(port: u16, paths: &[&str], rounds: usize) -> Vec<(u16, Vec<u8>)> {
    let mut got = Vec::new();
    for _ in 0..rounds {
        for p in paths {
            let r = http_get(port, p, LIMIT).unwrap_or_else(|e| panic!("GET {p}: {e}"));
            got.push((r.status, r.body));
        }
    }
    got
}

/// How a server under test runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// Natively, serving the local copy of the site.
    Native,
    /// Supervised with the network domain, serving the local copy.
    Net,
    /// Started by a redirected (dynamic) shell with both domains, which hands the static
    /// program to the supervised mode at `exec`; it serves the copy in the storage export
    /// through the mount.
    Both,
}

#[test]
fn busybox_httpd_serves_through_the_network_domain() {
    need_busybox();
    let dir = Scratch::new("static-httpd");
    let (www, big) = site(&dir.0);
    let export = dir.path("export");
    std::fs::create_dir_all(&export).unwrap();
    site(&export);
    let mut net = Domain::net(&dir);
    let storage = Domain::storage(&dir, &export);
    let mount = format!("/virtuos-static-{}", std::process::id());
    let paths = ["/index.html", "/big.bin", "/missing"];
    let mut results = Vec::new();
    let mut ports = Vec::new();
    for via in [Via::Native, Via::Net, Via::Both] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let c = match via {
            Via::Native | Via::Net => cmd(
                (via == Via::Net).then_some(&net),
                BUSYBOX,
                &["httpd", "-f", "-p", &listen, "-h", www.to_str().unwrap()],
            ),
            Via::Both => {
                let mut c = Command::new(bin("virtuos-redirect"));
                c.args(["run", "--net"])
                    .arg(&net.sock)
                    .arg("--storage")
                    .arg(&storage.sock)
                    .args(["--mount", &mount, "--", "/bin/sh", "-c"])
                    .arg(format!(
                        "exec {BUSYBOX} httpd -f -p {listen} -h {mount}/www"
                    ))
                    .env("VIRTUOS_PRELOAD", bin("libvirtuos_preload.so"));
                c
            }
        };
        let mut server = Running::spawn(c);
        wait_bound(port, &mut server);
        if via == Via::Native {
            assert_ne!(listener_owner(port), Some(net.pid()));
        } else {
            assert_net_listens(&net, port);
            ports.push(port);
        }
        let got = fetch_all(port, &paths, 3);
        // Eight clients at once, each served by a child httpd forked for its connection.
        let many: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(move || http_get(port, "/big.bin", LIMIT)))
            .collect();
        for t in many {
            let r = t.join().unwrap().expect("concurrent GET /big.bin");
            assert_eq!(r.status, 200, "{via:?}: concurrent GET");
            assert!(r.body == big, "{via:?}: concurrent GET: body differs");
        }
        server.signal_group(libc::SIGTERM);
        let _ = server.finish(LIMIT);
        results.push(got);
    }
    let native = &results[0];
    for (via, redirected) in [(Via::Net, &results[1]), (Via::Both, &results[2])] {
        assert_eq!(native.len(), redirected.len());
        for (i, (n, r)) in native.iter().zip(redirected).enumerate() {
            let p = paths[i % paths.len()];
            assert_eq!(
                n.0, r.0,
                "{via:?}: GET {p}: status native {} redirected {}",
                n.0, r.0
            );
            assert!(
                n.1 == r.1,
                "{via:?}: GET {p}: bodies differ ({} vs {} bytes)",
                n.1.len(),
                r.1.len()
            );
        }
    }
    assert!(
        native[1].1 == big,
        "the native server's big.bin differs from the file"
    );
    assert_released(&mut net, &ports);
}

#[test]
fn busybox_nc_listens_and_connects_through_the_network_domain() {
    need_busybox();
    let dir = Scratch::new("static-nc");
    let mut net = Domain::net(&dir);
    let payload = data(1 << 20, 11);
    let input = dir.path("in.bin");
    std::fs::write(&input, &payload).unwrap();
    let mut ports = Vec::new();
    // The last round: a redirected (dynamic) shell runs nc, which the shim hands to the
    // supervised mode at exec.
    for (via, shell) in [
        (None, BUSYBOX),
        (Some(&net), BUSYBOX),
        (Some(&net), "/bin/sh"),
    ] {
        // nc as the server: a client sends a MiB and closes; nc prints it and ends.
        let port = free_port();
        let mut server = Running::spawn(cmd(via, BUSYBOX, &["nc", "-l", "-p", &port.to_string()]));
        let holder = wait_bound(port, &mut server);
        if let Some(n) = via {
            assert_eq!(
                holder,
                n.pid(),
                "nc's listener on port {port} is not held by virtuos-net"
            );
            ports.push(port);
        } else {
            assert_ne!(holder, net.pid());
        }
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(&payload).unwrap();
        drop(c);
        let f = server.finish(LIMIT);
        assert!(f.status.success(), "{} nc -l: {}", how(via), f.describe());
        assert!(
            f.stdout == payload,
            "{} nc -l printed {} bytes, not the {} sent",
            how(via),
            f.stdout.len(),
            payload.len()
        );

        // nc as the client, run by a static shell that redirects its input from a file: it
        // sends the file, shuts its side down, and prints what the server answers (the
        // bytes reversed) until the server closes.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let script = format!("{BUSYBOX} nc 127.0.0.1 {port} < {}", input.display());
        let client = if shell == BUSYBOX {
            Running::spawn(cmd(via, BUSYBOX, &["sh", "-c", &script]))
        } else {
            Running::spawn(cmd(via, shell, &["-c", &script]))
        };
        let (mut s, _) = l.accept().unwrap();
        if let Some(n) = via {
            let held = sockets_held(n.pid(), &[port]);
            assert!(
                !held.is_empty(),
                "the static nc's connection to port {port} is not held by virtuos-net: {held:?}"
            );
            ports.push(port);
        }
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert!(got == payload, "{} nc sent {} bytes", how(via), got.len());
        let back: Vec<u8> = got.iter().rev().copied().collect();
        s.write_all(&back).unwrap();
        drop(s);
        let f = client.finish(LIMIT);
        assert!(f.status.success(), "{} nc: {}", how(via), f.describe());
        assert!(
            f.stdout == back,
            "{} nc printed {} bytes, not the {} the server answered",
            how(via),
            f.stdout.len(),
            back.len()
        );
    }
    assert_released(&mut net, &ports);
}

/// Builds the Go helper (`tests/net/gohttp`) statically into `dir`.
fn build_go(dir: &Scratch) -> PathBuf {
    let go = find_program("go")
        .expect("go (golang-go) is required to build the static Go test program: scripts/setup.sh installs it");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/net/gohttp/main.go");
    let out = dir.path("gohttp");
    let st = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.path("gocache"))
        .env("GOPATH", dir.path("gopath"))
        .env("HOME", dir.path("."))
        .status()
        .expect("running go build");
    assert!(st.success(), "go build of {} failed", src.display());
    out
}

#[test]
fn go_net_http_serves_and_fetches_through_the_network_domain() {
    let dir = Scratch::new("static-go");
    let (www, big) = site(&dir.0);
    let gohttp = build_go(&dir);
    let gohttp = gohttp.to_str().unwrap();
    let mut net = Domain::net(&dir);
    let paths = ["/big.bin", "/index.html", "/missing"];
    let mut results = Vec::new();
    let mut ports = Vec::new();
    for via in [None, Some(&net)] {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut server = Running::spawn(cmd(via, gohttp, &["serve", &addr, www.to_str().unwrap()]));
        let line = server.line(START);
        assert!(
            line.starts_with("listening on"),
            "{} gohttp: {line:?}",
            how(via)
        );
        if let Some(n) = via {
            assert_net_listens(n, port);
            ports.push(port);
        }
        let got = fetch_all(port, &paths, 3);
        // The Go client, run the same way, against the same server.
        let f = Running::output(cmd(
            via,
            gohttp,
            &["get", &format!("http://{addr}/big.bin")],
        ));
        assert!(
            f.status.success(),
            "{} gohttp get: {}",
            how(via),
            f.describe()
        );
        assert!(
            f.stdout == big,
            "{} gohttp get: {} bytes",
            how(via),
            f.stdout.len()
        );
        server.signal_group(libc::SIGTERM);
        let _ = server.finish(LIMIT);
        results.push(got);
    }
    for (i, (n, r)) in results[0].iter().zip(&results[1]).enumerate() {
        let p = paths[i % paths.len()];
        assert_eq!(
            n.0, r.0,
            "GET {p}: status native {} redirected {}",
            n.0, r.0
        );
        assert!(
            n.1 == r.1,
            "GET {p}: bodies differ ({} vs {} bytes)",
            n.1.len(),
            r.1.len()
        );
    }
    assert!(results[0][0].1 == big);
    assert_released(&mut net, &ports);
    // Give the domain a moment to show it is still alive after the programs' exits.
    std::thread::sleep(Duration::from_millis(100));
    net.check_alive();
}

#[test]
fn python_socket_programs_through_the_supervised_mode() {
    // The network test scripts, run with `run --supervised` (the mode static programs get):
    // 64 threads' connections, 16 forked children sharing a listener, a blocking accept that
    // SIGALRM interrupts (EINTR into Python) and one it restarts (SA_RESTART), each with the
    // output of the native run.
    let dir = Scratch::new("static-py");
    let mut net = Domain::net(&dir);
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/net");
    for (name, expect) in [
        ("threaded_tcp.py", "ok 64 connections 12800 messages "),
        ("fork_listener.py", ""),
        (
            "signal_accept.py",
            "accepted after the interruption: hello after EINTR",
        ),
        (
            "restart_accept.py",
            "handler ran 1 times; accept restarted and got b'late'",
        ),
    ] {
        let script = scripts.join(name);
        let n = Running::output({
            let mut c = Command::new("python3");
            c.arg(&script);
            c
        });
        let mut c = Command::new(bin("virtuos-redirect"));
        c.args(["run", "--supervised", "--net"])
            .arg(&net.sock)
            .args(["--", "python3"])
            .arg(&script);
        let r = Running::output(c);
        assert!(n.status.success(), "{name} natively: {}", n.describe());
        assert!(r.status.success(), "{name} supervised: {}", r.describe());
        assert!(
            n.out().contains(expect),
            "{name} natively: {}",
            n.describe()
        );
        assert_eq!(
            r.out(),
            n.out(),
            "{name}: supervised output differs: {}",
            r.describe()
        );
    }
    assert_released(&mut net, &[]);
}

#[test]
fn remote_fds_follow_a_redirected_program_into_a_static_one() {
    // A redirected (dynamic) program that execs a static one hands its remote fds over (the
    // shim's exec hand-over, adopted by the supervisor): an inetd-style Python server puts a
    // connection on 0 and 1 and execs busybox sh, which answers on it; a shell opens a remote
    // file on fd 3 and for appending on fd 4, then execs busybox sh, which reads and writes
    // them. Each as natively.
    need_busybox();
    let dir = Scratch::new("static-handover");
    let mut net = Domain::net(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/net/inetd_static.py");
    let mut ports = Vec::new();
    for via in [None, Some(&net)] {
        let port = free_port();
        let mut c = program(via, "python3");
        c.arg(&script).arg(port.to_string());
        let mut server = Running::spawn(c);
        assert_eq!(server.line(START).trim(), "ready", "{}", how(via));
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(b"hello\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "static got hello\n", "{}", how(via));
        let f = server.finish(LIMIT);
        assert!(f.status.success(), "{}: {}", how(via), f.describe());
        if via.is_some() {
            ports.push(port);
        }
    }
    assert_released(&mut net, &ports);

    let export = dir.path("export");
    let local = dir.path("local");
    for root in [&export, &local] {
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("f"), "remote content\n").unwrap();
        std::fs::write(root.join("log"), "first\n").unwrap();
    }
    let storage = Domain::storage(&dir, &export);
    let mount = format!("/virtuos-handover-{}", std::process::id());
    let inner = format!(
        "exec 3< \"$D/f\" 4>> \"$D/log\"; exec {BUSYBOX} sh -c 'cat <&3; echo appended >&4; cat \"$D/log\"'"
    );
    let mut outs = Vec::new();
    for redirected in [false, true] {
        let mut c = if redirected {
            let mut c = Command::new(bin("virtuos-redirect"));
            c.args(["run", "--storage"])
                .arg(&storage.sock)
                .args(["--mount", &mount, "--", "/bin/sh", "-c", &inner])
                .env("D", &mount)
                .env("VIRTUOS_PRELOAD", bin("libvirtuos_preload.so"));
            c
        } else {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", &inner]).env("D", &local);
            c
        };
        let f = Running::output(std::mem::replace(&mut c, Command::new("true")));
        assert!(
            f.status.success(),
            "redirected {redirected}: {}",
            f.describe()
        );
        outs.push(f.out());
    }
    assert_eq!(outs[0], "remote content\nfirst\nappended\n");
    assert_eq!(
        outs[1], outs[0],
        "the static program's view of the handed-over files"
    );
    assert_eq!(
        std::fs::read_to_string(export.join("log")).unwrap(),
        "first\nappended\n"
    );
}
