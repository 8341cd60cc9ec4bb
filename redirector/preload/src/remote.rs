//! The storage session and the calls made over it.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use abi::{Opcode, Request};
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, Session};

use crate::config;

static STORAGE: AtomicPtr<Session> = AtomicPtr::new(std::ptr::null_mut());

/// Calls sent to the storage domain by this process (telemetry).
pub static ROUTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const EIO: i64 = -(libc::EIO as i64);

/// Connects (or reconnects, after fork) the storage session. Returns `-errno` on failure.
pub fn connect() -> Result<(), String> {
    let Some(sock) = config::get().storage_sock.as_ref() else {
        return Ok(());
    };
    let s = connect_session(sock, &ClientConfig::default()).map_err(|e| e.to_string())?;
    let old = STORAGE.swap(Box::into_raw(Box::new(s)), Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in an earlier connect and was just unpublished;
        // only the single thread that survives fork runs this replacement.
        drop(unsafe { Box::from_raw(old) });
    }
    Ok(())
}

/// Drops the session inherited from the parent (in a fork child), without touching the
/// parent's rings again.
pub fn abandon() {
    FAILED.store(false, Ordering::Relaxed);
    let old = STORAGE.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: as in `connect`: unpublished, and the child is single-threaded here.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// Set once a connection attempt failed, so calls fail fast instead of retrying each time.
static FAILED: AtomicBool = AtomicBool::new(false);
static CONNECTING: AtomicBool = AtomicBool::new(false);

fn session() -> Option<&'static Session> {
    let mut p = STORAGE.load(Ordering::Acquire);
    if p.is_null() && !FAILED.load(Ordering::Relaxed) && config::get().storage_sock.is_some() {
        // Lazy connection (a fork child that had nothing to adopt connects on first use).
        if CONNECTING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            if let Err(e) = connect() {
                FAILED.store(true, Ordering::Relaxed);
                eprintln!("virtuos: storage domain unavailable ({e}); calls under the mount fail with EIO");
            }
            CONNECTING.store(false, Ordering::Release);
        } else {
            while CONNECTING.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
        p = STORAGE.load(Ordering::Acquire);
    }
    // SAFETY: a published session is never freed while the process image runs, except by
    // `connect`/`abandon` in a fork child before any other thread exists.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Window size of the session (0 without a session).
pub fn window() -> usize {
    session().map(|s| s.layout().window as usize).unwrap_or(0)
}

/// One call: `inputs` are written back to back at the start of the window (their lengths go
/// in `args[4]` and `args[3]`), `out` receives up to `out.len()` bytes from the window start.
/// Returns the raw result (`-errno` on failure; EIO when the domain is missing or dead).
pub fn call(op: Opcode, mut args: [u64; 5], inputs: &[&[u8]], out: Option<&mut [u8]>) -> i64 {
    call_aux(op, &mut args, inputs, out).0
}

/// As [`call`], also returning the response's first aux word.
pub fn call_aux(
    op: Opcode,
    args: &mut [u64; 5],
    inputs: &[&[u8]],
    out: Option<&mut [u8]>,
) -> (i64, u64) {
    let Some(s) = session() else { return (EIO, 0) };
    ROUTED.fetch_add(1, Ordering::Relaxed);
    let mut lease = s.lease();
    let mut at = 0usize;
    for (i, inp) in inputs.iter().enumerate() {
        if lease.write(at, inp).is_err() {
            return (-(libc::ENAMETOOLONG as i64), 0);
        }
        match i {
            0 => args[4] = inp.len() as u64,
            1 => args[3] = inp.len() as u64,
            _ => {}
        }
        at += inp.len();
    }
    let out_len = out.as_ref().map(|o| o.len()).unwrap_or(0);
    let data_len = at.max(out_len).min(lease.window() as usize);
    let req = Request {
        opcode: op as u16,
        data_off: 0,
        data_len: data_len as u32,
        args: *args,
        ..Request::default()
    };
    let rsp = match lease.call(req) {
        Ok(r) => r,
        Err(e) => return (-i64::from(e.errno().get()), 0),
    };
    if let Some(out) = out {
        // Fixed-size results (statx, statfs, flock) fill `out`; the others return a length.
        let fixed = matches!(
            op,
            Opcode::FStat | Opcode::StatAt | Opcode::FStatFs | Opcode::Fcntl
        );
        let n = if fixed {
            out.len()
        } else {
            rsp.result.max(0) as usize
        }
        .min(out.len())
        .min(data_len);
        if rsp.result >= 0 && n > 0 && lease.read(0, &mut out[..n]).is_err() {
            return (EIO, 0);
        }
    }
    (rsp.result, rsp.aux[0])
}

/// A call whose payload is written as is, with `args` untouched.
pub fn call_raw(op: Opcode, args: [u64; 5], payload: &[u8], out: Option<&mut [u8]>) -> i64 {
    let Some(s) = session() else { return EIO };
    ROUTED.fetch_add(1, Ordering::Relaxed);
    let mut lease = s.lease();
    if lease.write(0, payload).is_err() {
        return -(libc::ENAMETOOLONG as i64);
    }
    let data_len = payload
        .len()
        .max(out.as_ref().map(|o| o.len()).unwrap_or(0));
    let req = Request {
        opcode: op as u16,
        data_len: data_len.min(lease.window() as usize) as u32,
        args,
        ..Request::default()
    };
    match lease.call(req) {
        Ok(r) => {
            if let Some(out) = out {
                let n = (r.result.max(0) as usize).min(out.len());
                if lease.read(0, &mut out[..n]).is_err() {
                    return EIO;
                }
            }
            r.result
        }
        Err(e) => -i64::from(e.errno().get()),
    }
}
