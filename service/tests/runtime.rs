//! End-to-end tests of the transport and the service runtime: real sockets, memfds, futexes,
//! eventfds and io_uring, with the server in-process or in a separate `virtuos-probe` process.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::{Errno, Opcode, Request, Response, RSP_FLAG_REJECTED, RSP_FLAG_SHUTDOWN};
use virtuos_service::{ProbeHandler, Runtime, RuntimeConfig};
use xen_transport::control::{connect_session, ConnectError};
use xen_transport::layout::ring as ringoff;
use xen_transport::ring::{FrontState, RingView};
use xen_transport::{CallError, ClientConfig, Session};

fn sock(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtuos-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn start(name: &str, f: impl FnOnce(&mut RuntimeConfig)) -> (Runtime, PathBuf) {
    let path = sock(name);
    let mut cfg = RuntimeConfig::new(&path);
    cfg.channels = 16;
    cfg.window = 64 << 10;
    f(&mut cfg);
    (
        Runtime::start(cfg, ProbeHandler).expect("runtime starts"),
        path,
    )
}

fn connect(path: &Path) -> Session {
    connect_session(path, &ClientConfig::default()).expect("session")
}

fn op(opcode: Opcode) -> Request {
    Request {
        opcode: opcode as u16,
        ..Request::default()
    }
}

#[test]
fn probes_answer_over_a_real_session() {
    let (rt, path) = start("probes", |_| {});
    let s = connect(&path);
    let mut nop = op(Opcode::Nop);
    nop.args[0] = 42;
    assert_eq!(s.call(nop).unwrap().into_result(), Ok(42));

    // Credentials come from the kernel.
    let who = s.call(op(Opcode::WhoAmI)).unwrap();
    assert_eq!(who.aux[0], std::process::id() as u64);
    assert_eq!(who.aux[1], nix::unistd::getuid().as_raw() as u64);
    assert_eq!(who.aux[2], nix::unistd::getgid().as_raw() as u64);

    // io_uring path.
    assert_eq!(s.call(op(Opcode::UringNop)).unwrap().into_result(), Ok(0));
    let t = Instant::now();
    let mut delay = op(Opcode::Delay);
    delay.args[0] = 20_000;
    assert_eq!(s.call(delay).unwrap().into_result(), Ok(0));
    assert!(t.elapsed() >= Duration::from_millis(20));

    // Data window: the server reverses the payload in place.
    let mut lease = s.lease();
    lease.write(100, b"virtuos").unwrap();
    let mut echo = op(Opcode::Echo);
    echo.data_off = 100;
    echo.data_len = 7;
    let r = lease.call(echo).unwrap();
    assert_eq!((r.result, r.data_len), (7, 7));
    let mut out = [0u8; 7];
    lease.read(100, &mut out).unwrap();
    assert_eq!(&out, b"soutriv");
    // A payload the window cannot hold is refused on the client side.
    assert!(matches!(
        lease.write(64 << 10, b"x"),
        Err(CallError::TooLarge { .. })
    ));
    drop(lease);

    let stats = s.stats();
    assert!(stats.calls >= 5, "{stats:?}");
    assert_eq!(
        stats.calls,
        stats.spins + stats.sleeps.min(stats.calls - stats.spins)
    );
    rt.stop();
}

#[test]
fn latency_histogram_times_each_synchronous_call() {
    let (rt, path) = start("latency", |_| {});
    let s = connect(&path);
    for _ in 0..100 {
        s.call(op(Opcode::Nop)).unwrap();
    }
    let mut delay = op(Opcode::Delay);
    delay.args[0] = 20_000;
    s.call(delay).unwrap();
    // Fire and forget: a call, but nobody waits for it, so it is not timed.
    s.lease().post(op(Opcode::Nop)).unwrap();
    let h = s.latency_histogram();
    assert_eq!(h.iter().sum::<u64>(), 101, "{h:?}");
    assert_eq!(s.stats().calls, 102);
    // The 20 ms delay lands at 2^24 ns (16.8 ms) or above; a round trip takes some ns.
    assert!(h[24..].iter().sum::<u64>() >= 1, "{h:?}");
    assert_eq!(h[0], 0, "{h:?}");
    rt.stop();
}

#[test]
fn eight_threads_times_100k_calls_lose_nothing() {
    let (rt, path) = start("stress", |c| c.threads = 2);
    let s = Arc::new(connect(&path));
    const THREADS: u64 = 8;
    const CALLS: u64 = 100_000;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut seen = 0u64;
                for i in 0..CALLS {
                    let token = (t << 32) | i;
                    let mut req = op(Opcode::Nop);
                    req.args[0] = token;
                    let r = s.call(req).expect("call");
                    assert_eq!(
                        r.result as u64, token,
                        "response belongs to another request"
                    );
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, THREADS * CALLS);
    let served: u64 = rt
        .stats()
        .iter()
        .map(|w| w.requests.load(Ordering::Relaxed))
        .sum();
    assert_eq!(
        served,
        THREADS * CALLS,
        "server answered each request exactly once"
    );
    assert_eq!(s.stats().calls, THREADS * CALLS);
    rt.stop();
}

/// Writes `req` straight into channel `c`'s ring, bypassing the client library's checks.
fn raw_push(s: &Session, c: u32, front: &mut FrontState, slot: &abi::RawSlot) {
    let layout = s.layout();
    let ring = RingView::new(s.region(), &layout, c);
    assert!(front.push(&ring, slot));
    front.publish(&ring);
}

fn raw_wait(s: &Session, c: u32, front: &mut FrontState) -> Response {
    let layout = s.layout();
    let ring = RingView::new(s.region(), &layout, c);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(slot) = front.take(&ring).unwrap() {
            return Response::from_slot_unchecked(&slot);
        }
        assert!(Instant::now() < deadline, "no answer to a hostile request");
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn hostile_client_gets_errors_and_cannot_hurt_others() {
    let (rt, path) = start("hostile", |c| c.threads = 1);
    let victim = connect(&path);
    let attacker = connect(&path);
    // Use the last channel by hand; the library's leases start at channel 0.
    let c = attacker.layout().channels - 1;
    let mut front = FrontState::default();

    let mut bad = Request {
        id: 1,
        opcode: 0x7777,
        ..Request::default()
    };
    raw_push(&attacker, c, &mut front, &bad.to_slot());
    let r = raw_wait(&attacker, c, &mut front);
    assert_eq!(
        (r.id, r.into_result(), r.flags),
        (1, Err(Errno::ENOSYS), RSP_FLAG_REJECTED)
    );

    bad = Request {
        id: 2,
        opcode: Opcode::Echo as u16,
        data_off: u32::MAX - 3,
        data_len: 100,
        ..Request::default()
    };
    raw_push(&attacker, c, &mut front, &bad.to_slot());
    assert_eq!(
        raw_wait(&attacker, c, &mut front).into_result(),
        Err(Errno::EFAULT)
    );

    bad = Request {
        id: 3,
        opcode: Opcode::Echo as u16,
        data_off: 0,
        data_len: (64 << 10) + 1,
        ..Request::default()
    };
    raw_push(&attacker, c, &mut front, &bad.to_slot());
    assert_eq!(
        raw_wait(&attacker, c, &mut front).into_result(),
        Err(Errno::EFAULT)
    );

    bad = Request {
        id: 4,
        opcode: Opcode::Nop as u16,
        flags: 0xff00,
        ..Request::default()
    };
    raw_push(&attacker, c, &mut front, &bad.to_slot());
    assert_eq!(
        raw_wait(&attacker, c, &mut front).into_result(),
        Err(Errno::EINVAL)
    );

    // Garbage everywhere in the rings and a corrupt producer index on another channel.
    let layout = attacker.layout();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for ch in 0..layout.channels - 1 {
        for i in 0..layout.ring_size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            attacker
                .region()
                .write_slot(layout.slot_off(ch, i), &[x; 8]);
        }
        attacker
            .region()
            .u32_at(layout.ring_off(ch) + ringoff::REQ_PROD)
            .store(x as u32 | 0x8000_0000, Ordering::Release);
    }
    std::thread::sleep(Duration::from_millis(50));

    // The victim is unaffected, and so is the attacker's well-behaved channel.
    for i in 0..1000 {
        let mut req = op(Opcode::Nop);
        req.args[0] = i;
        assert_eq!(victim.call(req).unwrap().into_result(), Ok(i));
    }
    let mut good = Request {
        id: 5,
        opcode: Opcode::Nop as u16,
        ..Request::default()
    };
    good.args[0] = 77;
    raw_push(&attacker, c, &mut front, &good.to_slot());
    assert_eq!(raw_wait(&attacker, c, &mut front).into_result(), Ok(77));
    let rejected: u64 = rt
        .stats()
        .iter()
        .map(|w| w.rejected.load(Ordering::Relaxed))
        .sum();
    assert_eq!(rejected, 4);
    rt.stop();
}

#[test]
fn clear_errors_for_missing_full_and_mismatched_servers() {
    let missing = sock("nobody-listens");
    let _ = std::fs::remove_file(&missing);
    let err = connect_session(&missing, &ClientConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, ConnectError::NoServer { .. }));
    assert!(
        err.to_string().contains("no service domain listening"),
        "{err}"
    );

    let (rt, path) = start("full", |c| c.max_sessions = 1);
    let first = connect(&path);
    let err = connect_session(&path, &ClientConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, ConnectError::Full { limit: 1, .. }), "{err}");
    drop(first);
    // The slot frees once the server sees the first client go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.session_count() > 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    connect(&path);

    // A client speaking another major version is refused with a version answer.
    use abi::control::{Hello, Message, RefuseReason};
    use nix::sys::socket::{
        recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    let mut hello = Hello::new(0, 0, 0);
    hello.version_major = 99;
    send(
        fd.as_raw_fd(),
        Message::Hello(hello).as_bytes(),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
    match Message::decode(&buf[..n]).unwrap() {
        Message::Refuse(r) => assert_eq!(r.reason, RefuseReason::VersionMismatch as u32),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Binding over a live server's socket is refused.
    let again = Runtime::start(RuntimeConfig::new(&path), ProbeHandler)
        .err()
        .unwrap();
    assert!(again.to_string().contains("in use"), "{again}");
    rt.stop();
}

#[test]
fn shutdown_answers_in_flight_calls_and_later_calls_fail_fast() {
    let (rt, path) = start("shutdown", |_| {});
    let s = Arc::new(connect(&path));
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut delay = op(Opcode::Delay);
            delay.args[0] = 30_000_000; // 30 s: only shutdown can end it early
            s.call(delay)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    rt.stop();
    let r = waiter.join().unwrap().expect("answered, not dropped");
    assert_eq!(r.into_result(), Err(Errno::EIO));
    assert_eq!(r.flags & RSP_FLAG_SHUTDOWN, RSP_FLAG_SHUTDOWN);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let err = s.call(op(Opcode::Nop)).unwrap_err();
    assert!(
        matches!(err, CallError::ServerClosing | CallError::ServerGone),
        "{err}"
    );
    assert_eq!(err.errno(), Errno::EIO);
    assert!(t.elapsed() < Duration::from_millis(500));
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_probe(path: &Path, extra: &[&str]) -> Killed {
    let _ = std::fs::remove_file(path);
    let child = Command::new(env!("CARGO_BIN_EXE_virtuos-probe"))
        .arg("--listen")
        .arg(path)
        .args(extra)
        .spawn()
        .expect("spawn virtuos-probe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect_session(path, &ClientConfig::default()).is_err() {
        assert!(Instant::now() < deadline, "virtuos-probe did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Killed(child)
}

#[test]
fn killed_server_makes_calls_fail_fast_instead_of_hanging() {
    let path = sock("killed");
    let mut probe = spawn_probe(&path, &[]);
    let s = Arc::new(connect(&path));
    assert_eq!(s.call(op(Opcode::Nop)).unwrap().into_result(), Ok(0));
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut delay = op(Opcode::Delay);
            delay.args[0] = 30_000_000;
            s.call(delay)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    probe.0.kill().unwrap(); // SIGKILL: no chance to answer anything
    probe.0.wait().unwrap();
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err, CallError::ServerGone);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(s.call(op(Opcode::Nop)).unwrap_err().errno(), Errno::EIO);
}

#[test]
fn sigterm_stops_a_probe_process_cleanly() {
    let path = sock("sigterm");
    let mut probe = spawn_probe(&path, &["--threads", "2"]);
    let s = connect(&path);
    assert_eq!(s.call(op(Opcode::UringNop)).unwrap().into_result(), Ok(0));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(probe.0.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = probe.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "socket removed on shutdown");
    assert_eq!(s.call(op(Opcode::Nop)).unwrap_err().errno(), Errno::EIO);
}
