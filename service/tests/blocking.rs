//! The runtime's blocking pool, session hooks and session opcodes, over real sessions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::{Errno, Opcode, Request, Response, RSP_FLAG_SHUTDOWN};
use virtuos_service::{Call, Handler, Outcome, Runtime, RuntimeConfig};
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, Credentials, Session};

fn sock(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtuos-blocking-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Borrows a few storage opcode numbers for test behaviours.
#[derive(Default)]
struct TestHandler {
    opened: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

const SLEEP: Opcode = Opcode::Close; // blocking: sleep args[0] ms, return the pool thread's name
const PANIC: Opcode = Opcode::Read; // blocking: panics
const FSUID: Opcode = Opcode::StatAt; // blocking: the pool thread's fsuid

impl Handler for TestHandler {
    fn name(&self) -> &'static str {
        "test"
    }

    fn acts_as_client(&self) -> bool {
        true
    }

    fn session_opened(&self, _id: u64, _creds: Credentials) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn session_closed(&self, _id: u64, _creds: Credentials) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }

    fn handle(&self, call: &Call<'_>) -> Outcome {
        let ms = call.request().raw.args[0];
        match call.request().opcode {
            SLEEP => Outcome::Blocking(Box::new(move |c: &Call<'_>| {
                std::thread::sleep(Duration::from_millis(ms));
                let name = std::thread::current().name().unwrap_or("").to_string();
                let n = c.write_payload(name.as_bytes());
                Response {
                    data_len: n as u32,
                    ..Response::ok(c.id(), n as i64)
                }
            })),
            PANIC => Outcome::Blocking(Box::new(|_c: &Call<'_>| panic!("deliberate"))),
            FSUID => Outcome::Blocking(Box::new(|c: &Call<'_>| {
                // SAFETY: -1 is never a valid uid: the call changes nothing and returns the
                // calling thread's fsuid.
                let fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, -1 as libc::c_long) };
                Response::ok(c.id(), fsuid)
            })),
            _ => Outcome::Done(Response::err(call.id(), Errno::ENOSYS)),
        }
    }
}

fn start(name: &str, threads: usize, blocking: usize) -> (Runtime, PathBuf, TestHandler) {
    let path = sock(name);
    let mut cfg = RuntimeConfig::new(&path);
    cfg.channels = 8;
    cfg.window = 16 << 10;
    cfg.threads = threads;
    cfg.blocking_threads = blocking;
    let h = TestHandler::default();
    let seen = TestHandler {
        opened: h.opened.clone(),
        closed: h.closed.clone(),
    };
    (Runtime::start(cfg, h).expect("runtime starts"), path, seen)
}

fn connect(path: &std::path::Path) -> Session {
    connect_session(path, &ClientConfig::default()).expect("session")
}

fn op(opcode: Opcode, a0: u64) -> Request {
    let mut r = Request {
        opcode: opcode as u16,
        ..Request::default()
    };
    r.args[0] = a0;
    r
}

#[test]
fn blocking_calls_do_not_hold_up_the_poller() {
    let (rt, path, seen) = start("pool", 1, 2);
    let s = Arc::new(connect(&path));
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1, "session_opened ran");
    let slow = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut l = s.lease();
            let mut req = op(SLEEP, 500);
            req.data_len = 64;
            let r = l.call(req).unwrap();
            let mut name = vec![0u8; r.data_len as usize];
            l.read(0, &mut name).unwrap();
            (r, String::from_utf8(name).unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    // The single worker keeps answering while the pool sleeps.
    let t = Instant::now();
    for i in 0..100 {
        assert_eq!(s.call(op(Opcode::Nop, i)).unwrap().into_result(), Ok(i));
    }
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let (r, name) = slow.join().unwrap();
    assert_eq!(r.into_result(), Ok(name.len() as u64));
    assert!(name.starts_with("virtuos-test-b"), "ran on {name:?}");

    // Two pool threads: two sleeps overlap.
    let t = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.call(op(SLEEP, 300)).unwrap())
        })
        .collect();
    for h in hs {
        assert!(h.join().unwrap().result >= 0);
    }
    assert!(
        t.elapsed() < Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );

    // A panicking call is answered with EIO and the pool survives it.
    assert_eq!(s.call(op(PANIC, 0)).unwrap().into_result(), Err(Errno::EIO));
    assert_eq!(s.call(op(PANIC, 0)).unwrap().into_result(), Err(Errno::EIO));
    // The pool thread acts as the client (here: the same user as the test).
    assert_eq!(
        s.call(op(FSUID, 0)).unwrap().into_result(),
        Ok(u64::from(nix::unistd::geteuid().as_raw()))
    );
    let blocking: u64 = rt
        .stats()
        .iter()
        .map(|w| w.blocking.load(Ordering::Relaxed))
        .sum();
    assert_eq!(blocking, 6);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.closed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "session_closed never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.stop();
}

#[test]
fn shutdown_answers_blocking_calls_in_flight() {
    let (rt, path, _) = start("pool-shutdown", 2, 1);
    let s = Arc::new(connect(&path));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let s = s.clone();
            // One runs, two wait in the pool's queue.
            std::thread::spawn(move || s.call(op(SLEEP, 1500)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let h = std::thread::spawn(move || rt.stop());
    for w in waiters {
        match w.join().unwrap() {
            Ok(r) => {
                assert_eq!(r.into_result(), Err(Errno::EIO));
                assert_eq!(r.flags & RSP_FLAG_SHUTDOWN, RSP_FLAG_SHUTDOWN);
            }
            // With two workers, the first to drain marks the region closing and wakes every
            // channel; a client woken before its own worker posted gives up with the same EIO.
            Err(e) => assert_eq!(e, xen_transport::CallError::ServerClosing),
        }
    }
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    h.join().unwrap();
}

#[test]
fn clone_tokens_are_one_time_and_checked() {
    let (rt, path, _) = start("clone", 2, 1);
    let a = connect(&path);
    let b = connect(&path);
    // Bad kind.
    assert_eq!(
        a.call(op(Opcode::PrepareClone, 7)).unwrap().into_result(),
        Err(Errno::EINVAL)
    );
    // A fork token is for a child; this process is not its own child.
    let fork = a.call(op(Opcode::PrepareClone, 0)).unwrap();
    assert_eq!(fork.result, 0);
    assert_eq!(
        b.call(op(Opcode::Adopt, fork.aux[0]))
            .unwrap()
            .into_result(),
        Err(Errno::EPERM)
    );
    // An exec token is for the same process.
    let exec = a.call(op(Opcode::PrepareClone, 1)).unwrap();
    assert_ne!(exec.aux[0], fork.aux[0]);
    let r = b.call(op(Opcode::Adopt, exec.aux[0])).unwrap();
    assert_eq!((r.result, r.aux[0]), (0, 0), "empty table adopted");
    assert_eq!(
        b.call(op(Opcode::Adopt, exec.aux[0]))
            .unwrap()
            .into_result(),
        Err(Errno::ENOENT),
        "one-time"
    );
    assert_eq!(
        b.call(op(Opcode::Adopt, 0x1234_5678))
            .unwrap()
            .into_result(),
        Err(Errno::ENOENT)
    );
    rt.stop();
}
