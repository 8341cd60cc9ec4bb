//! `virtuos-bench redis`: redis-server natively and with its sockets in the network domain,
//! under Debian's redis-benchmark.
//!
//! Modelled on `virtuos-bench nginx` and built from its parts (CPU placement, the servers'
//! processes, the network-domain probe, the modes, medians and spreads, the shared cost model):
//! for every repetition the modes run one after another (interleaved, the order rotated each
//! repetition), each in a fresh stack: for `net` a fresh `virtuos-net` pinned to the server
//! CPU, then redis-server (configured on its command line only, a directory of its own as
//! `--dir`, a free port on 127.0.0.1) pinned to the app CPU, under `virtuos-redirect run --net
//! SOCK --` for `net`. The stack first proves it stores and returns a random value byte for
//! byte, warms up, and then runs redis-benchmark (native, never redirected) once per pipeline
//! depth × test (`-t set`, then `-t get`: each test's CPU time is its own), recording the CPU
//! time of redis-server and of the network server over each run.
//!
//! Then the cost model (module `cost`, the shared [`crate::cost`]): one more fresh stack per
//! mode with redis-server and virtuos-net in cgroups of their own under the project's eBPF
//! telemetry, for system calls per request beside CPU time per request.

mod cost;
mod load;
mod stack;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::cost::CostModelSetting;
use crate::cpus::{self, Placement};
use crate::machine::MachineInfo;
use crate::nginx::modes::{self, Domains, Mode};
use crate::nginx::stack::{self as nstack, ShimCounts};
use crate::nginx::summary::Spread;
use crate::nginx::{self, TempDir};
use crate::sys;
use load::{BenchResult, BenchRun};
use stack::{Redis, RedisLaunch};

/// The tests, in the order they run within a pipeline depth (GET reads what SET stored).
const TESTS: [&str; 2] = ["set", "get"];
/// Requests per test and run by default.
const DEFAULT_REQUESTS: u64 = 100_000;
/// Requests per test and run with `--quick`.
const QUICK_REQUESTS: u64 = 20_000;
/// Warm-up requests per test by default.
const DEFAULT_WARMUP: u64 = 10_000;
/// Warm-up requests per test with `--quick`.
const QUICK_WARMUP: u64 = 2_000;

/// Arguments of `virtuos-bench redis`.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// CI run: 1 repetition, 20000 requests per test and run, 2000 warm-up requests; still
    /// checks that every mode stores and returns a value byte for byte. Explicit
    /// --reps/--requests/--warmup override it.
    #[arg(long)]
    pub quick: bool,
    /// Write every sample, the summaries, the cost model and the machine's description as
    /// JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Pipeline depths (redis-benchmark -P), comma-separated; every depth runs every test.
    #[arg(long, value_name = "LIST", default_value = "1,16")]
    pub pipeline: String,
    /// Repetitions of every mode × test × pipeline cell [default: 3; 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub reps: Option<u64>,
    /// Requests per test and run (redis-benchmark -n) [default: 100000; 20000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub requests: Option<u64>,
    /// Parallel connections (redis-benchmark -c), fixed for every run.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// Unrecorded requests per test on each fresh stack before its samples, at pipeline 1
    /// (0: none) [default: 10000; 2000 with --quick].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Modes to run, comma-separated from native, net (native always runs: the ratios need
    /// it). net is reported as skipped when the network domain does not work here.
    #[arg(long, value_name = "LIST", default_value = "native,net")]
    pub modes: String,
    /// CPUs for redis-server [default: the first CPU].
    #[arg(long, value_name = "LIST")]
    pub app_cpus: Option<String>,
    /// CPUs for virtuos-net; one polling thread per CPU [default: the second CPU with 2 CPUs,
    /// the second-to-last with more].
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<String>,
    /// CPUs for redis-benchmark [default: the last CPU when the machine has 3 or more; with
    /// fewer it runs unpinned and shares cores, which the report says].
    #[arg(long, value_name = "LIST")]
    pub bench_cpus: Option<String>,
    /// The redis-server binary [default: redis-server on PATH, then /usr/bin].
    #[arg(long, value_name = "PATH")]
    pub redis_server: Option<PathBuf>,
    /// The redis-benchmark binary [default: redis-benchmark on PATH, then /usr/bin].
    #[arg(long, value_name = "PATH")]
    pub redis_benchmark: Option<PathBuf>,
    /// Cost model after the throughput runs: system calls per request of redis-server and of
    /// virtuos-net, counted by the project's eBPF telemetry (`virtuos-redirect attach` on
    /// cgroups made for each under the cgroup2 root), beside CPU µs per request, one fresh
    /// stack per mode and one redis-benchmark run per test × pipeline depth. Needs root,
    /// cgroup2 and the eBPF object (scripts/build-ebpf.sh). auto: run it when it can, else
    /// print why and go on; on: the command fails when it cannot run or a run fails; off: skip
    /// it. Its tracepoints slow every system call, so its req/s are reported apart and are not
    /// comparable with the throughput figures.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = CostModelSetting::Auto)]
    pub cost_model: CostModelSetting,
}

/// Parses `--pipeline`: distinct depths from 1 to 10000, in the order given.
fn parse_pipelines(text: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for w in text.split(',').map(str::trim) {
        let p: u64 = w
            .parse()
            .ok()
            .filter(|p| (1..=10_000).contains(p))
            .with_context(|| format!("bad pipeline depth {w:?} (want 1 to 10000, e.g. 1,16)"))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Parses `--modes` for redis: native and net only.
fn parse_modes(text: &str) -> Result<Vec<Domains>> {
    let d = modes::parse_domains(text)?;
    if let Some(x) = d.iter().find(|d| d.storage()) {
        bail!(
            "mode {} is not measured by the redis benchmark (want native, net): redis-server \
             keeps no files with --save '' --appendonly no",
            x.name()
        );
    }
    Ok(d)
}

/// `name` at `explicit`, else on PATH, else in /usr/bin; the error says what installs it.
fn find_program(name: &str, explicit: Option<&Path>, package: &str) -> Result<PathBuf> {
    let hint = format!(
        "scripts/setup.sh installs it (Debian package {package}: apt-get install {package}), or \
         pass --{name} PATH"
    );
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("{name} not found at {}: {hint}", p.display());
        }
        return Ok(p.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found on PATH or in /usr/bin: {hint}"))
}

/// Settings after defaults.
#[derive(Debug, Clone, Serialize)]
struct Config {
    quick: bool,
    reps: usize,
    requests: u64,
    clients: u64,
    pipelines: Vec<u64>,
    tests: Vec<String>,
    warmup_requests: u64,
    app_cpus: Vec<usize>,
    server_cpus: Vec<usize>,
    bench_cpus: Vec<usize>,
    bench_shares_cores: bool,
    app_and_servers_share_cores: bool,
    order: &'static str,
    redis_server: String,
    redis_server_version: Option<String>,
    redis_benchmark: String,
    redis_benchmark_version: Option<String>,
}

/// Everything a stack needs.
struct Ctx {
    cfg: Config,
    base: PathBuf,
    redis_server: PathBuf,
    redis_benchmark: PathBuf,
    net_bin: Option<PathBuf>,
    redirect_bin: Option<PathBuf>,
}

/// One stack (a mode's server and redis-server for one repetition).
#[derive(Debug, Clone, Serialize)]
struct StackRecord {
    mode: String,
    rep: usize,
    port: u16,
    startup_s: f64,
    /// Whether a random value set was read back byte for byte (`false` too when the stack
    /// did not start: then `port` is 0 and `error` says why).
    check_ok: bool,
    error: Option<String>,
    /// The shim's exit report (redirected modes): routed and trapped calls over the stack's
    /// life, warm-up and check included.
    shim: Option<ShimCounts>,
}

/// One measured redis-benchmark run (one test at one pipeline depth).
#[derive(Debug, Clone, Serialize)]
struct Sample {
    mode: String,
    /// `SET` or `GET`.
    test: String,
    pipeline: u64,
    rep: usize,
    /// Position in the run's order of measurements, from 0.
    seq: usize,
    ok: bool,
    error: Option<String>,
    /// Requests of the run (`-n`).
    requests: u64,
    /// What redis-benchmark reported.
    result: Option<BenchResult>,
    /// CPU seconds of redis-server during the run (utime + stime deltas, all threads).
    app_cpu_s: f64,
    /// CPU seconds of the network server during the run.
    net_cpu_s: Option<f64>,
    /// Wall-clock seconds of the run (redis-benchmark's start and connections included).
    wall_s: f64,
}

impl Sample {
    fn failed(mode: &str, test: &str, pipeline: u64, rep: usize, seq: usize, why: String) -> Self {
        Self {
            mode: mode.to_owned(),
            test: test.to_uppercase(),
            pipeline,
            rep,
            seq,
            ok: false,
            error: Some(why),
            requests: 0,
            result: None,
            app_cpu_s: 0.0,
            net_cpu_s: None,
            wall_s: 0.0,
        }
    }

    fn rps(&self) -> Option<f64> {
        self.result.as_ref().map(|r| r.requests_per_s)
    }

    fn per_request_us(&self, cpu_s: f64) -> Option<f64> {
        (self.requests > 0).then(|| cpu_s * 1e6 / self.requests as f64)
    }
}

/// Summary of one mode × test × pipeline cell.
#[derive(Debug, Clone, Serialize)]
struct Cell {
    mode: String,
    test: String,
    pipeline: u64,
    ok_samples: usize,
    failed_samples: usize,
    requests_per_s: Option<Spread>,
    latency_p50_ms: Option<Spread>,
    latency_p99_ms: Option<Spread>,
    /// redis-server CPU time per request, µs.
    app_cpu_us_per_request: Option<Spread>,
    /// Network server CPU time per request, µs.
    server_cpu_us_per_request: Option<Spread>,
    /// Median requests/s over native's median (redirected modes).
    rps_ratio_to_native: Option<f64>,
    /// The per-repetition ratios to native (repetitions where both counted).
    rps_ratio_per_rep: Option<Spread>,
}

/// Summaries of every cell with samples, by test, pipeline depth and mode (native beside
/// net).
fn cells(modes: &[Mode], tests: &[String], pipelines: &[u64], samples: &[Sample]) -> Vec<Cell> {
    let mut out = Vec::new();
    for &p in pipelines {
        for t in tests {
            let of_mode = |m: &str| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|s| s.mode == m && s.test == *t && s.pipeline == p)
                    .collect()
            };
            let native_ok: Vec<&Sample> = of_mode("native").into_iter().filter(|s| s.ok).collect();
            let native_rps =
                Spread::of(&native_ok.iter().filter_map(|s| s.rps()).collect::<Vec<_>>());
            for m in modes.iter().filter(|m| m.skipped.is_none()) {
                let these = of_mode(&m.name);
                if these.is_empty() {
                    continue;
                }
                let ok: Vec<&Sample> = these.iter().copied().filter(|s| s.ok).collect();
                let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
                    Spread::of(&ok.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
                };
                let rps = of(&|s| s.rps());
                let redirected = m.domains != Domains::Native;
                let per_rep: Vec<f64> = ok
                    .iter()
                    .filter_map(|s| {
                        let n = native_ok.iter().find(|n| n.rep == s.rep)?;
                        Some(s.rps()? / n.rps()?)
                    })
                    .collect();
                out.push(Cell {
                    mode: m.name.clone(),
                    test: t.clone(),
                    pipeline: p,
                    ok_samples: ok.len(),
                    failed_samples: these.len() - ok.len(),
                    requests_per_s: rps,
                    latency_p50_ms: of(&|s| s.result.as_ref()?.latency_p50_ms),
                    latency_p99_ms: of(&|s| s.result.as_ref()?.latency_p99_ms),
                    app_cpu_us_per_request: of(&|s| s.per_request_us(s.app_cpu_s)),
                    server_cpu_us_per_request: of(&|s| s.per_request_us(s.net_cpu_s?)),
                    rps_ratio_to_native: match (redirected, rps, native_rps) {
                        (true, Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
                        _ => None,
                    },
                    rps_ratio_per_rep: if redirected {
                        Spread::of(&per_rep)
                    } else {
                        None
                    },
                });
            }
        }
    }
    out
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
    modes: Vec<Mode>,
    skipped: Vec<Skipped>,
    stacks: Vec<StackRecord>,
    samples: Vec<Sample>,
    summary: Vec<Cell>,
    notes: Vec<String>,
    /// The cost-model phase: system calls and CPU time per request per process group, with the
    /// eBPF telemetry on (`status` `ran`, `skipped` with its `reason`, or `off`).
    cost_model: cost::CostModel,
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
}

/// A mode's running stack: redis-server (dropped first) and the servers it uses.
struct Stack<'a> {
    ctx: &'a Ctx,
    redis: Redis,
    servers: Vec<nstack::Server>,
}

impl Stack<'_> {
    /// One redis-benchmark run of `tests` at `pipeline`.
    fn bench_run(&self, tests: &str, pipeline: u64) -> BenchRun {
        BenchRun {
            binary: self.ctx.redis_benchmark.clone(),
            cpus: self.ctx.cfg.bench_cpus.clone(),
            port: self.redis.addr.port(),
            tests: tests.to_owned(),
            requests: self.ctx.cfg.requests,
            clients: self.ctx.cfg.clients,
            pipeline,
        }
    }

    /// The unrecorded warm-up (nothing when `--warmup 0`).
    fn warm_up(&self) {
        let n = self.ctx.cfg.warmup_requests;
        if n == 0 {
            return;
        }
        let run = BenchRun {
            requests: n,
            ..self.bench_run(&self.ctx.cfg.tests.join(","), 1)
        };
        if let Err(e) = run.run() {
            tracing::warn!("warm-up failed: {e:#}");
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        self.redis.check_alive()?;
        for s in self.servers.iter_mut() {
            if !s.alive() {
                bail!("{} exited", s.name);
            }
        }
        Ok(())
    }

    fn net_cpu_s(&self) -> Option<f64> {
        self.servers
            .iter()
            .find(|s| s.name == "virtuos-net")
            .map(nstack::Server::cpu_s)
    }
}

/// The check: a random binary value set and read back byte for byte.
fn check_stack(stack: &Stack<'_>) -> Result<()> {
    let value = nginx::random_bytes(512)?;
    stack::check(stack.redis.addr, "virtuos-bench:check", &value)
        .with_context(|| format!("check of redis-server on {}", stack.redis.addr))
}

/// Starts a mode's stack in a directory of its own.
fn start_stack<'a>(ctx: &'a Ctx, mode: &Mode, index: usize) -> Result<Stack<'a>> {
    let dir = ctx.base.join(format!("stack-{index}-{}", mode.name));
    nginx::make_dir(&dir)?;
    let mut servers = Vec::new();
    let mut redirect = None;
    if mode.domains.net() {
        let bin = ctx.net_bin.as_deref().context("virtuos-net binary")?;
        let s = nstack::Server::start("virtuos-net", bin, &[], &dir, &mode.net_cpus)?;
        let r = ctx
            .redirect_bin
            .clone()
            .context("virtuos-redirect binary missing")?;
        redirect = Some((
            r,
            vec![
                "run".to_owned(),
                "--net".to_owned(),
                s.sock.display().to_string(),
            ],
        ));
        servers.push(s);
    }
    let launch = RedisLaunch {
        binary: ctx.redis_server.clone(),
        redirect,
        cpus: mode.app_cpus.clone(),
        dir: dir.clone(),
        port: nstack::free_port()?,
    };
    let redis = Redis::start(&launch)?;
    Ok(Stack {
        ctx,
        redis,
        servers,
    })
}

/// Runs the benchmark.
pub fn run(args: &RedisArgs) -> Result<()> {
    let started = Instant::now();
    let load_average_start = nginx::load_average();
    let pipelines = parse_pipelines(&args.pipeline)?;
    let wanted = parse_modes(&args.modes)?;
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }) as usize;
    let requests = args.requests.unwrap_or(if args.quick {
        QUICK_REQUESTS
    } else {
        DEFAULT_REQUESTS
    });
    let warmup = args.warmup.unwrap_or(if args.quick {
        QUICK_WARMUP
    } else {
        DEFAULT_WARMUP
    });
    let list = |o: &Option<String>| o.as_deref().map(cpus::parse_list).transpose();
    let allowed = sys::allowed_cpus().unwrap_or_else(|_| (0..sys::online_cpus()).collect());
    let placement = Placement::choose(
        &allowed,
        1,
        list(&args.app_cpus)?,
        list(&args.server_cpus)?,
        list(&args.bench_cpus)?,
    );
    nginx::validate_placement(&placement, &allowed, "--bench-cpus")?;
    let redis_server = find_program("redis-server", args.redis_server.as_deref(), "redis-server")?;
    let redis_benchmark = find_program(
        "redis-benchmark",
        args.redis_benchmark.as_deref(),
        "redis-tools",
    )?;
    let wants_net = wanted.iter().any(|d| d.net());
    let (net_bin, redirect_bin) = if wants_net {
        let need = |n: &str| {
            nstack::sibling_binary(n).with_context(|| {
                format!("mode net needs {n} (run `--modes native` to measure without it)")
            })
        };
        need("libvirtuos_preload.so")?;
        (Some(need("virtuos-net")?), Some(need("virtuos-redirect")?))
    } else {
        (None, None)
    };
    let cfg = Config {
        quick: args.quick,
        reps,
        requests,
        clients: args.clients,
        pipelines: pipelines.clone(),
        tests: TESTS.iter().map(|t| t.to_uppercase()).collect(),
        warmup_requests: warmup,
        app_cpus: placement.app.clone(),
        server_cpus: placement.server.clone(),
        bench_cpus: placement.wrk.clone(),
        bench_shares_cores: placement.wrk_shares(),
        app_and_servers_share_cores: placement.app_server_share(),
        order: "modes interleaved per repetition, order rotated each repetition; within a \
                mode's stack each pipeline depth in turn, SET then GET, one redis-benchmark run \
                each",
        redis_server: redis_server.display().to_string(),
        redis_server_version: load::version(&redis_server),
        redis_benchmark: redis_benchmark.display().to_string(),
        redis_benchmark_version: load::version(&redis_benchmark),
    };
    let machine = MachineInfo::collect(!cfg.bench_shares_cores && !cfg.app_and_servers_share_cores);

    let base = std::env::temp_dir().join(format!("virtuos-bench-redis-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    nginx::make_dir(&base)?;
    let _cleanup = TempDir(base.clone());
    let net_unavailable = if wants_net {
        let probe_dir = base.join("net-probe");
        nginx::make_dir(&probe_dir)?;
        modes::probe_net(&probe_dir, &placement.server).err()
    } else {
        None
    };
    let modes = modes::plan(&wanted, 1, &placement, net_unavailable.as_deref(), false);
    let ctx = Ctx {
        cfg,
        base,
        redis_server,
        redis_benchmark,
        net_bin,
        redirect_bin,
    };
    print_header(&machine, &ctx, &modes);

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
    let cost_model = cost::run(&ctx, &modes, args.cost_model, stacks.len());

    let summary = cells(&modes, &ctx.cfg.tests, &ctx.cfg.pipelines, &samples);
    let skipped: Vec<Skipped> = modes
        .iter()
        .filter_map(|m| {
            Some(Skipped {
                mode: m.name.clone(),
                reason: m.skipped.clone()?,
            })
        })
        .collect();
    let notes = notes(&ctx.cfg, &allowed, &samples);
    print_summary(&summary, &skipped, &stacks, &samples, &notes);
    cost::print_table(&cost_model);
    println!(
        "finished in {:.1} s; load average {} at the start, {} at the end",
        started.elapsed().as_secs_f64(),
        load_average_start.map_or("?".to_owned(), |l| format!("{:.2}", l[0])),
        nginx::load_average().map_or("?".to_owned(), |l| format!("{:.2}", l[0])),
    );

    let bad_check: Vec<String> = stacks
        .iter()
        .filter(|s| !s.check_ok && s.port != 0)
        .map(|s| format!("{} (rep {})", s.mode, s.rep + 1))
        .collect();
    let empty: Vec<String> = summary
        .iter()
        .filter(|c| c.ok_samples == 0)
        .map(|c| format!("{} {} pipeline {}", c.mode, c.test, c.pipeline))
        .collect();
    let stack_error = stacks.iter().find(|s| s.error.is_some()).map(|s| {
        format!(
            "{} stack failed: {}",
            s.mode,
            s.error.as_deref().unwrap_or("")
        )
    });
    let report = Report {
        benchmark: "redis",
        machine,
        config: ctx.cfg.clone(),
        modes,
        skipped,
        stacks,
        samples,
        summary,
        notes,
        cost_model,
        load_average_start,
        load_average_end: nginx::load_average(),
    };
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }

    // Exit status: a failed check of a stack that started, a failed stack, a cell of a mode
    // that should run without a single good sample, or a failed `--cost-model on` fails the
    // command.
    if !bad_check.is_empty() {
        bail!(
            "redis-server did not return the value it stored in: {}",
            bad_check.join(", ")
        );
    }
    if let Some(why) = stack_error {
        bail!("{why}");
    }
    if !empty.is_empty() {
        bail!("no successful sample for: {}", empty.join(", "));
    }
    if let Some(why) = report.cost_model.failure() {
        bail!("{why}");
    }
    Ok(())
}

/// One mode's stack for one repetition: start, check, warm up, one sample per pipeline depth ×
/// test, stop.
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
        check_ok: false,
        error: None,
        shim: None,
    };
    let cells: Vec<(u64, &str)> = ctx
        .cfg
        .pipelines
        .iter()
        .flat_map(|&p| TESTS.iter().map(move |&t| (p, t)))
        .collect();
    let fail_all = |why: String, seq: &mut usize| -> Vec<Sample> {
        cells
            .iter()
            .map(|&(p, t)| {
                *seq += 1;
                Sample::failed(&mode.name, t, p, rep, *seq - 1, why.clone())
            })
            .collect()
    };
    let head = format!("  rep {}/{} {:<8}", rep + 1, ctx.cfg.reps, mode.name);
    let mut stack = match start_stack(ctx, mode, index) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("{e:#}");
            println!("{head} could not start: {why}");
            rec.error = Some(why.clone());
            return (rec, fail_all(why, seq));
        }
    };
    rec.port = stack.redis.addr.port();
    rec.startup_s = t0.elapsed().as_secs_f64();
    if let Err(e) = check_stack(&stack) {
        let why = format!("{e:#}");
        println!("{head} {why}");
        rec.error = Some(why.clone());
        let Stack { redis, .. } = stack;
        let text = redis.stop();
        rec.shim = mode
            .domains
            .net()
            .then(|| nstack::parse_shim_reports(&text));
        return (rec, fail_all(why, seq));
    }
    rec.check_ok = true;
    stack.warm_up();
    let mut samples = Vec::new();
    for (p, t) in cells.iter().copied() {
        let s = measure(&mut stack, mode, t, p, rep, *seq);
        *seq += 1;
        print_sample(ctx, &s);
        samples.push(s);
    }
    let Stack { redis, servers, .. } = stack;
    let text = redis.stop();
    drop(servers);
    if mode.domains.net() {
        rec.shim = Some(nstack::parse_shim_reports(&text));
    }
    (rec, samples)
}

fn measure(
    stack: &mut Stack<'_>,
    mode: &Mode,
    test: &str,
    pipeline: u64,
    rep: usize,
    seq: usize,
) -> Sample {
    let fail = |why: String| Sample::failed(&mode.name, test, pipeline, rep, seq, why);
    if let Err(e) = stack.check_alive() {
        return fail(format!("{e:#}"));
    }
    let run = stack.bench_run(test, pipeline);
    let app0 = stack.redis.cpu_s();
    let net0 = stack.net_cpu_s();
    let t = Instant::now();
    let result = run.run();
    let wall_s = t.elapsed().as_secs_f64();
    let app_cpu_s = stack.redis.cpu_s() - app0;
    let net_cpu_s = net0.and_then(|a| Some(stack.net_cpu_s()? - a));
    let after = stack.check_alive().err().map(|e| format!("{e:#}"));
    let mut s = match result {
        Ok(results) => {
            let r = results
                .into_iter()
                .find(|r| r.test.eq_ignore_ascii_case(test));
            Sample {
                mode: mode.name.clone(),
                test: test.to_uppercase(),
                pipeline,
                rep,
                seq,
                ok: true,
                error: match &r {
                    Some(r) if r.requests_per_s > 0.0 => None,
                    _ => Some("no request completed".to_owned()),
                },
                requests: run.requests,
                result: r,
                app_cpu_s,
                net_cpu_s,
                wall_s,
            }
        }
        Err(e) => fail(format!("{e:#}")),
    };
    s.error = crate::stats::joined_error(s.error.take(), after);
    s.ok = s.error.is_none();
    s
}

fn opt(v: Option<f64>, digits: usize) -> String {
    crate::cost::opt(v, digits)
}

fn print_sample(ctx: &Ctx, s: &Sample) {
    let head = format!(
        "  rep {}/{} {:<8} {:<3} pipeline {:<3}",
        s.rep + 1,
        ctx.cfg.reps,
        s.mode,
        s.test,
        s.pipeline
    );
    match (&s.result, s.ok) {
        (Some(r), true) => {
            let server = s.per_request_us(s.net_cpu_s.unwrap_or(0.0));
            println!(
                "{head} {:>10.0} req/s  p50 {:>6} ms  p99 {:>6} ms  redis-server {:>6} us/req{}  ({:.2} s)",
                r.requests_per_s,
                opt(r.latency_p50_ms, 3),
                opt(r.latency_p99_ms, 3),
                opt(s.per_request_us(s.app_cpu_s), 2),
                if s.net_cpu_s.is_some() {
                    format!(", server {:>6} us/req", opt(server, 2))
                } else {
                    String::new()
                },
                s.wall_s,
            );
        }
        _ => println!(
            "{head} FAILED: {}",
            s.error.as_deref().unwrap_or("unknown error")
        ),
    }
}

fn notes(cfg: &Config, allowed: &[usize], samples: &[Sample]) -> Vec<String> {
    let mut n = Vec::new();
    if cfg.bench_shares_cores {
        n.push(format!(
            "redis-benchmark shares cores with redis-server and the server ({} CPUs available{}): \
             its load generation competes with what it measures",
            allowed.len(),
            if cfg.bench_cpus.is_empty() {
                ", redis-benchmark unpinned"
            } else {
                ""
            }
        ));
    }
    if cfg.app_and_servers_share_cores {
        n.push("redis-server and the network server share cores".to_owned());
    }
    n.push(
        "CPU time: utime+stime deltas from /proc/<pid>/stat over each redis-benchmark run, of \
         redis-server (all its threads; under virtuos-redirect the same process) and, \
         separately, of the network server"
            .to_owned(),
    );
    n.push(
        "one redis-benchmark run per test (-t set, then -t get), so each test's CPU time is \
         its own; req/s as redis-benchmark reports them"
            .to_owned(),
    );
    let short: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok && s.wall_s < 1.0)
        .map(|s| s.wall_s)
        .collect();
    if let Some(min) = short.iter().copied().reduce(f64::min) {
        n.push(format!(
            "{} run(s) took under 1 s (the shortest {min:.2} s): CPU time is counted in clock \
             ticks of 1/{} s, so their CPU µs per request are coarse; raise --requests for \
             finer figures",
            short.len(),
            sys::clock_ticks_per_s()
        ));
    }
    n
}

fn print_header(machine: &MachineInfo, ctx: &Ctx, modes: &[Mode]) {
    let c = &ctx.cfg;
    println!(
        "machine: {} ({} CPUs, kernel {})",
        machine.cpu_model, machine.online_cpus, machine.kernel_release
    );
    println!(
        "{} ({}), {}; {} clients, pipeline {}, {} requests per test and run (+{} warm-up per \
         stack), {} repetition(s)",
        c.redis_server_version.as_deref().unwrap_or("redis-server"),
        c.redis_server,
        c.redis_benchmark_version
            .as_deref()
            .unwrap_or("redis-benchmark"),
        c.clients,
        c.pipelines
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        c.requests,
        c.warmup_requests,
        c.reps
    );
    println!(
        "cores: redis-server on {}, server on {}, redis-benchmark {}",
        cpus::format_list(&c.app_cpus),
        cpus::format_list(&c.server_cpus),
        if c.bench_cpus.is_empty() {
            "unpinned".to_owned()
        } else {
            format!("on {}", cpus::format_list(&c.bench_cpus))
        }
    );
    for m in modes {
        match &m.skipped {
            Some(why) => println!("mode {:<8} skipped: {why}", m.name),
            None => println!(
                "mode {:<8} redis-server on CPU {}{}",
                m.name,
                cpus::format_list(&m.app_cpus),
                if m.net_cpus.is_empty() {
                    String::new()
                } else {
                    format!(", network server on {}", cpus::format_list(&m.net_cpus))
                },
            ),
        }
    }
}

fn print_summary(
    cells: &[Cell],
    skipped: &[Skipped],
    stacks: &[StackRecord],
    samples: &[Sample],
    notes: &[String],
) {
    println!();
    println!(
        "{:<4} {:>8} {:<8} {:>10} {:>23} {:>7} {:>7} {:>7} {:>9} {:>10} {:>7}",
        "test",
        "pipeline",
        "mode",
        "req/s",
        "[min – max]",
        "x nat",
        "p50 ms",
        "p99 ms",
        "redis us",
        "server us",
        "ok/all"
    );
    for c in cells {
        let med = |s: &Option<Spread>, d: usize| opt(s.map(|s| s.median), d);
        println!(
            "{:<4} {:>8} {:<8} {:>10} {:>23} {:>7} {:>7} {:>7} {:>9} {:>10} {:>7}",
            c.test,
            c.pipeline,
            c.mode,
            med(&c.requests_per_s, 0),
            c.requests_per_s
                .map_or("-".to_owned(), |s| format!("[{:.0} – {:.0}]", s.min, s.max)),
            c.rps_ratio_to_native
                .map_or("-".to_owned(), |r| format!("{r:.2}x")),
            med(&c.latency_p50_ms, 3),
            med(&c.latency_p99_ms, 3),
            med(&c.app_cpu_us_per_request, 2),
            med(&c.server_cpu_us_per_request, 2),
            format!("{}/{}", c.ok_samples, c.ok_samples + c.failed_samples),
        );
    }
    println!(
        "(medians over repetitions; x nat: median req/s over native's median; redis us / \
         server us: CPU µs per request of redis-server / of the network server)"
    );
    for c in cells.iter().filter(|c| c.rps_ratio_to_native.is_some()) {
        if let Some(s) = c.rps_ratio_per_rep.filter(|s| s.n > 1) {
            println!(
                "  {} {} pipeline {}: x nat per repetition {:.2}–{:.2}",
                c.mode, c.test, c.pipeline, s.min, s.max
            );
        }
    }
    for n in notes {
        println!("note: {n}");
    }
    for s in skipped {
        println!("\n{}: skipped: {}", s.mode, s.reason);
    }
    nginx::print_shim_reports(stacks.iter().map(|s| (s.mode.as_str(), s.shim)));
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    if !failed.is_empty() {
        println!("\nfailed samples ({}):", failed.len());
        for s in failed {
            println!(
                "  rep {} {} {} pipeline {}: {}",
                s.rep + 1,
                s.mode,
                s.test,
                s.pipeline,
                s.error.as_deref().unwrap_or("")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_and_modes() {
        assert_eq!(parse_pipelines("1,16").unwrap(), vec![1, 16]);
        assert_eq!(parse_pipelines(" 16, 1 ,16").unwrap(), vec![16, 1]);
        assert!(parse_pipelines("0").is_err());
        assert!(parse_pipelines("1,x").is_err());
        assert!(parse_pipelines("").is_err());
        assert!(parse_pipelines("10001").is_err());
        assert_eq!(
            parse_modes("net,native").unwrap(),
            vec![Domains::Net, Domains::Native]
        );
        assert!(parse_modes("storage").is_err());
        assert!(parse_modes("native,both").is_err());
        assert!(parse_modes("disk").is_err());
    }

    #[test]
    fn missing_programs_say_what_installs_them() {
        let e = find_program(
            "redis-server",
            Some(Path::new("/nonexistent/x")),
            "redis-server",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("redis-server not found at /nonexistent/x"),
            "{e}"
        );
        assert!(e.contains("scripts/setup.sh"), "{e}");
        let e = find_program("virtuos-no-such-program", None, "redis-tools")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install redis-tools"), "{e}");
        assert!(find_program("sh", None, "dash").is_ok());
    }

    fn sample(mode: &str, test: &str, rep: usize, rps: f64, cpu: f64) -> Sample {
        Sample {
            mode: mode.to_owned(),
            test: test.to_owned(),
            pipeline: 1,
            rep,
            seq: 0,
            ok: true,
            error: None,
            requests: 1000,
            result: Some(BenchResult {
                test: test.to_owned(),
                requests_per_s: rps,
                latency_avg_ms: None,
                latency_min_ms: None,
                latency_p50_ms: Some(0.5),
                latency_p95_ms: None,
                latency_p99_ms: Some(1.0),
                latency_max_ms: None,
            }),
            app_cpu_s: cpu,
            net_cpu_s: (mode == "net").then_some(cpu * 2.0),
            wall_s: 1.0,
        }
    }

    #[test]
    fn cells_and_ratios() {
        let p = Placement::choose(&[0, 1], 1, None, None, None);
        let modes = modes::plan(&[Domains::Native, Domains::Net], 1, &p, None, false);
        assert_eq!(modes.len(), 2, "no equal-cores baseline");
        let samples = vec![
            sample("native", "SET", 0, 1000.0, 0.01),
            sample("native", "SET", 1, 1200.0, 0.01),
            sample("native", "SET", 2, 1100.0, 0.02),
            sample("net", "SET", 0, 500.0, 0.02),
            sample("net", "SET", 1, 900.0, 0.02),
            Sample::failed("net", "set", 1, 2, 9, "boom".to_owned()),
            sample("native", "GET", 0, 2000.0, 0.01),
        ];
        let tests = vec!["SET".to_owned(), "GET".to_owned()];
        let c = cells(&modes, &tests, &[1, 16], &samples);
        let names: Vec<(&str, &str)> = c
            .iter()
            .map(|c| (c.test.as_str(), c.mode.as_str()))
            .collect();
        assert_eq!(
            names,
            [("SET", "native"), ("SET", "net"), ("GET", "native")]
        );
        let nat = &c[0];
        assert_eq!(nat.requests_per_s.unwrap().median, 1100.0);
        assert_eq!(nat.rps_ratio_to_native, None);
        assert_eq!(nat.server_cpu_us_per_request, None);
        assert_eq!(nat.app_cpu_us_per_request.unwrap().median, 10.0);
        let net = &c[1];
        assert_eq!((net.ok_samples, net.failed_samples), (2, 1));
        assert_eq!(net.requests_per_s.unwrap().median, 700.0);
        assert!((net.rps_ratio_to_native.unwrap() - 700.0 / 1100.0).abs() < 1e-12);
        let per = net.rps_ratio_per_rep.unwrap();
        assert_eq!((per.min, per.max, per.n), (0.5, 0.75, 2));
        assert_eq!(net.server_cpu_us_per_request.unwrap().median, 40.0);
        assert_eq!(net.latency_p99_ms.unwrap().median, 1.0);
        // A cell whose samples all failed has no figures but is listed (the exit status
        // needs it).
        let only_failed = vec![Sample::failed("native", "get", 16, 0, 0, "x".to_owned())];
        let c = cells(&modes, &tests, &[16], &only_failed);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].ok_samples, c[0].requests_per_s), (0, None));
    }

    #[test]
    fn notes_flag_short_runs() {
        let cfg = Config {
            quick: true,
            reps: 1,
            requests: 1000,
            clients: 50,
            pipelines: vec![1],
            tests: vec!["SET".to_owned()],
            warmup_requests: 0,
            app_cpus: vec![0],
            server_cpus: vec![1],
            bench_cpus: vec![],
            bench_shares_cores: true,
            app_and_servers_share_cores: false,
            order: "",
            redis_server: String::new(),
            redis_server_version: None,
            redis_benchmark: String::new(),
            redis_benchmark_version: None,
        };
        let mut s = sample("native", "SET", 0, 1.0, 0.0);
        s.wall_s = 0.25;
        let n = notes(&cfg, &[0, 1], &[s]);
        assert!(n[0].contains("redis-benchmark unpinned"));
        assert!(n.last().unwrap().contains("the shortest 0.25 s"));
        assert!(!notes(&cfg, &[0, 1], &[])
            .iter()
            .any(|n| n.contains("under 1 s")));
    }
}
