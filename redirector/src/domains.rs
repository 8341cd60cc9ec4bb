//! `virtuos-redirect domains`: supervises the service domains.
//!
//! Starts `virtuos-storage` and/or `virtuos-net` (found next to this binary), restarts each
//! whenever it dies, with exponential backoff of its own (100 ms doubling to 5 s; back to
//! 100 ms once a run lasted 10 s), and forwards SIGTERM/SIGINT to them before exiting. After
//! every change it writes the domains' state as JSON to the state file (default
//! [`DEFAULT_STATE`]), which `status` reads.

use std::ffi::OsString;
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
/// How long the domains get to exit after the supervisor forwarded SIGTERM/SIGINT.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The storage domain to supervise.
#[derive(Debug, Clone)]
pub struct StorageOpts {
    /// Export root (`--root`).
    pub root: PathBuf,
    /// Socket it listens on (`--listen`).
    pub sock: PathBuf,
    /// CPUs for its workers (`--cpus`).
    pub cpus: Option<String>,
}

/// The network domain to supervise.
#[derive(Debug, Clone)]
pub struct NetOpts {
    /// Socket it listens on (`--listen`).
    pub sock: PathBuf,
    /// CPUs for its workers (`--cpus`).
    pub cpus: Option<String>,
    /// Worker threads (`--threads`).
    pub threads: Option<usize>,
    /// Network namespace to serve in (`--netns`).
    pub netns: Option<String>,
}

/// What `domains` is asked to run (at least one domain).
#[derive(Debug, Clone)]
pub struct DomainsOpts {
    /// The storage domain, if supervised.
    pub storage: Option<StorageOpts>,
    /// The network domain, if supervised.
    pub net: Option<NetOpts>,
    /// State file.
    pub state: PathBuf,
}

/// One supervised domain as the state file records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainState {
    /// `storage` or `net`.
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
    /// Every supervised domain (storage first when both are).
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

/// How to start one domain's server.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    /// `storage` or `net` (the state file's name).
    name: &'static str,
    /// The server binary's file name, next to this binary.
    bin: &'static str,
    args: Vec<OsString>,
    sock: PathBuf,
}

impl Spec {
    fn describe(&self) -> &'static str {
        if self.name == "net" {
            "network"
        } else {
            self.name
        }
    }
}

fn specs(o: &DomainsOpts) -> Vec<Spec> {
    let mut v = Vec::new();
    if let Some(s) = &o.storage {
        let mut args: Vec<OsString> = vec![
            "--root".into(),
            s.root.clone().into(),
            "--listen".into(),
            s.sock.clone().into(),
        ];
        if let Some(c) = &s.cpus {
            args.extend(["--cpus".into(), c.into()]);
        }
        v.push(Spec {
            name: "storage",
            bin: "virtuos-storage",
            args,
            sock: s.sock.clone(),
        });
    }
    if let Some(n) = &o.net {
        let mut args: Vec<OsString> = vec!["--listen".into(), n.sock.clone().into()];
        if let Some(c) = &n.cpus {
            args.extend(["--cpus".into(), c.into()]);
        }
        if let Some(t) = n.threads {
            args.extend(["--threads".into(), t.to_string().into()]);
        }
        if let Some(ns) = &n.netns {
            args.extend(["--netns".into(), ns.into()]);
        }
        v.push(Spec {
            name: "net",
            bin: "virtuos-net",
            args,
            sock: n.sock.clone(),
        });
    }
    v
}

/// The network domain's listening sockets, kept across its restarts (see
/// `virtuos_net::store`): duplicates held here, by key, with the uid that made each listen.
#[derive(Default)]
struct FdStore {
    kept: std::collections::HashMap<u64, (u32, std::os::fd::OwnedFd)>,
    /// Our end of the pair with the running domain.
    conn: Option<std::os::fd::OwnedFd>,
}

/// The descriptor number the domain finds its end of the fd store at.
const FD_STORE_FD: i32 = 3;

impl FdStore {
    /// Takes in what the running domain sent (KEEP and FORGET), without blocking.
    fn drain(&mut self) {
        use xen_transport::fdstore::{recv, Op};
        let Some(c) = &self.conn else { return };
        loop {
            let mut p = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(c),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait.
            if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
                return;
            }
            match recv(std::os::fd::AsFd::as_fd(c)) {
                Ok(Some((r, Some(fd)))) if r.op == Op::Keep => {
                    self.kept.insert(r.key, (r.uid, fd));
                }
                Ok(Some((r, _))) if r.op == Op::Forget => {
                    self.kept.remove(&r.key);
                }
                Ok(Some(_)) => {}
                // The domain is gone (or hung up): what it kept stays kept.
                Ok(None) | Err(_) => {
                    self.conn = None;
                    return;
                }
            }
        }
    }

    /// A new pair for a domain about to start: returns its end, to be inherited at
    /// [`FD_STORE_FD`].
    fn connect(&mut self) -> Result<std::os::fd::OwnedFd> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        self.drain();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair for the fd store")?;
        self.conn = Some(ours);
        Ok(theirs)
    }

    /// Hands the new domain every kept socket, then END (it reads them before it serves).
    fn restore(&mut self) {
        use xen_transport::fdstore::{send, Op, Record};
        let Some(c) = &self.conn else { return };
        let c = std::os::fd::AsFd::as_fd(c);
        for (key, (uid, fd)) in &self.kept {
            let rec = Record {
                op: Op::Restore,
                uid: *uid,
                key: *key,
            };
            if let Err(e) = send(c, rec, Some(std::os::fd::AsFd::as_fd(fd))) {
                eprintln!("virtuos-redirect domains: fd store: cannot hand a socket back: {e}");
            }
        }
        let end = Record {
            op: Op::End,
            uid: 0,
            key: 0,
        };
        if let Err(e) = send(c, end, None) {
            eprintln!("virtuos-redirect domains: fd store: {e}");
        }
    }
}

/// One supervised domain while the supervisor runs.
struct Slot {
    spec: Spec,
    exe: PathBuf,
    child: Option<Child>,
    started: Instant,
    backoff: Option<Duration>,
    /// When to start it again (while it is down).
    restart_at: Option<Instant>,
    /// The network domain's kept listeners (None for storage).
    store: Option<FdStore>,
}

impl Slot {
    fn spawn(&mut self) -> Result<Child> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.spec.args);
        let theirs = match &mut self.store {
            Some(st) => {
                let theirs = st.connect()?;
                let raw = std::os::fd::AsRawFd::as_raw_fd(&theirs);
                cmd.arg("--fd-store").arg(FD_STORE_FD.to_string());
                // SAFETY: dup2 between fork and exec (async-signal-safe): the domain's end
                // becomes fd 3, without close-on-exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                        if libc::dup2(raw, FD_STORE_FD) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some(theirs)
            }
            None => None,
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        drop(theirs);
        if let Some(st) = &mut self.store {
            st.restore();
        }
        Ok(child)
    }

    /// Schedules the next start after a run of `uptime` ended (or a start failed).
    fn schedule(&mut self, uptime: Duration) -> Duration {
        let d = next_backoff(self.backoff, uptime);
        self.backoff = Some(d);
        self.restart_at = Some(Instant::now() + d);
        d
    }
}

/// Forwards `sig` to every running domain and waits for them (killing those still running
/// after [`STOP_GRACE`]); records how each ended.
fn stop_all(slots: &mut [Slot], st: &mut State, sig: i32) {
    for s in slots.iter() {
        if let Some(c) = &s.child {
            // SAFETY: signalling our own child, whose pid is not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (i, s) in slots.iter_mut().enumerate() {
        let Some(mut c) = s.child.take() else {
            continue;
        };
        let status = loop {
            if let Ok(Some(x)) = c.try_wait() {
                break Some(x);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                break c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let d = &mut st.domains[i];
        d.pid = None;
        d.last_exit = status.map(describe);
        d.since = unix_now();
    }
}

/// Runs the supervisor until SIGTERM/SIGINT; returns the exit code.
pub fn run(o: DomainsOpts) -> Result<i32> {
    let specs = specs(&o);
    anyhow::ensure!(
        !specs.is_empty(),
        "no domain to supervise: give --storage-root and --storage, and/or --net"
    );
    let here = std::env::current_exe().context("locating virtuos-redirect")?;
    let mut slots = Vec::new();
    for spec in specs {
        let spec_is_net = spec.name == "net";
        let exe = here.with_file_name(spec.bin);
        anyhow::ensure!(
            exe.is_file(),
            "{} not found: build the workspace",
            exe.display()
        );
        slots.push(Slot {
            spec,
            exe,
            child: None,
            started: Instant::now(),
            backoff: None,
            restart_at: None,
            store: (spec_is_net).then(FdStore::default),
        });
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut st = State {
        supervisor_pid: std::process::id(),
        domains: slots
            .iter()
            .map(|s| DomainState {
                domain: s.spec.name.into(),
                pid: None,
                restarts: 0,
                last_exit: None,
                since: unix_now(),
                socket: s.spec.sock.clone(),
            })
            .collect(),
    };
    // First starts: a domain that cannot even start is a configuration error.
    for i in 0..slots.len() {
        match slots[i].spawn() {
            Ok(c) => {
                eprintln!(
                    "virtuos-redirect domains: {} domain running as pid {}",
                    slots[i].spec.describe(),
                    c.id()
                );
                st.domains[i].pid = Some(c.id());
                st.domains[i].since = unix_now();
                slots[i].child = Some(c);
                slots[i].started = Instant::now();
            }
            Err(e) => {
                stop_all(&mut slots, &mut st, libc::SIGTERM);
                return Err(e);
            }
        }
    }
    write_state(&o.state, &st)?;
    loop {
        let sig = SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            stop_all(&mut slots, &mut st, sig);
            write_state(&o.state, &st)?;
            return Ok(0);
        }
        let mut changed = false;
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(store) = &mut s.store {
                store.drain();
            }
            let d = &mut st.domains[i];
            if let Some(c) = &mut s.child {
                let status = match c.try_wait() {
                    Ok(Some(x)) => x,
                    Ok(None) => continue,
                    Err(e) => {
                        eprintln!(
                            "virtuos-redirect domains: waiting for the {} domain: {e}",
                            s.spec.describe()
                        );
                        continue;
                    }
                };
                s.child = None;
                let uptime = s.started.elapsed();
                d.pid = None;
                d.last_exit = Some(describe(status));
                d.since = unix_now();
                changed = true;
                let wait = s.schedule(uptime);
                eprintln!(
                    "virtuos-redirect domains: {} domain ended ({}) after {:.1} s; restarting in {} ms",
                    s.spec.describe(),
                    describe(status),
                    uptime.as_secs_f64(),
                    wait.as_millis()
                );
            } else if s.restart_at.is_some_and(|t| Instant::now() >= t) {
                s.restart_at = None;
                match s.spawn() {
                    Ok(c) => {
                        d.restarts += 1;
                        d.pid = Some(c.id());
                        d.since = unix_now();
                        changed = true;
                        eprintln!(
                            "virtuos-redirect domains: {} domain running as pid {} (restarts: {})",
                            s.spec.describe(),
                            c.id(),
                            d.restarts
                        );
                        s.child = Some(c);
                        s.started = Instant::now();
                    }
                    Err(e) => {
                        let wait = s.schedule(Duration::ZERO);
                        eprintln!(
                            "virtuos-redirect domains: {e:#}; trying again in {} ms",
                            wait.as_millis()
                        );
                    }
                }
            }
        }
        if changed {
            // Keep supervising even if the state cannot be written (a full /run).
            if let Err(e) = write_state(&o.state, &st) {
                eprintln!("virtuos-redirect domains: {e:#}");
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
    fn specs_pass_each_domain_its_options() {
        let o = DomainsOpts {
            storage: Some(StorageOpts {
                root: "/srv".into(),
                sock: "/s.sock".into(),
                cpus: None,
            }),
            net: Some(NetOpts {
                sock: "/n.sock".into(),
                cpus: Some("1".into()),
                threads: Some(2),
                netns: Some("blue".into()),
            }),
            state: "/x.json".into(),
        };
        let v = specs(&o);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].name, v[0].bin), ("storage", "virtuos-storage"));
        assert_eq!(v[0].args, ["--root", "/srv", "--listen", "/s.sock"]);
        assert_eq!((v[1].name, v[1].bin), ("net", "virtuos-net"));
        assert_eq!(
            v[1].args,
            [
                "--listen",
                "/n.sock",
                "--cpus",
                "1",
                "--threads",
                "2",
                "--netns",
                "blue"
            ]
        );
        let net_only = DomainsOpts { storage: None, ..o };
        assert_eq!(specs(&net_only).len(), 1);
        assert_eq!(specs(&net_only)[0].sock, PathBuf::from("/n.sock"));
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
