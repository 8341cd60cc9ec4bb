//! `top`: per attached cgroup, per second: system calls by name (the kernel's own entries,
//! i.e. the calls that stayed local) with log2-histogram latency percentiles, and the routed
//! calls with ring spins/sleeps/wake-ups.
//!
//! Routed calls do not enter the kernel, so the tracepoints cannot see them. They are read from
//! the client counters of the session regions (`memfd:virtuos-session`) that the cgroup's
//! processes map: calls, spins, sleeps and doorbells per channel. Per-opcode routed counts and
//! routed latency percentiles need shim-side histograms, which the shim does not keep yet;
//! `top` says so instead of showing numbers it does not have.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use aya::maps::{Map, PerCpuArray};
use serde_json::{json, Value};
use xen_transport::layout::{header, ring};
use xen_transport::Layout;

use super::layout::{SysStat, DENY_NAMES, DENY_SLOTS, MAX_SYSCALLS};
use super::{env, syscalls, Record};

/// Routed-call counters of one cgroup, summed over its sessions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Routed {
    /// Distinct session regions found.
    pub sessions: u64,
    /// Calls made through the rings.
    pub calls: u64,
    /// Waits that ended while spinning.
    pub spins: u64,
    /// Times a client slept.
    pub sleeps: u64,
    /// Doorbells rung by clients.
    pub wakeups: u64,
}

/// One reading of one cgroup.
pub struct CgSample {
    /// Cgroup id.
    pub id: u64,
    /// Its attach record.
    pub record: Option<Record>,
    /// Per syscall number, summed over CPUs.
    pub stats: Vec<SysStat>,
    /// Denials per hook.
    pub denied: Vec<u64>,
    /// Routed-call counters.
    pub routed: Routed,
}

/// Reads every attached cgroup's maps.
pub fn sample() -> Result<Vec<CgSample>> {
    let records = super::records_by_id();
    let mut out = Vec::new();
    for id in super::attached_ids() {
        let stats_map = super::pinned_map(id, "STATS")?;
        let stats_map: PerCpuArray<_, SysStat> =
            PerCpuArray::try_from(Map::PerCpuArray(stats_map)).context("STATS")?;
        let mut stats = vec![SysStat::default(); MAX_SYSCALLS as usize];
        for (nr, s) in stats.iter_mut().enumerate() {
            if let Ok(v) = stats_map.get(&(nr as u32), 0) {
                for cpu in v.iter() {
                    s.add(cpu);
                }
            }
        }
        let mut denied = vec![0; DENY_SLOTS as usize];
        if let Ok(m) = super::pinned_map(id, "DENIED") {
            if let Ok(m) = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(m)) {
                for (i, d) in denied.iter_mut().enumerate() {
                    if let Ok(v) = m.get(&(i as u32), 0) {
                        *d = v.iter().sum();
                    }
                }
            }
        }
        let record = records.get(&id).cloned();
        let routed = record
            .as_ref()
            .map(|r| routed_counters(&r.cgroup))
            .unwrap_or_default();
        out.push(CgSample {
            id,
            record,
            stats,
            denied,
            routed,
        });
    }
    Ok(out)
}

/// Sums the client counters of the session regions held by the cgroup's processes.
pub fn routed_counters(cgroup: &Path) -> Routed {
    let mut r = Routed::default();
    let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) else {
        return r;
    };
    let mut seen = HashSet::new();
    for pid in procs.lines() {
        // The shim maps its region and closes the fd, so look at the mappings, and read the
        // region through /proc/PID/map_files (root only).
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for line in maps.lines() {
            if !line.contains("/memfd:virtuos-session") {
                continue;
            }
            let mut f = line.split_whitespace();
            let (range, offset) = (f.next().unwrap_or(""), f.nth(1).unwrap_or(""));
            if u64::from_str_radix(offset, 16) != Ok(0) {
                continue;
            }
            let Ok(file) = File::open(format!("/proc/{pid}/map_files/{range}")) else {
                continue;
            };
            let Ok(md) = file.metadata() else { continue };
            if !seen.insert((md.dev(), md.ino())) {
                continue; // a forked child shares its parent's region
            }
            if let Some(c) = read_region(&file, md.len()) {
                r.sessions += 1;
                r.calls += c.calls;
                r.spins += c.spins;
                r.sleeps += c.sleeps;
                r.wakeups += c.wakeups;
            }
        }
    }
    r
}

fn read_region(f: &File, len: u64) -> Option<Routed> {
    let u32_at = |o: usize| {
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, o as u64).ok()?;
        Some(u32::from_le_bytes(b))
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, o as u64).ok()?;
        Some(u64::from_le_bytes(b))
    };
    if u32_at(header::MAGIC)? != xen_transport::layout::REGION_MAGIC {
        return None;
    }
    let l = Layout::new(
        u32_at(header::CHANNELS)?,
        u32_at(header::RING_SIZE)?,
        u32_at(header::WINDOW)?,
    )
    .ok()?;
    if (len as usize) < l.region_len() {
        return None;
    }
    let mut r = Routed::default();
    for c in 0..l.channels {
        let o = l.ring_off(c);
        r.calls += u64_at(o + ring::CLIENT_CALLS)?;
        r.spins += u64_at(o + ring::CLIENT_SPINS)?;
        r.sleeps += u64_at(o + ring::CLIENT_SLEEPS)?;
        r.wakeups += u64_at(o + ring::CLIENT_WAKEUPS)?;
    }
    Some(r)
}

fn rate(d: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (d as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// One sample as JSON: cumulative totals since attach plus per-second rates over the interval
/// between `a` and `b`.
pub fn to_json(a: &[CgSample], b: &[CgSample], secs: f64) -> Value {
    let mut cgroups = Vec::new();
    for s in b {
        let prev = a.iter().find(|p| p.id == s.id);
        let zero = SysStat::default();
        let mut rows = Vec::new();
        let (mut local_total, mut local_delta) = (0u64, 0u64);
        for (nr, st) in s.stats.iter().enumerate() {
            if st.calls == 0 && st.timed == 0 {
                continue;
            }
            let p = prev.map(|p| &p.stats[nr]).unwrap_or(&zero);
            let d = st.since(p);
            local_total += st.calls;
            local_delta += d.calls;
            rows.push((d.calls, st.calls, nr, st, d));
        }
        rows.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.cmp(&x.1)).then(x.2.cmp(&y.2)));
        let syscalls: Vec<Value> = rows
            .iter()
            .map(|(_, total, nr, st, d)| {
                // Percentiles over the interval when it saw calls, else since attach.
                let h = if d.timed > 0 { d } else { st };
                json!({
                    "nr": nr,
                    "name": syscalls::name(*nr as u32).unwrap_or("?"),
                    "total": total,
                    "per_sec": rate(d.calls, secs),
                    "timed": st.timed,
                    "mean_ns": st.total_ns.checked_div(st.timed).unwrap_or(0),
                    "p50_ns": h.percentile_ns(0.50),
                    "p99_ns": h.percentile_ns(0.99),
                })
            })
            .collect();
        let pr = prev.map(|p| p.routed).unwrap_or_default();
        let r = s.routed;
        let denied: serde_json::Map<String, Value> = DENY_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), json!(s.denied[i])))
            .collect();
        cgroups.push(json!({
            "cgroup": s.record.as_ref().map(|r| r.cgroup.display().to_string()),
            "cgroup_id": s.id,
            "enforce": s.record.as_ref().map(|r| r.enforce),
            "local": { "total": local_total, "per_sec": rate(local_delta, secs) },
            "syscalls": syscalls,
            "routed": {
                "source": "client counters of the virtuos-session regions held by the cgroup's processes",
                "sessions": r.sessions,
                "calls_total": r.calls,
                "calls_per_sec": rate(r.calls.saturating_sub(pr.calls), secs),
                "spins_per_sec": rate(r.spins.saturating_sub(pr.spins), secs),
                "sleeps_per_sec": rate(r.sleeps.saturating_sub(pr.sleeps), secs),
                "wakeups_per_sec": rate(r.wakeups.saturating_sub(pr.wakeups), secs),
                "spins_total": r.spins, "sleeps_total": r.sleeps, "wakeups_total": r.wakeups,
                "latency": Value::Null,
                "latency_note": "routed-call latency percentiles need shim-side histograms (not kept yet)",
            },
            "denied": denied,
        }));
    }
    json!({
        "time_unix_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "interval_ms": (secs * 1000.0).round() as u64,
        "note": "syscall counts are kernel entries of the cgroup's tasks (local calls, including the shim's own waits); routed calls come from the ring counters",
        "cgroups": cgroups,
    })
}

fn fmt_ns(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(n) if n < 10_000 => format!("{n}ns"),
        Some(n) if n < 10_000_000 => format!("{}us", n / 1000),
        Some(n) => format!("{}ms", n / 1_000_000),
    }
}

fn render(v: &Value) -> String {
    let mut o = String::new();
    let cg = v["cgroups"].as_array().cloned().unwrap_or_default();
    if cg.is_empty() {
        o.push_str("nothing attached: virtuos-redirect attach --cgroup PATH [--enforce]\n");
    }
    for c in cg {
        o.push_str(&format!(
            "cgroup {} (id {}){}  local {}/s  routed {}/s (spins {}/s sleeps {}/s wake-ups {}/s, {} session(s))\n",
            c["cgroup"].as_str().unwrap_or("?"),
            c["cgroup_id"],
            if c["enforce"].as_bool() == Some(true) { " enforcing" } else { "" },
            c["local"]["per_sec"],
            c["routed"]["calls_per_sec"],
            c["routed"]["spins_per_sec"],
            c["routed"]["sleeps_per_sec"],
            c["routed"]["wakeups_per_sec"],
            c["routed"]["sessions"],
        ));
        let denied: Vec<String> = c["denied"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_u64() > Some(0))
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect()
            })
            .unwrap_or_default();
        if !denied.is_empty() {
            o.push_str(&format!("  denied: {}\n", denied.join(", ")));
        }
        o.push_str(&format!(
            "  {:<20} {:>10} {:>12} {:>8} {:>8}\n",
            "syscall (local)", "per sec", "total", "p50", "p99"
        ));
        for s in c["syscalls"].as_array().into_iter().flatten().take(20) {
            o.push_str(&format!(
                "  {:<20} {:>10} {:>12} {:>8} {:>8}\n",
                s["name"].as_str().unwrap_or("?"),
                s["per_sec"].to_string(),
                s["total"].to_string(),
                fmt_ns(s["p50_ns"].as_u64()),
                fmt_ns(s["p99_ns"].as_u64()),
            ));
        }
        o.push_str("  routed latency percentiles: not measured (needs shim-side histograms)\n");
    }
    o
}

/// Options of `top`.
#[derive(Clone, Copy, Debug)]
pub struct TopOpts {
    /// Print one sample and exit.
    pub once: bool,
    /// JSON instead of the terminal view.
    pub json: bool,
    /// Sampling interval.
    pub interval: Duration,
}

/// `top`.
pub fn top(opts: TopOpts) -> Result<()> {
    env::require_root("top")?;
    let mut prev = sample()?;
    let mut t = Instant::now();
    loop {
        std::thread::sleep(opts.interval);
        let cur = sample()?;
        let now = Instant::now();
        let v = to_json(&prev, &cur, now.duration_since(t).as_secs_f64());
        let mut out = std::io::stdout().lock();
        if opts.json {
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        } else {
            if !opts.once {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{}", render(&v))?;
        }
        out.flush()?;
        if opts.once {
            return Ok(());
        }
        prev = cur;
        t = now;
    }
}
