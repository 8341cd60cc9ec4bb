//! Handshakes served concurrently: a silent client delays nobody.
//!
//! Taking a connection from the listening socket and reading its hello
//! ([`Listener::accept`]) waits up to the transport's hello timeout for a client that connects
//! and says nothing. So the acceptor does not do it: a small, growing set of *hello threads*
//! does, a leader and followers. The leader alone waits for the listener to become readable (no
//! herd of threads wakes for each client); before it takes the connection it hands the
//! leadership to an idle follower, starting a thread if none is idle (up to [`MAX_THREADS`]).
//! So every silent client holds one thread for at most the hello timeout, and the next client
//! is taken at once. Followers idle for a while beyond the first [`MIN_THREADS`] exit. Each
//! accepted client goes to the acceptor through a channel, with a wake-up on its eventfd.
//!
//! A failed `accept` (the process is out of descriptors: `EMFILE`, `ENFILE`; or out of memory)
//! never ends anything: the thread logs it (rate-limited), backs off briefly and keeps serving.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use xen_transport::control::{ListenError, Listener, Pending};

use crate::limits::{is_resource_errno, RateLimit};
use crate::ShutdownHandle;

/// Most hello threads at once: this many silent clients at the same moment delay the next one
/// by up to the hello timeout.
pub(crate) const MAX_THREADS: usize = 256;
/// Threads kept even when idle.
const MIN_THREADS: usize = 2;
/// How long a surplus thread waits idle before it exits.
const RETIRE_AFTER: Duration = Duration::from_secs(5);
/// How often a waiting thread looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// Back-off after a failed accept for lack of resources, and after any other failure.
const BACKOFF_RESOURCES: Duration = Duration::from_millis(50);
const BACKOFF_OTHER: Duration = Duration::from_millis(5);
/// Stack of a hello thread (it only reads one message and logs).
const STACK: usize = 256 << 10;

#[derive(Default)]
struct Counts {
    /// Threads alive.
    total: usize,
    /// Threads not inside an accept (the leader and the followers waiting to lead).
    idle: usize,
    /// A thread is waiting on the listener.
    leader: bool,
}

pub(crate) struct Hellos {
    listener: Arc<Listener>,
    tx: Mutex<mpsc::Sender<Pending>>,
    wake: Arc<EventFd>,
    shutdown: ShutdownHandle,
    counts: Mutex<Counts>,
    /// Signalled when the leadership is free and when a thread exits.
    changed: Condvar,
    name: String,
    spawned: AtomicUsize,
    failures: RateLimit,
}

impl Hellos {
    /// Starts the first threads; accepted clients arrive on the returned receiver, each with a
    /// write to `wake`.
    pub(crate) fn start(
        listener: Arc<Listener>,
        wake: Arc<EventFd>,
        shutdown: ShutdownHandle,
        name: &str,
    ) -> std::io::Result<(Arc<Hellos>, mpsc::Receiver<Pending>)> {
        let (tx, rx) = mpsc::channel();
        let h = Arc::new(Hellos {
            listener,
            tx: Mutex::new(tx),
            wake,
            shutdown,
            counts: Mutex::default(),
            changed: Condvar::new(),
            name: name.to_string(),
            spawned: AtomicUsize::new(0),
            failures: RateLimit::new(Duration::from_secs(1)),
        });
        for _ in 0..MIN_THREADS {
            {
                let mut c = h.lock();
                c.total += 1;
                c.idle += 1;
            }
            if let Err(e) = h.spawn() {
                let mut c = h.lock();
                c.total -= 1;
                c.idle -= 1;
                if c.total == 0 {
                    return Err(e);
                }
            }
        }
        Ok((h, rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Threads alive now.
    pub(crate) fn threads(&self) -> usize {
        self.lock().total
    }

    /// Starts one thread, already counted (total and idle) by the caller.
    fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("virtuos-{}-hello{n}", self.name))
            .stack_size(STACK)
            .spawn(move || me.run(tx))
            .map(drop)
    }

    fn readable(&self) -> bool {
        let mut fds = [PollFd::new(self.listener.fd().as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
        matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
    }

    /// Counts an idle thread out (it exits).
    fn count_out(&self, c: &mut Counts) {
        c.total -= 1;
        c.idle -= 1;
        self.changed.notify_all();
    }

    /// Waits to become the leader. `false` when the thread exits instead (shutdown, or a surplus
    /// follower idle for long), already counted out.
    fn lead(&self) -> bool {
        let mut idle_since = Instant::now();
        let mut c = self.lock();
        loop {
            if self.shutdown.is_triggered() {
                self.count_out(&mut c);
                return false;
            }
            if !c.leader {
                c.leader = true;
                return true;
            }
            if idle_since.elapsed() >= RETIRE_AFTER {
                if c.total > MIN_THREADS {
                    self.count_out(&mut c);
                    return false;
                }
                idle_since = Instant::now();
            }
            c = self
                .changed
                .wait_timeout(c, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn run(self: Arc<Self>, tx: mpsc::Sender<Pending>) {
        while self.lead() {
            // The leader: wait for a client.
            while !self.readable() {
                if self.shutdown.is_triggered() {
                    let mut c = self.lock();
                    c.leader = false;
                    self.count_out(&mut c);
                    return;
                }
            }
            // About to take a connection whose hello may never come: hand the leadership over
            // first, to an idle follower or to a new thread.
            let start_one = {
                let mut c = self.lock();
                c.leader = false;
                c.idle -= 1;
                let more = c.idle == 0 && c.total < MAX_THREADS;
                if more {
                    c.total += 1;
                    c.idle += 1;
                }
                more
            };
            self.changed.notify_all();
            if start_one {
                if let Err(e) = self.spawn() {
                    let mut c = self.lock();
                    c.total -= 1;
                    c.idle -= 1;
                    drop(c);
                    if let Some(held) = self.failures.allow() {
                        tracing::warn!(%e, held_back = held,
                            "cannot start a hello thread; a silent client may delay the next ones");
                    }
                }
            }
            let r = self.listener.accept();
            self.lock().idle += 1;
            match r {
                Ok(Some(p)) => {
                    if tx.send(p).is_err() {
                        // The acceptor is gone.
                        self.count_out(&mut self.lock());
                        return;
                    }
                    let _ = self.wake.write(1);
                }
                Ok(None) => {}
                Err(e) => {
                    let resources = match &e {
                        ListenError::Io { source, .. } => {
                            source.raw_os_error().is_some_and(is_resource_errno)
                        }
                        ListenError::Transport(_) => true,
                        ListenError::InUse(_) => false,
                    };
                    if let Some(held) = self.failures.allow() {
                        tracing::warn!(%e, held_back = held,
                            "accepting a client failed; backing off and serving on");
                    }
                    std::thread::sleep(if resources {
                        BACKOFF_RESOURCES
                    } else {
                        BACKOFF_OTHER
                    });
                }
            }
        }
    }

    /// After shutdown was triggered: waits (at most `limit`) until every hello thread is gone,
    /// so the listener (and its socket file) goes away with the service.
    pub(crate) fn wait_gone(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut c = self.lock();
        while c.total > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(threads = c.total, "hello threads still running at shutdown");
                return;
            }
            c = self
                .changed
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
