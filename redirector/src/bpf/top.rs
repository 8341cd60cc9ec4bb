//! `top`: per attached cgroup, per second: system calls by name (the kernel's own entries,
//! i.e. the calls that stayed local) with log2-histogram latency percentiles, and the routed
//! calls per service domain with their latency percentiles and ring spins/sleeps/wake-ups.
//!
//! Routed calls do not enter the kernel, so the tracepoints cannot see them. They are read from
//! the session regions (`memfd:virtuos-session`) that the cgroup's processes map, through
//! `/proc/PID/map_files` (root only): per channel the client's calls, spins, sleeps and
//! doorbells, and the region's latency histogram. The client (`xen_transport::Lease`) times
//! every synchronous call, from the publication of its request (before the doorbell when the
//! server has to be woken) until its response is seen, with the clock reads its adaptive wait
//! makes anyway, and counts it in a log2(ns) histogram in the region's header page
//! (fire-and-forget posts are counted as calls but not timed). A percentile is the upper edge of the bucket
//! that holds it, so it is exact within a factor of two. Calls that block in the server (an
//! `accept` or a `recv` waiting for data) are round trips too and land in the high buckets.
//!
//! The domain serving a region is the process outside the cgroup that maps the same memfd
//! (found by scanning `/proc/*/maps`), named by its executable (`virtuos-storage`,
//! `virtuos-net`); `unknown` when no such process is visible (another pid namespace).
//!
//! Rates and interval percentiles are differences between two readings of the same session;
//! a session that appears during the interval counts in full, one whose process exited during
//! the interval drops out with its last calls. With no timed call in the interval the
//! percentiles are those since the session started (`"window": "since_start"`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use aya::maps::{Map, PerCpuArray};
use serde_json::{json, Value};
use xen_transport::layout::{header, ring};
use xen_transport::Layout;

use super::layout::{deny, SysStat, BUCKETS, MAX_SYSCALLS};
use super::{env, syscalls, Record};

// The routed histograms are read into `SysStat` to share its percentiles.
const _: () = assert!(BUCKETS == header::LAT_BUCKETS);

/// Routed-call counters (of one session, or summed).
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
    /// Round trips by log2(ns) (`hist[b]`: `[2^b, 2^(b+1))` ns).
    pub hist: [u64; BUCKETS],
}

impl Routed {
    fn add(&mut self, o: &Routed) {
        self.sessions += o.sessions;
        self.calls += o.calls;
        self.spins += o.spins;
        self.sleeps += o.sleeps;
        self.wakeups += o.wakeups;
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
    }

    /// `self - o`, saturating, for the same session read twice.
    fn since(&self, o: &Routed) -> Routed {
        let mut d = Routed {
            sessions: self.sessions,
            calls: self.calls.saturating_sub(o.calls),
            spins: self.spins.saturating_sub(o.spins),
            sleeps: self.sleeps.saturating_sub(o.sleeps),
            wakeups: self.wakeups.saturating_sub(o.wakeups),
            hist: [0; BUCKETS],
        };
        for (i, h) in d.hist.iter_mut().enumerate() {
            *h = self.hist[i].saturating_sub(o.hist[i]);
        }
        d
    }

    fn timed(&self) -> u64 {
        self.hist.iter().sum()
    }

    fn percentile_ns(&self, q: f64) -> Option<u64> {
        SysStat {
            hist: self.hist,
            ..SysStat::default()
        }
        .percentile_ns(q)
    }
}

/// One session region mapped by the cgroup's processes.
#[derive(Clone, Debug)]
pub struct SessionSample {
    /// The memfd's inode (memfds share one internal mount, so this names the region).
    pub inode: u64,
    /// The serving domain's executable name, `unknown` if not found.
    pub domain: String,
    /// The serving domain's pid.
    pub server_pid: Option<u32>,
    /// The region's counters and histogram.
    pub routed: Routed,
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
    /// The session regions found.
    pub sessions: Vec<SessionSample>,
}

/// Reads every attached cgroup's maps.
pub fn sample() -> Result<Vec<CgSample>> {
    let records = super::records_by_id();
    let mut out = Vec::new();
    let mut holders: Option<HashMap<u64, Vec<(String, u32)>>> = None;
    for id in super::attached_ids() {
        // An attachment detached between the listing and this look is simply gone.
        let stats_map = match super::pinned_map(id, "STATS") {
            Ok(m) => m,
            Err(e)
                if !super::pin_dir(id).exists()
                    || e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                    }) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
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
        let mut denied = vec![0; deny::SLOTS as usize];
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
        let pids = record
            .as_ref()
            .map(|r| cgroup_pids(&r.cgroup))
            .unwrap_or_default();
        let mut sessions = session_regions(&pids);
        if !sessions.is_empty() {
            let holders = holders.get_or_insert_with(region_holders);
            for s in &mut sessions {
                // The server: a holder outside the cgroup, preferably not a probing client.
                let outside: Vec<&(String, u32)> = holders
                    .get(&s.inode)
                    .into_iter()
                    .flatten()
                    .filter(|(_, pid)| !pids.contains(pid))
                    .collect();
                if let Some((name, pid)) = outside
                    .iter()
                    .find(|(n, _)| n != "virtuos-redirect")
                    .or(outside.first())
                {
                    s.domain = name.clone();
                    s.server_pid = Some(*pid);
                }
            }
        }
        out.push(CgSample {
            id,
            record,
            stats,
            denied,
            sessions,
        });
    }
    Ok(out)
}

/// Pids in a cgroup (its thread-group leaders).
fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The session regions a process maps: `(address range, inode)` of each mapping of a
/// `memfd:virtuos-session` at offset 0.
fn mapped_regions(pid: u32) -> Vec<(String, u64)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    maps.lines()
        .filter(|l| l.contains("/memfd:virtuos-session"))
        .filter_map(|l| {
            // range perms offset dev inode path
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || u64::from_str_radix(f[2], 16) != Ok(0) {
                return None;
            }
            Some((f[0].to_string(), f[4].parse().ok()?))
        })
        .collect()
}

/// The counters and histograms of the session regions held by the cgroup's processes (each
/// region once: a forked child shares its parent's).
pub fn session_regions(pids: &[u32]) -> Vec<SessionSample> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &pid in pids {
        // The shim maps its region and closes the fd, so look at the mappings, and read the
        // region through /proc/PID/map_files (root only).
        for (range, inode) in mapped_regions(pid) {
            if seen.contains(&inode) {
                continue;
            }
            let Ok(file) = File::open(format!("/proc/{pid}/map_files/{range}")) else {
                continue;
            };
            let Ok(md) = file.metadata() else { continue };
            if let Some(routed) = read_region(&file, md.len()) {
                seen.insert(inode);
                out.push(SessionSample {
                    inode,
                    domain: "unknown".into(),
                    server_pid: None,
                    routed,
                });
            }
        }
    }
    out
}

/// Every process mapping a session region, by the region's memfd inode: `(executable name,
/// pid)`, in pid order. Scans all of `/proc`.
fn region_holders() -> HashMap<u64, Vec<(String, u32)>> {
    let mut out: HashMap<u64, Vec<(String, u32)>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let regions = mapped_regions(pid);
        if regions.is_empty() {
            continue;
        }
        let name = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .or_else(|| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|c| c.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let name = name.trim_end_matches(" (deleted)").to_string();
        for (_, inode) in regions {
            let h = out.entry(inode).or_default();
            if !h.iter().any(|(_, p)| *p == pid) {
                h.push((name.clone(), pid));
            }
        }
    }
    out
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
    let mut r = Routed {
        sessions: 1,
        ..Routed::default()
    };
    // The histogram before the call counters: a call is counted before it is timed, so the
    // reading never shows more timed calls than calls.
    let mut hist = vec![0u8; header::LAT_STRIPES * header::LAT_STRIPE_BYTES];
    f.read_exact_at(&mut hist, header::LAT_HIST as u64).ok()?;
    for (i, w) in hist.chunks_exact(8).enumerate() {
        r.hist[i % header::LAT_BUCKETS] += u64::from_le_bytes(w.try_into().ok()?);
    }
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

/// Per serving domain (name, pid): the sessions' current totals and their growth since the
/// previous reading (a session not in `prev` counts in full).
fn by_domain(
    cur: &[SessionSample],
    prev: Option<&[SessionSample]>,
) -> BTreeMap<(String, Option<u32>), (Routed, Routed)> {
    let mut out: BTreeMap<(String, Option<u32>), (Routed, Routed)> = BTreeMap::new();
    for s in cur {
        let before = prev
            .into_iter()
            .flatten()
            .find(|p| p.inode == s.inode)
            .map(|p| p.routed)
            .unwrap_or_default();
        let e = out.entry((s.domain.clone(), s.server_pid)).or_default();
        e.0.add(&s.routed);
        e.1.add(&s.routed.since(&before));
    }
    out
}

/// The routed counters as JSON: totals, per-second rates and latency percentiles.
fn routed_json(total: &Routed, delta: &Routed, secs: f64) -> serde_json::Map<String, Value> {
    // Percentiles over the interval when it saw timed calls, else since the sessions began.
    let (window, h) = if delta.timed() > 0 {
        (Some("interval"), delta)
    } else if total.timed() > 0 {
        (Some("since_start"), total)
    } else {
        (None, total)
    };
    let v = json!({
        "sessions": total.sessions,
        "calls_total": total.calls,
        "calls_per_sec": rate(delta.calls, secs),
        "spins_per_sec": rate(delta.spins, secs),
        "sleeps_per_sec": rate(delta.sleeps, secs),
        "wakeups_per_sec": rate(delta.wakeups, secs),
        "spins_total": total.spins,
        "sleeps_total": total.sleeps,
        "wakeups_total": total.wakeups,
        "latency": {
            "window": window,
            "timed_total": total.timed(),
            "timed_interval": delta.timed(),
            "p50_ns": h.percentile_ns(0.50),
            "p99_ns": h.percentile_ns(0.99),
        },
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
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
        let domains = by_domain(&s.sessions, prev.map(|p| p.sessions.as_slice()));
        let (mut all, mut all_delta) = (Routed::default(), Routed::default());
        let domains: Vec<Value> = domains
            .iter()
            .map(|((name, pid), (t, d))| {
                all.add(t);
                all_delta.add(d);
                let mut m = serde_json::Map::new();
                m.insert("domain".into(), json!(name));
                m.insert("server_pid".into(), json!(pid));
                m.extend(routed_json(t, d, secs));
                Value::Object(m)
            })
            .collect();
        let mut routed = serde_json::Map::new();
        routed.insert(
            "source".into(),
            json!("client counters and latency histograms of the virtuos-session regions held by the cgroup's processes"),
        );
        routed.insert(
            "latency_method".into(),
            json!("client-measured round trip of every synchronous call (request published to response seen), log2(ns) buckets; a percentile is its bucket's upper edge"),
        );
        routed.extend(routed_json(&all, &all_delta, secs));
        routed.insert("domains".into(), Value::Array(domains));
        let denied: serde_json::Map<String, Value> = deny::NAMES
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
            "routed": routed,
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
        for d in c["routed"]["domains"].as_array().into_iter().flatten() {
            let l = &d["latency"];
            o.push_str(&format!(
                "  routed to {} (pid {}): {}/s, {} total, {} session(s)  p50 {} p99 {}{}\n",
                d["domain"].as_str().unwrap_or("?"),
                d["server_pid"],
                d["calls_per_sec"],
                d["calls_total"],
                d["sessions"],
                fmt_ns(l["p50_ns"].as_u64()),
                fmt_ns(l["p99_ns"].as_u64()),
                if l["window"] == "since_start" {
                    " (since start: no timed call this interval)"
                } else {
                    ""
                },
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session(inode: u64, domain: &str, calls: u64, hist: &[(usize, u64)]) -> SessionSample {
        let mut routed = Routed {
            sessions: 1,
            calls,
            ..Routed::default()
        };
        for &(b, n) in hist {
            routed.hist[b] = n;
        }
        SessionSample {
            inode,
            domain: domain.into(),
            server_pid: Some(7),
            routed,
        }
    }

    #[test]
    fn deltas_are_per_session_and_percentiles_fall_back_to_since_start() {
        let prev = vec![
            session(1, "virtuos-net", 100, &[(10, 100)]),
            session(2, "virtuos-net", 50, &[(12, 50)]), // exits before the next reading
        ];
        let cur = vec![
            session(1, "virtuos-net", 130, &[(10, 110), (20, 20)]),
            session(3, "virtuos-net", 5, &[(11, 5)]), // new: counts in full
            session(4, "virtuos-storage", 9, &[(9, 9)]),
        ];
        let d = by_domain(&cur, Some(&prev));
        let (t, dl) = d[&("virtuos-net".to_string(), Some(7))];
        assert_eq!((t.sessions, t.calls, t.timed()), (2, 135, 135));
        assert_eq!((dl.calls, dl.timed()), (35, 35));
        let j = routed_json(&t, &dl, 1.0);
        assert_eq!(j["calls_per_sec"], 35.0);
        assert_eq!(j["latency"]["window"], "interval");
        // 10 + 5 of 35 under 2^12 ns; the 20 at 2^20 hold the median and the p99.
        assert_eq!(j["latency"]["p50_ns"], 1 << 21);
        assert_eq!(j["latency"]["p99_ns"], 1 << 21);

        // Nothing timed in the interval: the percentiles since the sessions began.
        let d = by_domain(&cur, Some(&cur));
        let (t, dl) = d[&("virtuos-storage".to_string(), Some(7))];
        let j = routed_json(&t, &dl, 1.0);
        assert_eq!(j["calls_per_sec"], 0.0);
        assert_eq!(j["latency"]["window"], "since_start");
        assert_eq!(j["latency"]["p50_ns"], 1 << 10);
        let j = routed_json(&Routed::default(), &Routed::default(), 1.0);
        assert_eq!(j["latency"]["window"], Value::Null);
        assert_eq!(j["latency"]["p50_ns"], Value::Null);
    }
}
