//! `virtuos-bench nginx --scale N`: the whole benchmark for 1..=N nginx workers, summarised as
//! requests/s against the cores each mode keeps busy (nginx workers plus server threads).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use super::{run_once, NginxArgs};
use crate::machine::MachineInfo;

/// One point of the series: a mode at one worker count, one size and keep-alive setting.
#[derive(Debug, Clone, Serialize)]
struct Point {
    mode: String,
    domains: &'static str,
    workers: usize,
    total_cores: usize,
    size: String,
    keepalive: bool,
    requests_per_s: Option<f64>,
    requests_per_s_min: Option<f64>,
    requests_per_s_max: Option<f64>,
    p99_us: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Scaling {
    benchmark: &'static str,
    machine: MachineInfo,
    max_workers: usize,
    runs: Vec<Run>,
    points: Vec<Point>,
}

#[derive(Debug, Serialize)]
struct Run {
    workers: usize,
    json: Option<String>,
    error: Option<String>,
}

fn per_run_json(base: &Path, w: usize) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "nginx-scaling".into());
    base.with_file_name(format!("{stem}.w{w}.json"))
}

/// Runs the series.
pub fn run(args: &NginxArgs, max_workers: usize) -> Result<()> {
    let mut points = Vec::new();
    let mut runs = Vec::new();
    for w in 1..=max_workers {
        println!("\n=== scaling: {w} nginx worker(s) ===");
        let mut a = args.clone();
        a.scale = None;
        a.workers = w as u64;
        a.plot = None;
        // One more stack per mode and worker count: only when asked for.
        if a.cost_model != super::CostModelSetting::On {
            a.cost_model = super::CostModelSetting::Off;
        }
        a.json = args.json.as_deref().map(|p| per_run_json(p, w));
        match run_once(&a) {
            Ok((modes, cells)) => {
                for c in &cells {
                    let Some(m) = modes.iter().find(|m| m.name == c.mode) else {
                        continue;
                    };
                    points.push(Point {
                        mode: c.mode.clone(),
                        domains: m.domains.name(),
                        workers: m.workers,
                        total_cores: m.total_cores,
                        size: c.size.clone(),
                        keepalive: c.keepalive,
                        requests_per_s: c.requests_per_s.map(|s| s.median),
                        requests_per_s_min: c.requests_per_s.map(|s| s.min),
                        requests_per_s_max: c.requests_per_s.map(|s| s.max),
                        p99_us: c.latency_p99_us.map(|s| s.median),
                    });
                }
                runs.push(Run {
                    workers: w,
                    json: a.json.as_ref().map(|p| p.display().to_string()),
                    error: None,
                });
            }
            Err(e) => {
                eprintln!("scaling: the run with {w} worker(s) failed: {e:#}");
                runs.push(Run {
                    workers: w,
                    json: None,
                    error: Some(format!("{e:#}")),
                });
            }
        }
    }
    println!("\nscaling summary (requests/s, median; cores = nginx workers + server threads):");
    println!(
        "{:<12} {:>7} {:>6} {:>6} {:>4} {:>12}",
        "mode", "workers", "cores", "size", "ka", "req/s"
    );
    for p in &points {
        println!(
            "{:<12} {:>7} {:>6} {:>6} {:>4} {:>12}",
            p.mode,
            p.workers,
            p.total_cores,
            p.size,
            if p.keepalive { "on" } else { "off" },
            p.requests_per_s
                .map_or("-".to_owned(), |r| format!("{r:.0}"))
        );
    }
    let report = Scaling {
        benchmark: "nginx-scaling",
        machine: MachineInfo::collect(false),
        max_workers,
        runs,
        points,
    };
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        write_svg(path, &report.points)
            .with_context(|| format!("writing plot {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if report.runs.iter().all(|r| r.error.is_some()) {
        bail!("every run of the scaling series failed");
    }
    Ok(())
}

/// req/s against cores, one line per domain set, for the first size with keep-alive on (or
/// off when only that was measured).
fn write_svg(path: &Path, points: &[Point]) -> Result<()> {
    let Some(first) = points.iter().find(|p| p.requests_per_s.is_some()) else {
        bail!("no results to plot");
    };
    let ka = points.iter().any(|p| p.keepalive && p.size == first.size);
    let sel: Vec<&Point> = points
        .iter()
        .filter(|p| p.size == first.size && p.keepalive == ka && p.requests_per_s.is_some())
        .collect();
    let max_x = sel.iter().map(|p| p.total_cores).max().unwrap_or(1) + 1;
    let max_y = sel
        .iter()
        .filter_map(|p| p.requests_per_s)
        .fold(0.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "nginx {} keep-alive {}: req/s against busy cores",
        first.size,
        if ka { "on" } else { "off" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0..max_x as i32, 0.0..max_y.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("cores kept busy (nginx workers + server threads)")
        .y_desc("requests/s (median)")
        .draw()?;
    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    for (i, dom) in ["native", "net", "storage", "both"].iter().enumerate() {
        let mut line: Vec<(i32, f64)> = sel
            .iter()
            .filter(|p| p.domains == *dom)
            .filter_map(|p| Some((p.total_cores as i32, p.requests_per_s?)))
            .collect();
        if line.is_empty() {
            continue;
        }
        line.sort_by_key(|x| x.0);
        line.dedup_by_key(|x| x.0);
        let c = colors[i];
        chart
            .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))?
            .label(*dom)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart.draw_series(
            line.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, c.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_run_files_sit_beside_the_summary() {
        assert_eq!(
            per_run_json(Path::new("/r/scaling.json"), 3),
            PathBuf::from("/r/scaling.w3.json")
        );
    }

    #[test]
    fn plot_draws_a_series() {
        let dir = std::env::temp_dir().join(format!("virtuos-scaling-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = |d: &'static str, cores, rps| Point {
            mode: d.into(),
            domains: d,
            workers: 1,
            total_cores: cores,
            size: "16k".into(),
            keepalive: true,
            requests_per_s: Some(rps),
            requests_per_s_min: Some(rps),
            requests_per_s_max: Some(rps),
            p99_us: None,
        };
        let path = dir.join("s.svg");
        write_svg(
            &path,
            &[
                p("native", 1, 100.0),
                p("native", 2, 190.0),
                p("net", 2, 80.0),
            ],
        )
        .unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("native"));
        assert!(write_svg(&path, &[]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
