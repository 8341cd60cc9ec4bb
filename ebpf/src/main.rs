//! virtuos eBPF programs (issue #6), loaded by `virtuos-redirect attach` / `run --enforce`.
//!
//! One copy of this object is loaded per attached cgroup and pinned under
//! `/sys/fs/bpf/virtuos/<cgroup-id>/`, so its maps describe that cgroup alone.
//!
//! * Telemetry: raw tracepoints `sys_enter` / `sys_exit`, filtered to the attached cgroup
//!   (`bpf_get_current_cgroup_id` against `ATTACHED`; descendants through
//!   `bpf_get_current_ancestor_cgroup_id` at the attached cgroup's level), counting calls per
//!   syscall number and building log2 latency histograms in the per-CPU map `STATS`.
//! * Enforcement (attached to the cgroup only with `--enforce`): `cgroup/sock_create` denies
//!   AF_INET/AF_INET6 sockets; `cgroup/connect4|6` and `cgroup/bind4|6` deny inet addresses on
//!   sockets that were obtained some other way (inherited, passed over a Unix socket).
//! * BPF LSM variants (global programs that check the cgroup themselves, plus an `lsm_cgroup`
//!   one): `socket_create`, `file_open` on the storage domain's device, `uring_allowed`.
//!   They load only where the kernel permits BPF LSM programs.
//!
//! The layout of `ATTACHED` / `STATS` / `DENIED` / `CONFIG` (records, sizes, slot indices) comes
//! from `ebpf-common/` (`virtuos-ebpf-common`), which the redirector's loader uses too; it also
//! checks the map value sizes at load time.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{cgroup_sock, cgroup_sock_addr, lsm, lsm_cgroup, map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{LsmContext, RawTracePointContext, SockAddrContext, SockContext},
    Global,
};
use aya_log_ebpf::{info, warn};
use virtuos_ebpf_common::{attached, config, deny, SysStat, MAX_SYSCALLS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const EPERM: i32 = 1;

/// Cgroup ids this object serves (the attached one); value: `attached::ENFORCE` when
/// enforcement is on.
#[map]
static ATTACHED: HashMap<u64, u32> = HashMap::with_max_entries(16, 0);

/// Per-syscall counts and latency histograms of the attached cgroup.
#[map]
static STATS: PerCpuArray<SysStat> = PerCpuArray::with_max_entries(MAX_SYSCALLS, 0);

/// Entry time and syscall number of each thread's call in progress (by pid_tgid).
#[map]
static INFLIGHT: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// Denials per hook (see `deny`).
#[map]
static DENIED: PerCpuArray<u64> = PerCpuArray::with_max_entries(deny::SLOTS, 0);

/// Configuration written by user space after load (see `config`): the storage device
/// (`st_dev`, 0 = none), the offsets of `file.f_inode`, `inode.i_sb` and `super_block.s_dev`
/// (from the kernel's BTF; 0 = unknown, and `file_open` then allows everything).
#[map]
static CONFIG: Array<u64> = Array::with_max_entries(config::SLOTS, 0);

/// Level of the attached cgroup in the cgroup2 hierarchy (root = 0), set at load time.
#[no_mangle]
static CGROUP_LEVEL: Global<u32> = Global::new(0);

/// The attached cgroup's id when the current task is in it or below it.
#[inline(always)]
fn current_attached() -> Option<u32> {
    // SAFETY: helpers without pointer arguments.
    let id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the key is a plain u64; the value is read by copy at once.
    if let Some(v) = unsafe { ATTACHED.get(id) } {
        return Some(*v);
    }
    let level = CGROUP_LEVEL.load();
    if level == 0 {
        return None;
    }
    // SAFETY: as above.
    let anc = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    // SAFETY: as above.
    unsafe { ATTACHED.get(anc) }.copied()
}

#[inline(always)]
fn count_denied(i: u32) {
    if let Some(p) = DENIED.get_ptr_mut(i) {
        // SAFETY: a per-CPU slot of this map; only this CPU writes it with preemption off.
        unsafe { *p += 1 };
    }
}

/// `raw_tp/sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    if current_attached().is_none() {
        return 0;
    }
    let nr: u64 = ctx.arg(1);
    if nr >= MAX_SYSCALLS as u64 {
        return 0;
    }
    if let Some(s) = STATS.get_ptr_mut(nr as u32) {
        // SAFETY: this CPU's slot; raw tracepoints run with preemption disabled.
        unsafe { (*s).calls += 1 };
    }
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = INFLIGHT.insert(tid, [now, nr], 0);
    0
}

/// `raw_tp/sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(_ctx: RawTracePointContext) -> i32 {
    if current_attached().is_none() {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: copied out at once.
    let Some(&[start, nr]) = (unsafe { INFLIGHT.get(tid) }) else {
        return 0;
    };
    let _ = INFLIGHT.remove(tid);
    if nr >= MAX_SYSCALLS as u64 || now < start {
        return 0;
    }
    let dt = now - start;
    let b = SysStat::bucket(dt);
    if let Some(s) = STATS.get_ptr_mut(nr as u32) {
        // SAFETY: this CPU's slot; `SysStat::bucket` is below `BUCKETS`.
        unsafe {
            (*s).timed += 1;
            (*s).total_ns += dt;
            (*s).hist[b] += 1;
        }
    }
    0
}

/// `cgroup/sock_create`: no AF_INET/AF_INET6 socket for the application (EPERM).
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer the kernel gives this program type.
    let family = unsafe { (*ctx.sock).family };
    if family == AF_INET || family == AF_INET6 {
        count_denied(deny::SOCK_CREATE);
        let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        warn!(
            &ctx,
            "virtuos: denied socket(family {}) to pid {}", family, pid
        );
        return 0;
    }
    1
}

#[inline(always)]
fn sock_addr_verdict(ctx: &SockAddrContext, idx: u32) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the context pointer the kernel gives this program type.
    let family = unsafe { (*sa).user_family };
    if family == AF_INET || family == AF_INET6 {
        count_denied(idx);
        let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        info!(
            ctx,
            "virtuos: denied connect/bind (hook {}) to pid {}", idx, pid
        );
        return 0;
    }
    1
}

/// `cgroup/connect4`.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, deny::CONNECT4)
}

/// `cgroup/connect6`.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, deny::CONNECT6)
}

/// `cgroup/bind4`.
#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, deny::BIND4)
}

/// `cgroup/bind6`.
#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, deny::BIND6)
}

/// True when the current task is in the attached cgroup with enforcement on.
#[inline(always)]
fn enforced() -> bool {
    matches!(current_attached(), Some(v) if v & attached::ENFORCE != 0)
}

/// `lsm/socket_create(int family, int type, int protocol, int kern)`.
#[lsm(hook = "socket_create")]
pub fn lsm_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    if kern == 0 && (family == AF_INET as i32 || family == AF_INET6 as i32) && enforced() {
        count_denied(deny::LSM_SOCKET_CREATE);
        return -EPERM;
    }
    0
}

/// `lsm_cgroup/socket_create`: the same check, attached to the cgroup by the kernel.
#[lsm_cgroup(hook = "socket_create")]
pub fn lsm_cg_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if kern == 0 && (family == AF_INET as i32 || family == AF_INET6 as i32) {
        count_denied(deny::LSM_CGROUP_SOCKET_CREATE);
        return 0; // lsm_cgroup: 0 rejects (with EPERM), 1 allows
    }
    1
}

/// `lsm/file_open(struct file *file)`: files on the storage domain's device are opened only by
/// the storage domain.
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    let cfg = |i| CONFIG.get(i).copied().unwrap_or(0);
    let (dev, off_inode, off_sb, off_dev) = (
        cfg(config::STORAGE_DEV),
        cfg(config::OFF_F_INODE),
        cfg(config::OFF_I_SB),
        cfg(config::OFF_S_DEV),
    );
    if dev == 0 || off_inode == 0 || off_sb == 0 || !enforced() {
        return 0;
    }
    let file: u64 = ctx.arg(0);
    // `file` is a BTF-typed pointer to the verifier, which refuses adding an unbounded scalar
    // to it ("math between ptr_ pointer and register with unbounded min value", Linux 6.1):
    // bound the offset (struct member offsets are far below 64 KiB).
    if off_inode > 0xffff {
        return 0;
    }
    let off_inode = off_inode & 0xffff;
    // SAFETY: bpf_probe_read_kernel checks the addresses; offsets come from the kernel's BTF.
    let file_dev = unsafe {
        let inode: u64 = match bpf_probe_read_kernel((file + off_inode) as *const u64) {
            Ok(v) => v,
            Err(_) => return 0,
        };
        let sb: u64 = match bpf_probe_read_kernel((inode + off_sb) as *const u64) {
            Ok(v) => v,
            Err(_) => return 0,
        };
        match bpf_probe_read_kernel((sb + off_dev) as *const u32) {
            Ok(v) => v,
            Err(_) => return 0,
        }
    };
    if u64::from(file_dev) == dev {
        count_denied(deny::LSM_FILE_OPEN);
        return -EPERM;
    }
    0
}

/// `lsm/uring_allowed(void)`: no io_uring for the application.
#[lsm(hook = "uring_allowed")]
pub fn lsm_uring_allowed(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(0);
    if prev != 0 {
        return prev;
    }
    if enforced() {
        count_denied(deny::LSM_URING);
        return -EPERM;
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
