//! CPU lists (`0-2,4` syntax, as taskset and the servers' `--cpus` take) and the default
//! placement of the nginx benchmark's parties on the machine's cores.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

/// Parses a cpulist (`"1"`, `"0-3"`, `"0,2-3"`) into ascending, distinct CPU numbers.
pub fn parse_list(text: &str) -> Result<Vec<usize>> {
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            bail!("empty element in CPU list {text:?}");
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .with_context(|| format!("bad CPU {lo:?} in {text:?}"))?;
        let hi: usize = hi
            .parse()
            .with_context(|| format!("bad CPU {hi:?} in {text:?}"))?;
        if lo > hi || hi >= 4096 {
            bail!("bad CPU range {part:?} in {text:?}");
        }
        set.extend(lo..=hi);
    }
    Ok(set.into_iter().collect())
}

/// The `taskset -c LIST` prefix of a command line pinned to `cpus` (none when empty).
pub fn taskset_argv(cpus: &[usize]) -> Vec<String> {
    if cpus.is_empty() {
        return Vec::new();
    }
    vec!["taskset".to_owned(), "-c".to_owned(), format_list(cpus)]
}

/// Formats CPUs as a cpulist with ranges (`[0,1,2,5]` → `"0-2,5"`).
pub fn format_list(cpus: &[usize]) -> String {
    let mut sorted: Vec<usize> = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Union of two CPU lists, ascending.
pub fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter()
        .chain(b)
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Where each party of the benchmark runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// nginx (master and workers).
    pub app: Vec<usize>,
    /// The service domains' servers (all their threads).
    pub server: Vec<usize>,
    /// wrk; empty when it has no core of its own and runs unpinned, sharing cores.
    pub wrk: Vec<usize>,
}

impl Placement {
    /// Default placement on `allowed` CPUs (ascending) for `workers` nginx workers: with three
    /// or more CPUs, wrk gets the last, the servers the one before it and nginx the first
    /// `min(workers, n - 2)`; with two, nginx gets the first and the servers the second, and
    /// wrk shares; with one, everything shares it. `app`, `server` and `wrk` override.
    pub fn choose(
        allowed: &[usize],
        workers: usize,
        app: Option<Vec<usize>>,
        server: Option<Vec<usize>>,
        wrk: Option<Vec<usize>>,
    ) -> Self {
        let n = allowed.len();
        let (d_app, d_server, d_wrk) = match n {
            0 => (vec![0], vec![0], vec![]),
            1 => (allowed.to_vec(), allowed.to_vec(), vec![]),
            2 => (vec![allowed[0]], vec![allowed[1]], vec![]),
            _ => (
                allowed[..workers.clamp(1, n - 2)].to_vec(),
                vec![allowed[n - 2]],
                vec![allowed[n - 1]],
            ),
        };
        let app = app.unwrap_or(d_app);
        let server = server.unwrap_or(d_server);
        // The default wrk core must not collide with explicitly chosen app/server cores.
        let wrk = wrk.unwrap_or_else(|| {
            let taken = union(&app, &server);
            if d_wrk.iter().any(|c| taken.contains(c)) {
                allowed
                    .iter()
                    .rev()
                    .find(|c| !taken.contains(c))
                    .map(|&c| vec![c])
                    .unwrap_or_default()
            } else {
                d_wrk
            }
        });
        Self { app, server, wrk }
    }

    /// True when wrk has no core to itself (unpinned, or pinned onto nginx's or a server's).
    pub fn wrk_shares(&self) -> bool {
        self.wrk.is_empty()
            || self
                .wrk
                .iter()
                .any(|c| self.app.contains(c) || self.server.contains(c))
    }

    /// True when nginx and the servers share a core.
    pub fn app_server_share(&self) -> bool {
        self.app.iter().any(|c| self.server.contains(c))
    }
}

/// nginx `worker_cpu_affinity` value: one bit mask per worker, worker `i` on
/// `cpus[i % cpus.len()]`.
pub fn nginx_affinity(cpus: &[usize], workers: usize) -> String {
    let width = cpus.iter().max().map_or(1, |m| m + 1);
    (0..workers)
        .map(|i| {
            let cpu = cpus[i % cpus.len()];
            (0..width)
                .rev()
                .map(|bit| if bit == cpu { '1' } else { '0' })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_list("1").unwrap(), vec![1]);
        assert_eq!(parse_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_list("3,1,1-2").unwrap(), vec![1, 2, 3]);
        assert!(parse_list("").is_err());
        assert!(parse_list("2-1").is_err());
        assert!(parse_list("a").is_err());
        assert!(parse_list("1,,2").is_err());
        assert_eq!(format_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(format_list(&[3]), "3");
        assert_eq!(format_list(&[]), "");
        assert_eq!(union(&[2, 0], &[1, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn placements() {
        let two = Placement::choose(&[0, 1], 1, None, None, None);
        assert_eq!((two.app, two.server, two.wrk), (vec![0], vec![1], vec![]));
        let p = Placement::choose(&[0, 1], 1, None, None, None);
        assert!(p.wrk_shares() && !p.app_server_share());
        let four = Placement::choose(&[0, 1, 2, 3], 4, None, None, None);
        assert_eq!(four.app, vec![0, 1]);
        assert_eq!(four.server, vec![2]);
        assert_eq!(four.wrk, vec![3]);
        assert!(!four.wrk_shares());
        let one = Placement::choose(&[0], 1, None, None, None);
        assert!(one.wrk_shares() && one.app_server_share());
        // Explicit app cores that take the default wrk core push wrk elsewhere.
        let o = Placement::choose(&[0, 1, 2, 3], 1, Some(vec![3]), Some(vec![2]), None);
        assert_eq!(o.wrk, vec![1]);
    }

    #[test]
    fn affinity_masks() {
        assert_eq!(nginx_affinity(&[0], 1), "1");
        assert_eq!(nginx_affinity(&[1], 1), "10");
        assert_eq!(nginx_affinity(&[0, 1], 3), "01 10 01");
        assert_eq!(nginx_affinity(&[2], 2), "100 100");
    }

    #[test]
    fn taskset_prefix_only_when_pinned() {
        assert!(taskset_argv(&[]).is_empty());
        assert_eq!(taskset_argv(&[2, 0, 1]), ["taskset", "-c", "0-2"]);
    }
}
