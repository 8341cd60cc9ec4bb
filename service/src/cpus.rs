//! `--cpus LIST` parsing (the kernel's cpulist syntax: `0-3,6,8-9`).

use thiserror::Error;

/// A bad CPU list.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuListError {
    /// Not in cpulist syntax.
    #[error("bad CPU list {0:?}: expected numbers and ranges like 0-3,6")]
    Syntax(String),
    /// Names a CPU this process may not run on.
    #[error("CPU {cpu} is not available to this process (allowed: {allowed:?})")]
    Unavailable {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs sched_getaffinity allows.
        allowed: Vec<usize>,
    },
}

/// Parses a cpulist; duplicates are dropped, order is kept.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuListError> {
    let bad = || CpuListError::Syntax(s.to_string());
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.parse::<usize>().map_err(|_| bad())?,
                b.parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let n = part.parse::<usize>().map_err(|_| bad())?;
                (n, n)
            }
        };
        if a > b || b >= 4096 {
            return Err(bad());
        }
        for c in a..=b {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => vec![0],
    }
}

/// Checks that every CPU in `cpus` is allowed.
pub fn check_available(cpus: &[usize]) -> Result<(), CpuListError> {
    let allowed = allowed_cpus();
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(&cpu) => Err(CpuListError::Unavailable { cpu, allowed }),
        None => Ok(()),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_syntax() {
        assert_eq!(parse_cpu_list("0-3,6,2").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(matches!(
            check_available(&[4095]),
            Err(CpuListError::Unavailable { .. })
        ));
        check_available(&allowed_cpus()).unwrap();
    }
}
