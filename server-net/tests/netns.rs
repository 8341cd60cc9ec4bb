//! `virtuos-net --netns NAME`: the domain serves inside a network namespace, so a redirected
//! program reaches that network and nothing else, while the host cannot reach the program.
//!
//! Needs root (to create the namespace) and the workspace's binaries (`cargo build
//! --workspace`, which scripts/test.sh runs first).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_virtuos-net"))
        .parent()
        .unwrap()
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

struct Guard {
    ns: String,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Each child leads its own process group: the redirected program under
            // `virtuos-redirect run` goes with it.
            // SAFETY: kill(2) on a process group this test created.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_inside_its_network_namespace_only() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating a network namespace needs root");
        return;
    }
    let ns = format!("virtuos-t{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("virtuos-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), b"inside the namespace\n").unwrap();
    let mut g = Guard {
        ns: ns.clone(),
        children: Vec::new(),
        dir: dir.clone(),
    };
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap()
        .success());

    // A bad namespace name is refused with a message that says what to do.
    let bad = Command::new(bin("virtuos-net"))
        .args([
            "--listen",
            "/tmp/unused.sock",
            "--netns",
            "no-such-ns-virtuos",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("ip netns add"), "{msg}");

    let sock = dir.join("net.sock");
    g.children.push(
        Command::new(bin("virtuos-net"))
            .arg("--listen")
            .arg(&sock)
            .args(["--netns", &ns])
            .env("RUST_LOG", "warn")
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    wait_for("virtuos-net's socket", || sock.exists());

    // The port is free on the host, and inside the fresh namespace everything is free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    g.children.push(
        Command::new(bin("virtuos-redirect"))
            .arg("run")
            .arg("--net")
            .arg(&sock)
            .args(["--", "python3", "-m", "http.server"])
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // Reachable through the domain (a redirected client lives in the same namespace) ...
    let fetch = || {
        Command::new(bin("virtuos-redirect"))
            .arg("run")
            .arg("--net")
            .arg(&sock)
            .args(["--", "curl", "-sS", "--max-time", "5", &url])
            .output()
            .unwrap()
    };
    let mut got = fetch();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !got.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        got = fetch();
    }
    assert!(
        got.status.success(),
        "redirected curl failed: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, b"inside the namespace\n");
    // ... and from inside the namespace natively, which is where the sockets are ...
    let inside = Command::new("ip")
        .args(["netns", "exec", &ns, "curl", "-sS", "--max-time", "5", &url])
        .output()
        .unwrap();
    assert_eq!(inside.stdout, b"inside the namespace\n");
    // ... but not from the host's network: nothing listens there.
    match TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    ) {
        Err(_) => {}
        Ok(mut s) => {
            let _ = s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            panic!(
                "the host reached the namespaced server: {}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}
