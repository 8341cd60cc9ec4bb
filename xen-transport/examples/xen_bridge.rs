//! `xen_bridge`: a dom0 stand-in for the client side of the `xen` backend in the preload shim.
//!
//! `xen_bridge --listen SOCK --domid D [--name virtuos-storage]` listens on a Unix socket like
//! a service domain. Each local client session (a redirected program's shim) gets its own
//! session over Xen with the service in domain D (requested through xenstore, see
//! `backend::xen_session`), and every request is forwarded one to one: the payload range of
//! the request's data window copied into the Xen session's window, the call made on it, the
//! response and its payload copied back. `vm/xen-test.sh` uses it to run a redirected file
//! workload in dom0 against `virtuos-storage --xen-peer 0` in a domU; it goes away once the
//! shim connects over Xen itself.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use abi::control::CAP_IO_URING;
use abi::{decode_request, Errno, Response, REQ_FLAG_NO_REPLY_WAIT};
use xen_transport::backend::xen_session;
use xen_transport::backend::xenstore::XenStore;
use xen_transport::control::{Listener, Pending};
use xen_transport::ring::BackState;
use xen_transport::wait::SpinPolicy;

/// Window per channel asked of the service (its default).
const WINDOW: u32 = 256 << 10;
/// Most channels per bridged session.
const MAX_CHANNELS: u32 = 4;

fn usage() -> ! {
    eprintln!("usage: xen_bridge --listen SOCK --domid D [--name NAME]");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut domid, mut name) = (None, None, "virtuos-storage".to_string());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().map(PathBuf::from),
            "--domid" => domid = args.next().and_then(|d| d.parse::<u16>().ok()),
            "--name" => name = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let (Some(listen), Some(domid)) = (listen, domid) else {
        usage()
    };
    let listener = match Listener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("xen_bridge: {e}");
            std::process::exit(1)
        }
    };
    let _ = std::fs::set_permissions(&listen, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    eprintln!(
        "xen_bridge: {} -> dom{domid} rendezvous {name}",
        listen.display()
    );
    let mut next_id = 1u64;
    loop {
        let mut pfd = libc::pollfd {
            fd: listener.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        loop {
            match listener.accept() {
                Ok(Some(p)) => {
                    let Some(p) = p.check_version() else { continue };
                    let (id, name) = (next_id, name.clone());
                    next_id += 1;
                    std::thread::spawn(move || {
                        if let Err(e) = bridge(p, id, domid, &name) {
                            eprintln!("xen_bridge: session {id}: {e}");
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("xen_bridge: accept: {e}");
                    break;
                }
            }
        }
    }
}

fn bridge(p: Pending, id: u64, domid: u16, name: &str) -> Result<(), String> {
    let channels = match p.hello.channels {
        0 => 1,
        n => n.min(MAX_CHANNELS),
    };
    let mut xs = XenStore::open().map_err(|e| format!("xenstore: {e}"))?;
    let remote = xen_session::request(
        &mut xs,
        domid,
        name,
        channels,
        WINDOW,
        (p.creds.uid, p.creds.gid),
        SpinPolicy::CLIENT.from_env("CLIENT"),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("session over Xen: {e}"))?;
    let remote_id = remote.id();
    let r = serve(p, id, &remote);
    // Unmap before the service ends the session and its grants.
    drop(remote);
    if let Err(e) = xen_session::announce_closed(&mut xs, domid, name, remote_id) {
        eprintln!("xen_bridge: session {id}: announcing its end: {e}");
    }
    r
}

fn serve(p: Pending, id: u64, remote: &xen_transport::Session) -> Result<(), String> {
    let layout = remote.layout();
    let local = p
        .accept(id, layout, 1, CAP_IO_URING)
        .map_err(|e| format!("local session: {e}"))?;
    let mut back = vec![BackState::default(); layout.channels as usize];
    let mut buf = vec![0u8; layout.window as usize];
    loop {
        let mut progressed = false;
        for c in 0..layout.channels {
            let ring = local.ring(c);
            while let Some(slot) = back[c as usize]
                .take(&ring)
                .map_err(|e| format!("local ring: {e}"))?
            {
                progressed = true;
                let rsp = match decode_request(&slot, layout.window) {
                    Err((rid, _)) => Response::err(rid, Errno::EINVAL),
                    Ok(v) => {
                        let mut req = v.raw;
                        req.flags &= !REQ_FLAG_NO_REPLY_WAIT;
                        let (off, len) = (req.data_off, req.data_len as usize);
                        let mut lease = remote.lease();
                        let sent = if len > 0 {
                            local.read_window(c, off, &mut buf[..len]);
                            lease.write(off as usize, &buf[..len])
                        } else {
                            Ok(())
                        };
                        match sent.and_then(|()| lease.call(req)) {
                            Ok(mut r) => {
                                let n = len
                                    .max(r.data_len as usize)
                                    .min(layout.window.saturating_sub(off) as usize);
                                if n > 0 && lease.read(off as usize, &mut buf[..n]).is_ok() {
                                    local.write_window(c, off, &buf[..n]);
                                }
                                r.id = v.raw.id;
                                r
                            }
                            Err(e) => {
                                eprintln!("xen_bridge: session {id}: call: {e}");
                                Response::err(v.raw.id, Errno::EIO)
                            }
                        }
                    }
                };
                back[c as usize].push(&ring, &rsp.to_slot());
            }
            if back[c as usize].publish(&ring) {
                local.notify_client(c);
            }
        }
        if progressed {
            continue;
        }
        let mut armed_pending = false;
        for c in 0..layout.channels {
            armed_pending |= back[c as usize].arm(&local.ring(c));
        }
        if armed_pending {
            continue;
        }
        let mut pfd = [
            libc::pollfd {
                fd: local.bell().doorbell_fd(0).as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: local.control().as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        unsafe { libc::poll(pfd.as_mut_ptr(), 2, 1000) };
        if pfd[0].revents != 0 {
            local.bell().drain(0);
        }
        if pfd[1].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            return Ok(()); // the client exited
        }
    }
}
