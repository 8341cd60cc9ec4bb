//! The record layouts shared with `ebpf/src/main.rs` (kept in sync by hand; the loader checks
//! the map value sizes against these when it loads the object).

/// Syscall numbers counted.
pub const MAX_SYSCALLS: u32 = 512;
/// log2(ns) latency buckets.
pub const BUCKETS: usize = 32;

/// Per syscall number, per CPU (`STATS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysStat {
    /// Entries (`sys_enter`).
    pub calls: u64,
    /// Completed calls with a measured latency.
    pub timed: u64,
    /// Sum of measured latencies, ns.
    pub total_ns: u64,
    /// `hist[b]`: latencies in `[2^b, 2^(b+1))` ns.
    pub hist: [u64; BUCKETS],
}

// SAFETY: repr(C), only u64 fields, no padding; every bit pattern is valid.
unsafe impl aya::Pod for SysStat {}

impl SysStat {
    /// Adds another CPU's (or sample's) counts.
    pub fn add(&mut self, o: &SysStat) {
        self.calls += o.calls;
        self.timed += o.timed;
        self.total_ns += o.total_ns;
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
    }

    /// `self - o`, saturating (a counter that went back means a reattach).
    pub fn since(&self, o: &SysStat) -> SysStat {
        let mut d = SysStat {
            calls: self.calls.saturating_sub(o.calls),
            timed: self.timed.saturating_sub(o.timed),
            total_ns: self.total_ns.saturating_sub(o.total_ns),
            hist: [0; BUCKETS],
        };
        for (i, h) in d.hist.iter_mut().enumerate() {
            *h = self.hist[i].saturating_sub(o.hist[i]);
        }
        d
    }

    /// Latency percentile `q` (0..=1) from the histogram: the upper edge of the bucket that
    /// holds it, in ns (so within a factor of two); `None` without timed calls.
    pub fn percentile_ns(&self, q: f64) -> Option<u64> {
        let n: u64 = self.hist.iter().sum();
        if n == 0 {
            return None;
        }
        let want = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (b, c) in self.hist.iter().enumerate() {
            acc += c;
            if acc >= want {
                return Some(1u64 << (b + 1));
            }
        }
        Some(1u64 << BUCKETS)
    }
}

/// Names of the `DENIED` slots, by index.
pub const DENY_NAMES: [&str; 9] = [
    "sock_create",
    "connect4",
    "connect6",
    "bind4",
    "bind6",
    "lsm_socket_create",
    "lsm_file_open",
    "lsm_uring_allowed",
    "lsm_cgroup_socket_create",
];
/// Size of `DENIED`.
pub const DENY_SLOTS: u32 = 16;

/// `CONFIG` indices.
pub mod config {
    /// Storage device, kernel encoding (`MAJOR << 20 | MINOR`), 0 = none.
    pub const STORAGE_DEV: u32 = 0;
    /// Offset of `file.f_inode`.
    pub const OFF_F_INODE: u32 = 1;
    /// Offset of `inode.i_sb`.
    pub const OFF_I_SB: u32 = 2;
    /// Offset of `super_block.s_dev`.
    pub const OFF_S_DEV: u32 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_matches_ebpf_side() {
        assert_eq!(std::mem::size_of::<SysStat>(), 8 * (3 + BUCKETS));
    }

    #[test]
    fn percentiles_are_bucket_upper_edges() {
        let mut s = SysStat::default();
        s.hist[6] = 99; // 64..128 ns
        s.hist[20] = 1; // ~1 ms
        assert_eq!(s.percentile_ns(0.5), Some(128));
        assert_eq!(s.percentile_ns(0.99), Some(128));
        assert_eq!(s.percentile_ns(1.0), Some(1 << 21));
        assert_eq!(SysStat::default().percentile_ns(0.5), None);
    }
}
