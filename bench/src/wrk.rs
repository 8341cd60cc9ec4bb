//! Driving wrk (https://github.com/wg/wrk) and parsing its `--latency` report.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

/// wrk's socket error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SocketErrors {
    /// Failed connects.
    pub connect: u64,
    /// Failed reads (including a connection closed before a full response).
    pub read: u64,
    /// Failed writes.
    pub write: u64,
    /// Requests that took longer than wrk's `--timeout`.
    pub timeout: u64,
}

impl SocketErrors {
    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// What one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    /// Run length wrk measured, in seconds.
    pub duration_s: f64,
    /// Requests per second (wrk's `Requests/sec`).
    pub requests_per_s: f64,
    /// Response bytes per second (wrk's `Transfer/sec`, binary units converted to bytes).
    pub transfer_bytes_per_s: f64,
    /// Mean latency, µs.
    pub latency_avg_us: f64,
    /// Largest latency, µs.
    pub latency_max_us: f64,
    /// Latency percentiles (50, 75, 90, 99), µs.
    pub latency_p50_us: f64,
    /// 75th percentile, µs.
    pub latency_p75_us: f64,
    /// 90th percentile, µs.
    pub latency_p90_us: f64,
    /// 99th percentile, µs.
    pub latency_p99_us: f64,
    /// Socket errors.
    pub socket_errors: SocketErrors,
    /// Responses whose status was 400 or above (wrk's `Non-2xx or 3xx responses`).
    pub non_2xx_3xx: u64,
}

impl WrkReport {
    /// Why this run cannot count as a sample, if it cannot.
    pub fn failure(&self) -> Option<String> {
        let e = &self.socket_errors;
        if e.total() > 0 || self.non_2xx_3xx > 0 {
            Some(format!(
                "errors: connect {}, read {}, write {}, timeout {}, non-2xx/3xx {}",
                e.connect, e.read, e.write, e.timeout, self.non_2xx_3xx
            ))
        } else if self.requests == 0 || self.requests_per_s <= 0.0 {
            Some("no request completed".to_owned())
        } else {
            None
        }
    }
}

/// A latency with wrk's unit suffix (`us`, `ms`, `s`, `m`, `h`) in µs.
fn parse_time_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(v * scale)
}

/// A byte count with wrk's binary suffix (`B`, `KB`, `MB`, `GB`, `TB`: powers of 1024).
fn parse_bytes(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "" | "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(v * scale)
}

/// Parses wrk's report (run with `--latency`).
pub fn parse(output: &str) -> Result<WrkReport> {
    let mut r = WrkReport::default();
    let (mut have_rps, mut have_p99, mut have_total) = (false, false, false);
    for line in output.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.requests_per_s = v.trim().parse().context("Requests/sec")?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("Transfer/sec:") {
            r.transfer_bytes_per_s =
                parse_bytes(v.trim()).ok_or_else(|| anyhow!("bad Transfer/sec {v:?}"))?;
        } else if words.first() == Some(&"Latency") && words.len() >= 4 {
            r.latency_avg_us = parse_time_us(words[1]).unwrap_or(0.0);
            r.latency_max_us = parse_time_us(words[3]).unwrap_or(0.0);
        } else if words.len() == 2 && words[0].ends_with('%') {
            let pct = words[0].trim_end_matches('%');
            let us = parse_time_us(words[1]).ok_or_else(|| anyhow!("bad percentile {t:?}"))?;
            match pct {
                "50" | "50.000" => r.latency_p50_us = us,
                "75" | "75.000" => r.latency_p75_us = us,
                "90" | "90.000" => r.latency_p90_us = us,
                "99" | "99.000" => {
                    r.latency_p99_us = us;
                    have_p99 = true;
                }
                _ => {}
            }
        } else if words.len() >= 6 && words[1] == "requests" && words[2] == "in" {
            // "6157 requests in 3.00s, 97.62MB read"
            r.requests = words[0].parse().context("request count")?;
            r.duration_s = parse_time_us(words[3].trim_end_matches(','))
                .ok_or_else(|| anyhow!("bad duration in {t:?}"))?
                / 1e6;
            have_total = true;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 3, write 0, timeout 0"
            for part in v.split(',') {
                let mut kv = part.split_whitespace();
                let (Some(k), Some(n)) = (kv.next(), kv.next()) else {
                    bail!("bad socket errors line {t:?}");
                };
                let n: u64 = n.parse().context("socket error count")?;
                match k {
                    "connect" => r.socket_errors.connect = n,
                    "read" => r.socket_errors.read = n,
                    "write" => r.socket_errors.write = n,
                    "timeout" => r.socket_errors.timeout = n,
                    _ => {}
                }
            }
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx_3xx = v.trim().parse().context("non-2xx count")?;
        }
    }
    if !have_rps || !have_total {
        bail!("wrk output has no Requests/sec or request total:\n{output}");
    }
    if !have_p99 && r.requests > 0 {
        bail!("wrk output has no latency distribution (was --latency given?):\n{output}");
    }
    Ok(r)
}

/// One wrk run.
#[derive(Debug, Clone)]
pub struct WrkRun {
    /// CPUs to pin wrk to with taskset (empty: unpinned).
    pub cpus: Vec<usize>,
    /// wrk threads.
    pub threads: usize,
    /// Open connections (fixed for the run).
    pub connections: usize,
    /// Length in seconds.
    pub duration_s: u64,
    /// Per-request timeout in seconds.
    pub timeout_s: u64,
    /// Send `Connection: close` (no keep-alive).
    pub close: bool,
    /// The URL to fetch.
    pub url: String,
}

impl WrkRun {
    /// The command line (program first).
    pub fn argv(&self) -> Vec<String> {
        let mut v = crate::cpus::taskset_argv(&self.cpus);
        v.extend([
            "wrk".to_owned(),
            "-t".to_owned(),
            self.threads.to_string(),
            "-c".to_owned(),
            self.connections.to_string(),
            "-d".to_owned(),
            format!("{}s", self.duration_s),
            "--timeout".to_owned(),
            format!("{}s", self.timeout_s),
            "--latency".to_owned(),
        ]);
        if self.close {
            v.extend(["-H".to_owned(), "Connection: close".to_owned()]);
        }
        v.push(self.url.clone());
        v
    }

    /// Runs wrk and returns its parsed report and raw output. A wrk that does not finish well
    /// after its duration is killed.
    pub fn run(&self) -> Result<(WrkReport, String)> {
        let argv = self.argv();
        let limit = Duration::from_secs(self.duration_s + self.timeout_s + 30);
        let (status, out, err) =
            crate::procs::run_captured(&argv, limit).context("running wrk (is wrk installed?)")?;
        if !status.success() {
            bail!(
                "{} failed ({status}): {}{}",
                argv.join(" "),
                out,
                err.trim()
            );
        }
        let report =
            parse(&out).with_context(|| format!("parsing output of {}", argv.join(" ")))?;
        Ok((report, out))
    }
}

/// wrk's version line (`wrk 4.1.0 [epoll] ...`), if wrk runs.
pub fn version() -> Option<String> {
    let out = Command::new("wrk").arg("-v").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.starts_with("wrk "))?;
    // "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer": keep name, version and engine.
    let short = line.split(" Copyright").next().unwrap_or(line);
    Some(short.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 3s test @ http://127.0.0.1:18080/f16k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.88ms    3.73ms  28.92ms   70.55%
    Req/Sec     2.06k     0.99k    5.98k    93.33%
  Latency Distribution
     50%    8.15ms
     75%    8.79ms
     90%   12.18ms
     99%   20.24ms
  6157 requests in 3.00s, 97.62MB read
Requests/sec:   2052.10
Transfer/sec:     32.54MB
";

    #[test]
    fn parses_clean_run() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 6157);
        assert!((r.duration_s - 3.0).abs() < 1e-9);
        assert!((r.requests_per_s - 2052.10).abs() < 1e-9);
        assert!((r.transfer_bytes_per_s - 32.54 * 1048576.0).abs() < 1.0);
        assert!((r.latency_p50_us - 8150.0).abs() < 1e-6);
        assert!((r.latency_p99_us - 20240.0).abs() < 1e-6);
        assert!((r.latency_avg_us - 7880.0).abs() < 1e-6);
        assert!((r.latency_max_us - 28920.0).abs() < 1e-6);
        assert_eq!(r.socket_errors, SocketErrors::default());
        assert_eq!(r.failure(), None);
    }

    #[test]
    fn parses_errors_and_units() {
        let text = "  Latency Distribution
     50%  612.00us
     75%    1.01s
     90%    1.50m
     99%    2.00h
  12 requests in 1.00m, 1.50GB read
  Socket errors: connect 1, read 3, write 0, timeout 7
  Non-2xx or 3xx responses: 5
Requests/sec:      0.20
Transfer/sec:    512B
";
        let r = parse(text).unwrap();
        assert_eq!(r.latency_p50_us, 612.0);
        assert_eq!(r.latency_p75_us, 1.01e6);
        assert_eq!(r.latency_p90_us, 90e6);
        assert_eq!(r.latency_p99_us, 7200e6);
        assert_eq!(r.duration_s, 60.0);
        assert_eq!(r.transfer_bytes_per_s, 512.0);
        assert_eq!(
            r.socket_errors,
            SocketErrors {
                connect: 1,
                read: 3,
                write: 0,
                timeout: 7
            }
        );
        assert_eq!(r.non_2xx_3xx, 5);
        assert!(r.failure().unwrap().contains("timeout 7"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
        assert!(parse("  5 requests in 1.00s, 1KB read\nRequests/sec: 5\n").is_err());
    }

    #[test]
    fn unit_parsers() {
        assert_eq!(parse_bytes("1.5KB"), Some(1536.0));
        assert_eq!(parse_bytes("7"), Some(7.0));
        assert_eq!(parse_bytes("1XB"), None);
        assert_eq!(parse_time_us("3"), None);
    }

    #[test]
    fn argv_shape() {
        let run = WrkRun {
            cpus: vec![2],
            threads: 1,
            connections: 16,
            duration_s: 3,
            timeout_s: 10,
            close: true,
            url: "http://127.0.0.1:1/x".to_owned(),
        };
        let argv = run.argv().join(" ");
        assert_eq!(
            argv,
            "taskset -c 2 wrk -t 1 -c 16 -d 3s --timeout 10s --latency -H Connection: close \
             http://127.0.0.1:1/x"
        );
    }
}
