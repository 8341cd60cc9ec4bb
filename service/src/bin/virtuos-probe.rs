//! `virtuos-probe`: a service domain that answers only the transport's probe opcodes.
//!
//! Used by `virtuos-bench latency` (ring round trips against a separate process) and by the
//! runtime's integration tests (killing a server, shutdown under load).

use anyhow::Context;
use clap::Parser;
use virtuos_service::{cpus, install_signal_handlers, ProbeHandler, Runtime, RuntimeConfig};
use xen_transport::SpinPolicy;

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
    /// Longest idle spin of a worker before it sleeps, in ns (0: sleep at once).
    #[arg(long)]
    spin_max_ns: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = RuntimeConfig::new(&args.listen);
    if let Some(list) = &args.cpus {
        cfg.cpus = cpus::parse_cpu_list(list)?;
    }
    cfg.threads = args.threads.unwrap_or(cfg.cpus.len().max(1));
    cfg.max_sessions = args.max_sessions;
    if let Some(ns) = args.spin_max_ns {
        let max = std::time::Duration::from_nanos(ns);
        cfg.spin = SpinPolicy {
            min: cfg.spin.min.min(max),
            max,
        };
    }
    let rt = Runtime::start(cfg, ProbeHandler).context("starting the probe service")?;
    install_signal_handlers(rt.shutdown_handle())?;
    rt.join();
    Ok(())
}
