//! CPU time of processes and process trees from /proc (utime + stime of every thread, which
//! /proc/<pid>/stat sums per process).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys;

/// Parent pid and utime + stime (clock ticks) from the text of /proc/<pid>/stat.
///
/// The command name (field 2) is in parentheses and may hold spaces or parentheses itself, so
/// the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn read_stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every live process: pid → (ppid, CPU ticks).
fn all_processes() -> HashMap<u32, (u32, u64)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// `root` and its live descendants, with each one's CPU ticks.
fn tree(root: u32) -> Vec<(u32, u64)> {
    let procs = all_processes();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(&(_, ticks)) = procs.get(&pid) {
            out.push((pid, ticks));
            stack.extend(
                procs
                    .iter()
                    .filter(|(_, (ppid, _))| *ppid == pid)
                    .map(|(child, _)| *child),
            );
        }
    }
    out
}

/// Pids of `root` and its live descendants.
pub fn tree_pids(root: u32) -> Vec<u32> {
    tree(root).into_iter().map(|(pid, _)| pid).collect()
}

/// CPU seconds used so far by `root` and its live descendants.
pub fn tree_cpu_s(root: u32) -> f64 {
    let ticks: u64 = tree(root).iter().map(|(_, t)| t).sum();
    ticks as f64 / sys::clock_ticks_per_s() as f64
}

/// CPU seconds used so far by one process (all its threads); 0 when it is gone.
pub fn cpu_s(pid: u32) -> f64 {
    read_stat(pid).map_or(0.0, |(_, t)| t as f64 / sys::clock_ticks_per_s() as f64)
}

/// Runs `argv` (program first) with stdin closed, capturing stdout and stderr; a run that
/// takes longer than `limit` is killed and is an error. Returns its exit status, stdout and
/// stderr.
pub fn run_captured(argv: &[String], limit: Duration) -> Result<(ExitStatus, String, String)> {
    let (program, args) = argv.split_first().context("empty command line")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", argv.join(" ")))?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not finish within {} s; killed",
                argv.join(" "),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    Ok((status, out, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "1234 (nginx: worker) S 1200 1200 1200 0 -1 4194624 10 0 0 0 \
                    250 75 0 0 20 0 1 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some((1200, 325)));
        let odd = "77 (a) b (c) R 5 1 1 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0";
        assert_eq!(parse_stat(odd), Some((5, 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_tree_includes_a_child() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pids = tree_pids(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(pids.contains(&me) && pids.contains(&child.id()));
        // Read in this order: CPU time only grows, and the tree includes this process.
        let alone = cpu_s(me);
        assert!(tree_cpu_s(me) >= alone);
    }

    #[test]
    fn captured_runs() {
        let argv = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (st, out, err) = run_captured(
            &argv(&["sh", "-c", "echo out; echo err >&2"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(st.success());
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        let slow = run_captured(&argv(&["sleep", "5"]), Duration::from_millis(100));
        assert!(slow.unwrap_err().to_string().contains("did not finish"));
        assert!(run_captured(&[], Duration::from_secs(1)).is_err());
    }
}
