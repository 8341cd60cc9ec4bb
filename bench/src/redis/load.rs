//! Driving Debian's `redis-benchmark` (never redirected) and parsing its `--csv` report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One test's line of `redis-benchmark --csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// The test as redis-benchmark names it (`SET`, `GET`).
    pub test: String,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Mean latency, ms (absent from older redis-benchmark versions' CSV).
    pub latency_avg_ms: Option<f64>,
    /// Smallest latency, ms.
    pub latency_min_ms: Option<f64>,
    /// Median latency, ms.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub latency_p99_ms: Option<f64>,
    /// Largest latency, ms.
    pub latency_max_ms: Option<f64>,
}

/// Splits one CSV line into its fields (double quotes around a field are dropped, `""` inside
/// quotes is one `"`).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Parses `redis-benchmark --csv` output: a header line (`"test","rps",...`) and one line per
/// test. Other lines (warnings) are ignored; a run without a header or without a test is an
/// error.
pub fn parse_csv(output: &str) -> Result<Vec<BenchResult>> {
    let mut header: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| l.starts_with('"')) {
        let fields = split_csv(line);
        let is_header = fields.iter().any(|f| f == "test") && fields.iter().any(|f| f == "rps");
        let Some(h) = &header else {
            if is_header {
                header = Some(fields);
            }
            continue;
        };
        if is_header {
            continue; // a repeated header
        }
        let get = |name: &str| {
            h.iter()
                .position(|x| x == name)
                .and_then(|i| fields.get(i))
                .map(String::as_str)
        };
        let num = |name: &str| get(name).and_then(|v| v.trim().parse::<f64>().ok());
        let test = get("test").unwrap_or_default().to_owned();
        let rps = num("rps").with_context(|| format!("redis-benchmark CSV: no rps in {line:?}"))?;
        out.push(BenchResult {
            test,
            requests_per_s: rps,
            latency_avg_ms: num("avg_latency_ms"),
            latency_min_ms: num("min_latency_ms"),
            latency_p50_ms: num("p50_latency_ms"),
            latency_p95_ms: num("p95_latency_ms"),
            latency_p99_ms: num("p99_latency_ms"),
            latency_max_ms: num("max_latency_ms"),
        });
    }
    if header.is_none() {
        bail!("redis-benchmark printed no CSV header (\"test\",\"rps\",...):\n{output}");
    }
    if out.is_empty() {
        bail!("redis-benchmark printed no test result:\n{output}");
    }
    Ok(out)
}

/// One redis-benchmark run.
#[derive(Debug, Clone)]
pub struct BenchRun {
    /// The redis-benchmark binary.
    pub binary: PathBuf,
    /// CPUs to pin it to with taskset (empty: unpinned).
    pub cpus: Vec<usize>,
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// Tests, as `-t` takes them (`set`, `get`, `set,get`).
    pub tests: String,
    /// Requests per test (`-n`).
    pub requests: u64,
    /// Parallel connections (`-c`).
    pub clients: u64,
    /// Pipeline depth (`-P`).
    pub pipeline: u64,
}

impl BenchRun {
    /// The command line (program first).
    pub fn argv(&self) -> Vec<String> {
        let mut v = crate::cpus::taskset_argv(&self.cpus);
        v.push(self.binary.display().to_string());
        for (flag, value) in [
            ("-h", "127.0.0.1".to_owned()),
            ("-p", self.port.to_string()),
            ("-t", self.tests.clone()),
            ("-n", self.requests.to_string()),
            ("-c", self.clients.to_string()),
            ("-P", self.pipeline.to_string()),
        ] {
            v.extend([flag.to_owned(), value]);
        }
        v.push("--csv".to_owned());
        v
    }

    /// The longest a run may take: a minute plus a millisecond per request per test.
    fn limit(&self) -> Duration {
        let tests = self.tests.split(',').count() as u64;
        Duration::from_secs(60 + self.requests * tests / 1000)
    }

    /// Runs redis-benchmark and returns its parsed results; a non-zero exit, an error message
    /// on its output or a missing test is an error.
    pub fn run(&self) -> Result<Vec<BenchResult>> {
        let argv = self.argv();
        let (status, out, err) = crate::procs::run_captured(&argv, self.limit())?;
        if !status.success() {
            bail!(
                "{} failed ({status}): {}",
                argv.join(" "),
                (out + &err).trim()
            );
        }
        let errors: Vec<&str> = err
            .lines()
            .chain(out.lines())
            .map(str::trim)
            .filter(|l| l.starts_with("Error") || l.contains("Connection refused"))
            .collect();
        if !errors.is_empty() {
            bail!("redis-benchmark reported: {}", errors.join("; "));
        }
        let results =
            parse_csv(&out).with_context(|| format!("parsing output of {}", argv.join(" ")))?;
        for t in self.tests.split(',') {
            if !results.iter().any(|r| r.test.eq_ignore_ascii_case(t)) {
                bail!(
                    "redis-benchmark reported no {} result:\n{out}",
                    t.to_uppercase()
                );
            }
        }
        Ok(results)
    }
}

/// `redis-benchmark --version`'s first line, or `redis-server --version`'s (`v=7.0.15`).
pub fn version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().next()?.trim();
    // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
    let short = line.split(" sha=").next().unwrap_or(line);
    (!short.is_empty()).then(|| short.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What redis-benchmark 7.0.15 prints with `-t set,get --csv`.
    const CSV: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"
\"SET\",\"69686.41\",\"0.374\",\"0.056\",\"0.359\",\"0.503\",\"0.975\",\"2.551\"
\"GET\",\"92592.59\",\"0.279\",\"0.064\",\"0.279\",\"0.335\",\"0.383\",\"0.503\"
";

    #[test]
    fn parses_csv() {
        let r = parse_csv(CSV).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            BenchResult {
                test: "SET".to_owned(),
                requests_per_s: 69686.41,
                latency_avg_ms: Some(0.374),
                latency_min_ms: Some(0.056),
                latency_p50_ms: Some(0.359),
                latency_p95_ms: Some(0.503),
                latency_p99_ms: Some(0.975),
                latency_max_ms: Some(2.551),
            }
        );
        assert_eq!(r[1].test, "GET");
        assert_eq!(r[1].latency_p99_ms, Some(0.383));
    }

    #[test]
    fn csv_variants_and_errors() {
        // Older versions: only test and rps; warnings around the CSV; \r\n line ends.
        let old =
            "WARNING: Could not fetch server CONFIG\r\n\"test\",\"rps\"\r\n\"SET\",\"1000.00\"\r\n";
        let r = parse_csv(old).unwrap();
        assert_eq!((r[0].test.as_str(), r[0].requests_per_s), ("SET", 1000.0));
        assert_eq!(r[0].latency_p50_ms, None);
        // Columns found by name, not position.
        let swapped = "\"rps\",\"test\"\n\"5.5\",\"GET\"\n";
        assert_eq!(parse_csv(swapped).unwrap()[0].requests_per_s, 5.5);
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n").is_err(), "no test line");
        assert!(parse_csv("\"SET\",\"1.0\"\n").is_err(), "no header");
        assert!(parse_csv("\"test\",\"rps\"\n\"SET\",\"x\"\n").is_err());
        assert_eq!(
            split_csv("\"a\",\"b \"\"q\"\"\",c,"),
            vec!["a", "b \"q\"", "c", ""]
        );
    }

    #[test]
    fn command_line() {
        let run = BenchRun {
            binary: PathBuf::from("/usr/bin/redis-benchmark"),
            cpus: vec![2],
            port: 6390,
            tests: "set".to_owned(),
            requests: 100_000,
            clients: 50,
            pipeline: 16,
        };
        assert_eq!(
            run.argv().join(" "),
            "taskset -c 2 /usr/bin/redis-benchmark -h 127.0.0.1 -p 6390 -t set -n 100000 -c 50 \
             -P 16 --csv"
        );
        assert_eq!(run.limit(), Duration::from_secs(160));
        let unpinned = BenchRun {
            cpus: vec![],
            ..run
        };
        assert_eq!(unpinned.argv()[0], "/usr/bin/redis-benchmark");
    }
}
