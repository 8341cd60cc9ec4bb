//! The readiness watcher: pushes socket readiness into each session's shared readiness words.
//!
//! Every socket handle of every session is registered, through a private duplicate of its fd,
//! in one edge-triggered epoll set (a duplicate per session, because a socket shared after a
//! fork is one open file with several holders, and epoll keys registrations by file and fd).
//! Worker 0 of the runtime watches the set on its io_uring ([`service::Handler::event_source`])
//! and drains it when it becomes readable; for each edge it polls the socket's current state
//! and publishes it with the edge counted, which wakes the session's sleeping threads. Workers republish the
//! level after each call on the socket, so a drained socket stops looking ready.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use service::fdtable::Handle;
use service::SessionRef;

use crate::sys;

struct Entry {
    session: SessionRef,
    handle: u32,
    dup: OwnedFd,
}

#[derive(Default)]
struct Inner {
    next: u64,
    by_key: HashMap<u64, Entry>,
    by_handle: HashMap<(u64, u32), u64>,
}

/// Watches every client socket for readiness changes.
pub struct Watcher {
    epoll: Epoll,
    inner: Mutex<Inner>,
    /// Edges published (telemetry).
    pub edges: AtomicU64,
}

impl Watcher {
    /// Creates the watcher (drained by [`Watcher::drain`] when its fd is readable).
    pub fn start() -> std::io::Result<Arc<Watcher>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Arc::new(Watcher {
            epoll,
            inner: Mutex::new(Inner::default()),
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
        let dup = match sys::dup(fd.as_fd()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(
                    session = session.id(),
                    handle = h,
                    errno = e,
                    "cannot watch socket; its readiness will not be pushed"
                );
                return;
            }
        };
        let mut inner = self.lock();
        if let Some(old) = inner.by_handle.remove(&(session.id(), h)) {
            if let Some(e) = inner.by_key.remove(&old) {
                let _ = self.epoll.delete(&e.dup);
            }
        }
        // A call that finishes (socket, accept) after its client died must not register the
        // new socket: `remove_session` has run or runs next, and an entry added after it would
        // keep the session (its region, files and this duplicate) forever. The runtime marks
        // the session closed before it calls `session_closed`, which takes this lock.
        if session.is_closed() {
            return;
        }
        inner.next += 1;
        let key = inner.next;
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLPRI
            | EpollFlags::EPOLLET;
        if let Err(e) = self.epoll.add(&dup, EpollEvent::new(flags, key)) {
            tracing::warn!(session = session.id(), handle = h, %e, "epoll_ctl failed");
            return;
        }
        session.publish_event(h as usize, sys::readiness(dup.as_fd()), true);
        inner.by_handle.insert((session.id(), h), key);
        inner.by_key.insert(
            key,
            Entry {
                session: session.clone(),
                handle: h,
                dup,
            },
        );
    }

    /// Stops watching handle `h` of session `id`.
    pub fn remove(&self, id: u64, h: u32) {
        let mut inner = self.lock();
        if let Some(key) = inner.by_handle.remove(&(id, h)) {
            if let Some(e) = inner.by_key.remove(&key) {
                let _ = self.epoll.delete(&e.dup);
            }
        }
    }

    /// Stops watching every handle of session `id`; returns the handles that were watched.
    pub fn remove_session(&self, id: u64) -> Vec<u32> {
        let mut inner = self.lock();
        let keys: Vec<(u32, u64)> = inner
            .by_handle
            .iter()
            .filter(|((s, _), _)| *s == id)
            .map(|((_, h), k)| (*h, *k))
            .collect();
        inner.by_handle.retain(|(s, _), _| *s != id);
        for (_, k) in &keys {
            if let Some(e) = inner.by_key.remove(k) {
                let _ = self.epoll.delete(&e.dup);
            }
        }
        keys.into_iter().map(|(h, _)| h).collect()
    }

    /// Sockets watched now.
    pub fn watched(&self) -> usize {
        self.lock().by_key.len()
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
                if let Some(e) = inner.by_key.get(&ev.data()) {
                    if e.session.is_closed() {
                        continue;
                    }
                    let mask = sys::readiness(e.dup.as_fd());
                    e.session.publish_event(e.handle as usize, mask, true);
                    self.edges.fetch_add(1, Ordering::Relaxed);
                }
            }
            if n < events.len() {
                return;
            }
        }
    }
}
