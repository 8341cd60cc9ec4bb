//! `virtuos-bench report`: one Markdown page from the JSON files of `latency` and `nginx`,
//! with their plots linked.

use std::fmt::Write as _;
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

/// Arguments of `virtuos-bench report`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("inputs").required(true).multiple(true).args(["latency", "nginx"])))]
pub struct ReportArgs {
    /// JSON written by `virtuos-bench latency --json`.
    #[arg(long, value_name = "FILE")]
    pub latency: Option<PathBuf>,
    /// JSON written by `virtuos-bench nginx --json`.
    #[arg(long, value_name = "FILE")]
    pub nginx: Option<PathBuf>,
    /// The latency plot to link [default: the latency JSON's path with .svg, if it exists].
    #[arg(long, value_name = "FILE")]
    pub latency_plot: Option<PathBuf>,
    /// The nginx plot to link [default: the plot named in the nginx JSON, else its path with
    /// .svg, if it exists].
    #[arg(long, value_name = "FILE")]
    pub nginx_plot: Option<PathBuf>,
    /// Write the Markdown here [default: standard output].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn load(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn absolute(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// `target` relative to directory `from` (both made absolute first).
pub fn relative(target: &Path, from: &Path) -> PathBuf {
    let t = absolute(target);
    let f = absolute(from);
    let tc: Vec<Component<'_>> = t.components().collect();
    let fc: Vec<Component<'_>> = f.components().collect();
    let common = tc.iter().zip(&fc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..fc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// The plot to link: `explicit`, else `named` (a path recorded in the JSON) if it exists, else
/// `json` with an .svg extension if it exists.
fn find_plot(explicit: Option<&Path>, named: Option<&str>, json: &Path) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    named
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| Some(json.with_extension("svg")).filter(|p| p.exists()))
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn on_off(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "on"
    } else {
        "off"
    }
}

fn machine_line(m: &Value) -> String {
    format!(
        "{} CPUs ({}), {:.1} GiB, kernel {}, host {}",
        m.get("online_cpus").and_then(Value::as_u64).unwrap_or(0),
        s(m, "cpu_model"),
        f(m, "total_memory_bytes").unwrap_or(0.0) / (1u64 << 30) as f64,
        s(m, "kernel_release"),
        s(m, "hostname"),
    )
}

fn list(v: Option<&Value>) -> String {
    let cpus: Vec<usize> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect()
        })
        .unwrap_or_default();
    if cpus.is_empty() {
        "-".to_owned()
    } else {
        crate::cpus::format_list(&cpus)
    }
}

fn latency_section(md: &mut String, v: &Value, plot: Option<&Path>, out_dir: &Path) {
    let _ = writeln!(
        md,
        "## Latency micro-benchmarks (`virtuos-bench latency`)\n"
    );
    if let Some(m) = v.get("machine") {
        let _ = writeln!(
            md,
            "Machine: {}; threads {}.\n",
            machine_line(m),
            if m.get("pinned").and_then(Value::as_bool) == Some(true) {
                "pinned to two CPUs"
            } else {
                "not pinned"
            }
        );
    }
    if let Some(p) = plot {
        let _ = writeln!(md, "![latency]({})\n", relative(p, out_dir).display());
    }
    let _ = writeln!(md, "| measurement | median ns | p99 ns | ops/s | samples |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let rows = v
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {} |",
            s(r, "name"),
            f(r, "median_ns").unwrap_or(0.0),
            f(r, "p99_ns").unwrap_or(0.0),
            f(r, "ops_per_s").unwrap_or(0.0),
            r.get("samples").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    let median = |name: &str| {
        rows.iter()
            .find(|r| s(r, "name") == name)
            .and_then(|r| f(r, "median_ns"))
    };
    let mut ratios = Vec::new();
    for (a, b) in [
        ("seccomp_user_notif", "ring_spin"),
        ("ring_sleep", "futex_pingpong"),
    ] {
        if let (Some(x), Some(y)) = (median(a), median(b)) {
            ratios.push(format!("`{a}` / `{b}` = {:.2}x", x / y));
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(md, "\nMedian ratios: {}.", ratios.join("; "));
    }
    let _ = writeln!(md);
}

fn spread_med(c: &Value, key: &str) -> Option<f64> {
    c.get(key)?.get("median")?.as_f64()
}

fn spread_range(c: &Value, key: &str, scale: f64, digits: usize) -> String {
    match c.get(key).filter(|v| !v.is_null()) {
        Some(v) => format!(
            "{:.*} – {:.*}",
            digits,
            f(v, "min").unwrap_or(0.0) * scale,
            digits,
            f(v, "max").unwrap_or(0.0) * scale
        ),
        None => "-".to_owned(),
    }
}

fn nginx_section(md: &mut String, v: &Value, plot: Option<&Path>, out_dir: &Path) {
    let _ = writeln!(md, "## nginx (`virtuos-bench nginx`)\n");
    let cfg = v.get("config").cloned().unwrap_or(Value::Null);
    if let Some(m) = v.get("machine") {
        let _ = writeln!(md, "Machine: {}.", machine_line(m));
    }
    let load = |k: &str| {
        v.get(k)
            .and_then(|l| l.get(0))
            .and_then(Value::as_f64)
            .map_or("?".to_owned(), |l| format!("{l:.2}"))
    };
    if v.get("load_average_start").is_some_and(|l| !l.is_null()) {
        let _ = writeln!(
            md,
            "Load average (1 min): {} at the start, {} at the end (other work on the machine \
             shows here).",
            load("load_average_start"),
            load("load_average_end")
        );
    }
    let _ = writeln!(
        md,
        "nginx {} and {}; {} worker(s), {} connections, {} wrk thread(s), {} s per run, {} \
         repetition(s){}. Cores: nginx on {}, servers on {}, wrk {}.\n",
        s(&cfg, "nginx_version"),
        s(&cfg, "wrk_version"),
        cfg.get("workers").and_then(Value::as_u64).unwrap_or(0),
        cfg.get("connections").and_then(Value::as_u64).unwrap_or(0),
        cfg.get("wrk_threads").and_then(Value::as_u64).unwrap_or(0),
        cfg.get("duration_s").and_then(Value::as_u64).unwrap_or(0),
        cfg.get("reps").and_then(Value::as_u64).unwrap_or(0),
        if cfg.get("quick").and_then(Value::as_bool) == Some(true) {
            " (--quick)"
        } else {
            ""
        },
        list(cfg.get("app_cpus")),
        list(cfg.get("server_cpus")),
        if list(cfg.get("wrk_cpus")) == "-" {
            "unpinned".to_owned()
        } else {
            format!("on {}", list(cfg.get("wrk_cpus")))
        },
    );
    if cfg.get("wrk_shares_cores").and_then(Value::as_bool) == Some(true) {
        let _ = writeln!(
            md,
            "**wrk shares cores** with nginx and the servers on this machine: the load generator \
             competes with what it measures, so absolute figures are low and ratios are only \
             indicative.\n"
        );
    }
    if let Some(p) = plot {
        let _ = writeln!(md, "![nginx]({})\n", relative(p, out_dir).display());
    }

    let _ = writeln!(md, "### Modes\n");
    let _ = writeln!(md, "| mode | nginx workers | nginx CPUs | storage server CPUs | network server CPUs | total cores | status |");
    let _ = writeln!(md, "|---|---:|---|---|---|---:|---|");
    for m in v
        .get("modes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let status = match m.get("skipped").and_then(Value::as_str) {
            Some(why) => format!("skipped: {why}"),
            None => "measured".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            s(m, "name"),
            m.get("workers").and_then(Value::as_u64).unwrap_or(0),
            list(m.get("app_cpus")),
            list(m.get("storage_cpus")),
            list(m.get("net_cpus")),
            m.get("total_cores").and_then(Value::as_u64).unwrap_or(0),
            status
        );
    }

    let comparisons = v
        .get("comparisons")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ratio = |kind: &str, c: &Value, key: &str| {
        comparisons
            .iter()
            .find(|x| {
                s(x, "kind") == kind
                    && s(x, "mode") == s(c, "mode")
                    && s(x, "size") == s(c, "size")
                    && x.get("keepalive") == c.get("keepalive")
            })
            .and_then(|x| f(x, key))
            .map_or("-".to_owned(), |r| format!("{r:.2}x"))
    };
    let _ = writeln!(
        md,
        "\n### Results (medians; ranges are min – max over repetitions)\n"
    );
    let _ = writeln!(md, "| size | keep-alive | mode | req/s | range | × native | p50 ms | p99 ms | range | p99 × native | MiB/s | nginx CPU µs/req | server CPU µs/req | ok/all |");
    let _ = writeln!(
        md,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in v
        .get("summary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let fmt = |x: Option<f64>, scale: f64, d: usize| {
            x.map_or("-".to_owned(), |x| format!("{:.*}", d, x * scale))
        };
        let ok = c.get("ok_samples").and_then(Value::as_u64).unwrap_or(0);
        let failed = c.get("failed_samples").and_then(Value::as_u64).unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            s(c, "size"),
            on_off(&c["keepalive"]),
            s(c, "mode"),
            fmt(spread_med(c, "requests_per_s"), 1.0, 0),
            spread_range(c, "requests_per_s", 1.0, 0),
            ratio("equal_app_workers", c, "rps_ratio"),
            fmt(spread_med(c, "latency_p50_us"), 1e-3, 2),
            fmt(spread_med(c, "latency_p99_us"), 1e-3, 2),
            spread_range(c, "latency_p99_us", 1e-3, 2),
            ratio("equal_app_workers", c, "p99_ratio"),
            fmt(spread_med(c, "transfer_bytes_per_s"), 1.0 / 1048576.0, 1),
            fmt(spread_med(c, "app_cpu_us_per_request"), 1.0, 1),
            fmt(spread_med(c, "server_cpu_us_per_request"), 1.0, 1),
            ok,
            ok + failed
        );
    }

    for (kind, title) in [
        (
            "equal_app_workers",
            "Equal application workers (the paper's comparison)",
        ),
        (
            "equal_total_cores",
            "Equal total cores (native with the mode's workers + server threads as workers)",
        ),
    ] {
        let rows: Vec<&Value> = comparisons
            .iter()
            .filter(|x| s(x, "kind") == kind)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "\n### {title}\n");
        let _ = writeln!(
            md,
            "| mode | baseline | size | keep-alive | req/s ratio | per-rep range | p99 ratio |"
        );
        let _ = writeln!(md, "|---|---|---|---|---:|---:|---:|");
        for x in rows {
            let per = x.get("rps_ratio_per_rep").filter(|p| !p.is_null());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s(x, "mode"),
                s(x, "baseline"),
                s(x, "size"),
                on_off(&x["keepalive"]),
                f(x, "rps_ratio").map_or("-".to_owned(), |r| format!("{r:.2}x")),
                per.map_or("-".to_owned(), |p| format!(
                    "{:.2} – {:.2}",
                    f(p, "min").unwrap_or(0.0),
                    f(p, "max").unwrap_or(0.0)
                )),
                f(x, "p99_ratio").map_or("-".to_owned(), |r| format!("{r:.2}x")),
            );
        }
    }

    // Issue #7's targets, stated honestly.
    let _ = writeln!(md, "\n### Targets\n");
    let both: Vec<&Value> = comparisons
        .iter()
        .filter(|x| s(x, "kind") == "equal_app_workers" && s(x, "mode") == "both")
        .collect();
    if both.is_empty() {
        let _ = writeln!(
            md,
            "nginx through both domains ≥ 1.0x native requests/s and p99 ≤ 1.2x native at equal \
             application workers: **not measured** (the `both` mode did not run)."
        );
    } else {
        let met = both.iter().all(|x| {
            f(x, "rps_ratio").is_some_and(|r| r >= 1.0)
                && f(x, "p99_ratio").is_some_and(|r| r <= 1.2)
        });
        let _ = writeln!(
            md,
            "nginx through both domains ≥ 1.0x native requests/s and p99 ≤ 1.2x native at equal \
             application workers: **{}** in {} cell(s).",
            if met { "met" } else { "not met" },
            both.len()
        );
    }
    for mode in ["storage", "net"] {
        let rows: Vec<&Value> = comparisons
            .iter()
            .filter(|x| s(x, "kind") == "equal_app_workers" && s(x, "mode") == mode)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let short = rows
            .iter()
            .filter(|x| {
                !(f(x, "rps_ratio").is_some_and(|r| r >= 1.0)
                    && f(x, "p99_ratio").is_some_and(|r| r <= 1.2))
            })
            .count();
        let _ = writeln!(
            md,
            "\n`{mode}` alone against the same bar: {short} of {} cell(s) fall short.",
            rows.len()
        );
    }

    let mut shim: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for st in v
        .get("stacks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(c) = st.get("shim").filter(|c| !c.is_null()) else {
            continue;
        };
        let get = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        let mode = s(st, "mode").to_owned();
        match shim.iter_mut().find(|(m, ..)| *m == mode) {
            Some(t) => {
                t.1 += get("processes");
                t.2 += get("routed");
                t.3 += get("routed_net");
                t.4 += get("trapped");
            }
            None => shim.push((
                mode,
                get("processes"),
                get("routed"),
                get("routed_net"),
                get("trapped"),
            )),
        }
    }
    if !shim.is_empty() {
        let _ = writeln!(
            md,
            "\n### Calls through the shim (exit reports, all stacks)\n"
        );
        let _ = writeln!(
            md,
            "| mode | processes | routed to the storage domain | routed to the network domain | trapped (slow path) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for (m, p, r, n, t) in shim {
            let _ = writeln!(md, "| {m} | {p} | {r} | {n} | {t} |");
        }
    }

    if let Some(cm) = v.get("cost_model").filter(|c| !c.is_null()) {
        cost_model_section(md, cm);
    }

    let failed: Vec<&Value> = v
        .get("samples")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|x| x.get("ok").and_then(Value::as_bool) != Some(true))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\n### Failed samples\n");
        for x in failed {
            let _ = writeln!(
                md,
                "- rep {} {} {} keep-alive {}: {}",
                x.get("rep").and_then(Value::as_u64).unwrap_or(0) + 1,
                s(x, "mode"),
                s(x, "size"),
                on_off(&x["keepalive"]),
                s(x, "error")
            );
        }
    }
    let notes: Vec<&str> = v
        .get("notes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n### Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let _ = writeln!(md);
}

/// The nginx JSON's `cost_model`: system calls and CPU time per request per process group,
/// counted with the eBPF telemetry (nothing when it was off).
fn cost_model_section(md: &mut String, cm: &Value) {
    match s(cm, "status") {
        "ran" => {}
        "skipped" => {
            let _ = writeln!(
                md,
                "\n### Cost model\n\nSkipped: {}.",
                s(cm, "reason").trim_end_matches('.')
            );
            return;
        }
        _ => return,
    }
    let _ = writeln!(
        md,
        "\n### Cost model (system calls per request, the project's eBPF telemetry)\n"
    );
    let _ = writeln!(
        md,
        "Requests/s here are with the raw tracepoints on, which cost time on every system call: \
         they are not comparable with the figures above.\n"
    );
    let _ = writeln!(md, "| mode | size | keep-alive | req/s (telemetry on) | nginx syscalls/req | net server syscalls/req | storage server syscalls/req | all processes syscalls/req | routed calls/req (storage, net) | CPU µs/req nginx / storage / net |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let rows: Vec<&Value> = cm
        .get("rows")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let fmt = |x: Option<f64>, d: usize| x.map_or("-".to_owned(), |x| format!("{x:.d$}"));
    for r in &rows {
        let group = |g: &str| {
            r.get("processes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| s(p, "group") == g)
        };
        let sc = |g: &str| fmt(group(g).and_then(|p| f(p, "syscalls_per_request")), 2);
        let cpu = |g: &str| fmt(group(g).and_then(|p| f(p, "cpu_us_per_request")), 1);
        let routed = |d: &str| {
            fmt(
                r.get("routed")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|x| s(x, "domain") == d)
                    .and_then(|x| f(x, "per_request")),
                2,
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}, {} | {} / {} / {} |",
            s(r, "mode"),
            s(r, "size"),
            on_off(&r["keepalive"]),
            fmt(f(r, "requests_per_s_telemetry_on"), 0),
            sc("app"),
            sc("net"),
            sc("storage"),
            fmt(f(r, "all_syscalls_per_request"), 2),
            routed("virtuos-storage"),
            routed("virtuos-net"),
            cpu("app"),
            cpu("storage"),
            cpu("net"),
        );
    }
    let _ = writeln!(md, "\nLargest system calls per request:\n");
    for r in &rows {
        let head = format!(
            "{} {} keep-alive {}",
            s(r, "mode"),
            s(r, "size"),
            on_off(&r["keepalive"])
        );
        if let Some(e) = r.get("error").and_then(Value::as_str) {
            let _ = writeln!(md, "- {head}: failed: {e}");
        }
        for p in r
            .get("processes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let top: Vec<String> = p
                .get("top_syscalls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|x| format!("`{}` {}", s(x, "name"), fmt(f(x, "per_request"), 2)))
                .collect();
            let _ = writeln!(
                md,
                "- {head}, {}: {}",
                s(p, "process"),
                if top.is_empty() {
                    "no system call".to_owned()
                } else {
                    top.join(", ")
                }
            );
        }
    }
    let method: Vec<&str> = cm
        .get("method")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !method.is_empty() {
        let _ = writeln!(md, "\nMethod:\n");
        for m in method {
            let _ = writeln!(md, "- {m}");
        }
    }
}

/// Builds the page.
pub fn render(args: &ReportArgs, out_dir: &Path) -> Result<String> {
    let mut md = String::from("# virtuos benchmark report\n\n");
    let inputs: Vec<String> = [&args.latency, &args.nginx]
        .into_iter()
        .flatten()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    let _ = writeln!(
        md,
        "Generated by `virtuos-bench report` from {}.\n",
        inputs.join(" and ")
    );
    if let Some(path) = &args.latency {
        let v = load(path)?;
        let plot = find_plot(args.latency_plot.as_deref(), None, path);
        latency_section(&mut md, &v, plot.as_deref(), out_dir);
    }
    if let Some(path) = &args.nginx {
        let v = load(path)?;
        let plot = find_plot(
            args.nginx_plot.as_deref(),
            v.get("plot").and_then(Value::as_str),
            path,
        );
        nginx_section(&mut md, &v, plot.as_deref(), out_dir);
    }
    Ok(md)
}

/// Runs `virtuos-bench report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let out_dir = match &args.out {
        Some(p) => p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        None => PathBuf::from("."),
    };
    let md = render(args, &out_dir)?;
    match &args.out {
        Some(p) => {
            fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
            println!("wrote {}", p.display());
        }
        None => print!("{md}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/b/c.svg"), Path::new("/a/b")),
            PathBuf::from("c.svg")
        );
        assert_eq!(
            relative(Path::new("/a/x/c.svg"), Path::new("/a/b")),
            PathBuf::from("../x/c.svg")
        );
    }

    #[test]
    fn renders_both_sections() {
        let dir = std::env::temp_dir().join(format!("virtuos-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let lat = dir.join("latency.json");
        fs::write(
            &lat,
            r#"{"machine":{"cpu_model":"X","online_cpus":2,"kernel_release":"6","hostname":"h",
               "total_memory_bytes":1073741824,"pinned":true,"timestamp_unix_s":1},
               "results":[{"name":"ring_spin","median_ns":800.0,"p99_ns":1000.0,"ops_per_s":1250000.0,"samples":10},
                          {"name":"seccomp_user_notif","median_ns":9000.0,"p99_ns":20000.0,"ops_per_s":1.0,"samples":10}]}"#,
        )
        .unwrap();
        fs::write(dir.join("latency.svg"), "<svg/>").unwrap();
        let ngx = dir.join("nginx.json");
        fs::write(
            &ngx,
            r#"{"benchmark":"nginx","machine":{"cpu_model":"X","online_cpus":2},
               "config":{"workers":1,"connections":16,"wrk_threads":1,"duration_s":3,"reps":1,
                         "quick":true,"app_cpus":[0],"server_cpus":[1],"wrk_cpus":[],"wrk_shares_cores":true},
               "modes":[{"name":"native","workers":1,"app_cpus":[0],"storage_cpus":[],"net_cpus":[],"total_cores":1,"skipped":null},
                        {"name":"net","workers":1,"app_cpus":[0],"storage_cpus":[],"net_cpus":[1],"total_cores":2,
                         "skipped":"network domain not available: no"},
                        {"name":"storage","workers":1,"app_cpus":[0],"storage_cpus":[1],"net_cpus":[],"total_cores":2,"skipped":null}],
               "summary":[{"mode":"native","size":"16k","keepalive":true,"ok_samples":1,"failed_samples":0,
                           "requests_per_s":{"median":10000.0,"min":10000.0,"max":10000.0,"n":1},
                           "latency_p99_us":{"median":2000.0,"min":2000.0,"max":2000.0,"n":1}},
                          {"mode":"storage","size":"16k","keepalive":true,"ok_samples":1,"failed_samples":0,
                           "requests_per_s":{"median":5000.0,"min":5000.0,"max":5000.0,"n":1},
                           "latency_p99_us":{"median":4000.0,"min":4000.0,"max":4000.0,"n":1}}],
               "comparisons":[{"kind":"equal_app_workers","mode":"storage","baseline":"native","size":"16k",
                               "keepalive":true,"rps_ratio":0.5,"p99_ratio":2.0,"rps_ratio_per_rep":null}],
               "stacks":[{"mode":"storage","rep":0,"shim":{"processes":2,"routed":100,"trapped":0}}],
               "samples":[],"notes":["wrk shares cores"],"plot":null,
               "cost_model":{"setting":"auto","status":"ran","reason":null,"method":["raw tracepoints"],
                 "rows":[{"mode":"storage","size":"16k","keepalive":true,"error":null,"requests":1000,
                          "requests_per_s_telemetry_on":500.0,"all_syscalls_per_request":5.5,
                          "routed_calls_per_request":3.0,
                          "processes":[{"group":"app","process":"nginx","syscalls_per_request":3.0,
                                        "cpu_us_per_request":20.0,
                                        "top_syscalls":[{"name":"writev","nr":20,"calls":1000,"per_request":1.0}]},
                                       {"group":"storage","process":"virtuos-storage","syscalls_per_request":2.5,
                                        "cpu_us_per_request":10.0,"top_syscalls":[]}],
                          "routed":[{"domain":"virtuos-storage","calls":3000,"per_request":3.0}]}]}}"#,
        )
        .unwrap();
        fs::write(dir.join("nginx.svg"), "<svg/>").unwrap();
        let args = ReportArgs {
            latency: Some(lat),
            nginx: Some(ngx),
            latency_plot: None,
            nginx_plot: None,
            out: Some(dir.join("report.md")),
        };
        let md = render(&args, &dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert!(md.contains("![latency](latency.svg)"), "{md}");
        assert!(md.contains("![nginx](nginx.svg)"), "{md}");
        assert!(md.contains("| ring_spin | 800 | 1000 |"), "{md}");
        assert!(
            md.contains("`seccomp_user_notif` / `ring_spin` = 11.25x"),
            "{md}"
        );
        assert!(md.contains("skipped: network domain not available"), "{md}");
        assert!(
            md.contains("| 16k | on | storage | 5000 | 5000 – 5000 | 0.50x |"),
            "{md}"
        );
        assert!(md.contains("**not measured**"), "{md}");
        assert!(md.contains("| storage | 2 | 100 | 0 |"), "{md}");
        assert!(md.contains("**wrk shares cores**"), "{md}");
        assert!(
            md.contains(
                "| storage | 16k | on | 500 | 3.00 | - | 2.50 | 5.50 | 3.00, - | 20.0 / 10.0 / - |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- storage 16k keep-alive on, nginx: `writev` 1.00"),
            "{md}"
        );
        assert!(md.contains("virtuos-storage: no system call"), "{md}");
        assert!(md.contains("- raw tracepoints"), "{md}");
    }

    #[test]
    fn cost_model_skipped_is_one_line() {
        let mut md = String::new();
        let cm: Value = serde_json::from_str(
            r#"{"status":"skipped","reason":"not root: run virtuos-bench as root (sudo)"}"#,
        )
        .unwrap();
        cost_model_section(&mut md, &cm);
        assert!(
            md.contains("Skipped: not root: run virtuos-bench as root (sudo)."),
            "{md}"
        );
        let mut md = String::new();
        cost_model_section(&mut md, &serde_json::json!({"status": "off"}));
        assert!(md.is_empty());
    }
}
