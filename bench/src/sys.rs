//! Raw system interfaces the benchmarks need: CPU affinity, futexes, seccomp filters and
//! listeners, the SIGSYS trap handler, `uname`, clock ticks and signals to processes.
//!
//! Every `unsafe` block of the crate lives in this module; callers get safe wrappers that
//! report failures as [`io::Error`].

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Number of CPUs currently online (at least 1).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf takes no pointers and has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// CPUs the calling thread may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of exactly the size passed; pid 0 means the
    // calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    // SAFETY: every index is below CPU_SETSIZE, so CPU_ISSET stays inside the set's bit array.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The pair of CPUs the benchmarks pin to: (client, other side). `None` when fewer than two
/// CPUs are online or allowed, in which case nothing is pinned.
pub fn cpu_pair() -> Option<(usize, usize)> {
    if online_cpus() < 2 {
        return None;
    }
    match allowed_cpus() {
        Ok(cpus) if cpus.len() >= 2 => Some((cpus[0], cpus[1])),
        Ok(_) => None,
        Err(err) => {
            tracing::warn!("sched_getaffinity failed, not pinning: {err}");
            None
        }
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    if cpu >= max {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` was checked above, so the bit lies inside the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of exactly the size passed; pid 0 means the calling
    // thread, so only this thread's affinity changes.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the CPU affinity of thread `tid` (a thread id, or a process id for its main thread) to
/// `cpus`.
pub fn set_thread_affinity(tid: u32, cpus: &[usize]) -> io::Result<()> {
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    let tid = libc::pid_t::try_from(tid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if cpus.is_empty() || cpus.iter().any(|&c| c >= max) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: every `cpu < CPU_SETSIZE` was checked above, so the bit lies inside the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of exactly the size passed; a positive tid names one
    // thread.
    let rc = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to `cpu` if it is `Some`, logging (not failing) on error.
pub fn maybe_pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(err) = pin_current_thread(cpu) {
            tracing::warn!("could not pin thread to CPU {cpu}: {err}");
        }
    }
}

/// `getppid` through the raw system call (glibc does not cache it), with `tag` in the first
/// argument register. The kernel ignores the argument, but seccomp filters and listeners see
/// it in `seccomp_data.args[0]`.
#[inline]
pub fn getppid_tagged(tag: u64) -> io::Result<i64> {
    // SAFETY: getppid takes no pointers; the extra integer argument is ignored by the kernel.
    let r = unsafe { libc::syscall(libc::SYS_getppid, tag) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `getppid` through the raw system call.
#[inline]
pub fn getppid_raw() -> io::Result<i64> {
    getppid_tagged(0)
}

/// `FUTEX_WAIT` (shared, not `FUTEX_PRIVATE_FLAG`, to pay the cross-process cost): sleeps while
/// `*word == expected`. Returns `Ok` on wake-up, on a value mismatch (`EAGAIN`) and on `EINTR`;
/// callers re-check the word.
pub fn futex_wait(word: &AtomicU32, expected: u32) -> io::Result<()> {
    // SAFETY: `word` is a live, aligned u32 for the whole call; a null timeout means wait
    // without a deadline; the remaining arguments are unused by FUTEX_WAIT.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
    if r == -1 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(()),
            _ => Err(err),
        }
    } else {
        Ok(())
    }
}

/// `FUTEX_WAKE` (shared variant): wakes up to `n` waiters on `word`; returns how many woke.
pub fn futex_wake(word: &AtomicU32, n: i32) -> io::Result<usize> {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses it as a key.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(r).unwrap_or(0))
    }
}

// ----- seccomp ------------------------------------------------------------------------------

/// `AUDIT_ARCH_X86_64` from `<linux/audit.h>` (EM_X86_64 | __AUDIT_ARCH_64BIT | LE).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
/// `AUDIT_ARCH_AARCH64` from `<linux/audit.h>`.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;

/// `_IOWR(type, nr, size)` from `<asm-generic/ioctl.h>`.
const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    (3u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `SECCOMP_IOCTL_NOTIF_RECV` = `_IOWR('!', 0, struct seccomp_notif)`.
const SECCOMP_IOCTL_NOTIF_RECV: u64 = iowr(b'!', 0, size_of::<libc::seccomp_notif>());
/// `SECCOMP_IOCTL_NOTIF_SEND` = `_IOWR('!', 1, struct seccomp_notif_resp)`.
const SECCOMP_IOCTL_NOTIF_SEND: u64 = iowr(b'!', 1, size_of::<libc::seccomp_notif_resp>());

// The kernel ABI sizes these ioctl numbers encode.
const _: () = assert!(size_of::<libc::seccomp_notif>() == 80);
const _: () = assert!(size_of::<libc::seccomp_notif_resp>() == 24);
const _: () = assert!(SECCOMP_IOCTL_NOTIF_RECV == 0xc050_2100);
const _: () = assert!(SECCOMP_IOCTL_NOTIF_SEND == 0xc018_2101);

const fn bpf_stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn bpf_jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A classic BPF seccomp program: kill the process on a foreign architecture, return `action`
/// for system call `nr`, allow everything else.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn filter_program(nr: libc::c_long, action: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let arch_off = offset_of!(libc::seccomp_data, arch) as u32;
    let nr_off = offset_of!(libc::seccomp_data, nr) as u32;
    vec![
        bpf_stmt(BPF_LD | BPF_W | BPF_ABS, arch_off),
        bpf_jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_NATIVE, 1, 0),
        bpf_stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        bpf_stmt(BPF_LD | BPF_W | BPF_ABS, nr_off),
        bpf_jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1),
        bpf_stmt(BPF_RET | BPF_K, action),
        bpf_stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Sets `PR_SET_NO_NEW_PRIVS` and installs `prog` as a seccomp filter on the calling thread
/// only (no `SECCOMP_FILTER_FLAG_TSYNC`). The filter stays for the thread's lifetime, so the
/// caller must be a dedicated thread that exits afterwards. Returns the seccomp(2) result
/// (a listener fd when `flags` has `SECCOMP_FILTER_FLAG_NEW_LISTENER`, else 0).
fn install_filter(prog: &[libc::sock_filter], flags: libc::c_ulong) -> io::Result<libc::c_long> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; it affects this thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which is alive for the call; the kernel copies the
    // program and does not write through the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Installs, on the calling thread only, a filter that sends system call `nr` to a user-space
/// supervisor (`SECCOMP_RET_USER_NOTIF`) and returns the listener fd.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn install_user_notif_filter(nr: libc::c_long) -> io::Result<OwnedFd> {
    let prog = filter_program(nr, libc::SECCOMP_RET_USER_NOTIF);
    let fd = install_filter(&prog, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: seccomp(2) with NEW_LISTENER returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Installs, on the calling thread only, a filter that raises SIGSYS (`SECCOMP_RET_TRAP`) for
/// system call `nr`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn install_trap_filter(nr: libc::c_long) -> io::Result<()> {
    let prog = filter_program(nr, libc::SECCOMP_RET_TRAP);
    install_filter(&prog, 0).map(drop)
}

/// An all-zero `seccomp_notif`, as `SECCOMP_IOCTL_NOTIF_RECV` requires (the kernel rejects a
/// buffer with any non-zero byte with `EINVAL`).
pub fn zeroed_notif() -> libc::seccomp_notif {
    libc::seccomp_notif {
        id: 0,
        pid: 0,
        flags: 0,
        data: libc::seccomp_data {
            nr: 0,
            arch: 0,
            instruction_pointer: 0,
            args: [0; 6],
        },
    }
}

/// `SECCOMP_IOCTL_NOTIF_RECV`: zeroes `notif` and blocks until a notification arrives.
pub fn notif_recv(fd: BorrowedFd<'_>, notif: &mut libc::seccomp_notif) -> io::Result<()> {
    *notif = zeroed_notif();
    // SAFETY: `notif` is a valid, writable seccomp_notif of the size encoded in the request.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_RECV as libc::Ioctl,
            notif as *mut libc::seccomp_notif,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SECCOMP_IOCTL_NOTIF_SEND`: answers a notification.
pub fn notif_send(fd: BorrowedFd<'_>, resp: &libc::seccomp_notif_resp) -> io::Result<()> {
    // SAFETY: `resp` is a valid seccomp_notif_resp of the size encoded in the request; the
    // kernel only reads it.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_SEND as libc::Ioctl,
            resp as *const libc::seccomp_notif_resp,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ----- SIGSYS trap --------------------------------------------------------------------------

/// Value the SIGSYS handler writes into the trapped call's return register.
static TRAP_VALUE: AtomicI64 = AtomicI64::new(0);
/// Number of seccomp traps the handler emulated.
static TRAP_COUNT: AtomicU64 = AtomicU64::new(0);

/// `si_code` of a seccomp-generated SIGSYS (`SYS_SECCOMP` in `<asm-generic/siginfo.h>`).
const SYS_SECCOMP: libc::c_int = 1;

#[cfg(target_arch = "x86_64")]
extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel calls an SA_SIGINFO handler with a valid siginfo_t.
    let code = unsafe { (*info).si_code };
    if code != SYS_SECCOMP {
        return;
    }
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: for an SA_SIGINFO handler `ctx` is the valid, writable ucontext_t of the
    // interrupted thread; the kernel restores the registers from it at sigreturn, so the
    // value written to RAX becomes the trapped system call's result. Only atomics and plain
    // stores are used, so the handler is async-signal-safe.
    unsafe {
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = TRAP_VALUE.load(Ordering::Relaxed);
    }
    TRAP_COUNT.fetch_add(1, Ordering::Relaxed);
}

/// Number of seccomp traps emulated so far by the SIGSYS handler.
pub fn trap_count() -> u64 {
    TRAP_COUNT.load(Ordering::Relaxed)
}

/// Restores the previous SIGSYS disposition when dropped.
pub struct SigsysGuard {
    old: libc::sigaction,
}

impl Drop for SigsysGuard {
    fn drop(&mut self) {
        // SAFETY: `old` is the disposition sigaction(2) returned when the guard was made.
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &self.old, std::ptr::null_mut()) };
        if rc != 0 {
            tracing::warn!(
                "restoring SIGSYS disposition failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Installs a process-wide SIGSYS handler that makes every seccomp-trapped system call
/// return `value`. Only threads with a `SECCOMP_RET_TRAP` filter ever receive it.
#[cfg(target_arch = "x86_64")]
pub fn install_sigsys_handler(value: i64) -> io::Result<SigsysGuard> {
    TRAP_VALUE.store(value, Ordering::Relaxed);
    // SAFETY: sigaction is plain data; all zeroes is a valid (default) disposition.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    sa.sa_sigaction = sigsys_handler as Handler as libc::sighandler_t;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa_mask is a valid sigset_t owned by `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: as above, all zeroes is a valid sigaction to receive the old disposition.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid; the handler is an SA_SIGINFO-signature extern "C" fn
    // that stays alive for the program's lifetime and is async-signal-safe.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &sa, &mut old) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SigsysGuard { old })
}

/// The SIGSYS emulation is only written for x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn install_sigsys_handler(_value: i64) -> io::Result<SigsysGuard> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

// ----- uname ----------------------------------------------------------------------------------

/// `uname(2)`'s release and nodename.
pub fn uname_release_nodename() -> io::Result<(String, String)> {
    // SAFETY: utsname is plain character arrays; all zeroes is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    let rc = unsafe { libc::uname(&mut uts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        field_to_string(&uts.release),
        field_to_string(&uts.nodename),
    ))
}

fn field_to_string(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

// ----- processes ------------------------------------------------------------------------------

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of /proc/<pid>/stat CPU times.
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf takes no pointers and has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
}

/// Sends `signal` to process `pid` (`kill(2)`); `pid` must be positive (one process, never a
/// group or every process).
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: kill takes no pointers; a positive pid names exactly one process.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futex_wake_without_waiters_is_zero() {
        let word = AtomicU32::new(0);
        assert_eq!(futex_wake(&word, 1).unwrap(), 0);
        // Value mismatch returns at once instead of sleeping.
        futex_wait(&word, 1).unwrap();
    }

    #[test]
    fn getppid_matches_std() {
        assert_eq!(
            getppid_raw().unwrap(),
            i64::from(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn process_helpers() {
        assert!(clock_ticks_per_s() > 0);
        send_signal(std::process::id(), 0).unwrap();
        assert!(send_signal(0, 0).is_err());
    }

    #[test]
    fn uname_has_release() {
        let (release, _) = uname_release_nodename().unwrap();
        assert!(!release.is_empty());
    }
}
