//! Samples, their per-cell summaries (median and spread) and the comparisons with native.

use serde::Serialize;

use super::modes::Mode;
use crate::wrk::WrkReport;

/// One measured wrk run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Mode name.
    pub mode: String,
    /// Size name (`16k`).
    pub size: String,
    /// Whether connections were kept alive (`false`: `Connection: close` on every request).
    pub keepalive: bool,
    /// Repetition, from 0.
    pub rep: usize,
    /// Position in the run's order of measurements, from 0.
    pub seq: usize,
    /// Whether the sample counts (no socket errors, no error statuses, requests completed).
    pub ok: bool,
    /// Why it does not count.
    pub error: Option<String>,
    /// What wrk reported (absent when wrk did not run or its output was unusable).
    pub wrk: Option<WrkReport>,
    /// CPU seconds of nginx's processes during the run (utime + stime deltas).
    pub app_cpu_s: f64,
    /// CPU seconds of the storage server during the run.
    pub storage_cpu_s: Option<f64>,
    /// CPU seconds of the network server during the run.
    pub net_cpu_s: Option<f64>,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
}

impl Sample {
    /// A sample that failed before or without a usable wrk report.
    pub fn failed(
        mode: &str,
        size: &str,
        keepalive: bool,
        rep: usize,
        seq: usize,
        why: String,
    ) -> Self {
        Self {
            mode: mode.to_owned(),
            size: size.to_owned(),
            keepalive,
            rep,
            seq,
            ok: false,
            error: Some(why),
            wrk: None,
            app_cpu_s: 0.0,
            storage_cpu_s: None,
            net_cpu_s: None,
            wall_s: 0.0,
        }
    }

    fn server_cpu_s(&self) -> Option<f64> {
        match (self.storage_cpu_s, self.net_cpu_s) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        }
    }

    fn per_request_us(&self, cpu_s: f64) -> Option<f64> {
        let w = self.wrk.as_ref()?;
        (w.requests > 0).then(|| cpu_s * 1e6 / w.requests as f64)
    }
}

/// Median and range of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Summary of one mode × size × keep-alive cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Mode name.
    pub mode: String,
    /// Size name.
    pub size: String,
    /// Keep-alive on or off.
    pub keepalive: bool,
    /// Samples that count.
    pub ok_samples: usize,
    /// Samples that failed (errors, wrong content, nginx died).
    pub failed_samples: usize,
    /// Requests per second.
    pub requests_per_s: Option<Spread>,
    /// Median latency, µs.
    pub latency_p50_us: Option<Spread>,
    /// 99th percentile latency, µs.
    pub latency_p99_us: Option<Spread>,
    /// Response bytes per second.
    pub transfer_bytes_per_s: Option<Spread>,
    /// nginx CPU time per request, µs.
    pub app_cpu_us_per_request: Option<Spread>,
    /// Server CPU time per request (all servers of the mode), µs.
    pub server_cpu_us_per_request: Option<Spread>,
    /// nginx CPU busy, in cores (CPU seconds / wall seconds).
    pub app_cpu_cores: Option<Spread>,
    /// Servers' CPU busy, in cores.
    pub server_cpu_cores: Option<Spread>,
}

/// A redirected mode against a native baseline in one size × keep-alive cell.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// `equal_app_workers` (the paper's) or `equal_total_cores`.
    pub kind: &'static str,
    /// The redirected mode.
    pub mode: String,
    /// The native baseline.
    pub baseline: String,
    /// Size name.
    pub size: String,
    /// Keep-alive on or off.
    pub keepalive: bool,
    /// Median requests/s of the mode over median requests/s of the baseline.
    pub rps_ratio: Option<f64>,
    /// Median p99 of the mode over median p99 of the baseline.
    pub p99_ratio: Option<f64>,
    /// Spread of the per-repetition requests/s ratios (repetitions where both counted).
    pub rps_ratio_per_rep: Option<Spread>,
}

/// Summaries of every cell with samples, in mode, size, keep-alive order.
pub fn cells(
    modes: &[Mode],
    sizes: &[String],
    keepalives: &[bool],
    samples: &[Sample],
) -> Vec<Cell> {
    let mut out = Vec::new();
    for m in modes.iter().filter(|m| m.skipped.is_none()) {
        for size in sizes {
            for &ka in keepalives {
                let these: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.mode == m.name && &s.size == size && s.keepalive == ka)
                    .collect();
                if these.is_empty() {
                    continue;
                }
                let ok: Vec<&Sample> = these.iter().copied().filter(|s| s.ok).collect();
                let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
                    Spread::of(&ok.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
                };
                out.push(Cell {
                    mode: m.name.clone(),
                    size: size.clone(),
                    keepalive: ka,
                    ok_samples: ok.len(),
                    failed_samples: these.len() - ok.len(),
                    requests_per_s: of(&|s| s.wrk.as_ref().map(|w| w.requests_per_s)),
                    latency_p50_us: of(&|s| s.wrk.as_ref().map(|w| w.latency_p50_us)),
                    latency_p99_us: of(&|s| s.wrk.as_ref().map(|w| w.latency_p99_us)),
                    transfer_bytes_per_s: of(&|s| s.wrk.as_ref().map(|w| w.transfer_bytes_per_s)),
                    app_cpu_us_per_request: of(&|s| s.per_request_us(s.app_cpu_s)),
                    server_cpu_us_per_request: of(&|s| {
                        s.server_cpu_s().and_then(|c| s.per_request_us(c))
                    }),
                    app_cpu_cores: of(&|s| (s.wall_s > 0.0).then(|| s.app_cpu_s / s.wall_s)),
                    server_cpu_cores: of(&|s| {
                        s.server_cpu_s()
                            .filter(|_| s.wall_s > 0.0)
                            .map(|c| c / s.wall_s)
                    }),
                });
            }
        }
    }
    out
}

fn median_of(
    cells: &[Cell],
    mode: &str,
    size: &str,
    ka: bool,
    f: fn(&Cell) -> Option<Spread>,
) -> Option<f64> {
    cells
        .iter()
        .find(|c| c.mode == mode && c.size == size && c.keepalive == ka)
        .and_then(f)
        .map(|s| s.median)
}

/// Both comparisons for every redirected mode that ran.
pub fn comparisons(modes: &[Mode], cells_: &[Cell], samples: &[Sample]) -> Vec<Comparison> {
    let mut out = Vec::new();
    let keys: Vec<(String, bool)> = {
        let mut k: Vec<(String, bool)> = Vec::new();
        for c in cells_ {
            if !k.iter().any(|(s, ka)| *s == c.size && *ka == c.keepalive) {
                k.push((c.size.clone(), c.keepalive));
            }
        }
        k
    };
    for m in modes.iter().filter(|m| m.skipped.is_none()) {
        let pairs = [
            ("equal_app_workers", &m.equal_workers_baseline),
            ("equal_total_cores", &m.equal_cores_baseline),
        ];
        for (kind, base) in pairs {
            let Some(base) = base else { continue };
            for (size, ka) in &keys {
                let rps = |mode: &str| median_of(cells_, mode, size, *ka, |c| c.requests_per_s);
                let p99 = |mode: &str| median_of(cells_, mode, size, *ka, |c| c.latency_p99_us);
                let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                let per_rep: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.ok && s.mode == m.name && &s.size == size && s.keepalive == *ka)
                    .filter_map(|s| {
                        let b = samples.iter().find(|b| {
                            b.ok && &b.mode == base
                                && b.size == s.size
                                && b.keepalive == s.keepalive
                                && b.rep == s.rep
                        })?;
                        Some(s.wrk.as_ref()?.requests_per_s / b.wrk.as_ref()?.requests_per_s)
                    })
                    .collect();
                out.push(Comparison {
                    kind,
                    mode: m.name.clone(),
                    baseline: base.clone(),
                    size: size.clone(),
                    keepalive: *ka,
                    rps_ratio: ratio(rps(&m.name), rps(base)),
                    p99_ratio: ratio(p99(&m.name), p99(base)),
                    rps_ratio_per_rep: Spread::of(&per_rep),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::Placement;
    use crate::nginx::modes::{plan, Domains};

    fn sample(mode: &str, rep: usize, rps: f64, p99: f64) -> Sample {
        Sample {
            mode: mode.to_owned(),
            size: "16k".to_owned(),
            keepalive: true,
            rep,
            seq: 0,
            ok: true,
            error: None,
            wrk: Some(WrkReport {
                requests: (rps * 2.0) as u64,
                duration_s: 2.0,
                requests_per_s: rps,
                latency_p99_us: p99,
                ..WrkReport::default()
            }),
            app_cpu_s: 1.0,
            storage_cpu_s: (mode == "storage").then_some(0.5),
            net_cpu_s: None,
            wall_s: 2.0,
        }
    }

    #[test]
    fn spread_math() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert_eq!(Spread::of(&[f64::NAN, 4.0]).unwrap().median, 4.0);
    }

    #[test]
    fn cells_and_ratios() {
        let p = Placement::choose(&[0, 1], 1, None, None, None);
        let modes = plan(&[Domains::Native, Domains::Storage], 1, &p, None, true);
        let mut samples = vec![
            sample("native", 0, 1000.0, 100.0),
            sample("native", 1, 1200.0, 120.0),
            sample("storage", 0, 500.0, 300.0),
            sample("storage", 1, 900.0, 360.0),
            sample("native-2w", 0, 1500.0, 80.0),
        ];
        let mut bad = Sample::failed("storage", "16k", true, 2, 9, "boom".to_owned());
        bad.ok = false;
        samples.push(bad);
        let sizes = vec!["16k".to_owned()];
        let c = cells(&modes, &sizes, &[true], &samples);
        let st = c.iter().find(|c| c.mode == "storage").unwrap();
        assert_eq!((st.ok_samples, st.failed_samples), (2, 1));
        assert_eq!(st.requests_per_s.unwrap().median, 700.0);
        assert_eq!(st.app_cpu_us_per_request.unwrap().min, 1e6 / 1800.0);
        assert_eq!(st.server_cpu_cores.unwrap().median, 0.25);
        assert!(c
            .iter()
            .find(|c| c.mode == "native")
            .unwrap()
            .server_cpu_cores
            .is_none());
        let cmp = comparisons(&modes, &c, &samples);
        let eq_w = cmp.iter().find(|x| x.kind == "equal_app_workers").unwrap();
        assert_eq!(eq_w.baseline, "native");
        assert!((eq_w.rps_ratio.unwrap() - 700.0 / 1100.0).abs() < 1e-12);
        assert!((eq_w.p99_ratio.unwrap() - 330.0 / 110.0).abs() < 1e-12);
        let per = eq_w.rps_ratio_per_rep.unwrap();
        assert_eq!((per.min, per.max, per.n), (0.5, 0.75, 2));
        let eq_c = cmp.iter().find(|x| x.kind == "equal_total_cores").unwrap();
        assert_eq!(eq_c.baseline, "native-2w");
        assert!((eq_c.rps_ratio.unwrap() - 700.0 / 1500.0).abs() < 1e-12);
    }
}
