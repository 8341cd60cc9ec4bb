//! Description of the machine a benchmark ran on (for the JSON report).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::sys;

/// The machine a run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// CPUs online.
    pub online_cpus: usize,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// Host name (`uname -n`).
    pub hostname: String,
    /// Total memory in bytes (/proc/meminfo `MemTotal`).
    pub total_memory_bytes: u64,
    /// Whether client and peer threads were pinned to separate CPUs.
    pub pinned: bool,
    /// When the run was made, in seconds since the Unix epoch.
    pub timestamp_unix_s: u64,
}

impl MachineInfo {
    /// Collects the description; fields that cannot be read become "unknown" / 0.
    pub fn collect(pinned: bool) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| parse_cpu_model(&s))
            .unwrap_or_else(|| "unknown".to_owned());
        let total_memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_mem_total(&s))
            .unwrap_or(0);
        let (kernel_release, hostname) = sys::uname_release_nodename().unwrap_or_else(|err| {
            tracing::warn!("uname failed: {err}");
            ("unknown".to_owned(), "unknown".to_owned())
        });
        let timestamp_unix_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            cpu_model,
            online_cpus: sys::online_cpus(),
            kernel_release,
            hostname,
            total_memory_bytes,
            pinned,
            timestamp_unix_s,
        }
    }
}

/// First `model name` (x86) or `Model`/`Hardware` (Arm) value in /proc/cpuinfo text.
fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    })
}

/// `MemTotal` in bytes from /proc/meminfo text.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo_and_meminfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
                       model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu\n";
        assert_eq!(
            parse_cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(parse_cpu_model("processor: 0\n"), None);
        let meminfo = "MemTotal:        8135508 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(8_135_508 * 1024));
        assert_eq!(parse_mem_total(""), None);
    }

    #[test]
    fn collect_reads_this_machine() {
        let m = MachineInfo::collect(false);
        assert!(m.online_cpus >= 1);
        assert!(m.timestamp_unix_s > 0);
    }
}
