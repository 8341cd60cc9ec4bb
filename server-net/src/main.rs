//! `virtuos-net`: the network service domain.
//!
//! Owns the TCP/UDP sockets of every application redirected to it (`virtuos-redirect run
//! --net SOCK`) and executes their socket calls with io_uring, in the network namespace it was
//! started in (`--netns NAME`: the only way into that network is through this domain).

use anyhow::Context;
use clap::Parser;
use service::{install_signal_handlers, Runtime, RuntimeConfig};
use virtuos_net::Net;

/// Serve forwarded socket calls (AF_INET, AF_INET6) over shared-memory sessions.
///
/// Sockets are created, bound and connected in this process's network namespace (or the one
/// named by --netns). Readiness of every socket is pushed into the client's shared memory, so
/// poll, select and epoll in the application see it without asking. Binding a port below
/// net.ipv4.ip_unprivileged_port_start needs a client with CAP_NET_BIND_SERVICE.
///
/// No client can stop the server or starve the others: it raises its RLIMIT_NOFILE soft limit
/// to the hard limit, holds one descriptor per socket, answers a call that meets a resource
/// limit with that error (EMFILE, ENFILE, ENOBUFS), keeps accepting when the process is out of
/// descriptors, reads each client's hello on a thread of its own, and bounds each uid's sessions
/// and sockets (root is exempt).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long, value_name = "SOCK")]
    listen: std::path::PathBuf,
    /// Cores to pin the polling worker threads to (cpulist syntax, e.g. 1 or 2-3).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Polling worker threads (default: one per listed CPU, or 1).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Network namespace to serve in: a name under /run/netns (as `ip netns add` makes) or
    /// a path to a namespace file.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
    #[command(flatten)]
    uid_limits: service::UidLimitArgs,
    /// Longest idle spin of a worker before it sleeps, in ns (0: sleep at once).
    #[arg(long)]
    spin_max_ns: Option<u64>,
    /// An inherited Unix SOCK_SEQPACKET descriptor to the supervisor's fd store: listening and
    /// bound datagram sockets are kept there and survive a crash of this domain (clients
    /// reclaim them after the restart). `virtuos-redirect domains` passes it; without it,
    /// listeners die with the domain.
    #[arg(long, value_name = "FD")]
    fd_store: Option<i32>,
}

fn main() -> anyhow::Result<()> {
    service::init_logging();
    let args = Args::parse();
    service::limits::raise_nofile_limit_logged();
    if let Some(ns) = &args.netns {
        let path = if ns.contains('/') {
            std::path::PathBuf::from(ns)
        } else {
            std::path::Path::new("/run/netns").join(ns)
        };
        virtuos_net::sys::enter_netns(&path).with_context(|| {
            format!(
                "entering network namespace {} (create it with `ip netns add {ns}`; joining needs CAP_SYS_ADMIN)",
                path.display()
            )
        })?;
        tracing::info!(netns = %path.display(), "serving inside network namespace");
    }
    let mut cfg = RuntimeConfig::from_common_options(
        &args.listen,
        args.cpus.as_deref(),
        args.threads,
        args.max_sessions,
        args.spin_max_ns,
    )?
    .with_uid_limits(&args.uid_limits);
    // Readiness is pushed per handle: no more handles than readiness words.
    cfg.max_handles = xen_transport::layout::EVENT_SLOTS;
    let store = match args.fd_store {
        None => virtuos_net::store::Store::none(),
        Some(fd) => {
            anyhow::ensure!(
                fd > 2
                    && nix::sys::socket::getsockopt(
                        // SAFETY: only borrowed for the check; owned below once it is known to
                        // be an open socket.
                        &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                        nix::sys::socket::sockopt::SockType
                    )
                    .is_ok_and(|t| t == nix::sys::socket::SockType::SeqPacket),
                "--fd-store {fd}: not an inherited SOCK_SEQPACKET socket (virtuos-redirect domains passes one)"
            );
            // SAFETY: `fd` is an open socket this process inherited for this use; nothing
            // else in the process owns it.
            let owned =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // Not inherited by anything this process starts.
            let _ = nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            virtuos_net::store::Store::open(owned).context("reading the fd store")?
        }
    };
    let net = Net::with_store(store).context("starting the readiness watcher")?;
    let rt = Runtime::start(cfg, net).context("starting the network service")?;
    std::fs::set_permissions(
        &args.listen,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .with_context(|| format!("making {} connectable", args.listen.display()))?;
    tracing::info!(socket = %args.listen.display(), "network domain serving");
    install_signal_handlers(rt.shutdown_handle())?;
    rt.join();
    Ok(())
}
