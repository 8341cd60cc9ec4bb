//! The cost model shared by `virtuos-bench nginx` and `virtuos-bench redis`: system calls per
//! request of the application and of each server process, counted with the project's own eBPF
//! telemetry, beside their CPU time per request, natively and in every redirected mode.
//!
//! After the throughput repetitions every mode that ran (the equal-cores native baselines
//! aside) gets one more fresh stack. Its processes are moved into cgroups of their own under
//! the cgroup2 root, `virtuos-bench-<pid>/{app,net,storage}` (the application's processes, each
//! server), and `virtuos-redirect attach` puts the telemetry on each (the raw tracepoints
//! `sys_enter`/`sys_exit`, no enforcement). `virtuos-redirect top --once --json` is read before
//! and after one load run (wrk, redis-benchmark); over the requests the load generator
//! completed:
//!
//! - the growth of a cgroup's `local.total` is its system calls (kernel entries) per request,
//! - the growth of each of its `syscalls[].total` gives the largest few by name,
//! - the growth of the app cgroup's `routed.domains[].calls_total` gives the calls routed to each
//!   service domain per request (they never enter the kernel; they are the rings' counters).
//!
//! Everything attached is detached and the cgroups are removed afterwards, on every path (a
//! guard's `Drop`), also when a start or a load run fails. The raw tracepoints run on every
//! system call of the machine, so this phase's requests/s are reported apart from the
//! throughput figures and are not to be compared with them.
//!
//! What differs between the benchmarks comes in through [`CostStack`] (how a stack is started,
//! checked, loaded and stopped, and its cells), [`CostCell`] (what one measured cell is called)
//! and [`Labels`] (the names in the method notes and rows).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::nginx::modes::{Domains, Mode};
use crate::nginx::stack;
use crate::{cpus, sys};

/// How many system calls by name are kept per process group.
pub const TOP_N: usize = 6;

/// `--cost-model`: whether the cost-model phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostModelSetting {
    /// Run it when it can (root, cgroup2, the eBPF object, the attach works); otherwise one
    /// line says why not and the benchmark goes on.
    Auto,
    /// Run it; the command fails when it cannot run or one of its runs fails.
    On,
    /// Do not run it.
    Off,
}

impl CostModelSetting {
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

/// One measured cell of a benchmark (nginx: size × keep-alive; redis: test × pipeline depth),
/// serialised into its cost-model row.
pub trait CostCell: Clone + Serialize {
    /// For messages: `16k keep-alive on`.
    fn label(&self) -> String;
    /// The same, padded to fixed width for the per-run lines.
    fn padded(&self) -> String;
}

/// The names a benchmark's cost model uses in its rows and method notes.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    /// The application's process name (`nginx`, `redis-server`): `process` of the app group.
    pub app: &'static str,
    /// What the app cgroup holds (`nginx (master and workers)`).
    pub app_group: &'static str,
    /// The load generator (`wrk`, `redis-benchmark`).
    pub load: &'static str,
}

/// What one load run (wrk, redis-benchmark) reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Requests completed.
    pub requests: u64,
    /// Requests/s the load generator reported.
    pub requests_per_s: f64,
    /// Why the run does not count, if it does not.
    pub failure: Option<String>,
}

/// A started stack of one mode, as the cost model drives it. Dropping it stops everything
/// (the application first, then the servers).
pub trait CostStack {
    /// One measured cell.
    type Cell: CostCell;
    /// The processes of `group`; only groups of the mode's domains are asked.
    fn pids(&self, group: Group) -> Vec<u32>;
    /// CPU seconds used so far by `group`'s processes.
    fn cpu_s(&self, group: Group) -> f64;
    /// `Err` when a process of the stack has exited.
    fn check_alive(&mut self) -> Result<()>;
    /// Before the measured runs, with the processes in their cgroups: content checks (an
    /// `Err` fails the mode) and warm-up for `cells`.
    fn prepare(&mut self, cells: &[Self::Cell]) -> Result<()>;
    /// One measured load run of `cell`.
    fn load(&mut self, cell: &Self::Cell) -> Result<Load>;
    /// Stops the stack in order (the default: drop it).
    fn stop(self)
    where
        Self: Sized,
    {
    }
}

/// The pids of the servers of `group` among `servers` (for [`CostStack::pids`]; `app` is
/// the application's name, from the benchmark's labels).
pub fn server_pids(servers: &[stack::Server], group: Group, app: &'static str) -> Vec<u32> {
    servers
        .iter()
        .filter(|s| s.name == group.process(app))
        .map(stack::Server::pid)
        .collect()
}

/// CPU seconds used so far by the server of `group` among `servers` (for
/// [`CostStack::cpu_s`]).
pub fn server_cpu_s(servers: &[stack::Server], group: Group, app: &'static str) -> f64 {
    servers
        .iter()
        .find(|s| s.name == group.process(app))
        .map_or(0.0, |s| crate::procs::cpu_s(s.pid()))
}

// ----- `virtuos-redirect top --json`, the parts read here ---------------------------------------

/// One `top --once --json` reading (see `redirector/src/bpf/top.rs`, `to_json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopJson {
    /// Every attached cgroup (also those of others).
    #[serde(default)]
    pub cgroups: Vec<TopCgroup>,
}

/// One attached cgroup in a `top` reading.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopCgroup {
    /// Its directory.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Kernel entries of its tasks.
    #[serde(default)]
    pub local: TopLocal,
    /// Per system call number.
    #[serde(default)]
    pub syscalls: Vec<TopSyscall>,
    /// Calls routed over the session regions its processes map.
    #[serde(default)]
    pub routed: TopRouted,
}

/// `local` of a cgroup.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopLocal {
    /// System call entries since the attach.
    #[serde(default)]
    pub total: u64,
}

/// One row of `syscalls`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopSyscall {
    /// System call number.
    #[serde(default)]
    pub nr: u32,
    /// Its name (`?` when the table has none).
    #[serde(default)]
    pub name: String,
    /// Entries since the attach.
    #[serde(default)]
    pub total: u64,
}

/// `routed` of a cgroup.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopRouted {
    /// Per serving domain (and its pid).
    #[serde(default)]
    pub domains: Vec<TopDomain>,
}

/// One entry of `routed.domains`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopDomain {
    /// The serving process's executable name (`virtuos-storage`, `virtuos-net`, `unknown`).
    #[serde(default)]
    pub domain: String,
    /// Calls made through its rings.
    #[serde(default)]
    pub calls_total: u64,
    /// Times a client slept waiting for it.
    #[serde(default)]
    pub sleeps_total: u64,
    /// Doorbells rung to wake it.
    #[serde(default)]
    pub wakeups_total: u64,
}

/// Parses the output of `virtuos-redirect top --once --json`.
pub fn parse_top(text: &str) -> Result<TopJson> {
    serde_json::from_str(text.trim()).context("parsing `virtuos-redirect top --json` output")
}

impl TopJson {
    /// The entry of cgroup `path`.
    fn cgroup(&self, path: &Path) -> Result<&TopCgroup> {
        self.cgroups
            .iter()
            .find(|c| c.cgroup.as_deref().map(Path::new) == Some(path))
            .with_context(|| {
                format!(
                    "cgroup {} missing from `virtuos-redirect top --json` (not attached?)",
                    path.display()
                )
            })
    }
}

/// Calls routed to one domain between two readings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutedDelta {
    /// Calls.
    pub calls: u64,
    /// Client sleeps.
    pub sleeps: u64,
    /// Doorbells.
    pub wakeups: u64,
}

/// What one cgroup did between two `top` readings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgDelta {
    /// System call entries.
    pub syscalls: u64,
    /// Per system call: (number, name, entries), most first, none with 0.
    pub by_syscall: Vec<(u32, String, u64)>,
    /// Per serving domain name, by name.
    pub routed: Vec<(String, RoutedDelta)>,
}

/// The growth of one cgroup's counters from `before` to `after` (counters are cumulative since
/// the attach; a counter that shrank, a routed session whose process exited, counts 0).
pub fn cg_delta(before: &TopCgroup, after: &TopCgroup) -> CgDelta {
    let mut by_syscall: Vec<(u32, String, u64)> = after
        .syscalls
        .iter()
        .map(|s| {
            let was = before
                .syscalls
                .iter()
                .find(|b| b.nr == s.nr)
                .map_or(0, |b| b.total);
            (s.nr, s.name.clone(), s.total.saturating_sub(was))
        })
        .filter(|(_, _, n)| *n > 0)
        .collect();
    by_syscall.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let sums = |c: &TopCgroup, name: &str| {
        c.routed.domains.iter().filter(|d| d.domain == name).fold(
            RoutedDelta::default(),
            |mut t, d| {
                t.calls += d.calls_total;
                t.sleeps += d.sleeps_total;
                t.wakeups += d.wakeups_total;
                t
            },
        )
    };
    let mut names: Vec<&str> = after
        .routed
        .domains
        .iter()
        .map(|d| d.domain.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let routed = names
        .into_iter()
        .map(|n| {
            let (a, b) = (sums(after, n), sums(before, n));
            (
                n.to_owned(),
                RoutedDelta {
                    calls: a.calls.saturating_sub(b.calls),
                    sleeps: a.sleeps.saturating_sub(b.sleeps),
                    wakeups: a.wakeups.saturating_sub(b.wakeups),
                },
            )
        })
        .collect();
    CgDelta {
        syscalls: after.local.total.saturating_sub(before.local.total),
        by_syscall,
        routed,
    }
}

/// `count / requests`; `None` without requests.
pub fn per_request(count: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| count / requests as f64)
}

/// The `n` largest of `by_syscall` (already sorted, most first) per request.
pub fn top_n(by_syscall: &[(u32, String, u64)], n: usize, requests: u64) -> Vec<SyscallCost> {
    by_syscall
        .iter()
        .take(n)
        .map(|(nr, name, calls)| SyscallCost {
            name: name.clone(),
            nr: *nr,
            calls: *calls,
            per_request: per_request(*calls as f64, requests),
        })
        .collect()
}

// ----- results ----------------------------------------------------------------------------------

/// The cost-model phase (`cost_model` in `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct CostModel<C> {
    /// `--cost-model` as given (`auto`, `on`, `off`).
    pub setting: &'static str,
    /// `ran`, `skipped` or `off`.
    pub status: &'static str,
    /// Why it did not run (with `skipped`), and how to get what it needs.
    pub reason: Option<String>,
    /// How the figures are counted, and why its requests/s stand apart.
    pub method: Vec<String>,
    /// One row per mode × measured cell.
    pub rows: Vec<CostRow<C>>,
}

impl<C: CostCell> CostModel<C> {
    /// Not run (yet): `status` `off`.
    pub fn new(setting: CostModelSetting, labels: &Labels) -> Self {
        Self {
            setting: setting.name(),
            status: "off",
            reason: None,
            method: method_notes(labels),
            rows: Vec::new(),
        }
    }

    /// Skipped (the line saying so comes with the table, after the summary).
    pub fn skip(mut self, why: String) -> Self {
        self.status = "skipped";
        self.reason = Some(why);
        self
    }

    /// Why `--cost-model on` must fail the command, if it must.
    pub fn failure(&self) -> Option<String> {
        if self.setting != "on" {
            return None;
        }
        if self.status != "ran" {
            return Some(format!(
                "--cost-model on: the cost model did not run: {}",
                self.reason.as_deref().unwrap_or(self.status)
            ));
        }
        let bad: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| {
                Some(format!(
                    "{} {}: {}",
                    r.mode,
                    r.cell.label(),
                    r.error.as_deref()?
                ))
            })
            .collect();
        (!bad.is_empty()).then(|| format!("--cost-model on: {}", bad.join("; ")))
    }
}

fn method_notes(l: &Labels) -> Vec<String> {
    vec![
        format!(
            "system calls: kernel entries of each cgroup's tasks counted by the project's eBPF \
             telemetry (virtuos-redirect attach, raw tracepoints sys_enter/sys_exit, no \
             enforcement), read with `virtuos-redirect top --once --json` before and after one \
             {load} run, divided by the requests {load} completed; {group} in one cgroup, each \
             server in its own",
            load = l.load,
            group = l.app_group
        ),
        format!(
            "routed calls: the growth of the ring counters of the session regions {}'s processes \
             map, per serving domain; they never enter the kernel",
            l.app
        ),
        format!(
            "CPU µs per request: utime+stime deltas from /proc over the same {} run, as in the \
             throughput runs",
            l.load
        ),
        format!(
            "the raw tracepoints cost time on every system call of the machine ({}'s too), so the \
             requests/s of the cost-model runs are reported on their own and are not comparable \
             with the throughput figures",
            l.load
        ),
    ]
}

/// One mode × cell of the cost model.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow<C> {
    /// Mode name.
    pub mode: String,
    /// The cell (its fields are the row's: nginx `size` and `keepalive`, redis `test` and
    /// `pipeline`).
    #[serde(flatten)]
    pub cell: C,
    /// Why the row is incomplete or does not count.
    pub error: Option<String>,
    /// Requests the load generator completed.
    pub requests: u64,
    /// Requests/s with the telemetry on (not comparable with the throughput figures).
    pub requests_per_s_telemetry_on: Option<f64>,
    /// Wall-clock seconds of the load run.
    pub wall_s: f64,
    /// The application, then each server.
    pub processes: Vec<ProcessCost>,
    /// System calls per request of all of them together.
    pub all_syscalls_per_request: Option<f64>,
    /// Calls routed to any service domain per request.
    pub routed_calls_per_request: Option<f64>,
    /// Per serving domain.
    pub routed: Vec<RoutedCost>,
}

impl<C: CostCell> CostRow<C> {
    /// A row without figures.
    pub fn failed(mode: &str, cell: &C, why: String) -> Self {
        Self {
            mode: mode.to_owned(),
            cell: cell.clone(),
            error: Some(why),
            requests: 0,
            requests_per_s_telemetry_on: None,
            wall_s: 0.0,
            processes: Vec::new(),
            all_syscalls_per_request: None,
            routed_calls_per_request: None,
            routed: Vec::new(),
        }
    }

    /// The entry of one process group.
    pub fn process(&self, group: Group) -> Option<&ProcessCost> {
        self.processes.iter().find(|p| p.group == group.dir())
    }

    /// The calls routed to one domain (`virtuos-net`).
    pub fn routed_to(&self, domain: &str) -> Option<&RoutedCost> {
        self.routed.iter().find(|r| r.domain == domain)
    }
}

/// One process group (one cgroup) in a cost-model row.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCost {
    /// `app`, `net` or `storage`.
    pub group: &'static str,
    /// `nginx`, `redis-server`, `virtuos-net` or `virtuos-storage`.
    pub process: &'static str,
    /// Its cgroup.
    pub cgroup: String,
    /// Its processes.
    pub pids: Vec<u32>,
    /// System call entries during the run.
    pub syscalls: u64,
    /// Per request.
    pub syscalls_per_request: Option<f64>,
    /// The largest system calls by name.
    pub top_syscalls: Vec<SyscallCost>,
    /// CPU seconds during the run.
    pub cpu_s: f64,
    /// CPU µs per request.
    pub cpu_us_per_request: Option<f64>,
}

/// One system call by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyscallCost {
    /// Its name.
    pub name: String,
    /// Its number.
    pub nr: u32,
    /// Entries during the run.
    pub calls: u64,
    /// Per request.
    pub per_request: Option<f64>,
}

/// Calls routed to one service domain.
#[derive(Debug, Clone, Serialize)]
pub struct RoutedCost {
    /// The serving process's executable name.
    pub domain: String,
    /// Calls during the run.
    pub calls: u64,
    /// Per request.
    pub per_request: Option<f64>,
    /// Client sleeps during the run.
    pub sleeps: u64,
    /// Doorbells during the run.
    pub wakeups: u64,
}

/// A process group of a stack: which cgroup, what is in it, the CPU time it used.
#[derive(Debug, Clone)]
pub struct Member {
    /// Which group.
    pub group: Group,
    /// Its process name (the row's `process`).
    pub process: &'static str,
    /// Its cgroup.
    pub cgroup: PathBuf,
    /// Its processes.
    pub pids: Vec<u32>,
    /// CPU seconds during the run.
    pub cpu_s: f64,
}

/// The process groups of the cost model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The application (nginx's master and workers, redis-server).
    App,
    /// The network domain's server.
    Net,
    /// The storage domain's server.
    Storage,
}

impl Group {
    /// The cgroup's directory name and the JSON's `group`.
    pub fn dir(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Net => "net",
            Self::Storage => "storage",
        }
    }

    /// The process in it (`app`: the application's name, from the benchmark's labels).
    pub fn process(self, app: &'static str) -> &'static str {
        match self {
            Self::App => app,
            Self::Net => "virtuos-net",
            Self::Storage => "virtuos-storage",
        }
    }

    /// The groups of a mode: the application and each server its domains use.
    pub fn of(domains: Domains) -> Vec<Self> {
        let mut g = vec![Self::App];
        if domains.storage() {
            g.push(Self::Storage);
        }
        if domains.net() {
            g.push(Self::Net);
        }
        g
    }
}

/// A cost-model row from two `top` readings around a load run.
pub fn build_row<C: CostCell>(
    mode: &str,
    cell: &C,
    load: &Load,
    wall_s: f64,
    (before, after): (&TopJson, &TopJson),
    members: &[Member],
) -> Result<CostRow<C>> {
    let n = load.requests;
    let mut processes = Vec::new();
    let mut routed = Vec::new();
    let mut all = 0u64;
    for m in members {
        let d = cg_delta(before.cgroup(&m.cgroup)?, after.cgroup(&m.cgroup)?);
        all += d.syscalls;
        if m.group == Group::App {
            routed = d
                .routed
                .iter()
                .map(|(domain, r)| RoutedCost {
                    domain: domain.clone(),
                    calls: r.calls,
                    per_request: per_request(r.calls as f64, n),
                    sleeps: r.sleeps,
                    wakeups: r.wakeups,
                })
                .collect();
        }
        processes.push(ProcessCost {
            group: m.group.dir(),
            process: m.process,
            cgroup: m.cgroup.display().to_string(),
            pids: m.pids.clone(),
            syscalls: d.syscalls,
            syscalls_per_request: per_request(d.syscalls as f64, n),
            top_syscalls: top_n(&d.by_syscall, TOP_N, n),
            cpu_s: m.cpu_s,
            cpu_us_per_request: per_request(m.cpu_s * 1e6, n),
        });
    }
    let routed_all: u64 = routed.iter().map(|r| r.calls).sum();
    let failure = match (&load.failure, n) {
        (Some(f), _) => Some(f.clone()),
        (None, 0) => Some("no request completed".to_owned()),
        (None, _) => None,
    };
    Ok(CostRow {
        mode: mode.to_owned(),
        cell: cell.clone(),
        error: failure,
        requests: n,
        requests_per_s_telemetry_on: (n > 0).then_some(load.requests_per_s),
        wall_s,
        processes,
        all_syscalls_per_request: per_request(all as f64, n),
        routed_calls_per_request: per_request(routed_all as f64, n),
        routed,
    })
}

// ----- the machine: root, cgroup2, the redirector ---------------------------------------------

/// What the phase needs from the machine.
struct Prereq {
    redirect: PathBuf,
    /// The cgroup2 mount.
    root: PathBuf,
    /// The cgroup this process is in (where stragglers go back to).
    home: PathBuf,
}

/// The cgroup2 mount point in the text of /proc/self/mountinfo (octal escapes undone).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (a, b) = line.split_once(" - ")?;
        if b.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        Some(PathBuf::from(unescape_octal(a.split_whitespace().nth(4)?)))
    })
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup2 path (the `0::` line of /proc/self/cgroup), relative to the mount.
pub fn own_cgroup2(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/').to_owned())
}

fn prerequisites() -> std::result::Result<Prereq, String> {
    if !crate::sys::is_root() {
        return Err(
            "not root: the eBPF telemetry needs root (CAP_BPF, CAP_SYS_ADMIN); run \
                    virtuos-bench as root (sudo) or pass --cost-model off"
                .to_owned(),
        );
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let root = cgroup2_mount(&mountinfo).ok_or_else(|| {
        "cgroup2 is not mounted: mount it with `mount -t cgroup2 none /sys/fs/cgroup` (or at \
         /sys/fs/cgroup/unified where /sys/fs/cgroup holds the v1 hierarchies)"
            .to_owned()
    })?;
    let home = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| own_cgroup2(&t))
        .map_or_else(|| root.clone(), |rel| root.join(rel));
    let redirect = stack::sibling_binary("virtuos-redirect").map_err(|e| format!("{e:#}"))?;
    Ok(Prereq {
        redirect,
        root,
        home,
    })
}

/// The gist of a failed command's stderr on one line (anyhow's `Error:` and `Caused by:`
/// framing dropped).
pub fn error_gist(stderr: &str) -> String {
    let parts: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .map(|l| l.strip_prefix("Error: ").unwrap_or(l))
        .map(|l| match l.split_once(": ") {
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest,
            _ => l,
        })
        .collect();
    if parts.is_empty() {
        "(no output)".to_owned()
    } else {
        parts.join(": ")
    }
}

/// Runs `virtuos-redirect ARGS`; its stdout, or an error with the gist of its stderr.
fn redirect_cmd(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`virtuos-redirect {}` failed: {}",
            args.join(" "),
            error_gist(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves `pid` (the whole process, every thread) into cgroup `dir`.
fn enter(dir: &Path, pid: u32) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, format!("{pid}\n"))
        .with_context(|| format!("moving pid {pid} into {}", procs.display()))
}

/// The processes in cgroup `dir`.
fn members_of(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The cgroups of one cost-model stack. Dropping it detaches the telemetry from every cgroup
/// it attached, moves whatever is still inside back to this process's cgroup and removes the
/// directories it made.
struct Cgroups {
    redirect: PathBuf,
    home: PathBuf,
    /// Directories made, parents first.
    made: Vec<PathBuf>,
    /// Cgroups with the telemetry attached.
    attached: Vec<PathBuf>,
}

impl Cgroups {
    /// Makes `base` and one cgroup per group under it.
    fn make(p: &Prereq, base: &Path, groups: &[Group]) -> Result<Self> {
        let mut cg = Self {
            redirect: p.redirect.clone(),
            home: p.home.clone(),
            made: Vec::new(),
            attached: Vec::new(),
        };
        let dirs =
            std::iter::once(base.to_path_buf()).chain(groups.iter().map(|g| base.join(g.dir())));
        for d in dirs {
            match fs::create_dir(&d) {
                Ok(()) => cg.made.push(d),
                // Ours (it carries this pid) from an earlier mode whose removal failed.
                Err(e) if e.kind() == ErrorKind::AlreadyExists && d == base => cg.made.push(d),
                Err(e) => {
                    return Err(e).with_context(|| format!("creating cgroup {}", d.display()))
                }
            }
        }
        Ok(cg)
    }

    /// `virtuos-redirect attach --cgroup DIR` (telemetry only).
    fn attach(&mut self, dir: &Path) -> Result<()> {
        let path = dir.display().to_string();
        redirect_cmd(&self.redirect, &["attach", "--cgroup", &path])?;
        self.attached.push(dir.to_path_buf());
        Ok(())
    }

    /// One `top --once --json` reading.
    fn sample(&self) -> Result<TopJson> {
        parse_top(&redirect_cmd(
            &self.redirect,
            &["top", "--once", "--json", "--interval-ms", "1"],
        )?)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.attached.drain(..).rev() {
            let path = dir.display().to_string();
            if let Err(e) = redirect_cmd(&self.redirect, &["detach", "--cgroup", &path]) {
                tracing::warn!("cost model: {e:#}");
            }
        }
        for dir in self.made.drain(..).rev() {
            // What is left (a process that outlived its stack's shutdown) goes back home, so
            // the directory can go.
            for pid in members_of(&dir) {
                let _ = enter(&self.home, pid);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    // A process that has just exited leaves the cgroup a moment later.
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cost model: could not remove cgroup {}: {e} (remove it with rmdir)",
                            dir.display()
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// Removes what an earlier `virtuos-bench` that is gone left (killed before its guard ran):
/// `virtuos-bench-<pid>` cgroups of pids that no longer exist, detached first; a cgroup that
/// still holds processes stays.
fn clean_stale(p: &Prereq) {
    let Ok(rd) = fs::read_dir(&p.root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("virtuos-bench-")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        let subs: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        for s in subs.iter().chain(std::iter::once(&dir)) {
            // Not attached is the usual answer; nothing to report then.
            let path = s.display().to_string();
            let _ = redirect_cmd(&p.redirect, &["detach", "--cgroup", &path]);
        }
        for s in subs.iter().chain(std::iter::once(&dir)) {
            let _ = fs::remove_dir(s);
        }
        if dir.exists() {
            println!(
                "cost model: {} (left by virtuos-bench pid {pid}, which is gone) still holds \
                 processes; left in place",
                dir.display()
            );
        } else {
            println!(
                "cost model: removed {} (left by virtuos-bench pid {pid}, which is gone)",
                dir.display()
            );
        }
    }
}

/// Each thread's CPUs (`Cpus_allowed_list`) of process `pid`.
fn thread_affinities(pid: u32) -> Vec<(u32, Vec<usize>)> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let status = fs::read_to_string(e.path().join("status")).ok()?;
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            Some((tid, cpus::parse_list(list.trim()).ok()?))
        })
        .collect()
}

/// Moves `pids` into `dir`, keeping every thread's CPU affinity (moving into a cgroup whose
/// cpuset controller is on may reset it), and checks they are all there.
fn move_into(dir: &Path, pids: &[u32]) -> Result<()> {
    for &pid in pids {
        let before = thread_affinities(pid);
        enter(dir, pid)?;
        for (tid, cpus) in before {
            let now = thread_affinities(pid)
                .into_iter()
                .find(|(t, _)| *t == tid)
                .map(|(_, c)| c);
            if now.is_some_and(|c| c != cpus) {
                sys::set_thread_affinity(tid, &cpus).with_context(|| {
                    format!("restoring the CPU affinity of thread {tid} of pid {pid}")
                })?;
            }
        }
    }
    let inside = members_of(dir);
    if let Some(p) = pids.iter().find(|p| !inside.contains(p)) {
        bail!("pid {p} is not in {} after the move", dir.display());
    }
    Ok(())
}

// ----- the phase --------------------------------------------------------------------------------

/// Why a mode's cost-model run did not produce figures.
enum ModeError {
    /// The cgroups or the attach did not work: the machine cannot run the cost model.
    Setup(String),
    /// The stack did not start or verify.
    Stack(String),
}

/// Runs the cost-model phase over `modes` (those that ran; the equal-cores native baselines,
/// whose name is not their domains', and skipped modes are left out) for every cell of
/// `cells`, one fresh stack per mode from `start(mode, index)` (`first_index` numbers the
/// stacks after the throughput stacks).
pub fn run<S: CostStack>(
    setting: CostModelSetting,
    labels: &Labels,
    modes: &[Mode],
    cells: &[S::Cell],
    first_index: usize,
    mut start: impl FnMut(&Mode, usize) -> Result<S>,
) -> CostModel<S::Cell> {
    let mut cm = CostModel::new(setting, labels);
    if setting == CostModelSetting::Off {
        return cm;
    }
    let p = match prerequisites() {
        Ok(p) => p,
        Err(why) => return cm.skip(why),
    };
    clean_stale(&p);
    let runnable: Vec<&Mode> = modes
        .iter()
        .filter(|m| m.skipped.is_none() && m.name == m.domains.name())
        .collect();
    let mut started = false;
    for (i, mode) in runnable.iter().enumerate() {
        let stack = |m: &Mode| start(m, first_index + i);
        match run_mode(&p, labels, mode, cells, &mut started, stack) {
            Ok(rows) => cm.rows.extend(rows),
            Err(ModeError::Setup(why)) if cm.rows.is_empty() => return cm.skip(why),
            Err(ModeError::Setup(why) | ModeError::Stack(why)) => {
                println!("  cost {:<8} failed: {why}", mode.name);
                cm.rows.extend(
                    cells
                        .iter()
                        .map(|c| CostRow::failed(&mode.name, c, why.clone())),
                );
            }
        }
    }
    cm.status = "ran";
    cm
}

/// One mode's stack in its cgroups, measured over `cells`.
fn run_mode<S: CostStack>(
    p: &Prereq,
    labels: &Labels,
    mode: &Mode,
    cells: &[S::Cell],
    started: &mut bool,
    start: impl FnOnce(&Mode) -> Result<S>,
) -> std::result::Result<Vec<CostRow<S::Cell>>, ModeError> {
    let setup = |e: anyhow::Error| ModeError::Setup(format!("{e:#}"));
    let stack_err = |e: anyhow::Error| ModeError::Stack(format!("{e:#}"));
    let groups = Group::of(mode.domains);
    let base = p.root.join(format!("virtuos-bench-{}", std::process::id()));
    // Declared before the stack, so dropped after it: the processes are gone (or moved back)
    // before the cgroups are removed.
    let mut cg = Cgroups::make(p, &base, &groups).map_err(setup)?;
    for g in &groups {
        cg.attach(&base.join(g.dir())).map_err(setup)?;
    }
    if !std::mem::replace(started, true) {
        println!(
            "\ncost model: system calls per request counted by the eBPF telemetry, one fresh \
             stack per mode (its req/s are with the tracepoints on and not comparable with the \
             throughput figures)"
        );
    }
    let mut stack = start(mode).map_err(stack_err)?;
    for &g in &groups {
        let pids = stack.pids(g);
        if pids.is_empty() {
            return Err(ModeError::Stack(format!(
                "no {} process found",
                g.process(labels.app)
            )));
        }
        move_into(&base.join(g.dir()), &pids).map_err(stack_err)?;
    }
    stack.prepare(cells).map_err(stack_err)?;
    let mut rows = Vec::new();
    for cell in cells {
        let row = measure(&cg, labels, mode, &groups, &base, &mut stack, cell)
            .unwrap_or_else(|e| CostRow::failed(&mode.name, cell, format!("{e:#}")));
        print_row(&row);
        rows.push(row);
    }
    stack.stop();
    drop(cg);
    Ok(rows)
}

fn measure<S: CostStack>(
    cg: &Cgroups,
    labels: &Labels,
    mode: &Mode,
    groups: &[Group],
    base: &Path,
    stack: &mut S,
    cell: &S::Cell,
) -> Result<CostRow<S::Cell>> {
    stack.check_alive()?;
    let before = cg.sample()?;
    let cpu0: Vec<f64> = groups.iter().map(|&g| stack.cpu_s(g)).collect();
    let t = Instant::now();
    let result = stack.load(cell);
    let wall_s = t.elapsed().as_secs_f64();
    let cpu1: Vec<f64> = groups.iter().map(|&g| stack.cpu_s(g)).collect();
    let after = cg.sample()?;
    let load = result?;
    let members: Vec<Member> = groups
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|(&g, (a, b))| Member {
            group: g,
            process: g.process(labels.app),
            cgroup: base.join(g.dir()),
            pids: members_of(&base.join(g.dir())),
            cpu_s: b - a,
        })
        .collect();
    let mut row = build_row(&mode.name, cell, &load, wall_s, (&before, &after), &members)?;
    if let Err(e) = stack.check_alive() {
        let why = format!("{e:#}");
        row.error = Some(match row.error.take() {
            Some(x) => format!("{x}; {why}"),
            None => why,
        });
    }
    Ok(row)
}

// ----- printing ---------------------------------------------------------------------------------

/// `v` with `digits` decimals, `-` for none.
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
}

fn print_row<C: CostCell>(r: &CostRow<C>) {
    let head = format!("  cost {:<8} {}", r.mode, r.cell.padded());
    if r.processes.is_empty() {
        println!(
            "{head} FAILED: {}",
            r.error.as_deref().unwrap_or("unknown error")
        );
        return;
    }
    let procs: Vec<String> = r
        .processes
        .iter()
        .map(|p| format!("{} {}", p.process, opt(p.syscalls_per_request, 2)))
        .collect();
    println!(
        "{head} {:>9} req/s (telemetry on)  syscalls/req: {}  routed/req {}{}",
        opt(r.requests_per_s_telemetry_on, 0),
        procs.join(", "),
        opt(r.routed_calls_per_request, 2),
        r.error
            .as_deref()
            .map_or(String::new(), |e| format!("  ({e})")),
    );
}

/// One process group's largest system calls per request (`recvfrom 1.00, writev 1.00`).
pub fn top_line(p: &ProcessCost) -> String {
    if p.top_syscalls.is_empty() {
        return "no system call".to_owned();
    }
    p.top_syscalls
        .iter()
        .map(|s| format!("{} {}", s.name, opt(s.per_request, 2)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The start of the cost model's table: `false` (and the line saying why it did not run, if
/// it was asked for) when there is no table to print, else its title and `true`.
pub fn print_title<C>(cm: &CostModel<C>) -> bool {
    match cm.status {
        "off" => false,
        "skipped" => {
            println!(
                "\ncost model skipped: {}",
                cm.reason.as_deref().unwrap_or("?")
            );
            false
        }
        _ => {
            println!("\ncost model (eBPF syscall telemetry on; its req/s are not comparable with the throughput figures):");
            true
        }
    }
}

/// The end of the cost model's table: every row's largest system calls per request by process.
pub fn print_top_syscalls<C: CostCell>(cm: &CostModel<C>) {
    println!("top system calls per request:");
    for r in &cm.rows {
        let head = format!("  {} {}", r.mode, r.cell.label());
        if let Some(e) = &r.error {
            println!("{head}: {e}");
        }
        for p in &r.processes {
            println!("{head} {}: {}", p.process, top_line(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two readings as `virtuos-redirect top --once --json` prints them (trimmed to the fields
    /// the phase reads, plus some it ignores), 1000 requests apart.
    const BEFORE: &str = r#"{"cgroups":[
        {"cgroup":"/cg/virtuos-bench-1/app","cgroup_id":10,"enforce":false,
         "local":{"per_sec":5.0,"total":1000},
         "syscalls":[{"nr":45,"name":"recvfrom","total":400,"per_sec":1.0},
                     {"nr":20,"name":"writev","total":300},
                     {"nr":232,"name":"epoll_wait","total":300}],
         "routed":{"calls_total":50,"domains":[
            {"domain":"virtuos-storage","server_pid":7,"calls_total":40,"sleeps_total":1,"wakeups_total":2},
            {"domain":"virtuos-net","server_pid":8,"calls_total":10}]},
         "denied":{}},
        {"cgroup":"/cg/virtuos-bench-1/storage","local":{"total":7},
         "syscalls":[{"nr":202,"name":"futex","total":7}],"routed":{"calls_total":0,"domains":[]}},
        {"cgroup":"/cg/someone-else","local":{"total":99999}}],
        "interval_ms":1,"note":"x","time_unix_ms":1}"#;
    const AFTER: &str = r#"{"cgroups":[
        {"cgroup":"/cg/virtuos-bench-1/app","cgroup_id":10,"enforce":false,
         "local":{"per_sec":5.0,"total":4000},
         "syscalls":[{"nr":45,"name":"recvfrom","total":1400},
                     {"nr":20,"name":"writev","total":1300},
                     {"nr":232,"name":"epoll_wait","total":1300},
                     {"nr":3,"name":"close","total":0}],
         "routed":{"calls_total":3050,"domains":[
            {"domain":"virtuos-storage","server_pid":7,"calls_total":2040,"sleeps_total":1,"wakeups_total":502},
            {"domain":"virtuos-net","server_pid":8,"calls_total":510},
            {"domain":"virtuos-net","server_pid":9,"calls_total":500}]}},
        {"cgroup":"/cg/virtuos-bench-1/storage","local":{"total":2507},
         "syscalls":[{"nr":202,"name":"futex","total":7},{"nr":0,"name":"read","total":2500}],
         "routed":{"calls_total":0,"domains":[]}}]}"#;

    #[test]
    fn deltas_from_two_readings() {
        let (a, b) = (parse_top(BEFORE).unwrap(), parse_top(AFTER).unwrap());
        let app = Path::new("/cg/virtuos-bench-1/app");
        let d = cg_delta(a.cgroup(app).unwrap(), b.cgroup(app).unwrap());
        assert_eq!(d.syscalls, 3000);
        // Ties by number; nothing that did not grow.
        assert_eq!(
            d.by_syscall,
            vec![
                (20, "writev".to_owned(), 1000),
                (45, "recvfrom".to_owned(), 1000),
                (232, "epoll_wait".to_owned(), 1000),
            ]
        );
        assert_eq!(
            d.routed,
            vec![
                (
                    "virtuos-net".to_owned(),
                    RoutedDelta {
                        calls: 1000,
                        sleeps: 0,
                        wakeups: 0
                    }
                ),
                (
                    "virtuos-storage".to_owned(),
                    RoutedDelta {
                        calls: 2000,
                        sleeps: 0,
                        wakeups: 500
                    }
                ),
            ]
        );
        assert!(a.cgroup(Path::new("/cg/nope")).is_err());
        assert!(parse_top("not json").is_err());
        // Counters that went backwards count 0, not a wrap-around.
        let back = cg_delta(b.cgroup(app).unwrap(), a.cgroup(app).unwrap());
        assert_eq!(back.syscalls, 0);
        assert!(back.by_syscall.is_empty());
    }

    #[test]
    fn per_request_and_top_n() {
        assert_eq!(per_request(3000.0, 1000), Some(3.0));
        assert_eq!(per_request(5.0, 0), None);
        let by = vec![
            (45, "recvfrom".to_owned(), 2000),
            (20, "writev".to_owned(), 1000),
            (3, "close".to_owned(), 10),
        ];
        let t = top_n(&by, 2, 1000);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            SyscallCost {
                name: "recvfrom".to_owned(),
                nr: 45,
                calls: 2000,
                per_request: Some(2.0)
            }
        );
        assert_eq!(t[1].per_request, Some(1.0));
        assert_eq!(top_n(&by, 10, 0)[2].per_request, None);
        assert!(top_n(&[], 3, 10).is_empty());
    }

    #[test]
    fn mounts_and_own_cgroup() {
        let info = "24 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    30 24 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("1 0 0:1 / /a\\040b rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/a b"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / /x rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(
            own_cgroup2("1:cpu:/\n0::/user.slice/x\n").as_deref(),
            Some("user.slice/x")
        );
        assert_eq!(own_cgroup2("0::/\n").as_deref(), Some(""));
        assert_eq!(own_cgroup2("4:memory:/a\n"), None);
    }

    #[test]
    fn error_gists() {
        let e = "Error: the eBPF object is not built (looked for /x): build it with \
                 `scripts/build-ebpf.sh`\n";
        assert_eq!(
            error_gist(e),
            "the eBPF object is not built (looked for /x): build it with `scripts/build-ebpf.sh`"
        );
        let chain = "Error: loading sys_enter: raw tracepoints refused?\n\nCaused by:\n    0: \
                     a\n    1: Operation not permitted (os error 1)\n";
        assert_eq!(
            error_gist(chain),
            "loading sys_enter: raw tracepoints refused?: a: Operation not permitted (os error 1)"
        );
        assert_eq!(error_gist(""), "(no output)");
    }

    /// A cell as a benchmark would define it.
    #[derive(Debug, Clone, Serialize)]
    struct TestCell {
        size: String,
        keepalive: bool,
    }

    impl CostCell for TestCell {
        fn label(&self) -> String {
            format!("{} keep-alive {}", self.size, self.keepalive)
        }
        fn padded(&self) -> String {
            format!("{:>4} keep-alive {:<5}", self.size, self.keepalive)
        }
    }

    const LABELS: Labels = Labels {
        app: "nginx",
        app_group: "nginx (master and workers)",
        load: "wrk",
    };

    fn cell() -> TestCell {
        TestCell {
            size: "16k".to_owned(),
            keepalive: true,
        }
    }

    #[test]
    fn row_from_readings() {
        let (a, b) = (parse_top(BEFORE).unwrap(), parse_top(AFTER).unwrap());
        let load = Load {
            requests: 1000,
            requests_per_s: 500.0,
            failure: None,
        };
        let members = [
            Member {
                group: Group::App,
                process: "nginx",
                cgroup: PathBuf::from("/cg/virtuos-bench-1/app"),
                pids: vec![100, 101],
                cpu_s: 0.02,
            },
            Member {
                group: Group::Storage,
                process: "virtuos-storage",
                cgroup: PathBuf::from("/cg/virtuos-bench-1/storage"),
                pids: vec![7],
                cpu_s: 0.01,
            },
        ];
        let r = build_row("storage", &cell(), &load, 2.0, (&a, &b), &members).unwrap();
        assert_eq!(r.error, None);
        assert_eq!(r.requests_per_s_telemetry_on, Some(500.0));
        assert_eq!(r.all_syscalls_per_request, Some(5.5));
        assert_eq!(r.routed_calls_per_request, Some(3.0));
        let app = r.process(Group::App).unwrap();
        assert_eq!(app.process, "nginx");
        assert_eq!(app.syscalls_per_request, Some(3.0));
        assert!((app.cpu_us_per_request.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(top_line(app), "writev 1.00, recvfrom 1.00, epoll_wait 1.00");
        let st = r.process(Group::Storage).unwrap();
        assert_eq!(st.syscalls_per_request, Some(2.5));
        assert_eq!(st.top_syscalls[0].name, "read");
        assert_eq!(
            r.routed_to("virtuos-storage").unwrap().per_request,
            Some(2.0)
        );
        assert!(r.process(Group::Net).is_none());
        // The cell's fields are the row's, as before the cost model was shared.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["size"].as_str(), v["keepalive"].as_bool()),
            (Some("16k"), Some(true))
        );
        assert!(v.get("cell").is_none());

        // A cgroup missing from a reading is an error, never a guess.
        let mut m2 = members.to_vec();
        m2[1].cgroup = PathBuf::from("/cg/virtuos-bench-1/net");
        assert!(build_row("storage", &cell(), &load, 2.0, (&a, &b), &m2).is_err());
        // No request: no figures, and the row says why.
        let r = build_row(
            "storage",
            &cell(),
            &Load::default(),
            2.0,
            (&a, &b),
            &members,
        )
        .unwrap();
        assert!(r.error.is_some());
        assert_eq!(r.all_syscalls_per_request, None);
    }

    #[test]
    fn groups_and_notes() {
        assert_eq!(Group::of(Domains::Native), vec![Group::App]);
        assert_eq!(Group::of(Domains::Net), vec![Group::App, Group::Net]);
        assert_eq!(
            Group::of(Domains::Both),
            vec![Group::App, Group::Storage, Group::Net]
        );
        assert_eq!(Group::App.process("redis-server"), "redis-server");
        assert_eq!(Group::Net.process("redis-server"), "virtuos-net");
        let notes = method_notes(&Labels {
            app: "redis-server",
            app_group: "redis-server",
            load: "redis-benchmark",
        });
        assert!(notes[0].contains("one redis-benchmark run"));
        assert!(notes[1].contains("redis-server's processes"));
        assert!(!notes
            .iter()
            .any(|n| n.contains("nginx") || n.contains("wrk")));
        assert!(method_notes(&LABELS)[0].contains("nginx (master and workers) in one cgroup"));
    }

    #[test]
    fn failure() {
        let mut cm = CostModel::<TestCell>::new(CostModelSetting::Auto, &LABELS);
        cm.status = "skipped";
        assert_eq!(cm.failure(), None);
        let mut cm = CostModel::<TestCell>::new(CostModelSetting::On, &LABELS);
        cm.status = "skipped";
        cm.reason = Some("not root".to_owned());
        assert!(cm.failure().unwrap().contains("not root"));
        cm.status = "ran";
        assert_eq!(cm.failure(), None);
        cm.rows
            .push(CostRow::failed("net", &cell(), "boom".to_owned()));
        assert!(cm
            .failure()
            .unwrap()
            .contains("net 16k keep-alive true: boom"));
    }
}
