//! The storage session and the calls made over it.
//!
//! **Reconnection.** A storage domain that died leaves this process's session dead: calls on
//! it fail with EIO. Once the domain is back (a supervisor restarts it), the next call that
//! needs the session connects a new one, at most one attempt per [`RETRY_INTERVAL`] while the
//! domain is down. Each new session after a dead one starts a new *generation*
//! ([`fdtable::new_generation`]): its handle numbers start afresh, so files opened in an older
//! generation are gone. A call naming such a handle fails with EIO here and never reaches the
//! new session, where the same number may name another file. Path-based calls and new opens
//! work again at once; the routed cwd is a path and stays.
//!
//! A fork child's new session that adopts its parent's files continues the parent's
//! generation; when the adoption fails, the inherited entries become stale.
//!
//! Old sessions stay mapped while a call may still use them: calls pin themselves in
//! `INFLIGHT`, and a replaced session is freed once no call is in flight (or kept, a few at
//! most, until then).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use abi::{Opcode, Request};
use xen_transport::control::connect_session;
use xen_transport::layout::header;
use xen_transport::{ClientConfig, ServerState, Session};

use crate::{config, fdtable};

/// A published session and the generation its handles belong to.
struct Live {
    s: Session,
    generation: AtomicU32,
}

impl Live {
    /// True when the session cannot serve calls any more: its server died or is closing.
    fn unusable(&self) -> bool {
        self.s.is_dead()
            || self
                .s
                .region()
                .u32_at(header::SERVER_STATE)
                .load(Ordering::Acquire)
                != ServerState::Running as u32
    }
}

static STORAGE: AtomicPtr<Live> = AtomicPtr::new(std::ptr::null_mut());

/// Calls sent to the storage domain by this process (telemetry).
pub static ROUTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sessions connected by this process image (telemetry; the first one counts).
pub static CONNECTS: AtomicU64 = AtomicU64::new(0);

const EIO: i64 = -(libc::EIO as i64);

/// While the domain is down, at most one connection attempt per this interval.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Calls in flight (pinned): a replaced session is freed only when this is zero.
static INFLIGHT: AtomicU32 = AtomicU32::new(0);
/// Replaced sessions waiting until no call can still use them.
static RETIRED: [AtomicPtr<Live>; 4] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 4];
static ANY_RETIRED: AtomicBool = AtomicBool::new(false);
/// Monotonic time (ns) of the last connection attempt; 0: none yet.
static LAST_TRY: AtomicU64 = AtomicU64::new(0);
/// Whether the "unavailable" warning was printed for the current outage.
static WARNED: AtomicBool = AtomicBool::new(false);
/// Set in a fork child: its next session may continue the parent's generation by adopting.
static ADOPTING: AtomicBool = AtomicBool::new(false);
static CONNECTING: AtomicBool = AtomicBool::new(false);

/// Keeps a call's session mapped while the call runs.
struct Pin;

impl Pin {
    fn new() -> Pin {
        INFLIGHT.fetch_add(1, Ordering::SeqCst);
        Pin
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        INFLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local (async-signal-safe).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Connects a new session of generation `generation` and publishes it; the session it
/// replaces is retired. Callers hold `CONNECTING`.
fn connect_as(sock: &std::path::Path, generation: u32) -> Result<(), String> {
    let s = connect_session(sock, &ClientConfig::default()).map_err(|e| e.to_string())?;
    let live = Box::new(Live {
        s,
        generation: AtomicU32::new(generation),
    });
    CONNECTS.fetch_add(1, Ordering::Relaxed);
    let old = STORAGE.swap(Box::into_raw(live), Ordering::SeqCst);
    if !old.is_null() {
        retire(old);
    }
    Ok(())
}

/// Connects the storage session now (without waiting for a first call). Returns the error
/// when the domain cannot be reached.
pub fn connect() -> Result<(), String> {
    let _pin = Pin::new();
    match session(None) {
        Some(_) => Ok(()),
        None => Err("storage domain unavailable".into()),
    }
}

/// Keeps `old` (unpublished) until no call can use it, then frees it.
fn retire(old: *mut Live) {
    for slot in RETIRED.iter() {
        if slot
            .compare_exchange(
                std::ptr::null_mut(),
                old,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            ANY_RETIRED.store(true, Ordering::SeqCst);
            return;
        }
    }
    // Every slot is taken (calls have been in flight across several restarts): leak it
    // rather than free memory a call may still read.
}

/// Frees retired sessions if the only call in flight is the caller's own. Callers hold
/// `CONNECTING` and are pinned.
fn reclaim() {
    // Any call that could still hold a retired session pinned itself before loading it, and
    // every session was unpublished before it was retired: with SeqCst throughout, a count of
    // one (this caller) means nobody else holds one.
    if INFLIGHT.load(Ordering::SeqCst) != 1 {
        return;
    }
    let mut left = false;
    for slot in RETIRED.iter() {
        let p = slot.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` came from Box::into_raw in `connect_as`, was unpublished before it
            // was retired, and no other call is in flight that could have loaded it.
            drop(unsafe { Box::from_raw(p) });
        }
        left |= !slot.load(Ordering::SeqCst).is_null();
    }
    ANY_RETIRED.store(left, Ordering::SeqCst);
}

/// Drops the session inherited from the parent (in a fork child), without touching the
/// parent's rings again. The child's next session continues the parent's generation if it
/// adopts the parent's files ([`Opcode::Adopt`]); otherwise the inherited entries are stale.
pub fn abandon() {
    let old = STORAGE.swap(std::ptr::null_mut(), Ordering::SeqCst);
    let mut all = vec![old];
    all.extend(
        RETIRED
            .iter()
            .map(|s| s.swap(std::ptr::null_mut(), Ordering::SeqCst)),
    );
    for p in all.into_iter().filter(|p| !p.is_null()) {
        // SAFETY: from Box::into_raw in `connect_as`; the child is single-threaded here and
        // no call of its own is in flight, so nothing else refers to it.
        drop(unsafe { Box::from_raw(p) });
    }
    ANY_RETIRED.store(false, Ordering::SeqCst);
    INFLIGHT.store(0, Ordering::SeqCst);
    CONNECTING.store(false, Ordering::SeqCst);
    LAST_TRY.store(0, Ordering::Relaxed);
    WARNED.store(false, Ordering::Relaxed);
    ADOPTING.store(fdtable::any(), Ordering::Relaxed);
}

/// Set when a dead session was retired; cleared (with a message) by the next connection.
static OUTAGE: AtomicBool = AtomicBool::new(false);

/// Connects, or reconnects after the domain died, rate-limited; `op` is the call that needs
/// the session and `current` the session the caller found unusable (or null). Returns the
/// published session after the attempt (null when there is none).
fn connect_if_needed(op: Option<Opcode>, current: *mut Live) -> *mut Live {
    let Some(sock) = config::get().storage_sock.as_ref() else {
        return current;
    };
    if CONNECTING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // Another thread is connecting: wait for its outcome (a connect is quick: it either
        // reaches a listening domain or fails at once).
        while CONNECTING.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        return STORAGE.load(Ordering::SeqCst);
    }
    let mut p = STORAGE.load(Ordering::SeqCst);
    // SAFETY: the caller is pinned; a published or retired session stays allocated while
    // any call pinned before its retirement is in flight.
    if !p.is_null() && unsafe { &*p }.unusable() {
        // The domain died (or is closing): every handle of this session is gone with it.
        // Unpublish it first, then make the table's entries stale.
        if STORAGE
            .compare_exchange(p, std::ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            retire(p);
            fdtable::new_generation();
            OUTAGE.store(true, Ordering::Relaxed);
        }
        p = STORAGE.load(Ordering::SeqCst);
    }
    if p.is_null() {
        let now = now_ns();
        let last = LAST_TRY.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= RETRY_INTERVAL.as_nanos() as u64 {
            LAST_TRY.store(now.max(1), Ordering::Relaxed);
            let adopting = ADOPTING.swap(false, Ordering::Relaxed);
            if adopting && op != Some(Opcode::Adopt) {
                // A fork child that does not adopt its parent's files: the inherited entries
                // name handles of the parent's session, not of the child's.
                fdtable::new_generation();
            }
            match connect_as(sock, fdtable::generation()) {
                Ok(()) => {
                    WARNED.store(false, Ordering::Relaxed);
                    if OUTAGE.swap(false, Ordering::Relaxed) {
                        eprintln!(
                            "virtuos: pid {}: reconnected to the storage domain; files opened before it restarted fail with EIO",
                            std::process::id()
                        );
                    }
                }
                Err(e) => {
                    if adopting {
                        fdtable::new_generation();
                    }
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        eprintln!("virtuos: storage domain unavailable ({e}); calls under the mount fail with EIO until it is back");
                    }
                }
            }
        }
    }
    if ANY_RETIRED.load(Ordering::SeqCst) {
        reclaim();
    }
    CONNECTING.store(false, Ordering::Release);
    STORAGE.load(Ordering::SeqCst)
}

/// The usable session, connecting lazily. The caller must hold a [`Pin`] for as long as it
/// uses the result.
fn session(op: Option<Opcode>) -> Option<&'static Live> {
    let mut p = STORAGE.load(Ordering::SeqCst);
    // SAFETY: the caller is pinned: a session loaded while pinned is freed only after every
    // call pinned at that time has ended (see `reclaim`), or by `abandon` in a single-threaded
    // fork child.
    let usable = !p.is_null() && !unsafe { &*p }.unusable();
    if !usable {
        p = connect_if_needed(op, p);
    }
    // SAFETY: as above.
    let live = (!p.is_null()).then(|| unsafe { &*p })?;
    (!live.unusable()).then_some(live)
}

/// Window size of the session (0 without a session).
pub fn window() -> usize {
    let _pin = Pin::new();
    session(None)
        .map(|l| l.s.layout().window as usize)
        .unwrap_or(0)
}

/// True for the opcodes whose `args[0]` is a handle.
fn names_handle(op: Opcode, args: &[u64; 5]) -> bool {
    use Opcode::*;
    match op {
        Close | Read | Write | PRead | PWrite | LSeek | FStat | GetDents64 | FSync | FTruncate
        | FChmod | FChown | Fallocate | FStatFs | Fcntl => true,
        UtimensAt => args[0] != u64::MAX,
        _ => false,
    }
}

/// Translates the tagged handle in `args[0]` (if `op` names one) into the server's number
/// for `live`'s session: EIO when it belongs to another generation (the file was opened in
/// a session that died), so it never reaches a handle of this session.
fn check_handle(live: &Live, op: Opcode, args: &mut [u64; 5]) -> Result<(), i64> {
    if !names_handle(op, args) {
        return Ok(());
    }
    let Ok(h) = u32::try_from(args[0]) else {
        return Ok(()); // not a handle the shim made: the server answers EBADF
    };
    match fdtable::handle_in(h, live.generation.load(Ordering::Acquire)) {
        Some(raw) => {
            args[0] = u64::from(raw);
            Ok(())
        }
        None => Err(EIO),
    }
}

/// Tags the result of a call that returns a new handle with the session's generation.
fn tag_result(live: &Live, op: Opcode, r: i64) -> i64 {
    if op != Opcode::OpenAt || r < 0 {
        return r;
    }
    if r >= 1 << fdtable::HANDLE_BITS {
        // Cannot be tagged (a server configured for more files than the shim can name).
        let mut lease = live.s.lease();
        let _ = lease.call(Request {
            opcode: Opcode::Close as u16,
            args: [r as u64, 0, 0, 0, 0],
            ..Request::default()
        });
        return -(libc::EMFILE as i64);
    }
    i64::from(fdtable::tag(
        r as u32,
        live.generation.load(Ordering::Acquire),
    ))
}

/// After an adoption failed, the entries inherited from the parent are stale.
fn adopt_result(live: &Live, op: Opcode, r: i64) {
    if op == Opcode::Adopt && r < 0 {
        live.generation
            .store(fdtable::new_generation(), Ordering::Release);
    }
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
    let _pin = Pin::new();
    let Some(live) = session(Some(op)) else {
        return (EIO, 0);
    };
    if let Err(e) = check_handle(live, op, args) {
        return (e, 0);
    }
    let (r, aux) = call_on(&live.s, op, args, inputs, out);
    adopt_result(live, op, r);
    (tag_result(live, op, r), aux)
}

fn call_on(
    s: &Session,
    op: Opcode,
    args: &mut [u64; 5],
    inputs: &[&[u8]],
    out: Option<&mut [u8]>,
) -> (i64, u64) {
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
pub fn call_raw(op: Opcode, mut args: [u64; 5], payload: &[u8], out: Option<&mut [u8]>) -> i64 {
    let _pin = Pin::new();
    let Some(live) = session(Some(op)) else {
        return EIO;
    };
    if let Err(e) = check_handle(live, op, &mut args) {
        return e;
    }
    let r = call_raw_on(&live.s, op, args, payload, out);
    adopt_result(live, op, r);
    tag_result(live, op, r)
}

fn call_raw_on(
    s: &Session,
    op: Opcode,
    args: [u64; 5],
    payload: &[u8],
    out: Option<&mut [u8]>,
) -> i64 {
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
