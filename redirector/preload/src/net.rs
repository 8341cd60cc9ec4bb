//! Sockets of the network domain, and readiness across domains.
//!
//! With `VIRTUOS_NET` set, every AF_INET/AF_INET6 socket the program creates lives in the
//! network domain; the program holds a placeholder fd for it (see [`crate::fdtable`]). Socket
//! calls, `read`/`write` and their vectored forms, `fcntl`/`ioctl` and `sendfile` on such fds
//! are forwarded here. Calls that may wait (accept, connect, send, recv on a blocking socket)
//! wait in the server; a signal handler without `SA_RESTART` that runs meanwhile makes the
//! call fail with `EINTR` (the server cancels it), as on Linux.
//!
//! `poll`, `ppoll`, `select`, `pselect6` and `epoll_*` on sets that hold remote sockets are
//! emulated: remote readiness comes from the session's shared readiness words, which the
//! server keeps current; local fds are polled by the kernel. A thread that has to wait
//! announces itself in shared memory and sleeps in `ppoll` on its local fds plus the session's
//! readiness eventfd and control socket, so whichever side becomes ready first wakes it and an
//! idle wait costs no CPU.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use abi::{Opcode, Request, Response};
use xen_transport::Lease;

use crate::dispatch::{new_placeholder, replace_entry};
use crate::fdtable::{self, Remote};
use crate::remote::{Live, Pin, NET};
use crate::signals::should_interrupt;
use crate::sys::{self, get, iovecs, put, user_buf, user_buf_mut};

const EIO: i64 = -(libc::EIO as i64);

fn e(n: i32) -> i64 {
    -i64::from(n)
}

/// Whether the network domain is configured.
pub fn enabled() -> bool {
    NET.configured()
}

/// Runs `f` with a lease on the network session, the handle in `args[0]` translated.
fn with_lease<R>(
    op: Opcode,
    args: &mut [u64; 5],
    f: impl FnOnce(&'static Live, &mut Lease<'static>, &[u64; 5]) -> Result<R, i64>,
) -> Result<R, i64> {
    let d = &NET;
    let _pin = Pin::new(d);
    let live = d.session(Some(op)).ok_or(EIO)?;
    d.check_handle(live, op, args)?;
    d.routed.fetch_add(1, Ordering::Relaxed);
    let mut lease = live.s.lease();
    f(live, &mut lease, args)
}

fn send_req(
    lease: &mut Lease<'_>,
    op: Opcode,
    args: &[u64; 5],
    data_len: usize,
    interruptible: bool,
) -> Result<Response, i64> {
    let req = Request {
        opcode: op as u16,
        data_off: 0,
        data_len: data_len.min(lease.window() as usize) as u32,
        args: *args,
        ..Request::default()
    };
    let r = if interruptible {
        lease.call_interruptible(req, &mut should_interrupt)
    } else {
        lease.call(req)
    };
    match r {
        Ok(rsp) if rsp.result < 0 => Err(rsp.result),
        Ok(rsp) => Ok(rsp),
        Err(err) => Err(-i64::from(err.errno().get())),
    }
}

/// A simple call: `input` at the window start, up to `out.len()` result bytes back.
fn simple(
    op: Opcode,
    mut args: [u64; 5],
    input: &[u8],
    out: Option<&mut [u8]>,
) -> Result<Response, i64> {
    with_lease(op, &mut args, |_, lease, args| {
        let mut a = *args;
        if !input.is_empty() {
            lease.write(0, input).map_err(|_| e(libc::EINVAL))?;
            a[4] = input.len() as u64;
        }
        let olen = out.as_ref().map_or(0, |o| o.len());
        let rsp = send_req(lease, op, &a, input.len().max(olen), false)?;
        if let Some(out) = out {
            let n = (rsp.data_len as usize).min(out.len());
            lease.read(0, &mut out[..n]).map_err(|_| EIO)?;
        }
        Ok(rsp)
    })
}

/// Sockets known to be in non-blocking mode, by server handle (what this process set with
/// SOCK_NONBLOCK, fcntl F_SETFL or ioctl FIONBIO).
static NONBLOCK: [AtomicBool; fdtable::MAX_HANDLES] =
    [const { AtomicBool::new(false) }; fdtable::MAX_HANDLES];

fn set_nonblocking(tagged: u32, nb: bool) {
    if let Some(x) = NONBLOCK.get(fdtable::raw(tagged) as usize) {
        x.store(nb, Ordering::Relaxed);
    }
}

/// Sockets with SO_RCVTIMEO or SO_SNDTIMEO set (their blocking calls wait in the server,
/// which applies the timeout).
static TIMEO: [AtomicBool; fdtable::MAX_HANDLES] =
    [const { AtomicBool::new(false) }; fdtable::MAX_HANDLES];

/// A new socket handle: its mode as created, no timeouts.
/// The fd-store key of each handle's socket (0: not kept), from its `listen` (or datagram
/// `bind`): what the socket is reclaimed by after the network domain restarted.
static KEYS: [AtomicU64; fdtable::MAX_HANDLES] =
    [const { AtomicU64::new(0) }; fdtable::MAX_HANDLES];

fn set_key(tagged: u32, key: u64) {
    if let Some(k) = KEYS.get(fdtable::raw(tagged) as usize) {
        k.store(key, Ordering::Relaxed);
    }
}

fn key_of_raw(raw: u32) -> u64 {
    KEYS.get(raw as usize)
        .map_or(0, |k| k.load(Ordering::Relaxed))
}

/// After the network domain restarted (the caller holds the domain's `connecting` and `live`
/// is the new session): every placeholder of a kept socket (a listener, a bound datagram
/// socket) takes its socket back under a new handle, so the program's fd works again and the
/// connections that arrived meanwhile wait in the accept queue.
pub fn reclaim_kept(live: &crate::remote::Live) {
    let mut stale: Vec<(i64, u32)> = Vec::new();
    fdtable::for_each_stale_listener(|fd, raw| stale.push((fd, raw)));
    let mut done: Vec<(u32, Option<u32>)> = Vec::new();
    for (fd, raw) in stale {
        let new = match done.iter().find(|(o, _)| *o == raw) {
            Some(&(_, n)) => n,
            None => {
                let key = key_of_raw(raw);
                let n = (key != 0)
                    .then(|| {
                        let mut lease = live.s.lease();
                        lease
                            .call(Request {
                                opcode: Opcode::Reclaim as u16,
                                args: [key, 0, 0, 0, 0],
                                ..Request::default()
                            })
                            .ok()
                            .filter(|rsp| rsp.result >= 0)
                            .map(|rsp| fdtable::tag(rsp.result as u32, live.generation()))
                    })
                    .flatten();
                if let Some(n) = n {
                    set_key(n, key);
                }
                done.push((raw, n));
                n
            }
        };
        if let Some(handle) = new {
            fdtable::set(
                fd,
                Remote {
                    handle,
                    is_dir: false,
                    net: true,
                    listening: true,
                },
            );
        }
    }
    let back: Vec<u32> = done.iter().filter_map(|(_, n)| *n).collect();
    for n in &back {
        learn_state(*n);
    }
    if !back.is_empty() {
        crate::diag!(
            "virtuos: pid {}: {} listening socket(s) taken back from the restarted network domain",
            crate::diag::pid(),
            back.len()
        );
    }
}

fn fresh(tagged: u32, nb: bool) {
    set_key(tagged, 0);
    set_nonblocking(tagged, nb);
    if let Some(x) = TIMEO.get(fdtable::raw(tagged) as usize) {
        x.store(false, Ordering::Relaxed);
    }
}

/// A socket this process got from elsewhere (inherited across exec, received over
/// SCM_RIGHTS): what the shim keeps of its state per process (O_NONBLOCK, whether a receive
/// or send timeout is set) is asked of the server, which holds the socket's real state.
pub fn learn_state(tagged: u32) {
    let r = Remote {
        handle: tagged,
        is_dir: false,
        net: true,
        listening: false,
    };
    let fl = simple(
        Opcode::Fcntl,
        [r.handle.into(), libc::F_GETFL as u64, 0, 0, 0],
        &[],
        None,
    )
    .map(|rsp| rsp.result)
    .unwrap_or(0);
    fresh(tagged, fl > 0 && fl & libc::O_NONBLOCK as i64 != 0);
    let timed = [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO]
        .into_iter()
        .any(|opt| {
            let mut tv = [0u8; 16];
            simple(
                Opcode::GetSockOpt,
                [r.handle.into(), libc::SOL_SOCKET as u64, opt as u64, 16, 0],
                &[],
                Some(&mut tv),
            )
            .is_ok_and(|rsp| rsp.result >= 16 && tv.iter().any(|&b| b != 0))
        });
    if let Some(x) = TIMEO.get(fdtable::raw(tagged) as usize) {
        x.store(timed, Ordering::Relaxed);
    }
    let key = simple(Opcode::StoreKey, [r.handle.into(), 0, 0, 0, 0], &[], None)
        .map_or(0, |rsp| rsp.aux[0]);
    set_key(tagged, key);
}

fn has_timeout(r: Remote) -> bool {
    TIMEO
        .get(fdtable::raw(r.handle) as usize)
        .is_some_and(|x| x.load(Ordering::Relaxed))
}

/// A blocking call on a socket that is not ready waits here first, in `ppoll` without holding
/// a channel (a program with more threads blocked in socket calls than the session has
/// channels would otherwise starve its own other calls), and interruptibly (a signal arriving
/// while it waits gives EINTR unless every handler has SA_RESTART). The call itself follows
/// and normally finds the socket ready; if another process took the data first, it waits in
/// the server.
fn wait_ready(fd: i64, r: Remote, flags: u64, want: i16) -> Result<(), i64> {
    if nonblocking(r) || flags & libc::MSG_DONTWAIT as u64 != 0 || has_timeout(r) {
        return Ok(());
    }
    loop {
        if !would_block_word(r, want as u16 as u32) {
            return Ok(());
        }
        let mut p = [libc::pollfd {
            fd: fd as i32,
            events: want,
            revents: 0,
        }];
        let n = crate::netpoll::wait_fds(&mut p);
        if n == e(libc::EINTR) {
            if should_interrupt() {
                return Err(n);
            }
            continue;
        }
        if n < 0 {
            return Err(n);
        }
        return Ok(());
    }
}

/// The socket's readiness word lacks every bit of `want` (and of errors and hang-ups).
fn would_block_word(r: Remote, want: u32) -> bool {
    let _pin = Pin::new(&NET);
    let Some(live) = NET.session(None) else {
        return false;
    };
    let Some(raw) = fdtable::handle_in(r.handle, live.generation()) else {
        return false;
    };
    let dead = (libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP) as u32;
    live.s
        .readiness(raw as usize)
        .is_some_and(|x| x.mask & (want | dead) == 0)
}

fn nonblocking(r: Remote) -> bool {
    NONBLOCK
        .get(fdtable::raw(r.handle) as usize)
        .is_some_and(|x| x.load(Ordering::Relaxed))
}

/// A non-blocking call on a socket whose readiness word lacks every bit of `want` would fail
/// with EAGAIN: answer it here, without a round trip. (The word can only lag behind a change
/// that the server has yet to publish, and publishing it wakes any waiter: the same race a
/// program has with the kernel.)
fn would_block(r: Remote, flags: u64, want: u32) -> bool {
    (nonblocking(r) || flags & libc::MSG_DONTWAIT as u64 != 0) && would_block_word(r, want)
}

/// Sends a call that needs no answer (nothing in the window), without waiting.
fn post(op: Opcode, args: [u64; 5]) -> i64 {
    NET.post(op, args)
}

/// Closes a socket handle in the domain without waiting (Linux's close of a socket does not
/// fail in a way programs act on). A socket whose session died went with it: closing it
/// succeeds.
pub fn close_handle(r: Remote) -> i64 {
    set_nonblocking(r.handle, false);
    match post(Opcode::Close, [u64::from(r.handle), 0, 0, 0, 0]) {
        EIO => 0,
        rc => rc,
    }
}

/// Makes a placeholder for a new remote socket handle (tagged), honouring SOCK_CLOEXEC.
fn install(handle: i64, cloexec: bool) -> i64 {
    let ph = new_placeholder(if cloexec { libc::O_CLOEXEC as u64 } else { 0 });
    if ph < 0 {
        let _ = crate::remote::close_handle(Remote {
            handle: handle as u32,
            is_dir: false,
            net: true,
            listening: false,
        });
        return ph;
    }
    fdtable::set(
        ph,
        Remote {
            handle: handle as u32,
            is_dir: false,
            net: true,
            listening: false,
        },
    );
    ph
}

fn socket(domain: u64, ty: u64, proto: u64) -> i64 {
    let mut args = [domain, ty & !(libc::SOCK_CLOEXEC as u64), proto, 0, 0];
    let h = with_lease(Opcode::Socket, &mut args, |live, lease, a| {
        let rsp = send_req(lease, Opcode::Socket, a, 0, false)?;
        Ok(NET.tag_result(live, Opcode::Socket, rsp.result))
    });
    match h {
        Ok(h) if h >= 0 => {
            fresh(h as u32, ty & libc::SOCK_NONBLOCK as u64 != 0);
            install(h, ty & libc::SOCK_CLOEXEC as u64 != 0)
        }
        Ok(err) | Err(err) => err,
    }
}

fn addr_in(p: u64, len: u64) -> Result<&'static [u8], i64> {
    if p == 0 || len > 128 {
        return Err(e(libc::EINVAL));
    }
    Ok(user_buf(p, len as usize))
}

/// Copies a returned address to the caller's (`addr`, `*addrlen`) as the kernel does:
/// truncated to the room given, the full length stored back.
fn addr_out(addr: u64, lenp: u64, bytes: &[u8], full: u64) {
    if addr == 0 || lenp == 0 {
        return;
    }
    let room = get::<u32>(lenp) as usize;
    let n = room.min(bytes.len());
    user_buf_mut(addr, n).copy_from_slice(&bytes[..n]);
    put::<u32>(lenp, full as u32);
}

fn accept(fd: i64, r: Remote, addr: u64, lenp: u64, flags: u64) -> i64 {
    if would_block(r, 0, libc::POLLIN as u32) {
        return e(libc::EAGAIN);
    }
    if let Err(err) = wait_ready(fd, r, 0, libc::POLLIN) {
        return err;
    }
    let room = if addr != 0 && lenp != 0 {
        (get::<u32>(lenp) as u64).min(128)
    } else {
        0
    };
    let mut args = [
        r.handle.into(),
        flags & libc::SOCK_NONBLOCK as u64,
        room,
        0,
        0,
    ];
    let res = with_lease(Opcode::Accept, &mut args, |live, lease, a| {
        let rsp = send_req(lease, Opcode::Accept, a, 128, true)?;
        let mut buf = [0u8; 128];
        let n = (rsp.data_len as usize).min(128);
        lease.read(0, &mut buf[..n]).map_err(|_| EIO)?;
        let h = NET.tag_result(live, Opcode::Accept, rsp.result);
        Ok((rsp, h, buf, n))
    });
    match res {
        Ok((rsp, h, buf, n)) => {
            if h < 0 {
                return h;
            }
            addr_out(addr, lenp, &buf[..n], rsp.aux[0]);
            fresh(h as u32, flags & libc::SOCK_NONBLOCK as u64 != 0);
            install(h, flags & libc::SOCK_CLOEXEC as u64 != 0)
        }
        Err(err) => err,
    }
}

fn connect(r: Remote, addr: u64, len: u64) -> i64 {
    let a = match addr_in(addr, len) {
        Ok(a) => a,
        Err(err) => return err,
    };
    let mut args = [r.handle.into(), 0, 0, 0, a.len() as u64];
    with_lease(Opcode::Connect, &mut args, |_, lease, args| {
        lease.write(0, a).map_err(|_| e(libc::EINVAL))?;
        send_req(lease, Opcode::Connect, args, a.len(), true).map(|r| r.result)
    })
    .unwrap_or_else(|err| err)
}

/// Raises SIGPIPE in the calling thread for a send that hit a closed pipe, as Linux does
/// unless MSG_NOSIGNAL was given.
fn sigpipe(r: i64, flags: u64) -> i64 {
    if r == e(libc::EPIPE) && flags & libc::MSG_NOSIGNAL as u64 == 0 {
        let tid = sys::sys(libc::SYS_gettid, &[]);
        let pid = sys::getpid();
        sys::sys(
            libc::SYS_tgkill,
            &[pid as u64, tid as u64, libc::SIGPIPE as u64],
        );
    }
    r
}

/// send/sendto/sendmsg/write: `segs` gathered into the window (chunked for streams), with
/// the control messages `control` (sendmsg's `msg_control`) going with the first chunk.
fn send(r: Remote, segs: &[libc::iovec], flags: u64, dest: &[u8], control: &[u8]) -> i64 {
    let total: usize = segs.iter().map(|s| s.iov_len).sum();
    if dest.is_empty() && control.is_empty() {
        if let Some(res) = send_stream(r, segs, total, flags) {
            return res;
        }
    }
    let mut done = 0usize;
    let mut seg = 0usize;
    let mut seg_off = 0usize;
    loop {
        let ctl = if done == 0 { control } else { &[][..] };
        let mut args = [
            r.handle.into(),
            flags,
            ctl.len() as u64,
            dest.len() as u64,
            0,
        ];
        let res = with_lease(Opcode::Send, &mut args, |_, lease, a| {
            let w = (lease.window() as usize).saturating_sub(dest.len() + ctl.len());
            if (!dest.is_empty() || !ctl.is_empty()) && total > w {
                return Err(e(libc::EMSGSIZE));
            }
            // Gather the next chunk straight from the caller's buffers into the window.
            let mut n = 0usize;
            let (mut s, mut so) = (seg, seg_off);
            while s < segs.len() && n < w {
                let iv = segs[s];
                let take = (iv.iov_len - so).min(w - n);
                if take > 0 {
                    lease
                        .write(n, user_buf(iv.iov_base as u64 + so as u64, take))
                        .map_err(|_| e(libc::EFAULT))?;
                }
                n += take;
                so += take;
                if so == iv.iov_len {
                    s += 1;
                    so = 0;
                }
            }
            if !dest.is_empty() {
                lease.write(n, dest).map_err(|_| e(libc::EINVAL))?;
            }
            if !ctl.is_empty() {
                lease
                    .write(n + dest.len(), ctl)
                    .map_err(|_| e(libc::ENOBUFS))?;
            }
            let mut a = *a;
            a[4] = n as u64;
            let rsp = send_req(lease, Opcode::Send, &a, n + dest.len() + ctl.len(), true)?;
            Ok((rsp.result as usize, n))
        });
        match res {
            Ok((sent, chunk)) => {
                done += sent;
                // Advance the segment cursor by what was sent.
                let mut left = sent;
                while left > 0 && seg < segs.len() {
                    let avail = segs[seg].iov_len - seg_off;
                    let t = avail.min(left);
                    left -= t;
                    seg_off += t;
                    if seg_off == segs[seg].iov_len {
                        seg += 1;
                        seg_off = 0;
                    }
                }
                if sent < chunk || done >= total {
                    return done as i64;
                }
            }
            Err(err) => {
                return if done > 0 {
                    done as i64
                } else {
                    sigpipe(err, flags)
                }
            }
        }
    }
}

/// The flags a send through a transmit stream may carry.
const TX_FLAGS: u64 = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_MORE) as u64;

/// What a look at a socket's transmit stream decided.
enum TxStep {
    /// Sent (bytes copied in), or failed (a kept error, EAGAIN): the call's result.
    Done(i64),
    /// The stream has bytes the server has not sent, and this send must come after them.
    Wait,
    /// Send by call.
    ByCall,
}

/// send on a non-blocking socket with a transmit stream ([`xen_transport::stream`]): the
/// bytes are copied into shared memory, as many as it has room for (EAGAIN when none),
/// and the server is asked to send them only when nobody asked since it last looked; no
/// round trip. An error the server met sending earlier bytes is this call's (EPIPE with
/// SIGPIPE unless MSG_NOSIGNAL). A blocking send, or one the stream cannot carry, goes by
/// call, after the stream's bytes have gone. `None`: by call.
fn send_stream(r: Remote, segs: &[libc::iovec], total: usize, flags: u64) -> Option<i64> {
    let plain = flags & !TX_FLAGS == 0;
    let dontwait = nonblocking(r) || flags & libc::MSG_DONTWAIT as u64 != 0;
    loop {
        match tx_step(r, segs, total, flags, plain && dontwait) {
            TxStep::Done(x) => return Some(x),
            TxStep::ByCall => return None,
            TxStep::Wait => {
                // Only a blocking send by call waits here (the server makes a non-blocking
                // one fail with EAGAIN itself): until the stream is empty, in naps.
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                sys::sys(
                    libc::SYS_nanosleep,
                    &[&ts as *const libc::timespec as u64, 0],
                );
            }
        }
    }
}

fn tx_step(r: Remote, segs: &[libc::iovec], total: usize, flags: u64, streamed: bool) -> TxStep {
    let _pin = Pin::new(&NET);
    let Some(live) = NET.session(None) else {
        return TxStep::ByCall;
    };
    let Some(raw) = fdtable::handle_in(r.handle, live.generation()) else {
        return TxStep::ByCall;
    };
    let Some(t) = live.s.tx_stream(raw as usize) else {
        return TxStep::ByCall;
    };
    if t.snapshot().state.has(xen_transport::StreamState::DETACHED) {
        return TxStep::ByCall;
    }
    // A connection the kernel reported failed or hung up: the server answers with its error
    // (ECONNRESET, EPIPE), as Linux does at once, rather than taking bytes it cannot send.
    let failed = (libc::POLLERR | libc::POLLHUP) as u32;
    if streamed
        && live
            .s
            .readiness(raw as usize)
            .is_some_and(|x| x.mask & failed != 0)
    {
        // The server's receive ahead may have taken the connection's error already: it is
        // this call's, as the kernel gives a pending error to whichever call comes first.
        if let Some(rx) = live.s.stream(raw as usize) {
            let err = rx.take_error();
            if err != 0 {
                return TxStep::Done(sigpipe(-i64::from(err), flags));
            }
        }
        return TxStep::ByCall;
    }
    if !streamed {
        return if t.unsent() && !nonblocking(r) {
            TxStep::Wait
        } else {
            TxStep::ByCall
        };
    }
    let err = t.take_error();
    if err != 0 {
        return TxStep::Done(sigpipe(-i64::from(err), flags));
    }
    if !t.try_lock() {
        // Another thread is copying in (or this thread, interrupted by the signal handler
        // we run in): by call, which the server orders after the stream's bytes.
        return TxStep::ByCall;
    }
    let n = t.write_with(total, |mem, dst, len, at| {
        gather(segs, at, len, |src, k| mem.copy_in(dst + k, src));
    });
    t.unlock();
    if n == 0 {
        return TxStep::Done(if total == 0 { 0 } else { e(libc::EAGAIN) });
    }
    if t.mark_pending() {
        let _ = post(Opcode::Flush, [r.handle.into(), 0, 0, 0, 0]);
    }
    TxStep::Done(n as i64)
}

/// What one recv brought: bytes, source address bytes, full address length, message flags,
/// and the length of the control messages written to the caller's control buffer.
type Received = (usize, [u8; 128], usize, u64, usize);

/// recv/recvfrom/recvmsg/read: one window-sized chunk scattered into `segs`, and up to
/// `control.1` bytes of control messages copied to the program's buffer at `control.0`.
#[allow(clippy::too_many_arguments)]
fn recv(
    fd: i64,
    r: Remote,
    segs: &[libc::iovec],
    flags: u64,
    name_room: usize,
    want_flags: bool,
    control: (u64, usize),
) -> Result<Received, i64> {
    let total: usize = segs.iter().map(|s| s.iov_len).sum();
    let name_room = name_room.min(128);
    let ctl_room = if control.0 == 0 {
        0
    } else {
        control.1.min(abi::cmsg::MAX_CONTROL)
    };
    if ctl_room == 0 {
        // A connected stream socket's source address is never reported (length 0), and
        // its message flags are 0 for what a stream hands out.
        if let Some(res) = recv_stream(fd, r, segs, total, flags) {
            return res.map(|n| (n, [0u8; 128], 0, 0, 0));
        }
    }
    if would_block(r, flags, (libc::POLLIN | libc::POLLPRI) as u32) {
        return Err(e(libc::EAGAIN));
    }
    let mut args = [
        r.handle.into(),
        flags,
        0,
        name_room as u64,
        u64::from(want_flags) | (ctl_room as u64) << 32,
    ];
    with_lease(Opcode::Recv, &mut args, |_, lease, a| {
        let want = total.min((lease.window() as usize).saturating_sub(name_room + ctl_room));
        let mut a = *a;
        a[2] = want as u64;
        let rsp = send_req(lease, Opcode::Recv, &a, want + name_room + ctl_room, true)?;
        let n = (rsp.result as usize).min(want);
        // Scatter from the window into the caller's buffers.
        let mut at = 0usize;
        for iv in segs {
            if at >= n {
                break;
            }
            let t = iv.iov_len.min(n - at);
            lease
                .read(at, user_buf_mut(iv.iov_base as u64, t))
                .map_err(|_| e(libc::EFAULT))?;
            at += t;
        }
        let mut name = [0u8; 128];
        if name_room > 0 {
            let m = (rsp.aux[0] as usize).min(name_room);
            lease
                .read(want, &mut name[..m])
                .map_err(|_| e(libc::EFAULT))?;
        }
        let c = (rsp.aux[2] as usize).min(ctl_room);
        if c > 0 {
            lease
                .read(want + name_room, user_buf_mut(control.0, c))
                .map_err(|_| e(libc::EFAULT))?;
        }
        Ok((n, name, rsp.aux[0] as usize, rsp.aux[1], c))
    })
}

/// The flags a receive served from a stream may carry.
const STREAM_FLAGS: u64 = (libc::MSG_PEEK
    | libc::MSG_DONTWAIT
    | libc::MSG_WAITALL
    | libc::MSG_NOSIGNAL
    | libc::MSG_CMSG_CLOEXEC) as u64;

/// What one look at a socket's stream found.
enum Step {
    /// Bytes copied into the caller's buffers.
    Read(usize),
    /// Nothing to read now: wait.
    Empty,
    /// The stream changed under the look: look again.
    Again,
    /// A taken error (negative errno) or the end of the file (0).
    End(i64),
    /// The socket has no stream (any more): the server receives.
    NoStream,
}

/// recv on a socket whose data the server receives ahead into a stream
/// ([`xen_transport::stream`]): a copy out of shared memory, no round trip. `None` when the
/// socket has no stream or the call needs the server (a flag a stream cannot serve, a
/// blocking wait under SO_RCVTIMEO): the server then detaches the stream and receives.
fn recv_stream(
    fd: i64,
    r: Remote,
    segs: &[libc::iovec],
    total: usize,
    flags: u64,
) -> Option<Result<usize, i64>> {
    if flags & !STREAM_FLAGS != 0 {
        return None;
    }
    let peek = flags & libc::MSG_PEEK as u64 != 0;
    let waitall = flags & libc::MSG_WAITALL as u64 != 0 && !peek;
    let dontwait = nonblocking(r) || flags & libc::MSG_DONTWAIT as u64 != 0;
    let mut done = 0usize;
    loop {
        let step = stream_step(r, segs, done, total, peek);
        if total == 0 && matches!(step, Step::Read(_) | Step::Empty | Step::Again) {
            // Linux answers a zero-length receive on a stream at once.
            return Some(Ok(0));
        }
        match step {
            Step::Read(n) => {
                done += n;
                if !waitall || done >= total {
                    return Some(Ok(done));
                }
                continue;
            }
            Step::End(_) if done > 0 => return Some(Ok(done)),
            Step::End(x) if x < 0 => return Some(Err(x)),
            Step::End(_) => return Some(Ok(0)),
            Step::NoStream => return (done > 0).then_some(Ok(done)),
            Step::Again => continue,
            Step::Empty => {}
        }
        if dontwait {
            return Some(if done > 0 {
                Ok(done)
            } else {
                Err(e(libc::EAGAIN))
            });
        }
        if has_timeout(r) {
            return (done > 0).then_some(Ok(done));
        }
        // Wait for the stream to become readable (no channel held), interruptibly.
        let mut p = [libc::pollfd {
            fd: fd as i32,
            events: libc::POLLIN,
            revents: 0,
        }];
        let n = crate::netpoll::wait_fds(&mut p);
        if n == e(libc::EINTR) && should_interrupt() {
            return Some(if done > 0 { Ok(done) } else { Err(n) });
        }
        if n < 0 && n != e(libc::EINTR) {
            return Some(if done > 0 { Ok(done) } else { Err(n) });
        }
    }
}

/// One look at `r`'s stream: copies what is ready (up to `total - done` bytes, scattered into
/// `segs` from byte `done` on), or says why nothing was.
fn stream_step(r: Remote, segs: &[libc::iovec], done: usize, total: usize, peek: bool) -> Step {
    let _pin = Pin::new(&NET);
    let Some(live) = NET.session(None) else {
        return Step::NoStream;
    };
    let Some(raw) = fdtable::handle_in(r.handle, live.generation()) else {
        return Step::NoStream;
    };
    let Some(s) = live.s.stream(raw as usize) else {
        return Step::NoStream;
    };
    let n = s.read_with(total - done, peek, |mem, src, len, at| {
        scatter(segs, done + at, len, |dst, k| mem.copy_out(src + k, dst));
    });
    if n > 0 {
        if !peek && s.take_full() {
            // The server stopped for want of room, which there is now.
            let _ = post(Opcode::Refill, [r.handle.into(), 0, 0, 0, 0]);
        }
        return Step::Read(n);
    }
    let snap = s.snapshot();
    if snap.ready > 0 {
        return Step::Again;
    }
    if snap.error != 0 {
        let err = s.take_error();
        if err != 0 {
            return Step::End(-i64::from(err));
        }
        return Step::Again;
    }
    if snap.state.has(xen_transport::StreamState::EOF) {
        return Step::End(0);
    }
    if snap.state.has(xen_transport::StreamState::DETACHED) {
        return Step::NoStream;
    }
    Step::Empty
}

/// Calls `piece(addr, len, k)` for the pieces of the caller's buffers `segs` that bytes
/// `at..at+len` of a call's data occupy (`addr`, `len`: the piece in the program's memory;
/// `k`: its offset within those `len` bytes).
fn pieces(segs: &[libc::iovec], at: usize, len: usize, mut piece: impl FnMut(u64, usize, usize)) {
    let mut base = 0usize;
    let mut k = 0usize;
    for iv in segs {
        if k >= len {
            return;
        }
        let end = base + iv.iov_len;
        let pos = at + k;
        if pos < end {
            let off = pos - base;
            let t = (iv.iov_len - off).min(len - k);
            piece(iv.iov_base as u64 + off as u64, t, k);
            k += t;
        }
        base = end;
    }
}

/// The pieces of the program's buffers that bytes `at..at+len` of a receive land in.
fn scatter(segs: &[libc::iovec], at: usize, len: usize, mut copy: impl FnMut(&mut [u8], usize)) {
    pieces(segs, at, len, |p, t, k| copy(user_buf_mut(p, t), k));
}

/// The pieces of the program's buffers that bytes `at..at+len` of a send come from.
fn gather(segs: &[libc::iovec], at: usize, len: usize, mut copy: impl FnMut(&[u8], usize)) {
    pieces(segs, at, len, |p, t, k| copy(user_buf(p, t), k));
}

fn one_seg(buf: u64, len: u64) -> [libc::iovec; 1] {
    [libc::iovec {
        iov_base: buf as *mut libc::c_void,
        iov_len: len as usize,
    }]
}

fn sendmsg(r: Remote, msg: u64, flags: u64) -> i64 {
    let m: libc::msghdr = get(msg);
    let segs = iovecs(m.msg_iov as u64, m.msg_iovlen);
    let dest = if m.msg_name.is_null() || m.msg_namelen == 0 {
        &[][..]
    } else {
        match addr_in(m.msg_name as u64, u64::from(m.msg_namelen)) {
            Ok(a) => a,
            Err(err) => return err,
        }
    };
    let ctl_len = if m.msg_control.is_null() {
        0
    } else {
        m.msg_controllen
    };
    if ctl_len > abi::cmsg::MAX_CONTROL {
        return e(libc::ENOBUFS);
    }
    let control = if ctl_len == 0 {
        &[][..]
    } else {
        user_buf(m.msg_control as u64, ctl_len)
    };
    send(r, segs, flags, dest, control)
}

fn recvmsg(fd: i64, r: Remote, msg: u64, flags: u64) -> i64 {
    let mut m: libc::msghdr = get(msg);
    let segs = iovecs(m.msg_iov as u64, m.msg_iovlen);
    let room = if m.msg_name.is_null() {
        0
    } else {
        m.msg_namelen as usize
    };
    let control = (m.msg_control as u64, m.msg_controllen);
    match recv(fd, r, segs, flags, room, true, control) {
        Ok((n, name, full, mflags, ctl)) => {
            if room > 0 {
                let k = room.min(full).min(128);
                user_buf_mut(m.msg_name as u64, k).copy_from_slice(&name[..k]);
                m.msg_namelen = full as u32;
            }
            // The control messages the kernel gave the server's socket, as it wrote them.
            m.msg_controllen = ctl;
            m.msg_flags = mflags as i32;
            put(msg, m);
            n as i64
        }
        Err(err) => err,
    }
}

/// `struct mmsghdr`: a msghdr and the bytes it moved.
const MMSG: u64 = std::mem::size_of::<libc::mmsghdr>() as u64;
const MSG_LEN_AT: u64 = std::mem::offset_of!(libc::mmsghdr, msg_len) as u64;

/// sendmmsg: each message as a sendmsg, until one fails; the count sent, or the first
/// message's error (Linux's rule).
fn sendmmsg(r: Remote, vec: u64, vlen: u32, flags: u64) -> i64 {
    let vlen = vlen.min(libc::UIO_MAXIOV as u32);
    let mut done = 0u32;
    while done < vlen {
        let at = vec + u64::from(done) * MMSG;
        let n = sendmsg(r, at, flags);
        if n < 0 {
            return if done == 0 { n } else { i64::from(done) };
        }
        put::<u32>(at + MSG_LEN_AT, n as u32);
        done += 1;
    }
    i64::from(done)
}

/// recvmmsg: each message as a recvmsg; after the first, only what is there already with
/// MSG_WAITFORONE, and never past the timeout (checked after each message, as Linux does).
fn recvmmsg(fd: i64, r: Remote, vec: u64, vlen: u32, flags: u64, timeout: u64) -> i64 {
    let vlen = vlen.min(libc::UIO_MAXIOV as u32);
    let deadline = (timeout != 0).then(|| {
        let t: libc::timespec = get(timeout);
        now()
            + Duration::new(
                t.tv_sec.max(0) as u64,
                t.tv_nsec.clamp(0, 999_999_999) as u32,
            )
    });
    let mut done = 0u32;
    let mut fl = flags & !(libc::MSG_WAITFORONE as u64);
    while done < vlen {
        let at = vec + u64::from(done) * MMSG;
        let n = recvmsg(fd, r, at, fl);
        if n < 0 {
            return if done == 0 { n } else { i64::from(done) };
        }
        put::<u32>(at + MSG_LEN_AT, n as u32);
        done += 1;
        if flags & libc::MSG_WAITFORONE as u64 != 0 {
            fl |= libc::MSG_DONTWAIT as u64;
        }
        if deadline.is_some_and(|d| now() >= d) {
            break;
        }
    }
    i64::from(done)
}

fn sockopt_get(r: Remote, level: u64, name: u64, val: u64, lenp: u64) -> i64 {
    if val == 0 || lenp == 0 {
        return e(libc::EFAULT);
    }
    let room = (get::<u32>(lenp) as usize).min(4096);
    let mut buf = vec![0u8; room];
    match simple(
        Opcode::GetSockOpt,
        [r.handle.into(), level, name, room as u64, 0],
        &[],
        Some(&mut buf),
    ) {
        Ok(rsp) => {
            let n = (rsp.result as usize).min(room);
            user_buf_mut(val, n).copy_from_slice(&buf[..n]);
            put::<u32>(lenp, n as u32);
            0
        }
        Err(err) => err,
    }
}

fn sockopt_set(r: Remote, level: u64, name: u64, val: u64, len: u64) -> i64 {
    if len > 4096 {
        return e(libc::EINVAL);
    }
    if level as i32 == libc::SOL_SOCKET && matches!(name, 20 | 21 | 66 | 67)
    // SO_{RCV,SND}TIMEO, _OLD and _NEW
    {
        if let Some(x) = TIMEO.get(fdtable::raw(r.handle) as usize) {
            x.store(true, Ordering::Relaxed);
        }
    }
    // Per-request options of busy servers (nginx corks and uncorks every response): sent
    // without waiting for the answer, which cannot fail on a live TCP socket.
    let posted = matches!(
        (level as i32, name as i32),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY | libc::TCP_CORK)
    );
    if posted && len == 4 && val != 0 {
        let v = get::<u32>(val);
        return post(
            Opcode::SetSockOpt,
            [r.handle.into(), level, name, u64::from(v), 0],
        );
    }
    let v = if len == 0 {
        &[][..]
    } else {
        user_buf(val, len as usize)
    };
    simple(
        Opcode::SetSockOpt,
        [r.handle.into(), level, name, 0, 0],
        v,
        None,
    )
    .map(|r| r.result)
    .unwrap_or_else(|err| err)
}

fn sockname(r: Remote, peer: bool, addr: u64, lenp: u64) -> i64 {
    if addr == 0 || lenp == 0 {
        return e(libc::EFAULT);
    }
    let mut buf = [0u8; 128];
    let op = if peer {
        Opcode::GetPeerName
    } else {
        Opcode::GetSockName
    };
    match simple(op, [r.handle.into(), 0, 0, 128, 0], &[], Some(&mut buf)) {
        Ok(rsp) => {
            let n = (rsp.data_len as usize).min(128);
            addr_out(addr, lenp, &buf[..n], rsp.result as u64);
            0
        }
        Err(err) => err,
    }
}

fn fstat(r: Remote, out: u64) -> i64 {
    let mut buf = [0u8; 256];
    match simple(
        Opcode::FStat,
        [r.handle.into(), 0, 0, 0, 0],
        &[],
        Some(&mut buf),
    ) {
        Ok(_) => {
            // SAFETY-free conversion: statx is plain data read from our own buffer.
            let x: libc::statx = get(buf.as_ptr() as u64);
            put(out, crate::statconv::statx_to_stat(&x));
            0
        }
        Err(err) => err,
    }
}

fn fcntl(fd: i64, r: Remote, a: [u64; 6]) -> i64 {
    let cmd = a[1] as i32;
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let n = sys::sys(libc::SYS_fcntl, &[fd as u64, a[1], a[2]]);
            if n >= 0 {
                replace_entry(n, Some(r));
            }
            n
        }
        libc::F_GETFD | libc::F_SETFD => sys::sys(libc::SYS_fcntl, &[fd as u64, a[1], a[2]]),
        libc::F_GETFL => simple(
            Opcode::Fcntl,
            [r.handle.into(), libc::F_GETFL as u64, 0, 0, 0],
            &[],
            None,
        )
        .map(|rsp| (rsp.result & !(libc::O_ACCMODE as i64)) | libc::O_RDWR as i64)
        .unwrap_or_else(|err| err),
        libc::F_SETFL => {
            let res = simple(
                Opcode::Fcntl,
                [r.handle.into(), libc::F_SETFL as u64, a[2], 0, 0],
                &[],
                None,
            )
            .map(|rsp| rsp.result)
            .unwrap_or_else(|err| err);
            if res >= 0 {
                set_nonblocking(r.handle, a[2] & libc::O_NONBLOCK as u64 != 0);
            }
            res
        }
        libc::F_GETOWN | libc::F_SETOWN => 0,
        _ => e(libc::EINVAL),
    }
}

fn ioctl(fd: i64, r: Remote, req: u64, arg: u64) -> i64 {
    match req as libc::c_ulong {
        libc::FIOCLEX | libc::FIONCLEX => sys::sys(libc::SYS_ioctl, &[fd as u64, req, arg]),
        libc::FIONBIO => {
            if arg == 0 {
                return e(libc::EFAULT);
            }
            let v = get::<i32>(arg);
            let res = simple(
                Opcode::Ioctl,
                [r.handle.into(), req, v as u32 as u64, 0, 0],
                &[],
                None,
            )
            .map(|_| 0)
            .unwrap_or_else(|err| err);
            if res == 0 {
                set_nonblocking(r.handle, v != 0);
            }
            res
        }
        libc::FIONREAD | libc::TIOCOUTQ => {
            if arg == 0 {
                return e(libc::EFAULT);
            }
            match simple(Opcode::Ioctl, [r.handle.into(), req, 0, 0, 0], &[], None) {
                Ok(rsp) => {
                    put::<i32>(arg, rsp.result as i32);
                    0
                }
                Err(err) => err,
            }
        }
        _ => e(libc::ENOTTY),
    }
}

/// sendfile(out = remote socket, in = local or storage file): the file's bytes are read
/// straight into a buffer and sent in window-sized chunks. With a NULL offset the input's
/// position moves by what was sent.
fn sendfile(out: Remote, a: [u64; 6]) -> i64 {
    let in_fd = a[1] as i32 as i64;
    let off_p = a[2];
    let count = a[3] as usize;
    let storage = fdtable::get(in_fd);
    let seek = |whence: i32, to: u64| -> i64 {
        match storage {
            Some(r) => crate::remote::call(
                Opcode::LSeek,
                [r.handle.into(), to, whence as u64, 0, 0],
                &[],
                None,
            ),
            None => sys::sys(libc::SYS_lseek, &[in_fd as u64, to, whence as u64]),
        }
    };
    let start = if off_p != 0 {
        get::<i64>(off_p)
    } else {
        seek(libc::SEEK_CUR, 0)
    };
    if start < 0 {
        return start;
    }
    // A fresh buffer per call, from the shim's own (lock-free) allocator: a signal handler
    // that calls sendfile while this one runs gets its own.
    let mut buf = vec![0u8; count.clamp(1, 256 << 10)];
    sendfile_loop(out, in_fd, storage, start, count, &mut buf, off_p, &seek)
}

#[allow(clippy::too_many_arguments)]
fn sendfile_loop(
    out: Remote,
    in_fd: i64,
    storage: Option<Remote>,
    start: i64,
    count: usize,
    buf: &mut [u8],
    off_p: u64,
    seek: &dyn Fn(i32, u64) -> i64,
) -> i64 {
    let mut done = 0usize;
    let mut err = 0i64;
    while done < count {
        let want = (count - done).min(buf.len());
        let at = start as u64 + done as u64;
        let n = match storage {
            Some(r) => crate::remote::call(
                Opcode::PRead,
                [r.handle.into(), at, 0, 0, 0],
                &[],
                Some(&mut buf[..want]),
            ),
            None => sys::sys(
                libc::SYS_pread64,
                &[in_fd as u64, buf.as_mut_ptr() as u64, want as u64, at],
            ),
        };
        if n <= 0 {
            if n < 0 {
                err = n;
            }
            break;
        }
        let w = send(out, &one_seg(buf.as_ptr() as u64, n as u64), 0, &[], &[]);
        if w < 0 {
            err = w;
            break;
        }
        done += w as usize;
        if (w as usize) < n as usize {
            break;
        }
    }
    if done == 0 && err < 0 {
        return err;
    }
    if off_p != 0 {
        put::<i64>(off_p, start + done as i64);
    } else {
        seek(libc::SEEK_SET, start as u64 + done as u64);
    }
    done as i64
}

/// Routes a system call that involves a network-domain socket; `None`: not ours.
#[inline(never)]
pub fn route(nr: i64, a: [u64; 6]) -> Option<i64> {
    if !enabled() {
        return None;
    }
    let fd = a[0] as i32 as i64;
    if nr == libc::SYS_socket {
        let dom = a[0] as i32;
        if dom == libc::AF_INET || dom == libc::AF_INET6 {
            return Some(socket(a[0], a[1], a[2]));
        }
        if dom == libc::AF_NETLINK && a[2] as i32 == libc::NETLINK_SOCK_DIAG {
            // The kernel's socket diagnostics would list this namespace's sockets, not the
            // network domain's where the program's live: refused, so that `ss` falls back to
            // `/proc/net/tcp` and friends, which the domain answers (see `net_table`).
            return Some(e(libc::EPROTONOSUPPORT));
        }
        return None;
    }
    match nr {
        libc::SYS_poll => return crate::netpoll::poll(a[0], a[1], a[2] as i32 as i64),
        libc::SYS_ppoll => return crate::netpoll::ppoll(a),
        libc::SYS_select => return crate::netpoll::select(a, false),
        libc::SYS_pselect6 => return crate::netpoll::select(a, true),
        libc::SYS_epoll_ctl => return crate::netpoll::epoll_ctl(a),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => {
            return crate::netpoll::epoll_wait(nr, a)
        }
        libc::SYS_sendfile => {
            let out = fdtable::get_net(fd)?;
            return Some(sendfile(out, a));
        }
        _ => {}
    }
    // The descriptor the call names, wherever it sits among the arguments (mmap's is the
    // fifth); calls that name none (rt_sigaction's signal number, chdir's path) are never a
    // socket's, whatever their first argument looks like.
    let fd = i64::from(shim_core::decode::decode(nr, a).fds()[0]?.0);
    let r = fdtable::get_net(fd)?;
    let res = route_socket(nr, a, fd, r);
    // A kept socket (a bound datagram socket) whose call failed because the domain died under
    // it waits until the restarted domain gives it back, then runs the call again, as if the
    // outage had been a pause.
    if r.listening && data_call(nr) {
        if let Some(x) = res {
            if x < 0 && x != e(libc::EAGAIN) && x != e(libc::EINTR) {
                // Taken back meanwhile (a wait for readiness reconnects): run it on the new
                // handle; still down: wait for it.
                let now = fdtable::get_net(fd)?;
                if now.handle != r.handle && now.handle != fdtable::STALE && !domain_dead() {
                    return route_socket(nr, a, fd, now);
                }
                if domain_dead() {
                    return match until_reclaimed(fd) {
                        Ok(back) => route_socket(nr, a, fd, back),
                        Err(err) => Some(err),
                    };
                }
            }
        }
    }
    res
}

/// Which socket table `path` names (`/proc/net/tcp`, `/proc/self/net/tcp6`, ... and the
/// same under this process's pid): the `NetTable` number.
fn net_table_of(path: &[u8]) -> Option<u64> {
    let rest = path.strip_prefix(b"/proc/")?;
    let rest = match rest.strip_prefix(b"net/") {
        Some(r) => r,
        None => {
            let slash = rest.iter().position(|&c| c == b'/')?;
            let (who, r) = rest.split_at(slash);
            let me = who == b"self"
                || who == b"thread-self"
                || (!who.is_empty()
                    && who.len() <= 10
                    && who.iter().all(u8::is_ascii_digit)
                    && who.iter().fold(0i64, |v, d| v * 10 + i64::from(d - b'0'))
                        == crate::diag::pid());
            if !me {
                return None;
            }
            r.strip_prefix(b"/net/")?
        }
    };
    match rest {
        b"tcp" => Some(0),
        b"tcp6" => Some(1),
        b"udp" => Some(2),
        b"udp6" => Some(3),
        _ => None,
    }
}

/// An open (for reading) of one of `/proc/net`'s socket tables: the program's sockets live in
/// the network domain's namespace, so it reads that namespace's table (`ss` and `netstat`
/// then show them, held by virtuos-net), from a sealed memfd. `None`: not such an open.
pub fn net_table(path: &[u8], flags: u64) -> Option<i64> {
    if !enabled() || flags & libc::O_ACCMODE as u64 != libc::O_RDONLY as u64 {
        return None;
    }
    let which = net_table_of(path)?;
    let mut table = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let rsp = match simple(
            Opcode::NetTable,
            [which, table.len() as u64, 0, 0, 0],
            &[],
            Some(&mut chunk),
        ) {
            Ok(r) => r,
            Err(err) => return Some(err),
        };
        let n = (rsp.data_len as usize).min(chunk.len());
        if n == 0 {
            break;
        }
        table.extend_from_slice(&chunk[..n]);
    }
    let fd =
        crate::exec::sealed_memfd_at_any(&table, c"virtuos-net-table").unwrap_or(e(libc::ENOMEM));
    if fd >= 0 && flags & libc::O_CLOEXEC as u64 == 0 {
        sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_SETFD as u64, 0]);
    }
    Some(fd)
}

/// The calls that move data (a kept datagram socket's outage is waited out for them).
fn data_call(nr: i64) -> bool {
    matches!(
        nr,
        libc::SYS_recvfrom
            | libc::SYS_recvmsg
            | libc::SYS_recvmmsg
            | libc::SYS_read
            | libc::SYS_readv
            | libc::SYS_sendto
            | libc::SYS_sendmsg
            | libc::SYS_sendmmsg
            | libc::SYS_write
            | libc::SYS_writev
    )
}

/// [`route`] for a call on the network socket `fd` stands for (`r`).
fn route_socket(nr: i64, a: [u64; 6], fd: i64, mut r: Remote) -> Option<i64> {
    if r.listening
        && (matches!(nr, libc::SYS_accept | libc::SYS_accept4) || data_call(nr))
        && (r.handle == fdtable::STALE || domain_dead())
    {
        match until_reclaimed(fd) {
            Ok(back) => r = back,
            Err(x) => return Some(x),
        }
    }
    if r.handle == fdtable::STALE {
        // The socket belonged to a network domain session that died.
        return Some(match nr {
            libc::SYS_close => {
                fdtable::clear(fd);
                forget_fd(fd);
                sys::sys(libc::SYS_close, &[fd as u64])
            }
            _ if r.listening => match dead_listener(nr, a, r) {
                Some(x) => x,
                None => e(libc::ECONNRESET),
            },
            _ => e(libc::ECONNRESET),
        });
    }
    if r.listening
        && matches!(
            nr,
            libc::SYS_accept | libc::SYS_accept4 | libc::SYS_fcntl | libc::SYS_ioctl
        )
        && domain_dead()
    {
        if let Some(x) = dead_listener(nr, a, r) {
            return Some(x);
        }
    }
    // Blocking data calls wait for readiness here first (see `wait_ready`).
    let pre = match nr {
        libc::SYS_recvfrom => Some((a[3], libc::POLLIN)),
        libc::SYS_recvmsg => Some((a[2], libc::POLLIN)),
        libc::SYS_read | libc::SYS_readv => Some((0, libc::POLLIN)),
        libc::SYS_sendto => Some((a[3], libc::POLLOUT)),
        libc::SYS_sendmsg => Some((a[2], libc::POLLOUT)),
        libc::SYS_recvmmsg => Some((a[3], libc::POLLIN)),
        libc::SYS_sendmmsg => Some((a[3], libc::POLLOUT)),
        libc::SYS_write | libc::SYS_writev => Some((0, libc::POLLOUT)),
        _ => None,
    };
    if let Some((flags, want)) = pre {
        if let Err(err) = wait_ready(fd, r, flags, want) {
            return Some(err);
        }
    }
    Some(match nr {
        libc::SYS_bind => match addr_in(a[1], a[2]) {
            Ok(addr) => match simple(Opcode::Bind, [r.handle.into(), 0, 0, 0, 0], addr, None) {
                Ok(rsp) => {
                    if rsp.result == 0 && rsp.aux[0] != 0 {
                        // A bound datagram socket the fd store keeps: like a listener, it
                        // looks idle while its domain is down and comes back after.
                        set_key(r.handle, rsp.aux[0]);
                        fdtable::mark_listening(fd);
                    }
                    rsp.result
                }
                Err(err) => err,
            },
            Err(err) => err,
        },
        libc::SYS_listen => {
            let res = simple(
                Opcode::Listen,
                [r.handle.into(), a[1] as i32 as i64 as u64, 0, 0, 0],
                &[],
                None,
            );
            match res {
                Ok(rsp) if rsp.result == 0 => {
                    set_key(r.handle, rsp.aux[0]);
                    fdtable::mark_listening(fd);
                    0
                }
                Ok(rsp) => rsp.result,
                Err(err) => err,
            }
        }
        libc::SYS_accept => accept(fd, r, a[1], a[2], 0),
        libc::SYS_accept4 => accept(fd, r, a[1], a[2], a[3]),
        libc::SYS_connect => connect(r, a[1], a[2]),
        libc::SYS_shutdown => simple(
            Opcode::Shutdown,
            [r.handle.into(), a[1], 0, 0, 0],
            &[],
            None,
        )
        .map(|r| r.result)
        .unwrap_or_else(|err| err),
        libc::SYS_getsockname => sockname(r, false, a[1], a[2]),
        libc::SYS_getpeername => sockname(r, true, a[1], a[2]),
        libc::SYS_getsockopt => sockopt_get(r, a[1], a[2], a[3], a[4]),
        libc::SYS_setsockopt => sockopt_set(r, a[1], a[2], a[3], a[4]),
        libc::SYS_sendto => {
            let dest = if a[4] == 0 {
                &[][..]
            } else {
                match addr_in(a[4], a[5]) {
                    Ok(d) => d,
                    Err(err) => return Some(err),
                }
            };
            send(r, &one_seg(a[1], a[2]), a[3], dest, &[])
        }
        libc::SYS_write => send(r, &one_seg(a[1], a[2]), 0, &[], &[]),
        libc::SYS_writev => send(r, iovecs(a[1], a[2] as usize), 0, &[], &[]),
        libc::SYS_sendmsg => sendmsg(r, a[1], a[2]),
        libc::SYS_recvfrom => {
            let room = if a[4] != 0 && a[5] != 0 {
                get::<u32>(a[5]) as usize
            } else {
                0
            };
            match recv(fd, r, &one_seg(a[1], a[2]), a[3], room, false, (0, 0)) {
                Ok((n, name, full, _, _)) => {
                    if room > 0 {
                        addr_out(a[4], a[5], &name[..room.min(full).min(128)], full as u64);
                    }
                    n as i64
                }
                Err(err) => err,
            }
        }
        libc::SYS_read => recv(fd, r, &one_seg(a[1], a[2]), 0, 0, false, (0, 0))
            .map(|x| x.0 as i64)
            .unwrap_or_else(|err| err),
        libc::SYS_readv => recv(fd, r, iovecs(a[1], a[2] as usize), 0, 0, false, (0, 0))
            .map(|x| x.0 as i64)
            .unwrap_or_else(|err| err),
        libc::SYS_recvmsg => recvmsg(fd, r, a[1], a[2]),
        libc::SYS_sendmmsg => sendmmsg(r, a[1], a[2] as u32, a[3]),
        libc::SYS_recvmmsg => recvmmsg(fd, r, a[1], a[2] as u32, a[3], a[4]),
        libc::SYS_pread64
        | libc::SYS_pwrite64
        | libc::SYS_preadv
        | libc::SYS_pwritev
        | libc::SYS_preadv2
        | libc::SYS_pwritev2
        | libc::SYS_lseek => e(libc::ESPIPE),
        libc::SYS_fstat => fstat(r, a[1]),
        libc::SYS_fcntl => fcntl(fd, r, a),
        libc::SYS_ioctl => ioctl(fd, r, a[1], a[2]),
        libc::SYS_dup => {
            let n = sys::sys(libc::SYS_dup, &[fd as u64]);
            if n >= 0 {
                replace_entry(n, Some(r));
            }
            n
        }
        libc::SYS_dup2 | libc::SYS_dup3 => return None, // the shared dup handles both domains
        libc::SYS_close => return None,                 // the shared close handles both domains
        libc::SYS_fsync | libc::SYS_fdatasync => e(libc::EINVAL),
        libc::SYS_ftruncate | libc::SYS_fallocate => e(libc::EINVAL),
        libc::SYS_fchmod | libc::SYS_fchown => 0,
        libc::SYS_getdents64 => e(libc::ENOTDIR),
        libc::SYS_mmap => e(libc::ENODEV),
        _ => return None,
    })
}

/// A listener whose domain died looks idle, not failed, so that a server waiting on it
/// neither spins nor dies: `accept` finds nothing (EAGAIN when non-blocking; a blocking one
/// sleeps until a signal, as on an idle listener), `poll`/`epoll` do not report it (see
/// `netpoll::remote_state`), and O_NONBLOCK can still be read and set. None: the call
/// fails as on any socket of a dead domain.
fn dead_listener(nr: i64, a: [u64; 6], r: Remote) -> Option<i64> {
    let stale = r.handle == fdtable::STALE;
    match nr {
        libc::SYS_accept | libc::SYS_accept4 => {
            if stale || nonblocking(r) {
                return Some(e(libc::EAGAIN));
            }
            loop {
                // No fds, no timeout: only a signal ends the wait.
                let r = sys::sys(libc::SYS_ppoll, &[0, 0, 0, 0, 8]);
                if r == e(libc::EINTR) && should_interrupt() {
                    return Some(r);
                }
            }
        }
        libc::SYS_fcntl => match a[1] as i32 {
            libc::F_GETFL => Some(
                libc::O_RDWR as i64
                    | if nonblocking(r) {
                        libc::O_NONBLOCK as i64
                    } else {
                        0
                    },
            ),
            libc::F_SETFL => {
                if !stale {
                    set_nonblocking(r.handle, a[2] & libc::O_NONBLOCK as u64 != 0);
                }
                Some(0)
            }
            _ => None,
        },
        libc::SYS_ioctl if a[1] == libc::FIONBIO => {
            if !stale && a[2] != 0 {
                set_nonblocking(r.handle, get::<i32>(a[2]) != 0);
            }
            Some(0)
        }
        _ => None,
    }
}

/// True when the network domain's session is gone or unusable (the domain died).
/// An accept on a listener whose domain died: the listener looks idle until the restarted
/// domain gives it back (see [`reclaim_kept`]), then the accept runs on it. Non-blocking:
/// one reconnection attempt (rate-limited), else EAGAIN. Blocking: sleeps, trying every
/// [`crate::remote::RETRY_INTERVAL`], until the socket is back or a signal interrupts it.
fn until_reclaimed(fd: i64) -> Result<Remote, i64> {
    let blocking = !fdtable::raw_bits(fd).is_some_and(|raw| {
        NONBLOCK
            .get(raw as usize)
            .is_some_and(|x| x.load(Ordering::Relaxed))
    });
    loop {
        {
            let _pin = Pin::new(&NET);
            let _ = NET.session(None);
        }
        match fdtable::get_net(fd) {
            Some(r) if r.handle != fdtable::STALE && !domain_dead() => return Ok(r),
            Some(_) => {}
            None => return Err(e(libc::EBADF)),
        }
        if !blocking {
            return Err(e(libc::EAGAIN));
        }
        let t = crate::remote::RETRY_INTERVAL;
        let ts = libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        };
        let r = sys::sys(
            libc::SYS_ppoll,
            &[0, 0, &ts as *const libc::timespec as u64, 0, 8],
        );
        if r == e(libc::EINTR) && should_interrupt() {
            return Err(r);
        }
    }
}

fn domain_dead() -> bool {
    let _pin = Pin::new(&NET);
    NET.session(None).is_none_or(|l| l.s.server_gone())
}

/// A placeholder fd of a network socket went away: drop it from emulated epoll sets.
pub fn forget_fd(fd: i64) {
    crate::netpoll::forget_fd(fd);
}

static CHILD: AtomicBool = AtomicBool::new(false);

/// In a fork child (before it adopts the parent's sockets).
pub fn after_fork_child() {
    CHILD.store(true, Ordering::Relaxed);
    crate::netpoll::after_fork_child();
}

/// Current time for deadlines.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// A timeout in milliseconds (negative: none) as a deadline.
pub(crate) fn deadline_ms(ms: i64) -> Option<Instant> {
    (ms >= 0).then(|| now() + Duration::from_millis(ms as u64))
}
