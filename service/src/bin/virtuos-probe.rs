//! `virtuos-probe`: a service domain that answers only the transport's probe opcodes.
//!
//! Used by `virtuos-bench latency` (ring round trips against a separate process) and by the
//! runtime's integration tests (killing a server, shutdown under load).

use anyhow::Context;
use clap::Parser;
use virtuos_service::{install_signal_handlers, ProbeHandler, Runtime, RuntimeConfig};

/// Serve the virtuos probe opcodes (Nop, UringNop, Echo, WhoAmI, Delay) on a Unix socket.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long)]
    listen: std::path::PathBuf,
    /// Cores to pin the worker threads to (cpulist syntax, e.g. 1 or 2-3).
    #[arg(long)]
    cpus: Option<String>,
    /// Worker threads (default: one per listed CPU, or 1).
    #[arg(long)]
    threads: Option<usize>,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
    #[command(flatten)]
    uid_limits: virtuos_service::UidLimitArgs,
    /// Longest idle spin of a worker before it sleeps, in ns (0: sleep at once).
    #[arg(long)]
    spin_max_ns: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    virtuos_service::init_logging();
    let args = Args::parse();
    virtuos_service::limits::raise_nofile_limit_logged();
    let cfg = RuntimeConfig::from_common_options(
        &args.listen,
        args.cpus.as_deref(),
        args.threads,
        args.max_sessions,
        args.spin_max_ns,
    )?
    .with_uid_limits(&args.uid_limits);
    let rt = Runtime::start(cfg, ProbeHandler).context("starting the probe service")?;
    install_signal_handlers(rt.shutdown_handle())?;
    rt.join();
    Ok(())
}
