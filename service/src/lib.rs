//! The service runtime shared by virtuos's network and storage domains.
//!
//! [`Runtime::start`] listens on a Unix socket, accepts sessions ([`xen_transport::control`]),
//! and runs `threads` worker threads, each pinned to a core from `--cpus`. Worker `w` owns the
//! channels `c` of every session with `c % threads == w`, so no two workers ever touch the same
//! ring and no lock is taken on the request path. A worker polls its channels, answers what it
//! can at once, hands the rest to its own io_uring, and posts completions as they arrive. When
//! idle it spins for an adaptive budget, then arms every ring's event word and sleeps in
//! `epoll_wait` on its doorbells and its io_uring.
//!
//! A domain supplies a [`Handler`] for its own opcodes; the runtime answers the transport's
//! probes (`Nop`, `UringNop`, `Echo`, `WhoAmI`, `Delay`) and the session opcodes
//! (`PrepareClone`, `Adopt`, over each session's [`FdTable`]) itself.
//!
//! Calls that would block a poller go to a small blocking pool ([`Outcome::Blocking`]); their
//! responses come back to the worker like io_uring completions. A handler that
//! [acts as the client](Handler::acts_as_client) gets every io_uring entry submitted under a
//! per-session io_uring personality and every blocking call run by a pool thread that has
//! switched to the client's fsuid, fsgid and supplementary groups ([`creds`]).
//!
//! Handshakes run on their own threads (`hello.rs`), so a client that connects and stays silent
//! delays nobody. Every descriptor the server holds for a client is charged to the client's uid
//! against per-uid budgets ([`limits`]); a resource error is the error of the call that met it
//! (the client gets `EMFILE`), never the end of the acceptor or of a worker.
//!
//! Shutdown ([`ShutdownHandle::trigger`], wired to SIGTERM/SIGINT by [`install_signal_handlers`])
//! stops accepting, marks every session closing, answers every queued and in-flight request with
//! `EIO` and [`abi::RSP_FLAG_SHUTDOWN`], wakes every waiting client, and joins the workers.

#![deny(missing_docs)]

pub mod cpus;
pub mod creds;
pub mod fdtable;
mod hello;
pub mod interrupt;
pub mod limits;
mod pool;
mod worker;
pub mod xen;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use abi::control::{RefuseReason, CAP_IO_URING};
use abi::{Errno, Response};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use thiserror::Error;
use xen_transport::control::{ListenError, Listener, Pending};
use xen_transport::{Credentials, Layout, ServerSession, ServerState, SpinPolicy, WaitStats};

pub use fdtable::{CloneKind, CloneTokens, FdTable, OpenFd};
pub use limits::{raise_nofile_limit, UidLimitArgs};
pub use pool::DEFAULT_BLOCKING_THREADS;
pub use worker::{BlockingFn, Call, Keep, Outcome, SessionCtx, SessionRef};

/// Default geometry offered to clients that do not ask for one.
pub const DEFAULT_CHANNELS: u32 = 64;
/// Default slots per ring.
pub const DEFAULT_RING_SIZE: u32 = 32;
/// Default data window per channel.
pub const DEFAULT_WINDOW: u32 = 256 << 10;

/// What a domain adds to the runtime.
pub trait Handler: Send + Sync + 'static {
    /// Short name for logs ("storage", "net").
    fn name(&self) -> &'static str;

    /// Whether the service acts with each client's identity: when true, the runtime reads the
    /// client's supplementary groups at session start, refuses clients it cannot act as (a
    /// server without CAP_SETUID/CAP_SETGID serves only its own user), registers an io_uring
    /// personality per (worker, session) and sets it on every entry the handler submits, and
    /// runs blocking calls on pool threads switched to the client's credentials.
    fn acts_as_client(&self) -> bool {
        false
    }

    /// Whether sessions whose client asks for streams get them (see
    /// [`xen_transport::stream`]): the handler then receives ahead into them.
    fn wants_streams(&self) -> bool {
        false
    }

    /// A session is starting: called before the client is told, so before its first request.
    fn session_opened(&self, _id: u64, _creds: Credentials) {}

    /// Executes a request the runtime does not answer itself. Runs on a worker thread; must not
    /// block: anything slow goes to io_uring ([`Outcome::Submit`]) or to the blocking pool
    /// ([`Outcome::Blocking`]).
    fn handle(&self, call: &Call<'_>) -> Outcome {
        Outcome::Done(Response::err(call.id(), Errno::ENOSYS))
    }

    /// Turns the io_uring completion of a submitted request into its response (or into a
    /// further step). Runs on the worker thread; [`Call::kept`] returns what was kept.
    fn complete(&self, call: &Call<'_>, result: i32) -> Outcome {
        Outcome::Done(Response::ok(call.id(), i64::from(result)))
    }

    /// A session ended (the client exited or closed its connection).
    fn session_closed(&self, _id: u64, _creds: Credentials) {}

    /// A pollable fd (an epoll set, say) that worker 0 watches on its io_uring, without a
    /// system call while it polls: whenever it becomes readable, the worker calls
    /// [`Handler::service_events`]. Asked once, when the worker starts.
    fn event_source(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The [event source](Handler::event_source) became readable: handle what it reports
    /// without blocking.
    fn service_events(&self) {}

    /// A session adopted a snapshot of another one's files ([`abi::Opcode::Adopt`], after a
    /// fork or an exec): `call` is the adopt request, [`Call::fds`] the new table.
    fn adopted(&self, _call: &Call<'_>) {}

    /// Session `id` is about to share handles `handles` with another process (a fork or exec
    /// snapshot, or descriptors passed over SCM_RIGHTS: [`abi::Opcode::PrepareClone`]), before
    /// the snapshot is taken. Called on the worker thread.
    fn cloning(&self, _id: u64, _handles: &[u32]) {}

    /// A session imported files passed to it over SCM_RIGHTS ([`abi::Opcode::Import`]):
    /// `handles` are their new numbers in [`Call::fds`].
    fn imported(&self, _call: &Call<'_>, _handles: &[u32]) {}
}

/// A handler that only serves the runtime's own probes (benchmarks, tests).
#[derive(Debug, Default)]
pub struct ProbeHandler;

impl Handler for ProbeHandler {
    fn name(&self) -> &'static str {
        "probe"
    }
}

/// How to run a service.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Unix socket to listen on.
    pub listen: PathBuf,
    /// Cores to pin workers to (worker `i` on `cpus[i % len]`); empty: no pinning.
    pub cpus: Vec<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Most concurrent sessions; further clients are refused as full.
    pub max_sessions: usize,
    /// Upper bounds for client-requested geometry; also the default.
    pub channels: u32,
    /// Slots per ring.
    pub ring_size: u32,
    /// Data window per channel (a client may ask for less).
    pub window: u32,
    /// Spin bounds of idle workers.
    pub spin: SpinPolicy,
    /// io_uring submission queue entries per worker.
    pub uring_entries: u32,
    /// Threads of the blocking pool.
    pub blocking_threads: usize,
    /// Most open handles per session.
    pub max_handles: usize,
    /// Most concurrent sessions of one uid (root exempt); `None`: 3/4 of `max_sessions`.
    pub max_sessions_per_uid: Option<usize>,
    /// Most descriptors held for one uid (root exempt): its open files and its sessions' own
    /// descriptors; `None`: 3/4 of the process's `RLIMIT_NOFILE` soft limit at start.
    pub max_handles_per_uid: Option<usize>,
}

impl RuntimeConfig {
    /// Defaults for a socket path with the command-line options every server shares applied:
    /// `--cpus LIST`, `--threads N` (default: one per listed CPU, or 1), `--max-sessions N`
    /// and `--spin-max-ns NS` (longest idle spin; 0 sleeps at once).
    pub fn from_common_options(
        listen: impl Into<PathBuf>,
        cpus: Option<&str>,
        threads: Option<usize>,
        max_sessions: usize,
        spin_max_ns: Option<u64>,
    ) -> Result<Self, ServiceError> {
        let mut cfg = RuntimeConfig::new(listen);
        if let Some(list) = cpus {
            cfg.cpus = cpus::parse_cpu_list(list)?;
        }
        cfg.threads = threads.unwrap_or(cfg.cpus.len().max(1));
        cfg.max_sessions = max_sessions;
        if let Some(ns) = spin_max_ns {
            let max = Duration::from_nanos(ns);
            cfg.spin = SpinPolicy {
                min: cfg.spin.min.min(max),
                max,
            };
        }
        Ok(cfg)
    }

    /// Applies the per-uid budgets of the command line.
    pub fn with_uid_limits(mut self, l: &UidLimitArgs) -> Self {
        self.max_sessions_per_uid = l.max_sessions_per_uid;
        self.max_handles_per_uid = l.max_handles_per_uid;
        self
    }

    /// The per-uid session budget in effect.
    pub fn sessions_per_uid(&self) -> usize {
        self.max_sessions_per_uid
            .unwrap_or_else(|| limits::default_share(self.max_sessions))
    }

    /// The per-uid descriptor budget in effect (read from `RLIMIT_NOFILE` when not set).
    pub fn handles_per_uid(&self) -> usize {
        self.max_handles_per_uid
            .unwrap_or_else(|| limits::default_share(limits::nofile_limit()))
    }

    /// Defaults for a socket path.
    pub fn new(listen: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            listen: listen.into(),
            cpus: Vec::new(),
            threads: 1,
            max_sessions: 1024,
            channels: DEFAULT_CHANNELS,
            ring_size: DEFAULT_RING_SIZE,
            window: DEFAULT_WINDOW,
            spin: SpinPolicy::SERVER.from_env("SERVER"),
            uring_entries: 256,
            blocking_threads: DEFAULT_BLOCKING_THREADS,
            max_handles: fdtable::DEFAULT_MAX_HANDLES,
            max_sessions_per_uid: None,
            max_handles_per_uid: None,
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The configuration is inconsistent.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A CPU list problem.
    #[error(transparent)]
    Cpus(#[from] cpus::CpuListError),
    /// io_uring could not be set up (kernel too old, or disabled by sysctl).
    #[error("io_uring_setup failed: {0} (needs Linux 5.19+ with io_uring enabled: sysctl kernel.io_uring_disabled=0)")]
    Uring(#[source] std::io::Error),
    /// Other system errors.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> ServiceError {
    move |e| ServiceError::Sys {
        what,
        source: e.into(),
    }
}

/// A live session: the shared region and the runtime's state for it.
pub(crate) struct Live {
    pub(crate) s: ServerSession,
    pub(crate) ctx: SessionCtx,
    /// Set when the session ended (handlers holding a [`SessionRef`] check it).
    pub(crate) closed: AtomicBool,
    /// The session and its own descriptors, charged to its uid until it is dropped (when the
    /// last worker or call lets go of it, and so of its descriptors).
    pub(crate) _charge: Option<limits::SessionCharge>,
}

/// The live sessions, shared by the acceptor and the workers.
pub(crate) struct Sessions {
    list: RwLock<Vec<Arc<Live>>>,
    generation: AtomicU64,
}

impl Sessions {
    pub(crate) fn snapshot(&self) -> (u64, Vec<Arc<Live>>) {
        let g = self.generation.load(Ordering::Acquire);
        (g, self.list.read().expect("sessions lock").clone())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn add(&self, s: Arc<Live>) {
        self.list.write().expect("sessions lock").push(s);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn remove(&self, id: u64) -> Option<Arc<Live>> {
        let mut l = self.list.write().expect("sessions lock");
        let i = l.iter().position(|s| s.s.id() == id)?;
        let s = l.swap_remove(i);
        self.generation.fetch_add(1, Ordering::Release);
        Some(s)
    }

    fn len(&self) -> usize {
        self.list.read().expect("sessions lock").len()
    }
}

/// Stops a running service; cheap to clone, safe to trigger from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    wakers: Arc<Mutex<Vec<Arc<EventFd>>>>,
}

impl ShutdownHandle {
    fn new() -> Self {
        ShutdownHandle {
            flag: Arc::new(AtomicBool::new(false)),
            wakers: Arc::default(),
        }
    }

    fn waker(&self) -> Result<Arc<EventFd>, ServiceError> {
        let e = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(sys("eventfd"))?,
        );
        self.wakers.lock().expect("wakers lock").push(e.clone());
        Ok(e)
    }

    /// Asks the service to stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for w in self.wakers.lock().expect("wakers lock").iter() {
            let _ = w.write(1);
        }
    }

    /// Wakes every sleeping worker without stopping anything (new session, etc.).
    fn kick(&self) {
        for w in self.wakers.lock().expect("wakers lock").iter() {
            let _ = w.write(1);
        }
    }

    /// True once shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): what every server binary does
/// first. Per-session events are at debug; terminal colours only when stderr is a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Wires SIGTERM and SIGINT to `handle` (a thread waits for them; no async-signal hazards).
pub fn install_signal_handlers(handle: ShutdownHandle) -> Result<(), ServiceError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|source| {
        ServiceError::Sys {
            what: "installing signal handlers",
            source,
        }
    })?;
    std::thread::Builder::new()
        .name("virtuos-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down");
                handle.trigger();
            }
        })
        .map_err(|source| ServiceError::Sys {
            what: "spawning the signal thread",
            source,
        })?;
    Ok(())
}

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Idle spins that ended with work, sleeps, and client wake-ups rung.
    pub wait: WaitStats,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests rejected by validation.
    pub rejected: AtomicU64,
    /// Requests executed through io_uring.
    pub uring: AtomicU64,
    /// Requests handed to the blocking pool.
    pub blocking: AtomicU64,
}

/// A started service.
pub struct Runtime {
    shutdown: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Vec<WorkerStats>>,
    sessions: Arc<Sessions>,
    pool: Arc<pool::Pool>,
    /// For sessions set up outside the Unix listener (see [`xen`]).
    adopt: xen::AdoptCtx,
}

impl Runtime {
    /// Binds the socket, starts the workers and the acceptor, and returns at once.
    pub fn start<H: Handler>(cfg: RuntimeConfig, handler: H) -> Result<Runtime, ServiceError> {
        if cfg.threads == 0 || cfg.threads > xen_transport::control::MAX_DOORBELLS {
            return Err(ServiceError::Config(format!(
                "--threads must be 1..={}",
                xen_transport::control::MAX_DOORBELLS
            )));
        }
        cpus::check_available(&cfg.cpus)?;
        let max_layout = Layout::new(cfg.channels, cfg.ring_size, cfg.window)
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        let listener = Arc::new(Listener::bind(&cfg.listen)?);
        let accounts = Arc::new(limits::Accounts::new(
            cfg.handles_per_uid(),
            cfg.sessions_per_uid(),
        ));
        tracing::debug!(
            fd_limit = limits::nofile_limit(),
            max_handles_per_uid = accounts.max_fds_per_uid(),
            max_sessions_per_uid = accounts.max_sessions_per_uid(),
            "per-uid budgets (root exempt)"
        );
        let handler = Arc::new(handler);
        let pool = Arc::new(
            pool::Pool::start(handler.name(), cfg.blocking_threads).map_err(|source| {
                ServiceError::Sys {
                    what: "spawning the blocking pool",
                    source,
                }
            })?,
        );
        let tokens = Arc::new(CloneTokens::new());
        let shutdown = ShutdownHandle::new();
        let sessions = Arc::new(Sessions {
            list: RwLock::new(Vec::new()),
            generation: AtomicU64::new(0),
        });
        let stats: Arc<Vec<WorkerStats>> =
            Arc::new((0..cfg.threads).map(|_| WorkerStats::default()).collect());
        let mut threads = Vec::new();
        for w in 0..cfg.threads {
            let ctx = worker::WorkerCtx {
                index: w,
                workers: cfg.threads,
                cpu: (!cfg.cpus.is_empty()).then(|| cfg.cpus[w % cfg.cpus.len()]),
                spin: cfg.spin,
                uring_entries: cfg.uring_entries,
                sessions: sessions.clone(),
                shutdown: shutdown.clone(),
                wake: shutdown.waker()?,
                stats: stats.clone(),
                handler: handler.clone(),
                pool: pool.clone(),
                tokens: tokens.clone(),
            };
            let uring = io_uring::IoUring::new(cfg.uring_entries).map_err(ServiceError::Uring)?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("virtuos-{}-w{w}", handler.name()))
                    .spawn(move || worker::run(ctx, uring))
                    .map_err(|source| ServiceError::Sys {
                        what: "spawning a worker",
                        source,
                    })?,
            );
        }
        let adopt = xen::AdoptCtx {
            handler: handler.clone(),
            max_layout,
            max_handles: cfg.max_handles,
            workers: cfg.threads,
            accounts: accounts.clone(),
        };
        let wake = shutdown.waker()?;
        let (hellos, pending) = hello::Hellos::start(
            listener.clone(),
            wake.clone(),
            shutdown.clone(),
            handler.name(),
        )
        .map_err(|source| ServiceError::Sys {
            what: "spawning the hello threads",
            source,
        })?;
        let acceptor = Acceptor {
            listener,
            hellos,
            pending,
            max_layout,
            workers: cfg.threads,
            max_sessions: cfg.max_sessions,
            sessions: sessions.clone(),
            shutdown: shutdown.clone(),
            wake,
            handler,
            next_id: 1,
            max_handles: cfg.max_handles,
            accounts,
            refusals: limits::RateLimit::new(Duration::from_secs(1)),
            tokens,
        };
        threads.push(
            std::thread::Builder::new()
                .name("virtuos-accept".into())
                .spawn(move || acceptor.run())
                .map_err(|source| {
                    shutdown.trigger();
                    ServiceError::Sys {
                        what: "spawning the acceptor",
                        source,
                    }
                })?,
        );
        tracing::info!(socket = %cfg.listen.display(), threads = cfg.threads, cpus = ?cfg.cpus,
            "service running");
        Ok(Runtime {
            shutdown,
            threads,
            stats,
            sessions,
            pool,
            adopt,
        })
    }

    /// A handle that stops this service.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Per-worker counters.
    pub fn stats(&self) -> &[WorkerStats] {
        &self.stats
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Waits until the service has stopped (after a trigger), then returns.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        // Every request was answered by the workers; calls still running on the pool finish
        // into the void.
        self.pool.close(Duration::from_secs(2));
        for (i, s) in self.stats.iter().enumerate() {
            let w = s.wait.snapshot();
            tracing::info!(
                worker = i,
                requests = s.requests.load(Ordering::Relaxed),
                rejected = s.rejected.load(Ordering::Relaxed),
                uring = s.uring.load(Ordering::Relaxed),
                blocking = s.blocking.load(Ordering::Relaxed),
                spins = w.spins,
                sleeps = w.sleeps,
                wakeups = w.wakeups,
                "worker stopped"
            );
        }
    }

    /// Triggers shutdown and waits for it.
    pub fn stop(self) {
        self.shutdown.trigger();
        self.join();
    }
}

struct Acceptor<H: Handler> {
    /// Held so the socket file goes away only after the hello threads are gone.
    listener: Arc<Listener>,
    hellos: Arc<hello::Hellos>,
    /// Clients that said hello, from the hello threads.
    pending: mpsc::Receiver<Pending>,
    max_layout: Layout,
    workers: usize,
    max_sessions: usize,
    sessions: Arc<Sessions>,
    shutdown: ShutdownHandle,
    wake: Arc<EventFd>,
    handler: Arc<H>,
    next_id: u64,
    max_handles: usize,
    accounts: Arc<limits::Accounts>,
    /// Rate limit of the warnings about refused clients.
    refusals: limits::RateLimit,
    /// Parked fork/exec snapshots: the acceptor drops the expired ones.
    tokens: Arc<CloneTokens>,
}

const WAKE_TOKEN: u64 = u64::MAX - 1;

/// The descriptors a session holds in the server besides its files: the control socket, one
/// doorbell per worker and the readiness eventfd.
fn session_fds(workers: usize) -> usize {
    2 + workers.clamp(1, xen_transport::control::MAX_DOORBELLS)
}

impl<H: Handler> Acceptor<H> {
    fn run(mut self) {
        if let Err(e) = self.serve() {
            tracing::error!(%e, "acceptor failed; shutting down");
            self.shutdown.trigger();
        }
        // Shutdown: tell every client, then drop the sessions once the workers let go.
        let (_, all) = self.sessions.snapshot();
        for l in &all {
            l.s.set_state(ServerState::Closing);
            l.s.notify_all();
        }
        // A hello thread inside an accept finishes within the hello timeout.
        self.hellos.wait_gone(Duration::from_secs(3));
        for p in self.pending.try_iter() {
            p.refuse(RefuseReason::ShuttingDown, 0);
        }
        tracing::debug!(
            socket = %self.listener.path().display(),
            hello_threads = self.hellos.threads(),
            "acceptor stopped"
        );
    }

    fn serve(&mut self) -> Result<(), ServiceError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
        epoll
            .add(
                self.wake.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
            )
            .map_err(sys("epoll_ctl"))?;
        let mut events = [EpollEvent::empty(); 64];
        while !self.shutdown.is_triggered() {
            // Wakes once a second to drop the snapshots that expired unredeemed (a worker may
            // park one at any time; one wake-up a second costs nothing measurable).
            let n = match epoll.wait(&mut events, EpollTimeout::from(1000u16)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(sys("epoll_wait")(e)),
            };
            let purged = self.tokens.purge_expired();
            if purged > 0 {
                tracing::debug!(purged, "dropped expired fork/exec snapshots");
            }
            for ev in &events[..n] {
                match ev.data() {
                    // Drain the kick, or the level-triggered wait returns at once forever;
                    // then take the clients the hello threads handed over.
                    WAKE_TOKEN => {
                        let _ = self.wake.read();
                        while let Ok(p) = self.pending.try_recv() {
                            if self.shutdown.is_triggered() {
                                p.refuse(RefuseReason::ShuttingDown, 0);
                            } else {
                                self.admit(&epoll, p);
                            }
                        }
                    }
                    id => self.close_session(&epoll, id),
                }
            }
        }
        Ok(())
    }

    /// Logs a refusal, at most once a second.
    fn refused(&self, pid: i32, uid: u32, why: &str) {
        if let Some(held) = self.refusals.allow() {
            tracing::warn!(pid, uid, held_back = held, "client refused: {why}");
        }
    }

    /// Starts a session for a client that said hello, or refuses it. Nothing that goes wrong
    /// here (a full server, a uid over its budget, the server out of descriptors) is more than
    /// this client's refusal.
    fn admit(&mut self, epoll: &Epoll, p: Pending) {
        let Some(p) = p.check_version() else { return };
        let mut p = p;
        let creds = p.creds;
        let pidfd = p.pidfd.take();
        if self.sessions.len() >= self.max_sessions {
            self.refused(creds.pid, creds.uid, "server full");
            p.refuse(RefuseReason::Full, self.max_sessions as u64);
            return;
        }
        let account = self.accounts.get(creds.uid);
        let Some(charge) = account.charge_session(session_fds(self.workers)) else {
            self.refused(creds.pid, creds.uid, "the uid is at --max-sessions-per-uid");
            p.refuse(RefuseReason::Full, account.max_sessions() as u64);
            return;
        };
        let m = self.max_layout;
        let pick = |asked: u32, max: u32| if asked == 0 { max } else { asked.min(max) };
        let window = (pick(p.hello.window, m.window) as usize)
            .next_multiple_of(xen_transport::layout::PAGE) as u32;
        let streams =
            self.handler.wants_streams() && p.hello.capabilities & abi::control::CAP_STREAMS != 0;
        let layout = match Layout::new(pick(p.hello.channels, m.channels), m.ring_size, window)
            .and_then(|l| {
                l.with_streams(if streams {
                    xen_transport::layout::STREAM_SLOTS
                } else {
                    0
                })
            }) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(pid = p.creds.pid, %e, "unacceptable geometry");
                p.refuse(RefuseReason::BadHello, 0);
                return;
            }
        };
        let acts = self.handler.acts_as_client();
        let (ppid, groups) = match (
            creds::read_ppid(creds.pid),
            creds::read_groups_checked(creds.pid, creds.uid, creds.gid),
        ) {
            (Ok(ppid), Ok(groups)) => (ppid, groups),
            // Acting as the client needs its groups; probes do without (a client in
            // another pid namespace, say, just cannot use fork tokens).
            (Err(e), _) | (_, Err(e)) if acts => {
                tracing::warn!(pid = creds.pid, %e, "cannot read the client's process status; refused");
                p.refuse(RefuseReason::Internal, 0);
                return;
            }
            (ppid, groups) => (ppid.unwrap_or(0), groups.unwrap_or_default()),
        };
        let identity = if acts {
            // A root client's capabilities, read now and counted only if the process that
            // connected is still the one behind the pid (its pidfd has not become readable).
            let caps = (creds.uid == 0)
                .then(|| creds::cap_eff(creds.pid))
                .flatten()
                .filter(|_| pidfd.as_ref().is_some_and(creds::pidfd_running));
            let ident = creds::Identity {
                caps,
                uid: creds.uid,
                gid: creds.gid,
                groups: groups.clone(),
            };
            if let Err(e) = creds::check(&ident) {
                tracing::warn!(pid = creds.pid, uid = creds.uid, gid = creds.gid, %e,
                    "cannot act as this client (the server needs CAP_SETUID and CAP_SETGID to serve other users); refused");
                p.refuse(RefuseReason::Internal, 0);
                return;
            }
            Some(Arc::new(ident))
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        // Before the client hears of the session, so the handler is ready for its first
        // request.
        self.handler.session_opened(id, creds);
        let caps = if streams {
            CAP_IO_URING | abi::control::CAP_STREAMS
        } else {
            CAP_IO_URING
        };
        let s = match p.accept(id, layout, self.workers, caps) {
            Ok(s) => s,
            Err(e) => {
                if let Some(held) = self.refusals.allow() {
                    tracing::warn!(pid = creds.pid, %e, held_back = held, "session set-up failed");
                }
                self.handler.session_closed(id, creds);
                return;
            }
        };
        let s = Arc::new(Live {
            s,
            ctx: SessionCtx {
                creds,
                ppid,
                groups,
                identity,
                fds: FdTable::with_account(self.max_handles, account),
                pidfd,
            },
            closed: AtomicBool::new(false),
            _charge: Some(charge),
        });
        if let Err(e) = epoll.add(
            s.s.control(),
            EpollEvent::new(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLIN, id),
        ) {
            // Without a watch on its control socket the session's end would go unseen: end it
            // now (the client sees the server hang up).
            tracing::warn!(session = id, pid = creds.pid, %e, "cannot watch the session; ended");
            s.closed.store(true, Ordering::Relaxed);
            self.handler.session_closed(id, creds);
            return;
        }
        tracing::debug!(
            session = id,
            pid = creds.pid,
            uid = creds.uid,
            gid = creds.gid,
            channels = layout.channels,
            window = layout.window,
            "session started"
        );
        self.sessions.add(s);
        // Sleeping workers must start watching the new session's doorbells.
        self.shutdown.kick();
    }

    fn close_session(&mut self, epoll: &Epoll, id: u64) {
        if let Some(l) = self.sessions.remove(id) {
            l.closed.store(true, Ordering::Relaxed);
            let s = &l.s;
            let _ = epoll.delete(s.control());
            let c = s.client_stats();
            tracing::debug!(
                session = id,
                pid = s.creds().pid,
                calls = c.calls,
                spins = c.spins,
                sleeps = c.sleeps,
                wakeups = c.wakeups,
                "session ended"
            );
            self.handler.session_closed(id, s.creds());
            // Workers let go of the session (its descriptors, its charge) at once rather than
            // at their next tick.
            self.shutdown.kick();
        }
    }
}

/// How long a sleeping worker waits before re-checking shutdown and session changes.
pub(crate) const WORKER_TICK: Duration = Duration::from_millis(100);
