//! `xen_probe`: exercises the `xen` backend against real Xen devices (run inside a Xen domain;
//! `vm/xen-test.sh` runs it under QEMU).
//!
//! * `xen_probe self [PAGES] [ROUNDS]`: everything within one domain. Grants PAGES pages to
//!   itself with `/dev/xen/gntalloc`, maps those grants with `/dev/xen/gntdev` and checks that
//!   both mappings see each other's writes, binds an unbound event channel and a second one
//!   interdomain to it (loopback), and ping-pongs ROUNDS requests between two threads: the
//!   request word written through the gntdev mapping, the response through the gntalloc one,
//!   each direction rung on the event channel.
//! * `xen_probe serve [PAGES] [NAME]` (in the service domain): grants PAGES pages to dom0,
//!   binds an unbound port for dom0, publishes both through xenstore (rendezvous NAME, default
//!   `virtuos-probe`, under `/local/domain/<own id>/data/`) and answers requests until dom0
//!   sends the stop word; then checks what dom0 wrote into the pages and sets `state` to
//!   `done ok` (or `done bad: ...`).
//! * `xen_probe connect DOMID [ROUNDS] [NAME]` (in dom0): waits for that rendezvous, maps the
//!   grants, binds the port interdomain, checks the pages, ping-pongs ROUNDS requests, stops
//!   the server and waits for its verdict.
//!
//! * `xen_probe ring-serve [NAME]` / `xen_probe ring-connect DOMID [ROUNDS] [NAME]`: the same
//!   pair of domains, but through `backend::xen_session`: the service domain offers a real
//!   session (region header, rings, data windows) and answers `Nop` calls from its back ring;
//!   dom0 connects an ordinary `Session` and times ROUNDS `Session::call`s (the client's
//!   adaptive spin, then a sleep on the event channel): the ring latency over Xen.
//!
//! Each prints the round-trip latency and ends with `xen_probe: PASS` (exit 0) or
//! `xen_probe: FAIL: ...` (exit 1).

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use xen_transport::backend::xen::{self, XenBell};
use xen_transport::backend::xen_session;
use xen_transport::backend::xenstore::{rendezvous_dir, Rendezvous, XenStore};
use xen_transport::backend::{ClientBell, ServerBell};
use xen_transport::layout::Layout;
use xen_transport::ring::BackState;
use xen_transport::wait::SpinPolicy;
use xen_transport::SharedMem;

const PAGE: usize = 4096;

fn fail(msg: String) -> ExitCode {
    println!("xen_probe: FAIL: {msg}");
    ExitCode::FAILURE
}

/// The stop word: the last request of a run.
const STOP: u32 = u32::MAX;
/// Request word (written by the client) and response word (written by the server).
const REQ: usize = 0;
const RESP: usize = 64;

fn pattern(page: usize) -> u32 {
    0x5eed_0000 + page as u32
}

fn check_devices() -> Result<(), String> {
    for d in [xen::GNTALLOC, xen::GNTDEV, xen::EVTCHN] {
        if !std::path::Path::new(d).exists() {
            return Err(format!("{d} missing"));
        }
    }
    println!(
        "xen_probe: {}, {}, {} present",
        xen::GNTALLOC,
        xen::GNTDEV,
        xen::EVTCHN
    );
    Ok(())
}

/// Answers requests (copies the request word into the response word and rings) until the
/// stop word arrives. Returns how many requests it answered.
fn serve_loop(mem: &SharedMem, bell: &XenBell, limit: Duration) -> Result<u64, String> {
    let mut served = 0u32;
    let mut count = 0u64;
    let deadline = Instant::now() + limit;
    loop {
        let req = mem.u32_at(REQ).load(Ordering::Acquire);
        if req != served {
            served = req;
            count += 1;
            mem.u32_at(RESP).store(served, Ordering::Release);
            bell.notify_client(0, mem.u32_at(RESP))
                .map_err(|e| format!("server notify: {e}"))?;
            if req == STOP {
                return Ok(count);
            }
            continue;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "server: no stop word after {limit:?} ({count} served)"
            ));
        }
        let mut pfd = libc::pollfd {
            fd: bell.doorbell_fd(0).as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if r > 0 {
            bell.drain(0);
        }
    }
}

/// Sends `rounds` requests (then the stop word), each waiting for its response; returns the
/// round-trip times and the whole run's duration.
fn client_loop(
    mem: &SharedMem,
    bell: &XenBell,
    rounds: u32,
) -> Result<(Vec<Duration>, Duration), String> {
    let mut rtts = Vec::with_capacity(rounds as usize);
    let total = Instant::now();
    let one = |i: u32| -> Result<Duration, String> {
        let t = Instant::now();
        mem.u32_at(REQ).store(i, Ordering::Release);
        bell.notify_server(0)
            .map_err(|e| format!("client notify: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = mem.u32_at(RESP).load(Ordering::Acquire);
            if seen == i {
                return Ok(t.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!("request {i}: no response (response word {seen})"));
            }
            bell.wait_response(mem.u32_at(RESP), seen, Duration::from_millis(500))
                .map_err(|e| format!("client wait: {e}"))?;
        }
    };
    for i in 1..=rounds {
        rtts.push(one(i)?);
    }
    let total = total.elapsed();
    one(STOP)?;
    Ok((rtts, total))
}

fn report(what: &str, mut rtts: Vec<Duration>, total: Duration) {
    if rtts.is_empty() {
        return;
    }
    rtts.sort();
    let pct = |q: f64| rtts[((rtts.len() as f64 - 1.0) * q) as usize];
    println!(
        "xen_probe: {} round trips {what}: mean {:?}, min {:?}, p50 {:?}, p99 {:?}, max {:?}",
        rtts.len(),
        total / rtts.len() as u32,
        rtts[0],
        pct(0.5),
        pct(0.99),
        rtts[rtts.len() - 1]
    );
}

fn own_domid() -> u16 {
    // dom0 is 0; a domU finds its id in xenstore, which this probe does not need for `self`.
    std::env::var("XEN_PROBE_DOMID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn self_test(pages: usize, rounds: u32) -> Result<(), String> {
    check_devices()?;
    let me = own_domid();

    // Grant tables: allocate and grant to ourselves, then map the grants back.
    let t = Instant::now();
    let (srv, refs) = xen::grant_region(me, pages).map_err(|e| format!("gntalloc: {e}"))?;
    println!(
        "xen_probe: gntalloc granted {pages} page(s) to dom{me}: refs {:?} ({:?})",
        refs,
        t.elapsed()
    );
    let t = Instant::now();
    let cli = xen::map_granted_region(me, &refs).map_err(|e| format!("gntdev map: {e}"))?;
    println!(
        "xen_probe: gntdev mapped the {} grant(s) ({:?})",
        refs.len(),
        t.elapsed()
    );
    for p in 0..pages {
        let off = p * PAGE + 8;
        let v = pattern(p);
        srv.u32_at(off).store(v, Ordering::SeqCst);
        let seen = cli.u32_at(off).load(Ordering::SeqCst);
        if seen != v {
            return Err(format!(
                "page {p}: gntdev mapping reads {seen:#x}, gntalloc side wrote {v:#x}"
            ));
        }
        cli.u32_at(off + 4).store(!v, Ordering::SeqCst);
        let back = srv.u32_at(off + 4).load(Ordering::SeqCst);
        if back != !v {
            return Err(format!(
                "page {p}: gntalloc mapping reads {back:#x}, gntdev side wrote {:#x}",
                !v
            ));
        }
    }
    println!("xen_probe: both mappings see each other's writes on all {pages} page(s)");

    // Event channels: an unbound port for ourselves, and a loopback interdomain binding.
    let sbell = XenBell::bind_unbound(me).map_err(|e| format!("evtchn bind_unbound: {e}"))?;
    let cbell = XenBell::bind_interdomain(me, sbell.port())
        .map_err(|e| format!("evtchn bind_interdomain: {e}"))?;
    println!(
        "xen_probe: event channel ports {} (unbound) <-> {} (interdomain)",
        sbell.port(),
        cbell.port()
    );

    // Ping-pong between two threads: requests through the gntdev mapping, responses through
    // the gntalloc one.
    let srv = Arc::new(srv);
    let sbell = Arc::new(sbell);
    let server = {
        let (srv, sbell) = (srv.clone(), sbell.clone());
        std::thread::spawn(move || serve_loop(&srv, &sbell, Duration::from_secs(300)))
    };
    let (rtts, total) = client_loop(&cli, &cbell, rounds)?;
    server
        .join()
        .map_err(|_| "server thread panicked".to_string())??;
    report(
        "over grant-shared pages and a loopback event channel (one domain)",
        rtts,
        total,
    );
    Ok(())
}

const RENDEZVOUS: &str = "virtuos-probe";

fn serve(pages: usize, name: &str) -> Result<(), String> {
    check_devices()?;
    let mut xs = XenStore::open().map_err(|e| format!("xenstore: {e}"))?;
    let me = xs.own_domid().map_err(|e| e.to_string())?;
    let peer = 0;
    let (mem, refs) = xen::grant_region(peer, pages).map_err(|e| format!("gntalloc: {e}"))?;
    for p in 0..pages {
        mem.u32_at(p * PAGE + 8).store(pattern(p), Ordering::SeqCst);
    }
    let bell = XenBell::bind_unbound(peer).map_err(|e| format!("evtchn bind_unbound: {e}"))?;
    let rv = Rendezvous {
        domid: me,
        refs,
        port: bell.port(),
    };
    rv.publish(&mut xs, name)
        .map_err(|e| format!("publishing the rendezvous: {e}"))?;
    let dir = rendezvous_dir(me, name);
    println!(
        "xen_probe: dom{me} granted {pages} page(s) to dom{peer} (refs {:?}), port {}, published at {dir}",
        rv.refs, rv.port
    );
    let served = serve_loop(&mem, &bell, Duration::from_secs(600))?;
    let mut bad = Vec::new();
    for p in 0..pages {
        let v = mem.u32_at(p * PAGE + 12).load(Ordering::SeqCst);
        if v != !pattern(p) {
            bad.push(format!("page {p}: {v:#x}"));
        }
    }
    let verdict = if bad.is_empty() {
        "done ok".to_string()
    } else {
        format!("done bad: {}", bad.join(", "))
    };
    println!("xen_probe: answered {served} request(s); dom{peer}'s writes: {verdict}");
    xs.write(&format!("{dir}/state"), &verdict)
        .map_err(|e| e.to_string())?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(verdict)
    }
}

fn connect(domid: u16, rounds: u32, name: &str) -> Result<(), String> {
    check_devices()?;
    let mut xs = XenStore::open().map_err(|e| format!("xenstore: {e}"))?;
    let t = Instant::now();
    let rv = Rendezvous::wait(&mut xs, domid, name, Duration::from_secs(300))
        .map_err(|e| format!("rendezvous: {e}"))?;
    println!(
        "xen_probe: rendezvous {} after {:?}: refs {:?}, port {}",
        rendezvous_dir(domid, name),
        t.elapsed(),
        rv.refs,
        rv.port
    );
    let mem = xen::map_granted_region(domid, &rv.refs).map_err(|e| format!("gntdev map: {e}"))?;
    for p in 0..rv.refs.len() {
        let v = mem.u32_at(p * PAGE + 8).load(Ordering::SeqCst);
        if v != pattern(p) {
            return Err(format!(
                "page {p} of dom{domid}: read {v:#x}, expected {:#x}",
                pattern(p)
            ));
        }
        mem.u32_at(p * PAGE + 12)
            .store(!pattern(p), Ordering::SeqCst);
    }
    println!(
        "xen_probe: mapped dom{domid}'s {} granted page(s); its data is visible",
        rv.refs.len()
    );
    let bell = XenBell::bind_interdomain(domid, rv.port)
        .map_err(|e| format!("evtchn bind_interdomain: {e}"))?;
    println!(
        "xen_probe: bound local port {} to dom{domid} port {}",
        bell.port(),
        rv.port
    );
    let (rtts, total) = client_loop(&mem, &bell, rounds)?;
    report(
        &format!("dom0 -> dom{domid} over its grant-shared pages and an interdomain event channel"),
        rtts,
        total,
    );
    let dir = rendezvous_dir(domid, name);
    let verdict = xs
        .wait_for(&format!("{dir}/state"), Duration::from_secs(60), |v| {
            v.starts_with("done")
        })
        .map_err(|e| format!("server verdict: {e}"))?;
    println!("xen_probe: dom{domid} says: {verdict}");
    if verdict == "done ok" {
        Ok(())
    } else {
        Err(format!("dom{domid}: {verdict}"))
    }
}

const RING_RENDEZVOUS: &str = "virtuos-ring";
/// `Nop` token that ends a ring run.
const RING_STOP: u64 = 0x7fff_ffff_ffff_fff0;

fn ring_serve(name: &str) -> Result<(), String> {
    check_devices()?;
    let mut xs = XenStore::open().map_err(|e| format!("xenstore: {e}"))?;
    let me = xs.own_domid().map_err(|e| e.to_string())?;
    let layout = Layout::new(1, 32, PAGE as u32).map_err(|e| e.to_string())?;
    let s = xen_session::offer(&mut xs, 0, layout, 1, name)
        .map_err(|e| format!("offering the session: {e}"))?;
    println!(
        "xen_probe: dom{me} offers a session to dom0: {} page(s), {layout:?}, at {}",
        xen_session::region_pages(&layout),
        rendezvous_dir(me, name)
    );
    let ring = s.ring(0);
    let mut back = BackState::default();
    let (mut served, mut stop) = (0u64, false);
    let deadline = Instant::now() + Duration::from_secs(900);
    while !stop {
        let mut progressed = false;
        while let Some(slot) = back.take(&ring).map_err(|e| format!("ring: {e}"))? {
            progressed = true;
            let rsp = match abi::decode_request(&slot, layout.window) {
                Ok(v) if v.opcode == abi::Opcode::Nop => {
                    stop |= v.raw.args[0] == RING_STOP;
                    abi::Response::ok(v.raw.id, (v.raw.args[0] & i64::MAX as u64) as i64)
                }
                Ok(v) => abi::Response::err(v.raw.id, abi::Errno::ENOSYS),
                Err((id, _)) => abi::Response::err(id, abi::Errno::EINVAL),
            };
            back.push(&ring, &rsp.to_slot());
            served += 1;
        }
        if back.publish(&ring) {
            s.notify_client(0);
        }
        if progressed || stop || back.arm(&ring) {
            continue;
        }
        if Instant::now() > deadline {
            return Err(format!("no stop call after 900 s ({served} served)"));
        }
        let mut pfd = libc::pollfd {
            fd: s.bell().doorbell_fd(0).as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 1000) } > 0 {
            s.bell().drain(0);
        }
    }
    let verdict = format!("done ok: {served} calls");
    println!("xen_probe: ring session served {served} call(s)");
    xs.write(&format!("{}/state", rendezvous_dir(me, name)), &verdict)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn ring_connect(domid: u16, rounds: u32, name: &str) -> Result<(), String> {
    check_devices()?;
    let mut xs = XenStore::open().map_err(|e| format!("xenstore: {e}"))?;
    let t = Instant::now();
    let s = xen_session::connect(
        &mut xs,
        domid,
        name,
        SpinPolicy::CLIENT.from_env("CLIENT"),
        Duration::from_secs(300),
    )
    .map_err(|e| format!("connecting the session: {e}"))?;
    println!(
        "xen_probe: session {} with dom{domid} after {:?}: {:?}",
        s.id(),
        t.elapsed(),
        s.layout()
    );
    let nop = |token: u64| -> Result<Duration, String> {
        let mut req = abi::Request {
            opcode: abi::Opcode::Nop as u16,
            ..abi::Request::default()
        };
        req.args[0] = token;
        let t = Instant::now();
        let r = s.call(req).map_err(|e| format!("call {token}: {e}"))?;
        let dt = t.elapsed();
        if r.result != token as i64 {
            return Err(format!("call {token}: answered {}", r.result));
        }
        Ok(dt)
    };
    let mut rtts = Vec::with_capacity(rounds as usize);
    let total = Instant::now();
    for i in 1..=u64::from(rounds) {
        rtts.push(nop(i)?);
    }
    let total = total.elapsed();
    nop(RING_STOP)?;
    let w = s.stats();
    report(
        &format!("of Session::call(Nop) dom0 -> dom{domid} over the xen backend (ring protocol, client spin then event channel)"),
        rtts,
        total,
    );
    println!(
        "xen_probe: client waits: {} call(s), {} ended spinning, {} slept",
        w.calls, w.spins, w.sleeps
    );
    let verdict = xs
        .wait_for(
            &format!("{}/state", rendezvous_dir(domid, name)),
            Duration::from_secs(60),
            |v| v.starts_with("done"),
        )
        .map_err(|e| format!("server verdict: {e}"))?;
    println!("xen_probe: dom{domid} says: {verdict}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let r = match arg(0).unwrap_or("self") {
        "self" => self_test(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(4),
            arg(2).and_then(|s| s.parse().ok()).unwrap_or(1000),
        ),
        "serve" => serve(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(4),
            arg(2).unwrap_or(RENDEZVOUS),
        ),
        "connect" => match arg(1).and_then(|s| s.parse().ok()) {
            Some(d) => connect(
                d,
                arg(2).and_then(|s| s.parse().ok()).unwrap_or(1000),
                arg(3).unwrap_or(RENDEZVOUS),
            ),
            None => Err("connect needs the server's domain id".into()),
        },
        "ring-serve" => ring_serve(arg(1).unwrap_or(RING_RENDEZVOUS)),
        "ring-connect" => match arg(1).and_then(|s| s.parse().ok()) {
            Some(d) => ring_connect(
                d,
                arg(2).and_then(|s| s.parse().ok()).unwrap_or(1000),
                arg(3).unwrap_or(RING_RENDEZVOUS),
            ),
            None => Err("ring-connect needs the server's domain id".into()),
        },
        other => Err(format!(
            "unknown mode {other:?} (self [PAGES] [ROUNDS] | serve [PAGES] [NAME] | connect DOMID [ROUNDS] [NAME] | ring-serve [NAME] | ring-connect DOMID [ROUNDS] [NAME])"
        )),
    };
    match r {
        Ok(()) => {
            println!("xen_probe: PASS");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
