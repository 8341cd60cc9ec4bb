//! Percentile math over per-operation latencies (ns).
//!
//! The median is the usual one (mean of the two middle values for an even count); other
//! percentiles use the nearest-rank method: the smallest sample such that at least p% of the
//! samples are less than or equal to it.

/// Summary of one measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median latency in ns.
    pub median_ns: f64,
    /// 99th percentile latency in ns (nearest rank).
    pub p99_ns: f64,
    /// Number of samples summarised.
    pub samples: usize,
}

impl Summary {
    /// Summarises `samples` (any order). `None` when there are no samples.
    pub fn from_samples(samples: &[u64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Self {
            median_ns: median(&sorted)?,
            p99_ns: percentile(&sorted, 99.0)?,
            samples: sorted.len(),
        })
    }

    /// Operations per second at the median latency: `1e9 / median_ns` (infinite for 0 ns).
    pub fn ops_per_s(&self) -> f64 {
        1e9 / self.median_ns
    }
}

/// Median of an ascending slice; `None` when empty.
pub fn median(sorted: &[u64]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    if n % 2 == 1 {
        Some(sorted[mid] as f64)
    } else {
        Some((sorted[mid - 1] as f64 + sorted[mid] as f64) / 2.0)
    }
}

/// Nearest-rank `p`-th percentile (0 < p <= 100) of an ascending slice; `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as usize;
    let idx = rank.clamp(1, n) - 1;
    Some(sorted[idx] as f64)
}

/// A sample's error with what went wrong after it (`"first; then"`), either one alone, or none.
pub fn joined_error(error: Option<String>, after: Option<String>) -> Option<String> {
    match (error, after) {
        (Some(e), Some(why)) => Some(format!("{e}; {why}")),
        (e, why) => e.or(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input() {
        assert_eq!(median(&[]), None);
        assert_eq!(percentile(&[], 99.0), None);
        assert_eq!(Summary::from_samples(&[]), None);
    }

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[7]), Some(7.0));
        assert_eq!(median(&[1, 2, 3]), Some(2.0));
        assert_eq!(median(&[1, 2, 3, 4]), Some(2.5));
    }

    #[test]
    fn p99_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990.0));
        // Fewer than 100 samples: p99 is the maximum.
        assert_eq!(percentile(&[1, 5, 9], 99.0), Some(9.0));
        assert_eq!(percentile(&[42], 99.0), Some(42.0));
    }

    #[test]
    fn summary_sorts_and_counts() {
        let s = Summary::from_samples(&[400, 100, 300, 200]).unwrap();
        assert_eq!(s.median_ns, 250.0);
        assert_eq!(s.p99_ns, 400.0);
        assert_eq!(s.samples, 4);
        assert_eq!(s.ops_per_s(), 4e6);
    }

    #[test]
    fn errors_join_in_order() {
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(joined_error(s("a"), s("b")), s("a; b"));
        assert_eq!(joined_error(s("a"), None), s("a"));
        assert_eq!(joined_error(None, s("b")), s("b"));
        assert_eq!(joined_error(None, None), None);
    }
}
