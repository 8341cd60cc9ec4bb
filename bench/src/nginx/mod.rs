//! `virtuos-bench nginx`: nginx served natively and through the service domains, under wrk.
//!
//! For every repetition the modes run one after another (interleaved, the order rotated each
//! repetition, so drift of the machine spreads over all modes), each in a fresh stack: the
//! servers it needs, then nginx from a generated configuration in a directory of its own. The
//! stack first proves it serves every file byte for byte, warms up, and then measures every
//! size × keep-alive cell with wrk at a fixed number of connections, recording the CPU time of
//! nginx's processes and of each server over each run.
//!
//! Then, as a separate phase (module `cost`), the cost model: one more fresh stack per mode
//! with nginx and each server in cgroups of their own under the project's eBPF telemetry, for
//! system calls per request beside CPU time per request.

mod cost;
pub(crate) mod modes;
mod plot;
mod scaling;
pub(crate) mod stack;
pub(crate) mod summary;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cpus::{self, Placement};
use crate::machine::MachineInfo;
use crate::wrk::{self, WrkRun};
use crate::{http, sha256, sys};
pub use cost::{CostModelCells, CostModelSetting};
use modes::{Domains, Mode};
use stack::{Nginx, NginxConf, NginxLaunch, Server, ShimCounts};
use summary::{Cell, Comparison, Sample};

/// Sizes measured by default.
const DEFAULT_SIZES: &str = "1k,16k,1m";
/// The one size of `--quick`.
const QUICK_SIZE: &str = "16k";

/// Keep-alive settings to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeepAlive {
    /// HTTP/1.1 persistent connections.
    On,
    /// `Connection: close` on every request: one connection per request.
    Off,
    /// Both, one after the other.
    Both,
}

/// Arguments of `virtuos-bench nginx`.
#[derive(Debug, Clone, Args)]
pub struct NginxArgs {
    /// CI run: 1 repetition, one size (16k), 3 s per wrk run; still checks that every mode
    /// serves correct bytes. Explicit --reps/--sizes/--duration override it.
    #[arg(long)]
    pub quick: bool,
    /// Write every sample, the summaries and the machine's description as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG chart of requests/s and p99 latency per mode and size to FILE.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// CPUs for nginx (master and workers) [default: the first CPU; with 3 or more CPUs the
    /// first min(workers, n-2)].
    #[arg(long, value_name = "LIST")]
    pub app_cpus: Option<String>,
    /// CPUs for the service-domain servers; one polling thread per CPU [default: the second
    /// CPU with 2 CPUs, the second-to-last with more].
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<String>,
    /// CPUs for wrk [default: the last CPU when the machine has 3 or more; with fewer, wrk
    /// runs unpinned and shares cores, which the report says].
    #[arg(long, value_name = "LIST")]
    pub wrk_cpus: Option<String>,
    /// nginx worker processes in every mode (the equal-cores baseline adds the servers'
    /// threads).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: u64,
    /// Response sizes: comma-separated, with k/m suffixes (KiB, MiB) or plain bytes
    /// [default: 1k,16k,1m; 16k with --quick].
    #[arg(long, value_name = "LIST")]
    pub sizes: Option<String>,
    /// Seconds per wrk run [default: 5; 3 with --quick].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: Option<u64>,
    /// Repetitions of every mode × size × keep-alive cell [default: 3; 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub reps: Option<u64>,
    /// Keep-alive on, off (`Connection: close`), or both.
    #[arg(long, value_enum, default_value_t = KeepAlive::Both)]
    pub keepalive: KeepAlive,
    /// Open connections, fixed for every run.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connections: u64,
    /// wrk threads [default: one per wrk CPU, or 1 when unpinned].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub wrk_threads: Option<u64>,
    /// Seconds of unrecorded load on each fresh stack before its samples (0: none).
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub warmup: u64,
    /// Modes to run, comma-separated from native, net, storage, both (native always runs:
    /// the ratios need it). Modes whose domain is unavailable are reported as skipped.
    #[arg(long, value_name = "LIST", default_value = "native,net,storage,both")]
    pub modes: String,
    /// Do not run the native baselines with as many workers as each redirected mode's total
    /// cores.
    #[arg(long)]
    pub no_equal_cores: bool,
    /// The nginx binary [default: nginx on PATH, then /usr/sbin/nginx].
    #[arg(long, value_name = "PATH")]
    pub nginx: Option<PathBuf>,
    /// Scaling mode: repeat the whole run for 1..=N nginx workers and report throughput
    /// against the cores each mode keeps busy (--json gets the scaling summary, each run's
    /// full JSON goes beside it as FILE.wK.json; --plot gets req/s against cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub scale: Option<u64>,
    /// Cost model after the throughput runs: system calls per request of nginx and of each
    /// server, counted by the project's eBPF telemetry (`virtuos-redirect attach` on cgroups
    /// made for nginx and each server under the cgroup2 root), beside CPU µs per request, one
    /// fresh stack and one wrk run per mode. Needs root, cgroup2 and the eBPF object
    /// (scripts/build-ebpf.sh). auto: run it when it can, else print why and go on; on: the
    /// command fails when it cannot run or a run fails; off: skip it. With --scale, only `on`
    /// runs it (for every worker count). Its tracepoints slow every system call, so its req/s
    /// are reported apart and are not comparable with the throughput figures.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = CostModelSetting::Auto)]
    pub cost_model: CostModelSetting,
    /// Cells the cost model measures: one (16k keep-alive on when measured, else the first
    /// size and keep-alive setting) or all (every size × keep-alive cell: one wrk run each per
    /// mode).
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = CostModelCells::One)]
    pub cost_model_cells: CostModelCells,
}

/// A file of the document root.
#[derive(Debug, Clone, Serialize)]
struct FileSpec {
    size: String,
    bytes: usize,
    url_path: String,
    sha256: String,
}

/// Parses `--sizes`: `1k` = 1024 bytes, `1m` = 1 MiB, digits alone are bytes.
fn parse_sizes(text: &str) -> Result<Vec<(String, usize)>> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for w in text.split(',').map(|w| w.trim().to_ascii_lowercase()) {
        let (num, mul) = match w.chars().last() {
            Some('k') => (&w[..w.len() - 1], 1024),
            Some('m') => (&w[..w.len() - 1], 1024 * 1024),
            Some('b') => (&w[..w.len() - 1], 1),
            _ => (w.as_str(), 1),
        };
        let n: usize = num
            .parse()
            .with_context(|| format!("bad size {w:?} (want e.g. 1k, 16k, 1m, 512)"))?;
        let bytes = n
            .checked_mul(mul)
            .filter(|&b| b > 0 && b <= 256 << 20)
            .with_context(|| format!("size {w:?} must be between 1 byte and 256m"))?;
        if !out.iter().any(|(_, b)| *b == bytes) {
            out.push((w.clone(), bytes));
        }
    }
    Ok(out)
}

/// Settings after defaults.
#[derive(Debug, Clone, Serialize)]
struct Config {
    quick: bool,
    workers: usize,
    connections: usize,
    wrk_threads: usize,
    duration_s: u64,
    warmup_s: u64,
    reps: usize,
    keepalive: Vec<bool>,
    sizes: Vec<String>,
    app_cpus: Vec<usize>,
    server_cpus: Vec<usize>,
    wrk_cpus: Vec<usize>,
    wrk_shares_cores: bool,
    app_and_servers_share_cores: bool,
    order: &'static str,
    nginx: String,
    nginx_version: Option<String>,
    wrk_version: Option<String>,
}

/// One stack (a mode's servers and nginx for one repetition).
#[derive(Debug, Clone, Serialize)]
struct StackRecord {
    mode: String,
    rep: usize,
    port: u16,
    startup_s: f64,
    error: Option<String>,
    verified: Vec<Verification>,
    /// The shim's exit reports (redirected modes): routed and trapped calls over the stack's
    /// life, warm-up and verification included.
    shim: Option<ShimCounts>,
}

#[derive(Debug, Clone, Serialize)]
struct Verification {
    size: String,
    ok: bool,
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Skipped {
    mode: String,
    reason: String,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    machine: MachineInfo,
    config: Config,
    files: Vec<FileSpec>,
    modes: Vec<Mode>,
    skipped: Vec<Skipped>,
    stacks: Vec<StackRecord>,
    samples: Vec<Sample>,
    summary: Vec<Cell>,
    comparisons: Vec<Comparison>,
    notes: Vec<String>,
    /// The cost-model phase: system calls and CPU time per request per process group, with the
    /// eBPF telemetry on (`status` `ran`, `skipped` with its `reason`, or `off`).
    cost_model: cost::CostModel,
    /// /proc/loadavg (1, 5, 15 minutes) when the run started and when it ended: other work on
    /// the machine shows here.
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
    plot: Option<String>,
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Checks the CPU lists of `placement` against the CPUs this process may use (`load_flag`
/// names the load generator's list, which may be empty: unpinned).
pub(crate) fn validate_placement(
    placement: &Placement,
    allowed: &[usize],
    load_flag: &str,
) -> Result<()> {
    for (what, l) in [
        ("--app-cpus", &placement.app),
        ("--server-cpus", &placement.server),
        (load_flag, &placement.wrk),
    ] {
        if let Some(c) = l.iter().find(|c| !allowed.contains(c)) {
            bail!(
                "{what}: CPU {c} is not available to this process (allowed: {})",
                cpus::format_list(allowed)
            );
        }
        if what != load_flag && l.is_empty() {
            bail!("{what}: empty CPU list");
        }
    }
    Ok(())
}

/// Removes the benchmark's directory when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    // nginx's workers (user nobody when started as root) and the storage server acting as
    // them must be able to reach the files.
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .context("reading /dev/urandom")?;
    Ok(v)
}

/// Everything a stack needs.
struct Ctx {
    cfg: Config,
    files: Vec<FileSpec>,
    base: PathBuf,
    docroot: PathBuf,
    mount: PathBuf,
    nginx: PathBuf,
    storage_bin: Option<PathBuf>,
    net_bin: Option<PathBuf>,
    redirect_bin: Option<PathBuf>,
}

/// Runs the benchmark (or, with `--scale`, the scaling series).
pub fn run(args: &NginxArgs) -> Result<()> {
    match args.scale {
        Some(n) => scaling::run(args, n as usize),
        None => run_once(args).map(drop),
    }
}

/// One run: every mode, size and keep-alive setting. Returns the modes and their cells.
pub(crate) fn run_once(args: &NginxArgs) -> Result<(Vec<Mode>, Vec<summary::Cell>)> {
    let started = Instant::now();
    let load_average_start = load_average();
    let sizes = parse_sizes(args.sizes.as_deref().unwrap_or(if args.quick {
        QUICK_SIZE
    } else {
        DEFAULT_SIZES
    }))?;
    let duration_s = args.duration.unwrap_or(if args.quick { 3 } else { 5 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }) as usize;
    let keepalive = match args.keepalive {
        KeepAlive::On => vec![true],
        KeepAlive::Off => vec![false],
        KeepAlive::Both => vec![true, false],
    };
    let workers = args.workers as usize;
    let wanted = modes::parse_domains(&args.modes)?;
    let list = |o: &Option<String>| o.as_deref().map(cpus::parse_list).transpose();
    let allowed = sys::allowed_cpus().unwrap_or_else(|_| (0..sys::online_cpus()).collect());
    let placement = Placement::choose(
        &allowed,
        workers,
        list(&args.app_cpus)?,
        list(&args.server_cpus)?,
        list(&args.wrk_cpus)?,
    );
    validate_placement(&placement, &allowed, "--wrk-cpus")?;
    let connections = args.connections as usize;
    let wrk_threads = args
        .wrk_threads
        .map(|t| t as usize)
        .unwrap_or(placement.wrk.len().max(1))
        .min(connections);
    let nginx = stack::find_nginx(args.nginx.as_deref())?;
    let wrk_version = wrk::version();
    if wrk_version.is_none() {
        bail!("wrk not found or not runnable (apt-get install wrk)");
    }
    let cfg = Config {
        quick: args.quick,
        workers,
        connections,
        wrk_threads,
        duration_s,
        warmup_s: args.warmup,
        reps,
        keepalive: keepalive.clone(),
        sizes: sizes.iter().map(|(n, _)| n.clone()).collect(),
        app_cpus: placement.app.clone(),
        server_cpus: placement.server.clone(),
        wrk_cpus: placement.wrk.clone(),
        wrk_shares_cores: placement.wrk_shares(),
        app_and_servers_share_cores: placement.app_server_share(),
        order: "modes interleaved per repetition, order rotated each repetition; \
                sizes and keep-alive settings in turn within a mode's stack",
        nginx: nginx.display().to_string(),
        nginx_version: stack::nginx_version(&nginx),
        wrk_version,
    };
    let machine = MachineInfo::collect(!cfg.wrk_shares_cores && !cfg.app_and_servers_share_cores);

    let base = std::env::temp_dir().join(format!("virtuos-bench-nginx-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    make_dir(&base)?;
    let _cleanup = TempDir(base.clone());
    let docroot = base.join("docroot");
    make_dir(&docroot)?;
    let mut files = Vec::new();
    for (name, bytes) in &sizes {
        let data = random_bytes(*bytes)?;
        let file = format!("f-{name}.bin");
        let path = docroot.join(&file);
        fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        files.push(FileSpec {
            size: name.clone(),
            bytes: *bytes,
            url_path: format!("/{file}"),
            sha256: sha256::hex_digest(&data),
        });
    }

    let net_unavailable = if wanted.iter().any(|d| d.net()) {
        let probe_dir = base.join("net-probe");
        make_dir(&probe_dir)?;
        modes::probe_net(&probe_dir, &placement.server).err()
    } else {
        None
    };
    let modes = modes::plan(
        &wanted,
        workers,
        &placement,
        net_unavailable.as_deref(),
        !args.no_equal_cores,
    );
    let needs = |f: fn(Domains) -> bool| modes.iter().any(|m| m.skipped.is_none() && f(m.domains));
    let redirected = needs(|d| d != Domains::Native);
    let ctx = Ctx {
        storage_bin: needs(Domains::storage)
            .then(|| stack::sibling_binary("virtuos-storage"))
            .transpose()?,
        net_bin: needs(Domains::net)
            .then(|| stack::sibling_binary("virtuos-net"))
            .transpose()?,
        redirect_bin: redirected
            .then(|| stack::sibling_binary("virtuos-redirect"))
            .transpose()?,
        cfg,
        files,
        mount: base.join("mnt"),
        docroot,
        base,
        nginx,
    };

    let notes = notes(&ctx.cfg, &allowed);
    print_header(&machine, &ctx, &modes, &notes);

    // The measurements.
    let runnable: Vec<&Mode> = modes.iter().filter(|m| m.skipped.is_none()).collect();
    let mut samples = Vec::new();
    let mut stacks = Vec::new();
    let mut seq = 0;
    for rep in 0..reps {
        for i in 0..runnable.len() {
            let mode = runnable[(i + rep) % runnable.len()];
            let (rec, mut s) = run_stack(&ctx, mode, rep, stacks.len(), &mut seq);
            stacks.push(rec);
            samples.append(&mut s);
        }
    }
    let cost_model = cost::run(
        &ctx,
        &modes,
        args.cost_model,
        args.cost_model_cells,
        stacks.len(),
    );

    let size_names: Vec<String> = ctx.files.iter().map(|f| f.size.clone()).collect();
    let cells = summary::cells(&modes, &size_names, &keepalive, &samples);
    let comparisons = summary::comparisons(&modes, &cells, &samples);
    let skipped: Vec<Skipped> = modes
        .iter()
        .filter_map(|m| {
            Some(Skipped {
                mode: m.name.clone(),
                reason: m.skipped.clone()?,
            })
        })
        .collect();
    print_summary(&modes, &cells, &comparisons, &skipped, &stacks, &samples);
    print_headline(&modes, &cells, &size_names, &keepalive);
    cost::print_table(&cost_model);
    println!(
        "finished in {:.1} s; load average {} at the start, {} at the end",
        started.elapsed().as_secs_f64(),
        load_average_start.map_or("?".to_owned(), |l| format!("{:.2}", l[0])),
        load_average().map_or("?".to_owned(), |l| format!("{:.2}", l[0])),
    );

    let report = Report {
        benchmark: "nginx",
        machine,
        config: ctx.cfg.clone(),
        files: ctx.files.clone(),
        modes: modes.clone(),
        skipped,
        stacks: stacks.clone(),
        samples: samples.clone(),
        summary: cells.clone(),
        comparisons,
        notes,
        cost_model: cost_model.clone(),
        load_average_start,
        load_average_end: load_average(),
        plot: args.plot.as_ref().map(|p| p.display().to_string()),
    };
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write_svg(path, &modes, &cells, &ctx.cfg)
            .with_context(|| format!("writing plot {}", path.display()))?;
        println!("wrote {}", path.display());
    }

    // Exit status: wrong content anywhere, or a mode × size × keep-alive cell of a mode that
    // should run without a single good sample, fails the command.
    let bad_content: Vec<String> = stacks
        .iter()
        .flat_map(|s| {
            s.verified
                .iter()
                .filter(|v| !v.ok)
                .map(move |v| format!("{} {}", s.mode, v.size))
        })
        .collect();
    if !bad_content.is_empty() {
        bail!(
            "wrong or missing content served by: {}",
            bad_content.join(", ")
        );
    }
    let empty: Vec<String> = cells
        .iter()
        .filter(|c| c.ok_samples == 0)
        .map(|c| format!("{} {} keep-alive {}", c.mode, c.size, on_off(c.keepalive)))
        .collect();
    if !empty.is_empty() {
        bail!("no successful sample for: {}", empty.join(", "));
    }
    if let Some(s) = stacks.iter().find(|s| s.error.is_some()) {
        bail!(
            "{} stack failed: {}",
            s.mode,
            s.error.as_deref().unwrap_or("")
        );
    }
    if let Some(why) = cost_model.failure() {
        bail!("{why}");
    }
    Ok((modes, cells))
}

pub(crate) fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn notes(cfg: &Config, allowed: &[usize]) -> Vec<String> {
    let mut n = Vec::new();
    if cfg.wrk_shares_cores {
        n.push(format!(
            "wrk shares cores with nginx and the servers ({} CPUs available{}): its load \
             generation competes with what it measures",
            allowed.len(),
            if cfg.wrk_cpus.is_empty() {
                ", wrk unpinned"
            } else {
                ""
            }
        ));
    }
    if cfg.app_and_servers_share_cores {
        n.push("nginx and the service-domain servers share cores".to_owned());
    }
    n.push(
        "CPU time: utime+stime deltas from /proc/<pid>/stat over each wrk run, summed over \
         nginx's processes (and the virtuos-redirect wrapper) and, separately, each server"
            .to_owned(),
    );
    n.push(
        "a sample with any socket error or HTTP status >= 400 counts as failed and is \
         excluded from medians; every mode is checked to serve byte-identical content first"
            .to_owned(),
    );
    n
}

fn print_header(machine: &MachineInfo, ctx: &Ctx, modes: &[Mode], notes: &[String]) {
    let c = &ctx.cfg;
    println!(
        "machine: {} ({} CPUs, kernel {})",
        machine.cpu_model, machine.online_cpus, machine.kernel_release
    );
    println!(
        "nginx {} ({}), {}; {} worker(s), {} connections, {} wrk thread(s), {} s per run \
         (+{} s warm-up per stack), {} repetition(s)",
        c.nginx_version.as_deref().unwrap_or("?"),
        c.nginx,
        c.wrk_version.as_deref().unwrap_or("wrk"),
        c.workers,
        c.connections,
        c.wrk_threads,
        c.duration_s,
        c.warmup_s,
        c.reps
    );
    println!(
        "cores: nginx on {}, servers on {}, wrk {}",
        cpus::format_list(&c.app_cpus),
        cpus::format_list(&c.server_cpus),
        if c.wrk_cpus.is_empty() {
            "unpinned".to_owned()
        } else {
            format!("on {}", cpus::format_list(&c.wrk_cpus))
        }
    );
    for n in notes.iter().take(2).filter(|n| n.contains("share")) {
        println!("note: {n}");
    }
    let files: Vec<String> = ctx
        .files
        .iter()
        .map(|f| format!("{} ({} B, sha256 {}…)", f.size, f.bytes, &f.sha256[..12]))
        .collect();
    println!("files: {}", files.join(", "));
    for m in modes {
        match &m.skipped {
            Some(why) => println!("mode {:<10} skipped: {why}", m.name),
            None => println!(
                "mode {:<10} {} worker(s) on CPUs {}{}{}",
                m.name,
                m.workers,
                cpus::format_list(&m.app_cpus),
                if m.storage_cpus.is_empty() {
                    String::new()
                } else {
                    format!(", storage server on {}", cpus::format_list(&m.storage_cpus))
                },
                if m.net_cpus.is_empty() {
                    String::new()
                } else {
                    format!(", network server on {}", cpus::format_list(&m.net_cpus))
                },
            ),
        }
    }
}

/// Starts one mode's stack, verifies it, measures every cell, stops it.
fn run_stack(
    ctx: &Ctx,
    mode: &Mode,
    rep: usize,
    index: usize,
    seq: &mut usize,
) -> (StackRecord, Vec<Sample>) {
    let t0 = Instant::now();
    let mut rec = StackRecord {
        mode: mode.name.clone(),
        rep,
        port: 0,
        startup_s: 0.0,
        error: None,
        verified: Vec::new(),
        shim: None,
    };
    let cells: Vec<(&FileSpec, bool)> = ctx
        .files
        .iter()
        .flat_map(|f| ctx.cfg.keepalive.iter().map(move |&ka| (f, ka)))
        .collect();
    let fail_all = |why: String, seq: &mut usize| -> Vec<Sample> {
        cells
            .iter()
            .map(|(f, ka)| {
                *seq += 1;
                Sample::failed(&mode.name, &f.size, *ka, rep, *seq - 1, why.clone())
            })
            .collect()
    };
    let started = start_stack(ctx, mode, index);
    let (mut servers, mut nginx) = match started {
        Ok(x) => x,
        Err(e) => {
            let why = format!("{e:#}");
            println!(
                "  rep {}/{} {:<10} could not start: {why}",
                rep + 1,
                ctx.cfg.reps,
                mode.name
            );
            rec.error = Some(why.clone());
            return (rec, fail_all(why, seq));
        }
    };
    rec.port = nginx.addr.port();
    rec.startup_s = t0.elapsed().as_secs_f64();

    // Correct bytes first, in every mode.
    for f in &ctx.files {
        let v = http::verify(nginx.addr, &f.url_path, f.bytes, &f.sha256);
        rec.verified.push(Verification {
            size: f.size.clone(),
            ok: v.is_ok(),
            error: v.as_ref().err().map(|e| format!("{e:#}")),
        });
    }
    if let Some(bad) = rec.verified.iter().find(|v| !v.ok) {
        let why = format!(
            "content check failed for {}: {}",
            bad.size,
            bad.error.as_deref().unwrap_or("")
        );
        println!("  rep {}/{} {:<10} {why}", rep + 1, ctx.cfg.reps, mode.name);
        rec.error = Some(why.clone());
        let text = nginx.stop();
        rec.shim = mode
            .domains
            .storage()
            .then(|| stack::parse_shim_reports(&text));
        return (rec, fail_all(why, seq));
    }

    if ctx.cfg.warmup_s > 0 {
        let (f, ka) = cells[0];
        let w = wrk_run(ctx, &nginx, f, ka, ctx.cfg.warmup_s);
        if let Err(e) = w.run() {
            tracing::warn!("{} warm-up failed: {e:#}", mode.name);
        }
    }

    let mut samples = Vec::new();
    for (f, ka) in cells.iter().copied() {
        let s = measure(ctx, mode, &mut nginx, &mut servers, f, ka, rep, *seq);
        *seq += 1;
        print_sample(ctx, &s);
        samples.push(s);
    }
    let text = nginx.stop();
    if mode.domains != Domains::Native {
        let counts = stack::parse_shim_reports(&text);
        rec.shim = Some(counts);
    }
    drop(servers);
    (rec, samples)
}

type Servers = Vec<Server>;

fn start_stack(ctx: &Ctx, mode: &Mode, index: usize) -> Result<(Servers, Nginx)> {
    let dir = ctx.base.join(format!("stack-{index}-{}", mode.name));
    make_dir(&dir)?;
    let mut servers = Vec::new();
    let mut redirect_args: Vec<String> = vec!["run".to_owned()];
    if mode.domains.storage() {
        let bin = ctx
            .storage_bin
            .as_deref()
            .context("virtuos-storage binary")?;
        let root = ctx.docroot.display().to_string();
        let s = Server::start(
            "virtuos-storage",
            bin,
            &["--root", &root],
            &dir,
            &mode.storage_cpus,
        )?;
        redirect_args.extend([
            "--storage".to_owned(),
            s.sock.display().to_string(),
            "--mount".to_owned(),
            ctx.mount.display().to_string(),
        ]);
        servers.push(s);
    }
    if mode.domains.net() {
        let bin = ctx.net_bin.as_deref().context("virtuos-net binary")?;
        let s = Server::start("virtuos-net", bin, &[], &dir, &mode.net_cpus)?;
        redirect_args.extend(["--net".to_owned(), s.sock.display().to_string()]);
        servers.push(s);
    }
    let launch = NginxLaunch {
        nginx: ctx.nginx.clone(),
        redirect: (mode.domains != Domains::Native)
            .then(|| ctx.redirect_bin.clone().map(|b| (b, redirect_args)))
            .flatten(),
        cpus: mode.app_cpus.clone(),
        workers: mode.workers,
    };
    if mode.domains != Domains::Native && launch.redirect.is_none() {
        bail!("virtuos-redirect binary missing");
    }
    let conf = NginxConf {
        dir: dir.clone(),
        root: if mode.domains.storage() {
            ctx.mount.clone()
        } else {
            ctx.docroot.clone()
        },
        port: stack::free_port()?,
        workers: mode.workers,
        cpus: mode.app_cpus.clone(),
    };
    let nginx = Nginx::start(&launch, &conf)?;
    Ok((servers, nginx))
}

fn wrk_run(ctx: &Ctx, nginx: &Nginx, f: &FileSpec, keepalive: bool, duration_s: u64) -> WrkRun {
    WrkRun {
        cpus: ctx.cfg.wrk_cpus.clone(),
        threads: ctx.cfg.wrk_threads,
        connections: ctx.cfg.connections,
        duration_s,
        timeout_s: 10,
        close: !keepalive,
        url: format!("http://{}{}", nginx.addr, f.url_path),
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Ctx,
    mode: &Mode,
    nginx: &mut Nginx,
    servers: &mut Servers,
    f: &FileSpec,
    keepalive: bool,
    rep: usize,
    seq: usize,
) -> Sample {
    let fail = |why: String| Sample::failed(&mode.name, &f.size, keepalive, rep, seq, why);
    let alive = |nginx: &mut Nginx, servers: &mut Servers| -> Result<()> {
        nginx.check_alive()?;
        for s in servers.iter_mut() {
            if !s.alive() {
                bail!("{} exited", s.name);
            }
        }
        Ok(())
    };
    if let Err(e) = alive(nginx, servers) {
        return fail(format!("{e:#}"));
    }
    let server_cpu =
        |servers: &Servers, name: &str| servers.iter().find(|s| s.name == name).map(|s| s.cpu_s());
    let app0 = nginx.cpu_s();
    let st0 = server_cpu(servers, "virtuos-storage");
    let net0 = server_cpu(servers, "virtuos-net");
    let t = Instant::now();
    let result = wrk_run(ctx, nginx, f, keepalive, ctx.cfg.duration_s).run();
    let wall_s = t.elapsed().as_secs_f64();
    let app_cpu_s = nginx.cpu_s() - app0;
    let delta = |before: Option<f64>, name: &str| Some(server_cpu(servers, name)? - before?);
    let storage_cpu_s = delta(st0, "virtuos-storage");
    let net_cpu_s = delta(net0, "virtuos-net");
    let after = alive(nginx, servers).err().map(|e| format!("{e:#}"));
    let mut s = match result {
        Ok((report, _)) => Sample {
            mode: mode.name.clone(),
            size: f.size.clone(),
            keepalive,
            rep,
            seq,
            ok: true,
            error: report.failure(),
            wrk: Some(report),
            app_cpu_s,
            storage_cpu_s,
            net_cpu_s,
            wall_s,
        },
        Err(e) => fail(format!("{e:#}")),
    };
    s.error = crate::stats::joined_error(s.error.take(), after);
    s.ok = s.error.is_none();
    s
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

fn print_sample(ctx: &Ctx, s: &Sample) {
    let head = format!(
        "  rep {}/{} {:<10} {:>4} keep-alive {:<3}",
        s.rep + 1,
        ctx.cfg.reps,
        s.mode,
        s.size,
        on_off(s.keepalive)
    );
    match (&s.wrk, s.ok) {
        (Some(w), true) => {
            let server = match (s.storage_cpu_s, s.net_cpu_s) {
                (None, None) => String::new(),
                (a, b) => format!(
                    ", server {:.2} cores",
                    (a.unwrap_or(0.0) + b.unwrap_or(0.0)) / s.wall_s.max(1e-9)
                ),
            };
            println!(
                "{head} {:>9.0} req/s  p50 {:>7} ms  p99 {:>7} ms  {:>7} MiB/s  nginx {:.2} cores{server}",
                w.requests_per_s,
                ms(w.latency_p50_us),
                ms(w.latency_p99_us),
                mib(w.transfer_bytes_per_s),
                s.app_cpu_s / s.wall_s.max(1e-9),
            );
        }
        _ => println!(
            "{head} FAILED: {}",
            s.error.as_deref().unwrap_or("unknown error")
        ),
    }
}

fn print_summary(
    modes: &[Mode],
    cells: &[Cell],
    comparisons: &[Comparison],
    skipped: &[Skipped],
    stacks: &[StackRecord],
    samples: &[Sample],
) {
    println!();
    println!(
        "{:<5} {:<10} {:<10} {:>9} {:>19} {:>7} {:>8} {:>8} {:>17} {:>7} {:>8} {:>9} {:>10} {:>7}",
        "size",
        "keep-alive",
        "mode",
        "req/s",
        "[min – max]",
        "x nat",
        "p50 ms",
        "p99 ms",
        "[min – max]",
        "x nat",
        "MiB/s",
        "nginx us",
        "server us",
        "ok/all"
    );
    for c in cells {
        let ratio = |kind: &str, f: fn(&Comparison) -> Option<f64>| {
            comparisons
                .iter()
                .find(|x| {
                    x.kind == kind
                        && x.mode == c.mode
                        && x.size == c.size
                        && x.keepalive == c.keepalive
                })
                .and_then(f)
                .map_or("-".to_owned(), |r| format!("{r:.2}x"))
        };
        let med = |s: &Option<summary::Spread>, f: &dyn Fn(f64) -> String| {
            s.map_or("-".to_owned(), |s| f(s.median))
        };
        let range = |s: &Option<summary::Spread>, f: &dyn Fn(f64) -> String| {
            s.map_or("-".to_owned(), |s| format!("[{} – {}]", f(s.min), f(s.max)))
        };
        let int = |v: f64| format!("{v:.0}");
        let ms_ = |v: f64| ms(v);
        println!(
            "{:<5} {:<10} {:<10} {:>9} {:>19} {:>7} {:>8} {:>8} {:>17} {:>7} {:>8} {:>9} {:>10} {:>7}",
            c.size,
            on_off(c.keepalive),
            c.mode,
            med(&c.requests_per_s, &int),
            range(&c.requests_per_s, &int),
            ratio("equal_app_workers", |x| x.rps_ratio),
            med(&c.latency_p50_us, &ms_),
            med(&c.latency_p99_us, &ms_),
            range(&c.latency_p99_us, &ms_),
            ratio("equal_app_workers", |x| x.p99_ratio),
            med(&c.transfer_bytes_per_s, &|v| mib(v)),
            med(&c.app_cpu_us_per_request, &|v| format!("{v:.1}")),
            med(&c.server_cpu_us_per_request, &|v| format!("{v:.1}")),
            format!("{}/{}", c.ok_samples, c.ok_samples + c.failed_samples),
        );
    }
    println!("(x nat: median over native's median at equal nginx workers; nginx us / server us: CPU time per request)");

    for (kind, title) in [
        ("equal_app_workers", "equal application workers (the paper's comparison)"),
        ("equal_total_cores", "equal total cores (native gets as many workers as the mode's workers + server threads)"),
    ] {
        let rows: Vec<&Comparison> = comparisons.iter().filter(|x| x.kind == kind).collect();
        if rows.is_empty() {
            continue;
        }
        println!("\n{title}:");
        for x in rows {
            let m = modes.iter().find(|m| m.name == x.mode);
            let cores = m.map_or(String::new(), |m| {
                format!(
                    " ({} worker(s) + {} server thread(s))",
                    m.workers,
                    m.total_cores - m.workers
                )
            });
            println!(
                "  {:<8}{cores} vs {:<10} {:>4} keep-alive {:<3}  req/s {}{}  p99 {}",
                x.mode,
                x.baseline,
                x.size,
                on_off(x.keepalive),
                x.rps_ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
                x.rps_ratio_per_rep
                    .filter(|s| s.n > 1)
                    .map_or(String::new(), |s| format!(" (per rep {:.2}–{:.2})", s.min, s.max)),
                x.p99_ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            );
        }
    }
    for s in skipped {
        println!("\n{}: skipped: {}", s.mode, s.reason);
    }
    print_shim_reports(stacks.iter().map(|s| (s.mode.as_str(), s.shim)));
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    if !failed.is_empty() {
        println!("\nfailed samples ({}):", failed.len());
        for s in failed {
            println!(
                "  rep {} {} {} keep-alive {}: {}",
                s.rep + 1,
                s.mode,
                s.size,
                on_off(s.keepalive),
                s.error.as_deref().unwrap_or("")
            );
        }
    }
}

/// One line per mode with the totals of the shim's exit reports over its stacks (`(mode,
/// counts)` per stack; `None`: a native stack).
pub(crate) fn print_shim_reports<'a>(
    stacks: impl IntoIterator<Item = (&'a str, Option<ShimCounts>)>,
) {
    let mut by_mode: Vec<(String, ShimCounts)> = Vec::new();
    for (mode, shim) in stacks {
        if let Some(c) = shim {
            match by_mode.iter_mut().find(|(m, _)| m == mode) {
                Some((_, t)) => {
                    t.processes += c.processes;
                    t.routed += c.routed;
                    t.routed_net += c.routed_net;
                    t.trapped += c.trapped;
                }
                None => by_mode.push((mode.to_owned(), c)),
            }
        }
    }
    for (mode, c) in by_mode {
        println!(
            "{mode}: shim exit reports of {} process(es): {} calls routed to the storage domain, \
             {} to the network domain, {} calls trapped (slow path){}",
            c.processes,
            c.routed,
            c.routed_net,
            c.trapped,
            if c.processes == 0 {
                " — no report found (processes killed?)"
            } else {
                ""
            }
        );
    }
}

/// One line for the README's main job: each mode's requests/s next to native's.
fn print_headline(modes: &[Mode], cells: &[Cell], sizes: &[String], keepalive: &[bool]) {
    let (Some(size), Some(&ka)) = (sizes.first(), keepalive.first()) else {
        return;
    };
    let rps = |mode: &str| {
        cells
            .iter()
            .find(|c| c.mode == mode && &c.size == size && c.keepalive == ka)
            .and_then(|c| c.requests_per_s)
            .map(|s| s.median)
    };
    let native = rps("native");
    let mut parts = Vec::new();
    for m in modes {
        let text = match (&m.skipped, rps(&m.name)) {
            (Some(_), _) => format!("{} skipped (network domain not available)", m.name),
            (None, Some(r)) => match (m.name.as_str(), native) {
                ("native", _) | (_, None) => format!("{} {r:.0} req/s", m.name),
                (_, Some(n)) => format!("{} {r:.0} req/s ({:.2}x native)", m.name, r / n),
            },
            (None, None) => format!("{} failed", m.name),
        };
        parts.push(text);
    }
    println!(
        "\nnginx {size} keep-alive {}: {}",
        on_off(ka),
        parts.join(" | ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(
            parse_sizes("1k,16k,1m").unwrap(),
            vec![
                ("1k".to_owned(), 1024),
                ("16k".to_owned(), 16384),
                ("1m".to_owned(), 1 << 20)
            ]
        );
        assert_eq!(parse_sizes("512, 1K").unwrap()[1], ("1k".to_owned(), 1024));
        assert_eq!(parse_sizes("1k,1024").unwrap().len(), 1);
        assert!(parse_sizes("0").is_err());
        assert!(parse_sizes("x").is_err());
        assert!(parse_sizes("1g").is_err());
        assert!(parse_sizes("300m").is_err());
    }
}
