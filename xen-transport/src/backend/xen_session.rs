//! Sessions over the `xen` backend, set up through xenstore instead of the Unix control socket.
//!
//! The service domain [`offer`]s a session to a peer domain: it grants the pages of a region
//! of the given [`Layout`] to the peer (`/dev/xen/gntalloc`), binds an unbound event channel
//! for it, initialises the region header ([`ServerSession::new`]) and publishes the
//! [`Rendezvous`] plus the geometry and session id under `/local/domain/<own id>/data/<name>/`.
//! The peer [`connect`]s: it waits for that record, maps the grants (`/dev/xen/gntdev`), checks
//! the header against the published geometry, binds the port interdomain, and gets an ordinary
//! [`Session`], whose calls run the same ring protocol as over the local backend.
//!
//! A service that serves many clients (one session per client process, as over the Unix
//! socket) takes session *requests* instead: the client writes
//! `requests/<nonce> = "<channels> <window> <uid> <gid>"` under the service's rendezvous
//! directory ([`request`]); the service lists them ([`pending_requests`]), removes each and
//! offers a session as rendezvous `<name>/s-<nonce>`, which the client connects.
//!
//! When the client is done it says so ([`announce_closed`]: `closed/<session id>`), and the
//! service ends that session ([`closed_sessions`]), which ends its grants.
//!
//! Not covered yet (the Unix control socket does these for local sessions): peer credentials
//! (a Xen session reports uid/gid/pid 0; the peer's identity would come from the toolstack),
//! and death detection (each side's "control" descriptor is a never-signalled eventfd; a dead
//! peer shows as call timeouts, not as a hang-up; a client that dies without announcing its
//! end leaves its session to the service's exit).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::xen::{self, XenBell};
use super::xenstore::{rendezvous_dir, Rendezvous, XenStore};
use crate::client::Session;
use crate::layout::{header, Layout, PAGE, REGION_MAGIC, REGION_VERSION};
use crate::server::{Credentials, ServerSession};
use crate::wait::SpinPolicy;
use crate::TransportError;

/// Pages a region of `layout` occupies.
pub fn region_pages(layout: &Layout) -> usize {
    layout.region_len().div_ceil(PAGE)
}

fn placeholder_control() -> Result<OwnedFd, TransportError> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(OwnedFd::from)
        .map_err(|e| TransportError::Region(io::Error::from(e)))
}

fn bad(detail: String) -> TransportError {
    TransportError::BadRegion(detail)
}

/// Server side: creates a session of `layout` shared with domain `peer` and publishes it as
/// rendezvous `name` of this domain.
pub fn offer(
    xs: &mut XenStore,
    peer: u16,
    layout: Layout,
    session_id: u64,
    name: &str,
) -> Result<ServerSession, TransportError> {
    let me = xs.own_domid()?;
    let (mem, refs) = xen::grant_region(peer, region_pages(&layout))?;
    let bell = XenBell::bind_unbound(peer)?;
    let rv = Rendezvous {
        domid: me,
        refs,
        port: bell.port(),
    };
    let s = ServerSession::new(
        session_id,
        Credentials {
            pid: 0,
            uid: 0,
            gid: 0,
        },
        mem,
        layout,
        Box::new(bell),
        placeholder_control()?,
    );
    let dir = rendezvous_dir(me, name);
    xs.write(&format!("{dir}/channels"), &layout.channels.to_string())?;
    xs.write(&format!("{dir}/ring-size"), &layout.ring_size.to_string())?;
    xs.write(&format!("{dir}/window"), &layout.window.to_string())?;
    xs.write(&format!("{dir}/session-id"), &session_id.to_string())?;
    xs.write(&format!("{dir}/peer"), &peer.to_string())?;
    rv.publish(xs, name)?;
    Ok(s)
}

fn read_num<T: std::str::FromStr>(xs: &mut XenStore, path: &str) -> Result<T, TransportError> {
    let v = xs
        .read(path)?
        .ok_or_else(|| bad(format!("xenstore {path} missing")))?;
    v.trim()
        .parse()
        .map_err(|_| bad(format!("xenstore {path}: {v:?} is not a number")))
}

/// Client side: waits up to `timeout` for domain `server`'s rendezvous `name`, maps the
/// region and binds the doorbell.
pub fn connect(
    xs: &mut XenStore,
    server: u16,
    name: &str,
    spin: SpinPolicy,
    timeout: Duration,
) -> Result<Session, TransportError> {
    let rv = Rendezvous::wait(xs, server, name, timeout)?;
    let dir = rendezvous_dir(server, name);
    let layout = Layout::new(
        read_num(xs, &format!("{dir}/channels"))?,
        read_num(xs, &format!("{dir}/ring-size"))?,
        read_num(xs, &format!("{dir}/window"))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    let session_id: u64 = read_num(xs, &format!("{dir}/session-id"))?;
    if rv.refs.len() != region_pages(&layout) {
        return Err(bad(format!(
            "{} grant refs for a region of {} pages",
            rv.refs.len(),
            region_pages(&layout)
        )));
    }
    let mem = xen::map_granted_region(server, &rv.refs)?;
    let get = |off| mem.u32_at(off).load(Ordering::Acquire);
    let found = (get(header::MAGIC), get(header::VERSION));
    let geometry = (
        get(header::CHANNELS),
        get(header::RING_SIZE),
        get(header::WINDOW),
    );
    if found != (REGION_MAGIC, REGION_VERSION)
        || geometry != (layout.channels, layout.ring_size, layout.window)
    {
        return Err(bad(format!(
            "region header {found:x?}/{geometry:?} does not match {layout:?}"
        )));
    }
    let bell = XenBell::bind_interdomain(server, rv.port)?;
    Ok(Session::new(
        mem,
        layout,
        Box::new(bell),
        placeholder_control()?,
        spin,
        session_id,
        None,
    ))
}

/// A client's request for a session (see [`request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRequest {
    /// Unique name of the request; the session is offered as `<name>/s-<nonce>`.
    pub nonce: String,
    /// Channels wanted (0: the server's default).
    pub channels: u32,
    /// Data window wanted (0: the server's default).
    pub window: u32,
    /// Who the client says it is (the peer domain is trusted to tell).
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

impl SessionRequest {
    fn parse(nonce: &str, v: &str) -> Option<SessionRequest> {
        let f: Vec<u32> = v
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let [channels, window, uid, gid] = f[..] else {
            return None;
        };
        Some(SessionRequest {
            nonce: nonce.to_string(),
            channels,
            window,
            uid,
            gid,
        })
    }

    /// The rendezvous name of the session answering this request.
    pub fn session_name(&self, name: &str) -> String {
        format!("{name}/s-{}", self.nonce)
    }
}

/// Server side: takes the session requests waiting under this domain's rendezvous `name`
/// (each is removed as it is taken; malformed ones are dropped).
pub fn pending_requests(
    xs: &mut XenStore,
    name: &str,
) -> Result<Vec<SessionRequest>, TransportError> {
    let me = xs.own_domid()?;
    let dir = format!("{}/requests", rendezvous_dir(me, name));
    let nonces = match xs.directory(&dir) {
        Ok(n) => n,
        Err(TransportError::Xen(e)) if e.to_string().ends_with("ENOENT") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for n in nonces {
        let path = format!("{dir}/{n}");
        let v = xs.read(&path)?;
        xs.rm(&path)?;
        if let Some(r) = v.as_deref().and_then(|v| SessionRequest::parse(&n, v)) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Client side: asks domain `server`'s service at rendezvous `name` for a session and
/// connects it.
#[allow(clippy::too_many_arguments)]
pub fn request(
    xs: &mut XenStore,
    server: u16,
    name: &str,
    channels: u32,
    window: u32,
    (uid, gid): (u32, u32),
    spin: SpinPolicy,
    timeout: Duration,
) -> Result<Session, TransportError> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nonce = format!(
        "{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let dir = rendezvous_dir(server, name);
    xs.write(
        &format!("{dir}/requests/{nonce}"),
        &format!("{channels} {window} {uid} {gid}"),
    )?;
    let session_name = format!("{name}/s-{nonce}");
    let r = connect(xs, server, &session_name, spin, timeout);
    // The record has served its purpose (and counts against the server's xenstore quota).
    let _ = xs.rm(&rendezvous_dir(server, &session_name));
    if r.is_err() {
        let _ = xs.rm(&format!("{dir}/requests/{nonce}"));
    }
    r
}

/// Client side: tells domain `server`'s service at rendezvous `name` that session
/// `session_id` is over (after dropping the [`Session`], so its mapping is gone).
pub fn announce_closed(
    xs: &mut XenStore,
    server: u16,
    name: &str,
    session_id: u64,
) -> Result<(), TransportError> {
    xs.write(
        &format!("{}/closed/{session_id}", rendezvous_dir(server, name)),
        "",
    )
}

/// Server side: takes the ids of the sessions whose clients announced their end.
pub fn closed_sessions(xs: &mut XenStore, name: &str) -> Result<Vec<u64>, TransportError> {
    let me = xs.own_domid()?;
    let dir = format!("{}/closed", rendezvous_dir(me, name));
    let ids = match xs.directory(&dir) {
        Ok(n) => n,
        Err(TransportError::Xen(e)) if e.to_string().ends_with("ENOENT") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for id in ids {
        xs.rm(&format!("{dir}/{id}"))?;
        if let Ok(n) = id.parse() {
            out.push(n);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        let r = SessionRequest::parse("7-0-1", "2 65536 1000 100").unwrap();
        assert_eq!((r.channels, r.window, r.uid, r.gid), (2, 65536, 1000, 100));
        assert_eq!(r.session_name("virtuos-storage"), "virtuos-storage/s-7-0-1");
        assert_eq!(SessionRequest::parse("x", "2 65536 1000"), None);
        assert_eq!(SessionRequest::parse("x", "2 a 1000 100"), None);
    }

    #[test]
    fn region_pages_round_up() {
        let l = Layout::new(1, 8, PAGE as u32).unwrap();
        assert!(region_pages(&l) * PAGE >= l.region_len());
        assert!((region_pages(&l) - 1) * PAGE < l.region_len());
    }
}
