//! Serving sessions offered to another Xen domain through xenstore (the `xen` backend of the
//! transport) beside the Unix listener.
//!
//! [`Runtime::serve_xen`] starts a thread that takes the session requests a peer domain
//! writes under this domain's rendezvous directory (`/local/domain/<id>/data/<name>/requests`,
//! see `xen_transport::backend::xen_session`), offers each a session of grant-shared pages with
//! an event-channel doorbell, and adds it to the workers like an accepted one.
//!
//! Differences from Unix-socket sessions: the client's identity is what the peer domain wrote
//! in its request (the peer's kernel is trusted, as dom0 is), there is no client pid (no parent
//! pid, no supplementary groups from `/proc`), and a session ends when the client announces it
//! through xenstore (`closed/<id>`), or with the service: there is no control socket to hang
//! up when a client dies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xen_transport::backend::xen_session::{self, SessionRequest};
use xen_transport::backend::xenstore::XenStore;
use xen_transport::{Credentials, Layout};

use crate::fdtable::FdTable;
use crate::worker::SessionCtx;
use crate::{creds, Handler, Live, Runtime, ServiceError};

/// What adopting a session needs from the runtime.
pub(crate) struct AdoptCtx {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) max_layout: Layout,
    pub(crate) max_handles: usize,
    pub(crate) workers: usize,
    /// Per-uid budgets (the files of a Xen session count against its uid's).
    pub(crate) accounts: Arc<crate::limits::Accounts>,
}

/// Session ids of Xen sessions start here (the Unix acceptor counts from 1).
const XEN_IDS: u64 = 1 << 40;

/// How often the request directory is read.
const POLL: Duration = Duration::from_millis(20);

impl Runtime {
    /// Serves sessions requested by domain `peer` through this domain's xenstore rendezvous
    /// `name`, from a thread that runs until the service shuts down.
    pub fn serve_xen(&mut self, peer: u16, name: &str) -> Result<(), ServiceError> {
        if self.adopt.workers != 1 {
            // One event channel per session: every worker would watch the same descriptor.
            return Err(ServiceError::Config(
                "sessions over Xen need a single worker thread (--threads 1)".into(),
            ));
        }
        let mut xs =
            XenStore::open().map_err(|e| ServiceError::Config(format!("xenstore: {e}")))?;
        let me = xs
            .own_domid()
            .map_err(|e| ServiceError::Config(format!("xenstore: {e}")))?;
        let name = name.to_string();
        let sessions = self.sessions.clone();
        let shutdown = self.shutdown.clone();
        let handler = self.adopt.handler.clone();
        let (max, max_handles) = (self.adopt.max_layout, self.adopt.max_handles);
        let accounts = self.adopt.accounts.clone();
        let next = AtomicU64::new(XEN_IDS);
        tracing::debug!(domid = me, peer, rendezvous = %name, "serving sessions over Xen");
        let t = std::thread::Builder::new()
            .name("virtuos-xen".into())
            .spawn(move || {
                while !shutdown.is_triggered() {
                    match xen_session::closed_sessions(&mut xs, &name) {
                        Ok(ids) => {
                            for id in ids {
                                if let Some(l) = sessions.remove(id) {
                                    l.closed.store(true, Ordering::Relaxed);
                                    let c = l.s.client_stats();
                                    tracing::debug!(
                                        session = id,
                                        calls = c.calls,
                                        "xen session ended"
                                    );
                                    handler.session_closed(id, l.s.creds());
                                    // Workers see the generation change and let go of it.
                                    shutdown.kick();
                                }
                            }
                        }
                        Err(e) => tracing::warn!(%e, "reading closed sessions"),
                    }
                    let reqs = match xen_session::pending_requests(&mut xs, &name) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(%e, "reading session requests");
                            Vec::new()
                        }
                    };
                    for r in reqs {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        let fds = FdTable::with_account(max_handles, accounts.get(r.uid));
                        match offer(&mut xs, peer, &name, &r, id, max, fds, &*handler) {
                            Ok(live) => {
                                tracing::debug!(
                                    session = id,
                                    uid = r.uid,
                                    gid = r.gid,
                                    channels = live.s.layout().channels,
                                    "xen session started"
                                );
                                sessions.add(Arc::new(live));
                                shutdown.kick();
                            }
                            Err(e) => {
                                tracing::warn!(request = %r.nonce, %e, "xen session set-up failed")
                            }
                        }
                    }
                    std::thread::sleep(POLL);
                }
            })
            .map_err(|source| ServiceError::Sys {
                what: "spawning the xen session thread",
                source,
            })?;
        self.threads.push(t);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn offer(
    xs: &mut XenStore,
    peer: u16,
    name: &str,
    r: &SessionRequest,
    id: u64,
    max: Layout,
    fds: FdTable,
    handler: &dyn Handler,
) -> Result<Live, String> {
    let pick = |asked: u32, max: u32| if asked == 0 { max } else { asked.min(max) };
    let window =
        (pick(r.window, max.window) as usize).next_multiple_of(xen_transport::layout::PAGE);
    let layout = Layout::new(pick(r.channels, max.channels), max.ring_size, window as u32)
        .map_err(|e| e.to_string())?;
    let creds = Credentials {
        pid: 0,
        uid: r.uid,
        gid: r.gid,
    };
    let identity = if handler.acts_as_client() {
        let ident = creds::Identity {
            caps: None,
            uid: r.uid,
            gid: r.gid,
            groups: vec![r.gid],
        };
        creds::check(&ident).map_err(|e| format!("cannot act as {}:{}: {e}", r.uid, r.gid))?;
        Some(Arc::new(ident))
    } else {
        None
    };
    handler.session_opened(id, creds);
    let s = xen_session::offer(xs, peer, layout, id, &r.session_name(name))
        .map_err(|e| e.to_string())?;
    Ok(Live {
        s,
        ctx: SessionCtx {
            creds,
            ppid: 0,
            groups: vec![r.gid],
            identity,
            fds,
            pidfd: None,
        },
        closed: AtomicBool::new(false),
        _charge: None,
    })
}
