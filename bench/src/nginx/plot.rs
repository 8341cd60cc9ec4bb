//! SVG chart of the nginx benchmark: requests/s (top) and p99 latency (bottom) per mode, for
//! every size × keep-alive cell; bars are medians, whiskers the min–max over repetitions.
//! Skipped modes are named in the caption, never drawn.

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use super::modes::Mode;
use super::summary::{Cell, Spread};
use super::Config;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
/// x-axis units per group.
const UNIT: i32 = 100;

fn bounds(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let min = values
        .clone()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let max = values.fold(0.0, f64::max);
    if !min.is_finite() || max <= 0.0 {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf((min / 1.5).log10().floor());
    let hi = 10f64.powf((max * 1.5).log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, modes: &[Mode], cells: &[Cell], cfg: &Config) -> Result<()> {
    let drawn: Vec<&Mode> = modes
        .iter()
        .filter(|m| m.skipped.is_none() && cells.iter().any(|c| c.mode == m.name))
        .collect();
    if drawn.is_empty() {
        bail!("no results to plot");
    }
    let mut groups: Vec<(String, bool)> = Vec::new();
    for c in cells {
        if !groups
            .iter()
            .any(|(s, k)| *s == c.size && *k == c.keepalive)
        {
            groups.push((c.size.clone(), c.keepalive));
        }
    }
    let skipped: Vec<&str> = modes
        .iter()
        .filter(|m| m.skipped.is_some())
        .map(|m| m.name.as_str())
        .collect();
    let width = (90 * (groups.len() * drawn.len()) as u32 + 200).clamp(720, 1800);
    let root = SVGBackend::new(path, (width, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "virtuos-bench nginx: {} worker(s), {} connections, {} s × {} rep(s)",
        cfg.workers, cfg.connections, cfg.duration_s, cfg.reps
    );
    let root = root.titled(&title, ("sans-serif", 18))?;
    let (note, root) = root.split_vertically(22);
    let note_text = if skipped.is_empty() {
        String::new()
    } else {
        format!(
            "skipped: {} (network domain not available)",
            skipped.join(", ")
        )
    };
    note.draw(&Text::new(
        note_text,
        (16, 2),
        ("sans-serif", 13).into_font().color(&RED),
    ))?;
    let (top, bottom) = root.split_vertically(420);

    let find = |mode: &str, g: &(String, bool)| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.size == g.0 && c.keepalive == g.1)
    };
    type Metric = (&'static str, fn(&Cell) -> Option<Spread>, f64, &'static str);
    let panels: [(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, Metric); 2] = [
        (
            top,
            (
                "requests/s (median, min–max; log scale)",
                |c| c.requests_per_s,
                1.0,
                "req/s",
            ),
        ),
        (
            bottom,
            (
                "p99 latency (ms; median, min–max; log scale)",
                |c| c.latency_p99_us,
                1e-3,
                "ms",
            ),
        ),
    ];
    let n_modes = drawn.len() as i32;
    let bar_w = (UNIT - 20) / n_modes;
    for (area, (ydesc, metric, scale, unit)) in panels {
        let values = cells
            .iter()
            .filter_map(metric)
            .flat_map(|s| [s.min * scale, s.max * scale]);
        let (lo, hi) = bounds(values);
        let centers: Vec<i32> = (0..groups.len() as i32)
            .map(|i| i * UNIT + UNIT / 2)
            .collect();
        let mut chart = ChartBuilder::on(&area)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (0..groups.len() as i32 * UNIT).with_key_points(centers),
                (lo..hi).log_scale(),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| {
                usize::try_from(x / UNIT)
                    .ok()
                    .and_then(|i| groups.get(i))
                    .map(|(s, ka)| format!("{s}, {}", if *ka { "keep-alive" } else { "close" }))
                    .unwrap_or_default()
            })
            .y_desc(ydesc)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (mi, m) in drawn.iter().enumerate() {
            let color = COLORS[mi % COLORS.len()];
            let left = 10 + mi as i32 * bar_w;
            let right = left + bar_w - 4;
            let points: Vec<(i32, Spread)> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| Some((gi as i32 * UNIT, metric(find(&m.name, g)?)?)))
                .collect();
            chart
                .draw_series(points.iter().map(|(x, s)| {
                    Rectangle::new(
                        [(x + left, lo), (x + right, (s.median * scale).max(lo))],
                        color.filled(),
                    )
                }))?
                .label(m.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart.draw_series(points.iter().map(|(x, s)| {
                let mid = x + (left + right) / 2;
                PathElement::new(
                    vec![
                        (mid, (s.min * scale).max(lo)),
                        (mid, (s.max * scale).max(lo)),
                    ],
                    BLACK.stroke_width(1),
                )
            }))?;
            chart.draw_series(points.iter().map(|(x, s)| {
                let v = s.median * scale;
                let text = if unit == "ms" {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                };
                Text::new(
                    text,
                    (x + left, (s.max * scale * 1.15).min(hi)),
                    ("sans-serif", 10).into_font(),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present().context("writing SVG")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::Placement;
    use crate::nginx::modes::{plan, Domains};

    #[test]
    fn bounds_bracket() {
        let (lo, hi) = bounds([120.0, 45000.0].into_iter());
        assert!(lo <= 120.0 && hi >= 45000.0);
        assert_eq!(bounds(std::iter::empty()), (1.0, 10.0));
    }

    #[test]
    fn writes_svg_with_skipped_modes() {
        let p = Placement::choose(&[0, 1], 1, None, None, None);
        let modes = plan(
            &[Domains::Native, Domains::Net, Domains::Storage],
            1,
            &p,
            Some("x"),
            true,
        );
        let spread = |v: f64| {
            Some(Spread {
                median: v,
                min: v * 0.9,
                max: v * 1.1,
                n: 3,
            })
        };
        let cell = |mode: &str, ka: bool, rps: f64| Cell {
            mode: mode.to_owned(),
            size: "16k".to_owned(),
            keepalive: ka,
            ok_samples: 3,
            failed_samples: 0,
            requests_per_s: spread(rps),
            latency_p50_us: spread(500.0),
            latency_p99_us: spread(2000.0),
            transfer_bytes_per_s: spread(rps * 16384.0),
            app_cpu_us_per_request: None,
            server_cpu_us_per_request: None,
            app_cpu_cores: None,
            server_cpu_cores: None,
        };
        let cells = vec![
            cell("native", true, 20000.0),
            cell("native", false, 9000.0),
            cell("storage", true, 3000.0),
            cell("storage", false, 2000.0),
        ];
        let cfg = Config {
            quick: true,
            workers: 1,
            connections: 16,
            wrk_threads: 1,
            duration_s: 3,
            warmup_s: 1,
            reps: 1,
            keepalive: vec![true, false],
            sizes: vec!["16k".to_owned()],
            app_cpus: vec![0],
            server_cpus: vec![1],
            wrk_cpus: vec![],
            wrk_shares_cores: true,
            app_and_servers_share_cores: false,
            order: "",
            nginx: String::new(),
            nginx_version: None,
            wrk_version: None,
        };
        let path =
            std::env::temp_dir().join(format!("virtuos-nginx-plot-{}.svg", std::process::id()));
        write_svg(&path, &modes, &cells, &cfg).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("storage") && svg.contains("16k, keep-alive"));
        assert!(svg.contains("skipped: net"));
    }
}
