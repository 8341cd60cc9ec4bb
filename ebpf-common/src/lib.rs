//! The map and record layouts shared by the eBPF programs (`ebpf/`, built for
//! `bpfel-unknown-none`) and their loader (`virtuos-redirect`'s `bpf` module), so that both
//! sides compile against one definition.
//!
//! `no_std`: the eBPF side uses it as it is; the loader enables the `user` feature, which
//! implements `aya::Pod` for the map values it reads. The loader still checks the object's map
//! value sizes at load time, against an object built from an older copy of this crate.
//!
//! Maps (named by the statics in `ebpf/src/main.rs`):
//!
//! * `ATTACHED` (`HashMap<u64, u32>`): cgroup id → flags ([`attached`]).
//! * `STATS` (`PerCpuArray<SysStat>`, [`MAX_SYSCALLS`] entries): per syscall number.
//! * `DENIED` (`PerCpuArray<u64>`, [`deny::SLOTS`] entries): denials per hook ([`deny`]).
//! * `CONFIG` (`Array<u64>`, [`config::SLOTS`] entries): written by the loader ([`config`]).

#![no_std]

/// Syscall numbers counted (x86_64 has < 512): the number of `STATS` entries.
pub const MAX_SYSCALLS: u32 = 512;
/// log2(ns) latency buckets of [`SysStat::hist`]; the last one collects everything slower.
pub const BUCKETS: usize = 32;

/// Per syscall number, per CPU (`STATS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysStat {
    /// Entries (`sys_enter`).
    pub calls: u64,
    /// Completed calls with a measured latency (`sys_exit` with a matching enter).
    pub timed: u64,
    /// Sum of the measured latencies, ns.
    pub total_ns: u64,
    /// `hist[b]` counts latencies in `[2^b, 2^(b+1))` ns (`hist[0]` also holds 0 ns; the last
    /// bucket everything slower): see [`SysStat::bucket`].
    pub hist: [u64; BUCKETS],
}

// The eBPF side and the loader agree on this layout; `STATS`' value size is checked against it.
const _: () = {
    assert!(core::mem::size_of::<SysStat>() == 8 * (3 + BUCKETS));
    assert!(core::mem::align_of::<SysStat>() == 8);
    assert!(core::mem::offset_of!(SysStat, calls) == 0);
    assert!(core::mem::offset_of!(SysStat, timed) == 8);
    assert!(core::mem::offset_of!(SysStat, total_ns) == 16);
    assert!(core::mem::offset_of!(SysStat, hist) == 24);
};

// SAFETY: repr(C), only u64 fields, no padding (asserted above); every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SysStat {}

impl SysStat {
    /// The [`hist`](SysStat::hist) bucket of a latency of `dt_ns`: `floor(log2(dt_ns))`, 0 for
    /// 0 ns, at most `BUCKETS - 1`.
    #[inline(always)]
    pub const fn bucket(dt_ns: u64) -> usize {
        let b = if dt_ns == 0 {
            0
        } else {
            63 - dt_ns.leading_zeros() as usize
        };
        if b >= BUCKETS {
            BUCKETS - 1
        } else {
            b
        }
    }

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
        let want = ceil_rank(n, q);
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

/// `((n as f64) * q).ceil().max(1.0) as u64` without `f64::ceil` (not in `core`): the same
/// value for every `n` and `q`, NaN and infinities included.
fn ceil_rank(n: u64, q: f64) -> u64 {
    let x = (n as f64) * q;
    // Truncates toward zero and saturates (negative and NaN give 0). Below 2^53 the cast back
    // is exact, so `t < x` means `x` had a fraction; from 2^53 on every f64 is an integer and
    // `t` is `x` (or u64::MAX, which `ceil` then `as` saturates to as well).
    let t = x as u64;
    let c = if (t as f64) < x {
        t.saturating_add(1)
    } else {
        t
    };
    c.max(1)
}

/// `ATTACHED` values: flags of an attached cgroup.
pub mod attached {
    /// Enforcement is on (the LSM programs deny; the cgroup hooks are attached only then).
    pub const ENFORCE: u32 = 1;
}

/// `DENIED` slot indices: one per denying hook.
pub mod deny {
    /// `cgroup/sock_create`.
    pub const SOCK_CREATE: u32 = 0;
    /// `cgroup/connect4`.
    pub const CONNECT4: u32 = 1;
    /// `cgroup/connect6`.
    pub const CONNECT6: u32 = 2;
    /// `cgroup/bind4`.
    pub const BIND4: u32 = 3;
    /// `cgroup/bind6`.
    pub const BIND6: u32 = 4;
    /// `lsm/socket_create`.
    pub const LSM_SOCKET_CREATE: u32 = 5;
    /// `lsm/file_open`.
    pub const LSM_FILE_OPEN: u32 = 6;
    /// `lsm/uring_allowed`.
    pub const LSM_URING: u32 = 7;
    /// `lsm_cgroup/socket_create`.
    pub const LSM_CGROUP_SOCKET_CREATE: u32 = 8;
    /// Size of `DENIED` (room for more hooks).
    pub const SLOTS: u32 = 16;

    /// Names of the slots in use, by index.
    pub const NAMES: [&str; 9] = [
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

    const _: () = assert!(NAMES.len() == LSM_CGROUP_SOCKET_CREATE as usize + 1);
    const _: () = assert!(NAMES.len() <= SLOTS as usize);
}

/// `CONFIG` indices, written by the loader after load (0 = unset).
pub mod config {
    /// Storage device, kernel encoding (`MAJOR << 20 | MINOR`), 0 = none.
    pub const STORAGE_DEV: u32 = 0;
    /// Offset of `file.f_inode` (from the kernel's BTF; 0 = unknown, and `file_open` then
    /// allows everything).
    pub const OFF_F_INODE: u32 = 1;
    /// Offset of `inode.i_sb`.
    pub const OFF_I_SB: u32 = 2;
    /// Offset of `super_block.s_dev`.
    pub const OFF_S_DEV: u32 = 3;
    /// Size of `CONFIG`.
    pub const SLOTS: u32 = 8;

    const _: () = assert!(OFF_S_DEV < SLOTS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_matches_ebpf_side() {
        assert_eq!(core::mem::size_of::<SysStat>(), 8 * (3 + BUCKETS));
        assert_eq!(core::mem::offset_of!(SysStat, hist), 24);
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

    #[test]
    fn ceil_rank_matches_f64_ceil() {
        extern crate std;
        let reference = |n: u64, q: f64| ((n as f64) * q).ceil().max(1.0) as u64;
        let ns = [
            0,
            1,
            2,
            3,
            7,
            99,
            100,
            101,
            1000,
            12345,
            (1 << 53) - 1,
            1 << 53,
            (1 << 53) + 1,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ];
        let qs = [
            -1.0,
            -0.0,
            0.0,
            1e-300,
            0.001,
            0.1,
            0.25,
            0.5,
            0.9,
            0.95,
            0.99,
            0.999,
            1.0 - f64::EPSILON,
            1.0,
            1.5,
            3.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for &n in &ns {
            for &q in &qs {
                assert_eq!(ceil_rank(n, q), reference(n, q), "n {n} q {q}");
            }
        }
        for n in 0..2000u64 {
            for i in 0..=200 {
                let q = f64::from(i) / 200.0;
                assert_eq!(ceil_rank(n, q), reference(n, q), "n {n} q {q}");
            }
        }
    }

    #[test]
    fn buckets_hold_latencies_below_their_upper_edge() {
        assert_eq!(SysStat::bucket(0), 0);
        assert_eq!(SysStat::bucket(1), 0);
        assert_eq!(SysStat::bucket(2), 1);
        assert_eq!(SysStat::bucket(127), 6);
        assert_eq!(SysStat::bucket(128), 7);
        assert_eq!(SysStat::bucket(u64::MAX), BUCKETS - 1);
        for dt in [1u64, 5, 64, 1000, 1 << 20, (1 << 31) - 1] {
            let mut s = SysStat::default();
            s.hist[SysStat::bucket(dt)] = 1;
            let p = s.percentile_ns(0.5).unwrap();
            assert!(dt < p && p <= 2 * dt.max(1), "dt {dt} p {p}");
        }
    }

    #[test]
    fn deny_names_by_index() {
        assert_eq!(deny::NAMES[deny::SOCK_CREATE as usize], "sock_create");
        assert_eq!(deny::NAMES[deny::CONNECT4 as usize], "connect4");
        assert_eq!(deny::NAMES[deny::CONNECT6 as usize], "connect6");
        assert_eq!(deny::NAMES[deny::BIND4 as usize], "bind4");
        assert_eq!(deny::NAMES[deny::BIND6 as usize], "bind6");
        assert_eq!(
            deny::NAMES[deny::LSM_SOCKET_CREATE as usize],
            "lsm_socket_create"
        );
        assert_eq!(deny::NAMES[deny::LSM_FILE_OPEN as usize], "lsm_file_open");
        assert_eq!(deny::NAMES[deny::LSM_URING as usize], "lsm_uring_allowed");
        assert_eq!(
            deny::NAMES[deny::LSM_CGROUP_SOCKET_CREATE as usize],
            "lsm_cgroup_socket_create"
        );
    }
}
