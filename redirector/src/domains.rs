//! `virtuos-redirect domains`: supervises the service domains.
//!
//! Starts `virtuos-storage` (found next to this binary), restarts it whenever it dies, with
//! exponential backoff (100 ms doubling to 5 s; back to 100 ms once a run lasted 10 s), and
//! forwards SIGTERM/SIGINT to it before exiting. After every change it writes the domains'
//! state as JSON to the state file (default [`DEFAULT_STATE`]), which `status` reads.
//!
//! The network domain (issue 5) does not exist yet; it will be supervised the same way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where the state goes unless `--state` says otherwise.
pub const DEFAULT_STATE: &str = "/run/virtuos/domains.json";
/// First restart delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A run at least this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What `domains` is asked to run.
#[derive(Debug, Clone)]
pub struct DomainsOpts {
    /// Export root of the storage domain.
    pub storage_root: PathBuf,
    /// Socket the storage domain listens on.
    pub storage_sock: PathBuf,
    /// CPUs for the storage domain's workers (`--cpus`).
    pub storage_cpus: Option<String>,
    /// State file.
    pub state: PathBuf,
}

/// One supervised domain as the state file records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainState {
    /// `storage` (later also `net`).
    pub domain: String,
    /// The server's pid while it runs (null between a death and its restart).
    pub pid: Option<u32>,
    /// Restarts after the first start.
    pub restarts: u64,
    /// How the previous run ended: `exit N` or `signal N` (null before any ended).
    pub last_exit: Option<String>,
    /// Unix time (s) of the last change of `pid`.
    pub since: f64,
    /// The socket it serves.
    pub socket: PathBuf,
}

/// The state file's contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// Every supervised domain.
    pub domains: Vec<DomainState>,
}

/// The restart delay after `prev`, given how long the run that just ended lasted.
pub fn next_backoff(prev: Option<Duration>, uptime: Duration) -> Duration {
    match prev {
        _ if uptime >= STABLE_AFTER => BACKOFF_MIN,
        None => BACKOFF_MIN,
        Some(p) => (p * 2).min(BACKOFF_MAX),
    }
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn write_state(path: &Path, st: &State) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a state file.
pub fn read_state(path: &Path) -> Result<State> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

fn spawn_storage(exe: &Path, o: &DomainsOpts) -> Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(&o.storage_root)
        .arg("--listen")
        .arg(&o.storage_sock);
    if let Some(c) = &o.storage_cpus {
        cmd.arg("--cpus").arg(c);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// Sleeps `d`, returning early (true) when a termination signal arrived.
fn sleep_unless_signalled(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if SIGNAL.load(Ordering::SeqCst) != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// Runs the supervisor until SIGTERM/SIGINT; returns the exit code.
pub fn run(o: DomainsOpts) -> Result<i32> {
    let exe = std::env::current_exe()
        .context("locating virtuos-redirect")?
        .with_file_name("virtuos-storage");
    anyhow::ensure!(
        exe.is_file(),
        "{} not found: build the workspace",
        exe.display()
    );
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut st = State {
        supervisor_pid: std::process::id(),
        domains: vec![DomainState {
            domain: "storage".into(),
            pid: None,
            restarts: 0,
            last_exit: None,
            since: unix_now(),
            socket: o.storage_sock.clone(),
        }],
    };
    let mut backoff: Option<Duration> = None;
    let mut first = true;
    loop {
        if SIGNAL.load(Ordering::SeqCst) != 0 {
            break;
        }
        let mut child = match spawn_storage(&exe, &o) {
            Ok(c) => c,
            Err(e) if first => return Err(e),
            Err(e) => {
                eprintln!("virtuos-redirect domains: {e:#}");
                let d = next_backoff(backoff, Duration::ZERO);
                backoff = Some(d);
                if sleep_unless_signalled(d) {
                    break;
                }
                continue;
            }
        };
        let started = Instant::now();
        {
            let d = &mut st.domains[0];
            if !first {
                d.restarts += 1;
            }
            d.pid = Some(child.id());
            d.since = unix_now();
        }
        first = false;
        write_state(&o.state, &st)?;
        eprintln!(
            "virtuos-redirect domains: storage domain running as pid {} (restarts: {})",
            child.id(),
            st.domains[0].restarts
        );
        // Wait for the child's death or a termination signal.
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("virtuos-redirect domains: waiting for the storage domain: {e}");
                }
            }
            let sig = SIGNAL.load(Ordering::SeqCst);
            if sig != 0 {
                // SAFETY: signalling our own child, whose pid is not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, sig) };
                let deadline = Instant::now() + Duration::from_secs(10);
                let s = loop {
                    if let Ok(Some(s)) = child.try_wait() {
                        break s;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        break child.wait()?;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                let d = &mut st.domains[0];
                d.pid = None;
                d.last_exit = Some(describe(s));
                d.since = unix_now();
                write_state(&o.state, &st)?;
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let uptime = started.elapsed();
        {
            let d = &mut st.domains[0];
            d.pid = None;
            d.last_exit = status.map(describe);
            d.since = unix_now();
        }
        write_state(&o.state, &st)?;
        let d = next_backoff(backoff, uptime);
        backoff = Some(d);
        eprintln!(
            "virtuos-redirect domains: storage domain ended ({}) after {:.1} s; restarting in {} ms",
            st.domains[0].last_exit.as_deref().unwrap_or("?"),
            uptime.as_secs_f64(),
            d.as_millis()
        );
        if sleep_unless_signalled(d) {
            break;
        }
    }
    Ok(0)
}

/// The supervised domains for `status`: the state file at `VIRTUOS_DOMAINS_STATE` or
/// [`DEFAULT_STATE`], as JSON (null when there is none) and as text lines.
pub fn status_report() -> (serde_json::Value, Vec<String>) {
    let path = std::env::var_os("VIRTUOS_DOMAINS_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
    let Ok(st) = read_state(&path) else {
        return (serde_json::Value::Null, Vec::new());
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(st.supervisor_pid as libc::pid_t, 0) } == 0;
    let lines = st
        .domains
        .iter()
        .map(|d| {
            format!(
                "{} domain (supervised by pid {}{}): {}, {} restart(s), last exit: {}",
                d.domain,
                st.supervisor_pid,
                if alive { "" } else { ", not running" },
                d.pid.map_or("down".into(), |p| format!("pid {p}")),
                d.restarts,
                d.last_exit.as_deref().unwrap_or("none")
            )
        })
        .collect();
    let mut v = serde_json::to_value(&st).unwrap_or(serde_json::Value::Null);
    v["state_file"] = serde_json::json!(path);
    v["supervisor_running"] = serde_json::json!(alive);
    (v, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_run() {
        let mut b = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let d = next_backoff(b, Duration::from_millis(50));
            seen.push(d.as_millis());
            b = Some(d);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(next_backoff(b, Duration::from_secs(10)), BACKOFF_MIN);
    }

    #[test]
    fn state_round_trips() {
        let p = std::env::temp_dir().join(format!("virtuos-domains-{}.json", std::process::id()));
        let st = State {
            supervisor_pid: 1,
            domains: vec![DomainState {
                domain: "storage".into(),
                pid: Some(7),
                restarts: 3,
                last_exit: Some("signal 9".into()),
                since: 1.5,
                socket: "/x.sock".into(),
            }],
        };
        write_state(&p, &st).unwrap();
        assert_eq!(read_state(&p).unwrap(), st);
        std::fs::remove_file(&p).unwrap();
    }
}
