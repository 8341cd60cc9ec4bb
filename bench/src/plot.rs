//! SVG bar chart of median and p99 latency per measurement, on a log-scale y axis.

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// One bar group: a measurement's name, median and p99 in ns.
pub struct Bar<'a> {
    /// Measurement name (x-axis label).
    pub name: &'a str,
    /// Median latency in ns.
    pub median_ns: f64,
    /// p99 latency in ns.
    pub p99_ns: f64,
}

/// x-axis units per bar group.
const UNIT: i32 = 100;
const MEDIAN_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const P99_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Lower and upper y bounds: powers of ten around the data.
fn y_range(bars: &[Bar<'_>]) -> (f64, f64) {
    let values = bars.iter().flat_map(|b| [b.median_ns, b.p99_ns]);
    let min = values
        .clone()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let max = values.fold(0.0, f64::max);
    if !min.is_finite() || max <= 0.0 {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf((min / 1.5).log10().floor()).max(0.1);
    let hi = 10f64.powf((max * 1.5).log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, title: &str, bars: &[Bar<'_>]) -> Result<()> {
    if bars.is_empty() {
        bail!("no results to plot");
    }
    let (lo, hi) = y_range(bars);
    let n = bars.len();
    let width = (180 * n as u32).clamp(640, 1600);
    let root = SVGBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    // Integer x units (plotters gives i32 axes a default formatter): group i spans
    // [i * UNIT, (i + 1) * UNIT), labelled at its centre.
    let centers: Vec<i32> = (0..n as i32).map(|i| i * UNIT + UNIT / 2).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0..n as i32 * UNIT).with_key_points(centers),
            (lo..hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| {
            usize::try_from(x / UNIT)
                .ok()
                .and_then(|i| bars.get(i))
                .map(|b| b.name.to_owned())
                .unwrap_or_default()
        })
        .y_desc("latency (ns, log scale)")
        .y_label_formatter(&|y| format!("{y:.0} ns"))
        .label_style(("sans-serif", 13))
        .draw()?;

    let bottom = lo;
    let series = [("median", MEDIAN_COLOR, 8, 46), ("p99", P99_COLOR, 54, 92)];
    for (label, color, left, right) in series {
        let value = |b: &Bar<'_>| {
            if label == "median" {
                b.median_ns
            } else {
                b.p99_ns
            }
        };
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let x = i as i32 * UNIT;
                Rectangle::new(
                    [(x + left, bottom), (x + right, value(b).max(bottom))],
                    color.filled(),
                )
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let v = value(b);
            Text::new(
                format!("{v:.0}"),
                (i as i32 * UNIT + left, (v * 1.12).min(hi)),
                ("sans-serif", 11).into_font(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present().context("writing SVG")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn y_range_brackets_data() {
        let bars = [
            Bar {
                name: "a",
                median_ns: 120.0,
                p99_ns: 300.0,
            },
            Bar {
                name: "b",
                median_ns: 9000.0,
                p99_ns: 40000.0,
            },
        ];
        let (lo, hi) = y_range(&bars);
        assert!(lo <= 120.0 && lo > 0.0);
        assert!(hi >= 40000.0);
    }

    #[test]
    fn writes_svg() {
        let path =
            std::env::temp_dir().join(format!("virtuos-bench-test-{}.svg", std::process::id()));
        let bars = [Bar {
            name: "native_syscall",
            median_ns: 100.0,
            p99_ns: 250.0,
        }];
        write_svg(&path, "test", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("<svg") && svg.contains("native_syscall"));
    }
}
