//! The readiness watcher: pushes socket readiness into each session's shared readiness words.
//!
//! Every socket of every session is registered once, through its own descriptor, in one
//! edge-triggered epoll set, keyed by the descriptor's number; the entry lists every (session,
//! handle) that names the socket (several after a fork share one descriptor: a socket costs the
//! server one fd however many sessions hold it). The watcher holds the socket while any of them
//! is registered, so the number cannot be reused under the registration. Worker 0 of the runtime
//! watches the set on its io_uring ([`service::Handler::event_source`]) and drains it when it
//! becomes readable; for each edge it polls the socket's current state and publishes it, with
//! the edge counted, to every session holding it, which wakes their sleeping threads. Workers
//! republish the level after each call on the socket, so a drained socket stops looking ready.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use service::fdtable::Handle;
use service::SessionRef;

use crate::ahead::Ahead;
use crate::sys;

/// The readiness bits a published word carries (EPOLL* and POLL* bits agree on Linux).
const POLL_BITS: u32 = (libc::POLLIN
    | libc::POLLOUT
    | libc::POLLPRI
    | libc::POLLERR
    | libc::POLLHUP
    | libc::POLLRDHUP) as u32;

/// One registered socket and who holds it.
struct Watched {
    fd: Handle,
    holders: Vec<(SessionRef, u32)>,
}

#[derive(Default)]
struct Inner {
    by_fd: HashMap<RawFd, Watched>,
    by_handle: HashMap<(u64, u32), RawFd>,
}

impl Inner {
    /// Drops (session `id`, handle `h`) from its socket's holders; the last one out
    /// unregisters the socket.
    fn unsubscribe(&mut self, epoll: &Epoll, id: u64, h: u32) {
        let Some(raw) = self.by_handle.remove(&(id, h)) else {
            return;
        };
        if let Some(e) = self.by_fd.get_mut(&raw) {
            e.holders.retain(|(s, hh)| !(s.id() == id && *hh == h));
            if e.holders.is_empty() {
                let _ = epoll.delete(e.fd.as_fd());
                self.by_fd.remove(&raw);
            }
        }
    }
}

/// Watches every client socket for readiness changes.
pub struct Watcher {
    epoll: Epoll,
    inner: Mutex<Inner>,
    /// Streams: a socket that has one is received into on each edge, and its `POLLIN` is
    /// the stream's.
    ahead: Arc<Ahead>,
    /// Edges published (telemetry).
    pub edges: AtomicU64,
}

impl Watcher {
    /// Creates the watcher (drained by [`Watcher::drain`] when its fd is readable).
    pub fn start(ahead: Arc<Ahead>) -> std::io::Result<Arc<Watcher>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Arc::new(Watcher {
            epoll,
            inner: Mutex::new(Inner::default()),
            ahead,
            edges: AtomicU64::new(0),
        }))
    }

    /// The epoll fd to watch for readability.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.epoll.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `fd`, handle `h` of `session`, and publishes its readiness now.
    pub fn add(&self, session: &SessionRef, h: u32, fd: &Handle) {
        if (h as usize) >= xen_transport::layout::EVENT_SLOTS {
            return;
        }
        let mut inner = self.lock();
        inner.unsubscribe(&self.epoll, session.id(), h);
        // A call that finishes (socket, accept) after its client died must not register the
        // new socket: `remove_session` has run or runs next, and an entry added after it would
        // keep the session (its region, files and this socket) forever. The runtime marks the
        // session closed before it calls `session_closed`, which takes this lock.
        if session.is_closed() {
            return;
        }
        let raw = fd.as_raw_fd();
        if inner
            .by_fd
            .get(&raw)
            .is_some_and(|e| !Arc::ptr_eq(&e.fd, fd))
        {
            // Cannot happen while the entry holds its socket open (the number is not reused);
            // never let a stale entry stand for another socket.
            tracing::warn!(
                fd = raw,
                "readiness watcher: replacing a stale registration"
            );
            if let Some(old) = inner.by_fd.remove(&raw) {
                let _ = self.epoll.delete(old.fd.as_fd());
                for (s, hh) in old.holders {
                    inner.by_handle.remove(&(s.id(), hh));
                }
            }
        }
        let watched = match inner.by_fd.entry(raw) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let flags = EpollFlags::EPOLLIN
                    | EpollFlags::EPOLLOUT
                    | EpollFlags::EPOLLRDHUP
                    | EpollFlags::EPOLLPRI
                    | EpollFlags::EPOLLET;
                if let Err(e) = self
                    .epoll
                    .add(fd.as_fd(), EpollEvent::new(flags, raw as u64))
                {
                    tracing::warn!(
                        session = session.id(),
                        handle = h,
                        %e,
                        "cannot watch socket; its readiness will not be pushed"
                    );
                    return;
                }
                v.insert(Watched {
                    fd: fd.clone(),
                    holders: Vec::new(),
                })
            }
        };
        watched.holders.push((session.clone(), h));
        let mask = self
            .ahead
            .level(session, h, fd, sys::readiness(fd.as_fd()), false);
        session.publish_event(h as usize, mask, true);
        inner.by_handle.insert((session.id(), h), raw);
    }

    /// Publishes `fd`'s readiness now (a level, not an edge) to every session holding it, and
    /// returns false when the watcher does not know the socket. A call by one holder changes
    /// what all of them must see: a child's recv that drains a socket it shares with its
    /// parent leaves the parent's word saying POLLIN otherwise, and the parent's next blocking
    /// recv after a select that said readable waits forever.
    pub fn republish(&self, fd: &Handle) -> bool {
        let mask = sys::readiness(fd.as_fd());
        let inner = self.lock();
        let Some(e) = inner
            .by_fd
            .get(&fd.as_raw_fd())
            .filter(|e| Arc::ptr_eq(&e.fd, fd))
        else {
            return false;
        };
        for (s, h) in &e.holders {
            if !s.is_closed() {
                let m = self.ahead.level(s, *h, fd, mask, false);
                s.publish_event(*h as usize, m, false);
            }
        }
        true
    }

    /// Stops watching handle `h` of session `id`.
    pub fn remove(&self, id: u64, h: u32) {
        self.lock().unsubscribe(&self.epoll, id, h);
    }

    /// Stops watching every handle of session `id`; returns the handles that were watched.
    pub fn remove_session(&self, id: u64) -> Vec<u32> {
        let mut inner = self.lock();
        let handles: Vec<u32> = inner
            .by_handle
            .keys()
            .filter(|(s, _)| *s == id)
            .map(|(_, h)| *h)
            .collect();
        for h in &handles {
            inner.unsubscribe(&self.epoll, id, *h);
        }
        handles
    }

    /// Sockets watched now (each registered once, however many sessions hold it).
    pub fn watched(&self) -> usize {
        self.lock().by_fd.len()
    }

    /// (session, handle) pairs watched now.
    pub fn holders(&self) -> usize {
        self.lock().by_handle.len()
    }

    /// Publishes every pending edge without waiting.
    pub fn drain(&self) {
        let mut events = [EpollEvent::empty(); 256];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(%e, "readiness watcher: epoll_wait failed");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            let inner = self.lock();
            for ev in &events[..n] {
                if let Some(e) = inner.by_fd.get(&(ev.data() as RawFd)) {
                    // epoll_wait reports what the socket is ready for as it harvests the
                    // event (it polls the socket then), so no poll of our own is needed.
                    let mask = ev.events().bits() as u32 & POLL_BITS;
                    for (s, h) in &e.holders {
                        if !s.is_closed() {
                            let m = self.ahead.level(s, *h, &e.fd, mask, true);
                            s.publish_event(*h as usize, m, true);
                        }
                    }
                    self.edges.fetch_add(1, Ordering::Relaxed);
                }
            }
            if n < events.len() {
                return;
            }
        }
    }
}
