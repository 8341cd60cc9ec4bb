//! `virtuos-bench storage`: cached file reads natively and through the storage domain, and
//! where the cost of a redirected read goes.
//!
//! The driver writes a file of `--size-mib` into an export directory of its own, reads it once
//! so that every page is cached, starts `virtuos-storage` on that export (pinned to the server
//! CPUs), and then runs a probe — this same binary, `virtuos-bench storage-probe` — once
//! natively on the file and once under `virtuos-redirect run --storage` on the same file seen
//! through the mount, for every thread count, modes interleaved and their order rotated each
//! repetition. The probe times four operations, each thread on a descriptor of its own:
//!
//! * `lseek` (`SEEK_CUR`): a call that does nothing in the kernel, hence the bare round trip;
//! * `pread-1B`: a read call with (almost) no data;
//! * `pread-4K-seq`: 4 KiB reads cycling over the first 1 MiB (hot in every cache);
//! * `pread-4K-rand`: 4 KiB reads at random offsets over the whole file (fio's randread).
//!
//! The breakdown subtracts them: what the domain adds to `lseek` is the round trip; what it
//! adds to `pread-1B` beyond that is the read's own handling; the rest of `pread-4K-rand` is
//! moving 4 KiB of page cache into the session's window and out again.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cpus;
use crate::machine::MachineInfo;
use crate::nginx::stack::{sibling_binary, Server};

/// Where the redirected probe sees the export.
const MOUNT: &str = "/virtuos-bench-storage";

/// The operations the probe times, in the order it runs them.
pub const OPS: [&str; 4] = ["lseek", "pread-1B", "pread-4K-seq", "pread-4K-rand"];

/// Arguments of `virtuos-bench storage`.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// CI run: 1 repetition of 0.5 s per measurement on a 64 MiB file; explicit options
    /// override it.
    #[arg(long)]
    pub quick: bool,
    /// Size of the file read, in MiB [default: 256, or 64 with --quick].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub size_mib: Option<u64>,
    /// Reader thread counts to measure, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "1,4"
    )]
    pub threads: Vec<usize>,
    /// Seconds per measurement [default: 2, or 0.5 with --quick].
    #[arg(long, value_name = "SECONDS")]
    pub seconds: Option<f64>,
    /// Repetitions (modes interleaved, order rotated) [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// CPUs of the storage server (cpulist) [default: the last online CPU].
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<String>,
    /// Directory for the export, the file and the server's socket and log [default: a new
    /// directory under the system's temporary directory, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Write the measurements and the machine's description as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Arguments of the hidden `virtuos-bench storage-probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The file to read.
    #[arg(long)]
    pub file: PathBuf,
    /// Reader threads.
    #[arg(long)]
    pub threads: usize,
    /// Seconds per operation.
    #[arg(long)]
    pub seconds: f64,
}

/// One operation's throughput, as the probe prints it (one JSON line each).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeResult {
    /// One of [`OPS`].
    pub op: String,
    /// Reader threads.
    pub threads: usize,
    /// Operations per second, all threads together.
    pub ops_per_s: f64,
}

/// Mean time of one operation seen by one of `threads` threads, in ns.
fn ns_per_op(threads: usize, ops_per_s: f64) -> f64 {
    threads as f64 * 1e9 / ops_per_s
}

/// xorshift64*: offsets without a dependency, different per thread.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Runs `op` on `file` from `threads` threads for `seconds`.
fn time_op(file: &Path, op: &str, threads: usize, seconds: f64) -> Result<ProbeResult> {
    let len = fs::metadata(file)
        .with_context(|| format!("stat {}", file.display()))?
        .len();
    let pages = (len / 4096).max(1);
    let stop_after = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let counts = std::thread::scope(|s| -> Result<Vec<u64>> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<u64> {
                    let mut f = fs::File::open(file)
                        .with_context(|| format!("opening {}", file.display()))?;
                    let mut buf = vec![0u8; 4096];
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((t as u64 + 1) << 32);
                    let mut n = 0u64;
                    while start.elapsed() < stop_after {
                        // Batches of 64 between clock reads.
                        for _ in 0..64 {
                            let r = match op {
                                "lseek" => f.stream_position().map(|_| 0),
                                "pread-1B" => f.read_at(&mut buf[..1], (n % 256) * 4096),
                                "pread-4K-seq" => f.read_at(&mut buf, (n % 256) * 4096),
                                _ => f.read_at(&mut buf, (next(&mut rng) % pages) * 4096),
                            };
                            r.with_context(|| format!("{op} on {}", file.display()))?;
                            n += 1;
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a probe thread panicked"))
            .collect()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(ProbeResult {
        op: op.to_owned(),
        threads,
        ops_per_s: counts.iter().sum::<u64>() as f64 / elapsed,
    })
}

/// FNV-1a over 64 pages at fixed pseudo-random offsets of `file`, read with pread: the driver
/// compares it between the native and the redirected probe, so a benchmark of wrong bytes
/// fails instead of reporting.
fn digest(file: &Path) -> Result<u64> {
    let f = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let pages = (f.metadata()?.len() / 4096).max(1);
    let mut rng = 42u64;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 4096];
    for _ in 0..64 {
        let n = f.read_at(&mut buf, (next(&mut rng) % pages) * 4096)?;
        for &b in &buf[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

/// `virtuos-bench storage-probe`: prints the file's [`digest`], then one [`ProbeResult`] JSON
/// line per operation.
pub fn probe(args: &ProbeArgs) -> Result<()> {
    if args.threads == 0 || args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--threads and --seconds must be positive");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "digest {:016x}", digest(&args.file)?)?;
    for op in OPS {
        let r = time_op(&args.file, op, args.threads, args.seconds)?;
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    }
    Ok(())
}

/// Medians of one mode × thread count.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `native` or `storage`.
    pub mode: String,
    /// Reader threads.
    pub threads: usize,
    /// One of [`OPS`].
    pub op: String,
    /// Median ops/s over the repetitions.
    pub ops_per_s: f64,
    /// Every repetition's ops/s.
    pub samples: Vec<f64>,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    machine: MachineInfo,
    size_mib: u64,
    seconds: f64,
    reps: usize,
    server_cpus: Vec<usize>,
    cells: Vec<Cell>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Writes `mib` MiB of pseudo-random bytes to `path` and reads them back (into the cache).
fn make_file(path: &Path, mib: u64) -> Result<()> {
    let fresh = fs::metadata(path)
        .map(|m| m.len() != mib << 20)
        .unwrap_or(true);
    if fresh {
        let mut f =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut rng = 0x1234_5678_9abc_def1u64;
        for _ in 0..mib {
            for w in chunk.chunks_mut(8) {
                w.copy_from_slice(&next(&mut rng).to_le_bytes());
            }
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::Start(0))?;
    let mut sink = vec![0u8; 1 << 20];
    while f.read(&mut sink)? > 0 {}
    Ok(())
}

/// Runs one probe (`redirect`: through the storage domain) and parses its lines.
fn run_probe(
    redirect: Option<(&Path, &Path)>,
    file: &Path,
    threads: usize,
    seconds: f64,
) -> Result<(String, Vec<ProbeResult>)> {
    let me = std::env::current_exe().context("locating virtuos-bench")?;
    let mut cmd = match redirect {
        Some((redirect, sock)) => {
            let mut c = Command::new(redirect);
            c.arg("run")
                .arg("--storage")
                .arg(sock)
                .arg("--mount")
                .arg(MOUNT)
                .arg("--")
                .arg(&me);
            c
        }
        None => Command::new(&me),
    };
    cmd.arg("storage-probe")
        .arg("--file")
        .arg(file)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .stdin(Stdio::null());
    let out = cmd.output().context("running the probe")?;
    if !out.status.success() {
        bail!(
            "the probe ({}) failed ({}): {}",
            if redirect.is_some() {
                "storage domain"
            } else {
                "native"
            },
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let digest = lines
        .next()
        .and_then(|l| l.strip_prefix("digest "))
        .context("the probe printed no digest")?
        .to_owned();
    let results = lines
        .map(|l| serde_json::from_str(l).with_context(|| format!("probe output {l:?}")))
        .collect::<Result<_>>()?;
    Ok((digest, results))
}

/// `virtuos-bench storage`.
pub fn run(args: &StorageArgs) -> Result<()> {
    let size_mib = args.size_mib.unwrap_or(if args.quick { 64 } else { 256 });
    let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 2.0 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    if seconds.is_nan() || seconds <= 0.0 || args.threads.contains(&0) {
        bail!("--seconds and every --threads value must be positive");
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpus = match &args.server_cpus {
        Some(list) => cpus::parse_list(list)?,
        None => vec![online - 1],
    };
    let storage = sibling_binary("virtuos-storage")?;
    let redirect = sibling_binary("virtuos-redirect")?;
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("virtuos-bench-storage-{}", std::process::id())),
            true,
        ),
    };
    let export = dir.join("export");
    fs::create_dir_all(&export).with_context(|| format!("creating {}", export.display()))?;
    let result = (|| -> Result<Vec<Cell>> {
        let file = export.join("data");
        println!(
            "writing and caching a {size_mib} MiB file in {}",
            export.display()
        );
        make_file(&file, size_mib)?;
        let export_arg = export.to_string_lossy().into_owned();
        let server = Server::start(
            "virtuos-storage",
            &storage,
            &["--root", &export_arg],
            &dir,
            &server_cpus,
        )?;
        let through = Path::new(MOUNT).join("data");
        let mut samples: Vec<(String, usize, String, f64)> = Vec::new();
        let mut first_digest: Option<String> = None;
        for rep in 0..reps {
            for &t in &args.threads {
                let mut modes = ["native", "storage"];
                if rep % 2 == 1 {
                    modes.reverse();
                }
                for mode in modes {
                    let (digest, rs) = if mode == "native" {
                        run_probe(None, &file, t, seconds)?
                    } else {
                        run_probe(Some((&redirect, &server.sock)), &through, t, seconds)?
                    };
                    match &first_digest {
                        None => first_digest = Some(digest),
                        Some(d) if *d != digest => bail!(
                            "the {mode} probe read other bytes than the first one (digest {digest} vs {d})"
                        ),
                        Some(_) => {}
                    }
                    for r in rs {
                        samples.push((mode.to_owned(), t, r.op, r.ops_per_s));
                    }
                }
                eprintln!("  repetition {}/{reps}, {t} thread(s): done", rep + 1);
            }
        }
        let mut cells = Vec::new();
        for mode in ["native", "storage"] {
            for &t in &args.threads {
                for op in OPS {
                    let v: Vec<f64> = samples
                        .iter()
                        .filter(|s| s.0 == mode && s.1 == t && s.2 == op)
                        .map(|s| s.3)
                        .collect();
                    cells.push(Cell {
                        mode: mode.to_owned(),
                        threads: t,
                        op: op.to_owned(),
                        ops_per_s: median(&v),
                        samples: v,
                    });
                }
            }
        }
        Ok(cells)
    })();
    if temporary {
        let _ = fs::remove_dir_all(&dir);
    }
    let cells = result?;
    print_table(&cells, &args.threads);
    if let Some(path) = &args.json {
        let report = Report {
            machine: MachineInfo::collect(true),
            size_mib,
            seconds,
            reps,
            server_cpus,
            cells,
        };
        fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn cell<'a>(cells: &'a [Cell], mode: &str, t: usize, op: &str) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.mode == mode && c.threads == t && c.op == op)
}

fn ns(c: &Cell) -> f64 {
    ns_per_op(c.threads, c.ops_per_s)
}

fn print_table(cells: &[Cell], threads: &[usize]) {
    println!(
        "{:<14} {:>7} {:>14} {:>14} {:>7} {:>10} {:>10}",
        "op", "threads", "native ops/s", "storage ops/s", "ratio", "native ns", "storage ns"
    );
    for &t in threads {
        for op in OPS {
            if let (Some(n), Some(s)) =
                (cell(cells, "native", t, op), cell(cells, "storage", t, op))
            {
                println!(
                    "{:<14} {:>7} {:>14.0} {:>14.0} {:>6.2}x {:>10.0} {:>10.0}",
                    op,
                    t,
                    n.ops_per_s,
                    s.ops_per_s,
                    s.ops_per_s / n.ops_per_s,
                    ns(n),
                    ns(s)
                );
            }
        }
    }
    println!("where a redirected 4 KiB random read's added time goes (storage ns - native ns):");
    for &t in threads {
        let added = |op: &str| -> Option<f64> {
            Some(ns(cell(cells, "storage", t, op)?) - ns(cell(cells, "native", t, op)?))
        };
        if let (Some(rt), Some(r1), Some(r4)) =
            (added("lseek"), added("pread-1B"), added("pread-4K-rand"))
        {
            println!(
                "  {t} thread(s): round trip {rt:.0} ns; read handling {:.0} ns; 4 KiB through \
                 the window {:.0} ns; total {r4:.0} ns",
                r1 - rt,
                r4 - r1
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_times_every_operation_on_a_real_file() {
        let dir = std::env::temp_dir().join(format!("vb-storage-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        make_file(&f, 1).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().len(), 1 << 20);
        assert_eq!(digest(&f).unwrap(), digest(&f).unwrap());
        fs::write(dir.join("g"), vec![0u8; 1 << 20]).unwrap();
        assert_ne!(digest(&f).unwrap(), digest(&dir.join("g")).unwrap());
        for op in OPS {
            let r = time_op(&f, op, 2, 0.05).unwrap();
            assert_eq!((r.op.as_str(), r.threads), (op, 2));
            assert!(
                r.ops_per_s > 0.0 && ns_per_op(r.threads, r.ops_per_s) > 0.0,
                "{r:?}"
            );
        }
        let missing = time_op(&dir.join("missing"), "lseek", 1, 0.01);
        assert!(missing.is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn medians_and_offsets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let mut s = 1u64;
        let a = next(&mut s);
        let b = next(&mut s);
        assert_ne!(a, b);
    }
}
