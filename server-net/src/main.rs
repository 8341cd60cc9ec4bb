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
    let net = Net::new().context("starting the readiness watcher")?;
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
