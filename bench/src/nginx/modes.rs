//! The benchmark's modes (which service domains serve nginx), the cores each uses, and the
//! probe that tells whether the network domain exists yet.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::stack::{sibling_binary, Server};
use crate::cpus;

/// Which service domains serve nginx's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Domains {
    /// None: plain Linux.
    Native,
    /// The network domain (sockets).
    Net,
    /// The storage domain (the document root under the storage mount).
    Storage,
    /// Both domains.
    Both,
}

impl Domains {
    /// Whether the storage domain serves the document root.
    pub fn storage(self) -> bool {
        matches!(self, Self::Storage | Self::Both)
    }

    /// Whether the network domain serves the sockets.
    pub fn net(self) -> bool {
        matches!(self, Self::Net | Self::Both)
    }

    /// The mode's name for the domains it uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Net => "net",
            Self::Storage => "storage",
            Self::Both => "both",
        }
    }
}

/// One configuration the benchmark measures.
#[derive(Debug, Clone, Serialize)]
pub struct Mode {
    /// Name in tables and JSON: `native`, `net`, `storage`, `both`, or `native-<N>w` for a
    /// native baseline with as many workers as a redirected mode's total cores.
    pub name: String,
    /// The domains that serve it.
    pub domains: Domains,
    /// nginx worker processes.
    pub workers: usize,
    /// CPUs nginx runs on.
    pub app_cpus: Vec<usize>,
    /// CPUs and polling threads of the storage server (empty when unused).
    pub storage_cpus: Vec<usize>,
    /// CPUs and polling threads of the network server (empty when unused).
    pub net_cpus: Vec<usize>,
    /// nginx workers plus server polling threads: the cores this mode keeps busy.
    pub total_cores: usize,
    /// The native mode at equal application workers (`native`), for redirected modes.
    pub equal_workers_baseline: Option<String>,
    /// The native mode at equal total cores (`native-<N>w`), for redirected modes.
    pub equal_cores_baseline: Option<String>,
    /// Why it was not run (`None`: it was run).
    pub skipped: Option<String>,
}

/// The modes to run for `wanted` domains: each redirected mode and, for each distinct total
/// core count of the redirected modes that run, a native baseline with that many workers.
/// `net_unavailable` skips `net` and `both` with that reason.
pub fn plan(
    wanted: &[Domains],
    workers: usize,
    placement: &cpus::Placement,
    net_unavailable: Option<&str>,
    equal_cores: bool,
) -> Vec<Mode> {
    let server = &placement.server;
    // In `both`, the two servers split the server cores (share one when there is only one).
    let half = (server.len() / 2).max(1);
    let (both_storage, both_net) = if server.len() >= 2 {
        (server[..half].to_vec(), server[half..].to_vec())
    } else {
        (server.clone(), server.clone())
    };
    let mut modes: Vec<Mode> = Vec::new();
    for &d in wanted {
        let (storage_cpus, net_cpus) = match d {
            Domains::Native => (vec![], vec![]),
            Domains::Net => (vec![], server.clone()),
            Domains::Storage => (server.clone(), vec![]),
            Domains::Both => (both_storage.clone(), both_net.clone()),
        };
        let total = workers + storage_cpus.len() + net_cpus.len();
        let skipped = match (d.net(), net_unavailable) {
            (true, Some(why)) => Some(format!("network domain not available: {why}")),
            _ => None,
        };
        let redirected = d != Domains::Native;
        modes.push(Mode {
            name: d.name().to_owned(),
            domains: d,
            workers,
            app_cpus: placement.app.clone(),
            storage_cpus,
            net_cpus,
            total_cores: total,
            equal_workers_baseline: redirected.then(|| "native".to_owned()),
            equal_cores_baseline: (redirected && equal_cores)
                .then(|| native_with(total, workers).unwrap_or_else(|| "native".to_owned())),
            skipped,
        });
    }
    if !modes.iter().any(|m| m.domains == Domains::Native) {
        // Ratios need the native baseline at equal workers.
        modes.insert(0, native_mode("native", workers, placement.app.clone()));
    }
    if equal_cores {
        let mut extra: Vec<usize> = modes
            .iter()
            .filter(|m| m.domains != Domains::Native && m.skipped.is_none())
            .map(|m| m.total_cores)
            .filter(|&t| t != workers)
            .collect();
        extra.sort_unstable();
        extra.dedup();
        let all = cpus::union(&placement.app, &placement.server);
        for t in extra {
            modes.push(native_mode(&format!("native-{t}w"), t, all.clone()));
        }
    }
    modes
}

/// The name of the native baseline with `total` workers (`None` when that is `workers`).
fn native_with(total: usize, workers: usize) -> Option<String> {
    (total != workers).then(|| format!("native-{total}w"))
}

fn native_mode(name: &str, workers: usize, app_cpus: Vec<usize>) -> Mode {
    Mode {
        name: name.to_owned(),
        domains: Domains::Native,
        total_cores: workers,
        workers,
        app_cpus,
        storage_cpus: vec![],
        net_cpus: vec![],
        equal_workers_baseline: None,
        equal_cores_baseline: None,
        skipped: None,
    }
}

/// Whether `virtuos-redirect run --net` works: starts `virtuos-net` (next to this binary) in
/// `dir` and runs `true` through the network domain. `Ok(())` when it does; otherwise the
/// reason, for the skipped modes' entries.
pub fn probe_net(dir: &Path, cpus: &[usize]) -> std::result::Result<(), String> {
    let net = sibling_binary("virtuos-net").map_err(|e| format!("{e:#}"))?;
    let redirect = sibling_binary("virtuos-redirect").map_err(|e| format!("{e:#}"))?;
    let server =
        Server::start("virtuos-net", &net, &[], dir, cpus).map_err(|e| format!("{e:#}"))?;
    let mut child = Command::new(redirect)
        .args(["run", "--net"])
        .arg(&server.sock)
        .args(["--", "true"])
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting virtuos-redirect: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("`virtuos-redirect run --net SOCK -- true` hung for 15 s".to_owned());
            }
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    drop(server);
    if status.success() {
        Ok(())
    } else {
        let first = err
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("(no output)");
        Err(format!(
            "`virtuos-redirect run --net SOCK -- true` failed ({status}): {first}"
        ))
    }
}

/// Parses `--modes` (`native,net,storage,both`).
pub fn parse_domains(text: &str) -> Result<Vec<Domains>> {
    let mut out = Vec::new();
    for w in text.split(',').map(str::trim) {
        let d = match w {
            "native" => Domains::Native,
            "net" => Domains::Net,
            "storage" => Domains::Storage,
            "both" => Domains::Both,
            _ => anyhow::bail!("unknown mode {w:?} (want native, net, storage, both)"),
        };
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_cores() -> cpus::Placement {
        cpus::Placement::choose(&[0, 1], 1, None, None, None)
    }

    #[test]
    fn plan_without_net() {
        let all = [
            Domains::Native,
            Domains::Net,
            Domains::Storage,
            Domains::Both,
        ];
        let modes = plan(&all, 1, &two_cores(), Some("no server"), true);
        let names: Vec<&str> = modes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["native", "net", "storage", "both", "native-2w"]);
        let get = |n: &str| modes.iter().find(|m| m.name == n).unwrap();
        assert!(get("net")
            .skipped
            .as_deref()
            .unwrap()
            .starts_with("network domain not available"));
        assert!(get("both").skipped.is_some());
        assert!(get("storage").skipped.is_none());
        assert_eq!(get("storage").total_cores, 2);
        assert_eq!(get("storage").storage_cpus, vec![1]);
        assert_eq!(
            get("storage").equal_cores_baseline.as_deref(),
            Some("native-2w")
        );
        assert_eq!(get("native-2w").workers, 2);
        assert_eq!(get("native-2w").app_cpus, vec![0, 1]);
        // `both` would use two server threads sharing the one server core.
        assert_eq!(get("both").total_cores, 3);
    }

    #[test]
    fn plan_with_net() {
        let all = [Domains::Storage, Domains::Both];
        let p = cpus::Placement::choose(&[0, 1, 2, 3, 4, 5], 2, None, Some(vec![2, 3]), None);
        let modes = plan(&all, 2, &p, None, true);
        let names: Vec<&str> = modes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["native", "storage", "both", "native-4w"]);
        let both = &modes[2];
        assert_eq!(
            (both.storage_cpus.clone(), both.net_cpus.clone()),
            (vec![2], vec![3])
        );
        assert_eq!(both.total_cores, 4);
        let storage = &modes[1];
        assert_eq!(storage.total_cores, 4);
        let no_eq = plan(&all, 2, &p, None, false);
        assert_eq!(no_eq.len(), 3);
    }

    #[test]
    fn parses_modes() {
        assert_eq!(
            parse_domains("storage, native,storage").unwrap(),
            vec![Domains::Storage, Domains::Native]
        );
        assert!(parse_domains("disk").is_err());
    }
}
