//! `virtuos-bench`: latency micro-benchmarks for virtuos.
//!
//! `virtuos-bench latency` measures, in one run, what a redirected system call competes with:
//! a native system call, a futex ping-pong between two threads, a seccomp user-notification
//! round trip, a seccomp SIGSYS trap, and the shared-memory ring in spinning and sleeping
//! modes. It prints a table, and optionally writes a JSON report and an SVG chart.
//!
//! `virtuos-bench nginx` measures nginx served natively and through the service domains under
//! wrk (module `nginx`); `virtuos-bench redis` measures redis-server natively and through the
//! network domain under redis-benchmark (module `redis`, built from the nginx module's parts);
//! both share the eBPF cost model (module `cost`); `virtuos-bench report` turns the JSON files
//! into one Markdown page.

mod cost;
mod cpus;
mod http;
mod machine;
mod nginx;
mod plot;
mod procs;
mod redis;
mod report;
mod ring;
mod sha256;
mod stats;
mod storage;
mod sys;
mod syscalls;
mod wrk;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

use crate::machine::MachineInfo;
use crate::stats::Summary;
use crate::syscalls::Pinning;

/// Samples per measurement by default.
const DEFAULT_SAMPLES: usize = 10_000;
/// Samples per measurement with `--quick`.
const QUICK_SAMPLES: usize = 1_000;

/// Benchmarks for virtuos (system calls redirected over shared-memory rings).
#[derive(Debug, Parser)]
#[command(name = "virtuos-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Per-call latency of a native syscall, a futex ping-pong, seccomp user notification,
    /// a seccomp SIGSYS trap and the shared-memory ring (spinning and sleeping).
    ///
    /// Client and peer threads are pinned to two different CPUs when there are at least two.
    /// Sub-microsecond operations are timed in batches and divided by the batch size.
    Latency(LatencyArgs),
    /// nginx under wrk, natively and with its calls served by the service domains: requests/s,
    /// p50/p99 latency, bytes/s and CPU time per mode × size × keep-alive, with ratios to
    /// native at equal application workers and at equal total cores.
    ///
    /// Starts nginx itself from a generated configuration in a temporary directory (the
    /// system's nginx configuration is never read or touched) on 127.0.0.1 and a free port,
    /// checks that every mode serves byte-identical files, then runs the modes interleaved
    /// (order rotated each repetition) and reports median and min–max. Needs nginx and wrk;
    /// the redirected modes need virtuos-storage, virtuos-redirect and libvirtuos_preload.so
    /// next to this binary. Modes whose service domain is not available are reported as
    /// skipped, never estimated.
    ///
    /// Then the cost model (--cost-model, as root): per mode one more stack with nginx and each
    /// server in cgroups of their own under the project's eBPF telemetry, for system calls per
    /// request of each beside CPU µs per request (its req/s, with the tracepoints on, stand
    /// apart from the throughput figures).
    Nginx(nginx::NginxArgs),
    /// redis-server under redis-benchmark, natively and with its sockets in the network
    /// domain: requests/s, p50/p99 latency and CPU µs per request of redis-server and of the
    /// network server, per test (SET, GET) × pipeline depth × mode, with ratios to native.
    ///
    /// Starts redis-server itself with its configuration on the command line (--port N --bind
    /// 127.0.0.1 --save '' --appendonly no --protected-mode no --daemonize no --dir TMP; the
    /// system's redis setup is never read or touched) on a free port: natively (mode native)
    /// and under `virtuos-redirect run --net SOCK --` with a fresh virtuos-net pinned to the
    /// server CPU (mode net), redis-server pinned to the app CPU. Each stack first checks that
    /// a random value set is read back byte for byte, warms up, then runs redis-benchmark
    /// (native, never redirected: -h 127.0.0.1 -p N -t TEST -n REQUESTS -c CLIENTS -P DEPTH
    /// --csv) once per pipeline depth × test; the modes run interleaved (order rotated each
    /// repetition) and the summary gives median and min–max. Needs redis-server and
    /// redis-benchmark (Debian packages redis-server, redis-tools); mode net needs
    /// virtuos-net, virtuos-redirect and libvirtuos_preload.so next to this binary
    /// (scripts/setup.sh installs and builds all of them).
    ///
    /// Then the cost model (--cost-model, as root): per mode one more stack with redis-server
    /// and virtuos-net in cgroups of their own under the project's eBPF telemetry, for system
    /// calls per request of each (and their largest system calls) beside CPU µs per request;
    /// its req/s, with the tracepoints on, stand apart from the throughput figures.
    Redis(redis::RedisArgs),
    /// One Markdown page from the JSON files of `latency` and `nginx`, plots linked.
    Report(report::ReportArgs),
    /// Cached file reads natively and through the storage domain (lseek, 1-byte and 4 KiB
    /// preads, sequential and random), at each thread count, and where a redirected read's
    /// added time goes: round trip, read handling, 4 KiB through the window.
    ///
    /// Writes and caches a file in an export of its own, starts virtuos-storage on it (pinned
    /// to --server-cpus), and runs a probe (this binary) natively and under `virtuos-redirect
    /// run --storage`, modes interleaved and rotated each repetition; prints medians. Needs
    /// virtuos-storage, virtuos-redirect and libvirtuos_preload.so next to this binary.
    Storage(storage::StorageArgs),
    /// The probe `storage` runs (natively or redirected): one JSON line per operation.
    #[command(hide = true)]
    StorageProbe(storage::ProbeArgs),
}

#[derive(Debug, Args)]
struct LatencyArgs {
    /// Write the results (and a machine description) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG bar chart of median and p99 latency (log scale) to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Timed samples per measurement [default: 10000, or 1000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    samples: Option<u64>,
    /// Fewer samples (1000), for CI; --samples overrides it.
    #[arg(long)]
    quick: bool,
}

/// One row of the JSON report.
#[derive(Debug, Serialize)]
struct ResultRow {
    name: String,
    median_ns: f64,
    p99_ns: f64,
    ops_per_s: f64,
    samples: usize,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    machine: MachineInfo,
    results: Vec<ResultRow>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Latency(args) => latency(&args),
        Command::Nginx(args) => nginx::run(&args),
        Command::Redis(args) => redis::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Storage(args) => storage::run(&args),
        Command::StorageProbe(args) => storage::probe(&args),
    }
}

type Measure = fn(usize, Pinning) -> Result<Vec<u64>>;

fn latency(args: &LatencyArgs) -> Result<()> {
    let samples = match args.samples {
        Some(n) => usize::try_from(n).context("--samples too large")?,
        None if args.quick => QUICK_SAMPLES,
        None => DEFAULT_SAMPLES,
    };
    let pin = Pinning::detect();
    let machine = MachineInfo::collect(pin.pinned());
    match (pin.client, pin.other) {
        (Some(c), Some(o)) => println!(
            "machine: {} ({} CPUs, kernel {}); client on CPU {c}, peer on CPU {o}",
            machine.cpu_model, machine.online_cpus, machine.kernel_release
        ),
        _ => println!(
            "machine: {} ({} CPUs, kernel {}); threads not pinned",
            machine.cpu_model, machine.online_cpus, machine.kernel_release
        ),
    }

    let measurements: [(&str, Measure); 6] = [
        ("native_syscall", syscalls::native_syscall),
        ("futex_pingpong", syscalls::futex_pingpong),
        ("seccomp_user_notif", syscalls::seccomp_user_notif),
        ("seccomp_trap_sigsys", syscalls::seccomp_trap_sigsys),
        ("ring_spin", |n, pin| {
            ring::measure(ring::RingMode::Spin, n, pin)
        }),
        ("ring_sleep", |n, pin| {
            ring::measure(ring::RingMode::Sleep, n, pin)
        }),
    ];
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (name, measure) in measurements {
        let started = Instant::now();
        let result = measure(samples, pin)
            .and_then(|v| Summary::from_samples(&v).context("measurement returned no samples"));
        match result {
            Ok(summary) => {
                tracing::info!("{name}: {:.2?}", started.elapsed());
                rows.push((name, summary));
            }
            Err(err) => {
                tracing::warn!("{name} skipped: {err:#}");
                skipped.push((name, format!("{err:#}")));
            }
        }
    }

    print_table(&rows);
    for (name, err) in &skipped {
        println!("skipped {name}: {err}");
    }
    print_ratios(&rows);

    if let Some(path) = &args.json {
        write_json(path, machine, &rows)?;
    }
    if let Some(path) = &args.plot {
        let bars: Vec<plot::Bar<'_>> = rows
            .iter()
            .map(|(name, s)| plot::Bar {
                name,
                median_ns: s.median_ns,
                p99_ns: s.p99_ns,
            })
            .collect();
        plot::write_svg(path, "virtuos-bench latency (median, p99)", &bars)
            .with_context(|| format!("writing plot {}", path.display()))?;
    }
    Ok(())
}

fn print_table(rows: &[(&str, Summary)]) {
    println!(
        "{:<22} {:>12} {:>12} {:>14} {:>9}",
        "name", "median ns", "p99 ns", "ops/s", "samples"
    );
    for (name, s) in rows {
        println!(
            "{:<22} {:>12.1} {:>12.1} {:>14.0} {:>9}",
            name,
            s.median_ns,
            s.p99_ns,
            s.ops_per_s(),
            s.samples
        );
    }
}

fn print_ratios(rows: &[(&str, Summary)]) {
    let median = |name: &str| {
        rows.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.median_ns)
    };
    for (num, den) in [
        ("seccomp_user_notif", "ring_spin"),
        ("ring_sleep", "futex_pingpong"),
    ] {
        if let (Some(a), Some(b)) = (median(num), median(den)) {
            println!("{num} / {den} = {:.2}x (medians)", a / b);
        }
    }
}

fn write_json(path: &Path, machine: MachineInfo, rows: &[(&str, Summary)]) -> Result<()> {
    let report = Report {
        machine,
        results: rows
            .iter()
            .map(|(name, s)| ResultRow {
                name: (*name).to_owned(),
                median_ns: s.median_ns,
                p99_ns: s.p99_ns,
                ops_per_s: s.ops_per_s(),
                samples: s.samples,
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&report)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_latency_flags() {
        let cli = Cli::try_parse_from([
            "virtuos-bench",
            "latency",
            "--quick",
            "--samples",
            "5",
            "--json",
            "a.json",
            "--plot",
            "a.svg",
        ])
        .unwrap();
        let Command::Latency(args) = cli.command else {
            panic!("not latency");
        };
        assert!(args.quick);
        assert_eq!(args.samples, Some(5));
        assert_eq!(args.json.as_deref(), Some(Path::new("a.json")));
        assert!(Cli::try_parse_from(["virtuos-bench", "latency", "--samples", "0"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "no-such-benchmark"]).is_err());
    }

    #[test]
    fn parses_storage_flags() {
        let cli = Cli::try_parse_from([
            "virtuos-bench",
            "storage",
            "--quick",
            "--threads",
            "1,2,8",
            "--size-mib",
            "16",
            "--server-cpus",
            "1",
        ])
        .unwrap();
        let Command::Storage(args) = cli.command else {
            panic!("not storage");
        };
        assert!(args.quick);
        assert_eq!(args.threads, vec![1, 2, 8]);
        assert_eq!(args.size_mib, Some(16));
        assert_eq!(args.server_cpus.as_deref(), Some("1"));
        let cli = Cli::try_parse_from(["virtuos-bench", "storage"]).unwrap();
        let Command::Storage(args) = cli.command else {
            panic!("not storage");
        };
        assert_eq!(args.threads, vec![1, 4], "the default thread counts");
        assert!(Cli::try_parse_from(["virtuos-bench", "storage", "--size-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "storage", "--threads", "x"]).is_err());
    }

    #[test]
    fn parses_nginx_and_report_flags() {
        let cli = Cli::try_parse_from([
            "virtuos-bench",
            "nginx",
            "--quick",
            "--sizes",
            "1k,1m",
            "--keepalive",
            "off",
            "--app-cpus",
            "0",
            "--server-cpus",
            "1",
            "--workers",
            "2",
        ])
        .unwrap();
        let Command::Nginx(args) = cli.command else {
            panic!("not nginx");
        };
        assert!(args.quick);
        assert_eq!(args.workers, 2);
        assert_eq!(args.keepalive, nginx::KeepAlive::Off);
        assert_eq!(args.cost_model, nginx::CostModelSetting::Auto);
        assert_eq!(args.cost_model_cells, nginx::CostModelCells::One);
        let cli = Cli::try_parse_from([
            "virtuos-bench",
            "nginx",
            "--cost-model",
            "off",
            "--cost-model-cells",
            "all",
        ])
        .unwrap();
        let Command::Nginx(args) = cli.command else {
            panic!("not nginx");
        };
        assert_eq!(args.cost_model, nginx::CostModelSetting::Off);
        assert_eq!(args.cost_model_cells, nginx::CostModelCells::All);
        assert!(Cli::try_parse_from(["virtuos-bench", "nginx", "--cost-model", "x"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "nginx", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "nginx", "--keepalive", "x"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "report"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "report", "--nginx", "n.json"]).is_ok());
    }

    #[test]
    fn parses_redis_flags() {
        let cli = Cli::try_parse_from(["virtuos-bench", "redis"]).unwrap();
        let Command::Redis(args) = cli.command else {
            panic!("not redis");
        };
        assert_eq!(args.pipeline, "1,16");
        assert_eq!((args.reps, args.requests, args.clients), (None, None, 50));
        assert_eq!(args.modes, "native,net");
        assert_eq!(args.cost_model, cost::CostModelSetting::Auto);
        let cli = Cli::try_parse_from([
            "virtuos-bench",
            "redis",
            "--quick",
            "--reps",
            "2",
            "--requests",
            "5000",
            "--pipeline",
            "1,4,16",
            "--cost-model",
            "on",
            "--json",
            "r.json",
            "--bench-cpus",
            "2",
        ])
        .unwrap();
        let Command::Redis(args) = cli.command else {
            panic!("not redis");
        };
        assert!(args.quick);
        assert_eq!((args.reps, args.requests), (Some(2), Some(5000)));
        assert_eq!(args.pipeline, "1,4,16");
        assert_eq!(args.cost_model, cost::CostModelSetting::On);
        assert_eq!(args.json.as_deref(), Some(Path::new("r.json")));
        assert_eq!(args.bench_cpus.as_deref(), Some("2"));
        assert!(Cli::try_parse_from(["virtuos-bench", "redis", "--reps", "0"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "redis", "--requests", "0"]).is_err());
        assert!(Cli::try_parse_from(["virtuos-bench", "redis", "--cost-model", "x"]).is_err());
    }

    #[test]
    fn json_shape() {
        let machine = MachineInfo::collect(true);
        let path = std::env::temp_dir().join(format!("virtuos-bench-{}.json", std::process::id()));
        let s = Summary::from_samples(&[100, 200, 300]).unwrap();
        write_json(&path, machine, &[("native_syscall", s)]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let _ = fs::remove_file(&path);
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2);
        let r = &v["results"][0];
        assert_eq!(r["name"], "native_syscall");
        assert_eq!(r["median_ns"], 200.0);
        assert_eq!(r["ops_per_s"], 5e6);
        assert_eq!(r["samples"], 3);
        assert_eq!(v["machine"]["pinned"], true);
    }
}
