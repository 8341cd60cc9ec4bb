//! Raw system calls, the seccomp safety net and the SIGSYS handler: the shim's unsafe core.
//!
//! Every system call the shim makes for itself goes through one assembly trampoline,
//! [`syscall6`], which lives in the shim's own code. The seccomp filter traps a routed system
//! call only when it is issued by one of the `syscall` instructions of libc or of the program
//! — glibc internals such as `fopen`'s `openat` or `opendir`'s `getdents64`, raw `syscall()` —
//! and the SIGSYS handler
//! emulates it through [`crate::dispatch::dispatch`], writing the result into the interrupted
//! context's `rax`. Syscalls that are never routed are allowed before the instruction-pointer
//! check, so the kernel's seccomp cache lets them through at no cost.

use std::sync::atomic::{AtomicU64, Ordering};

core::arch::global_asm!(
    ".pushsection .text.virtuos_syscall,\"ax\",@progbits",
    ".globl virtuos_syscall6",
    ".hidden virtuos_syscall6",
    ".type virtuos_syscall6,@function",
    "virtuos_syscall6:",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rsi, rdx",
    "mov rdx, rcx",
    "mov r10, r8",
    "mov r8, r9",
    "mov r9, [rsp + 8]",
    "syscall",
    "ret",
    ".size virtuos_syscall6, . - virtuos_syscall6",
    ".popsection",
);

core::arch::global_asm!(
    ".pushsection .text.virtuos_on_stack,\"ax\",@progbits",
    ".globl virtuos_call_on_stack",
    ".hidden virtuos_call_on_stack",
    ".type virtuos_call_on_stack,@function",
    // (arg: rdi, f: rsi, stack_top: rdx): calls f(arg) on the given stack, then returns on
    // the caller's.
    "virtuos_call_on_stack:",
    "push rbp",
    "mov rbp, rsp",
    "and rdx, -16",
    "mov rsp, rdx",
    "call rsi",
    "mov rsp, rbp",
    "pop rbp",
    "ret",
    ".size virtuos_call_on_stack, . - virtuos_call_on_stack",
    ".popsection",
);

extern "C" {
    fn virtuos_syscall6(nr: i64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> i64;
    fn virtuos_call_on_stack(arg: *mut u8, f: extern "C" fn(*mut u8), stack_top: *mut u8);
}

/// Runs `f` on a stack of `size` bytes from the shim's allocator, then frees it: for work
/// that may be reached on a small stack (a `posix_spawn` child's 32 KiB, a signal handler's
/// alternate stack). Falls back to the current stack when no memory is left.
pub fn on_big_stack<R, F: FnOnce() -> R>(size: usize, f: F) -> R {
    struct Call<F, R> {
        f: Option<F>,
        r: Option<R>,
    }
    extern "C" fn run<F: FnOnce() -> R, R>(p: *mut u8) {
        // SAFETY: `p` is the `Call` that `on_big_stack` passed, alive for this call.
        let c = unsafe { &mut *(p as *mut Call<F, R>) };
        if let Some(f) = c.f.take() {
            c.r = Some(f());
        }
    }
    let mut stack: Vec<u8> = Vec::new();
    if stack.try_reserve_exact(size).is_err() {
        return f();
    }
    let mut call = Call {
        f: Some(f),
        r: None,
    };
    // SAFETY: the stack is `size` writable bytes owned here until after the call; the
    // trampoline switches to its top, calls `run` (a plain extern "C" function, which
    // unwinding cannot leave: a panic aborts at the extern "C" boundary) and switches back.
    unsafe {
        let top = stack.as_mut_ptr().add(size);
        virtuos_call_on_stack(&mut call as *mut Call<F, R> as *mut u8, run::<F, R>, top);
    }
    drop(stack);
    call.r.expect("the function ran")
}

/// Makes a system call from the trampoline; returns the raw result (`-errno` on failure).
pub fn syscall6(nr: i64, a: [u64; 6]) -> i64 {
    // SAFETY: the trampoline is a plain `syscall` instruction with the Linux x86-64 calling
    // convention. The caller is responsible for the arguments exactly as for the syscall;
    // every call site in this crate passes what the application passed, or its own buffers.
    unsafe { virtuos_syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// Shorthand for calls with fewer arguments.
pub fn sys(nr: i64, args: &[u64]) -> i64 {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    syscall6(nr, a)
}

thread_local! {
    /// The calling process's pid while this thread runs a dispatched call ([`with_pid`]), so
    /// that one routed call asks the kernel at most once (reading a path, checking for a
    /// shared child, each want it): 0 outside a call, -1 in one that has not asked yet. (A
    /// `Cell` without a destructor: no lazy registration on first use.)
    static CALL_PID: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// This process's pid: the one recorded for the call this thread is running, else the
/// kernel's answer.
pub fn getpid() -> i64 {
    CALL_PID.with(|c| match c.get() {
        0 => sys(libc::SYS_getpid, &[]),
        -1 => {
            let me = sys(libc::SYS_getpid, &[]);
            c.set(me);
            me
        }
        p => p,
    })
}

/// Runs `f` (one dispatched call) with this process's pid recorded for it once asked. A
/// vfork child that runs on this thread's memory records its own pid for its own calls and
/// puts the parent's state back when they return; a nested call (a handler that
/// interrupted one) asks the kernel again, since the handler may have forked.
pub fn with_pid<R>(f: impl FnOnce() -> R) -> R {
    let old = CALL_PID.with(|c| c.replace(-1));
    let r = f();
    CALL_PID.with(|c| c.set(old));
    r
}

/// Forgets the pid of calls this thread left for good (a handler `longjmp`ed out of them).
pub fn abandon_call_pid() {
    CALL_PID.with(|c| c.set(0));
}

/// In a fork child (its atfork handler): a call this thread was inside (a handler that
/// forked interrupted it) asks for the child's pid again.
pub fn forked() {
    CALL_PID.with(|c| {
        if c.get() != 0 {
            c.set(-1);
        }
    });
}

/// Reads the local symlink `path` (without its NUL) into `buf`: its length, or the errno
/// (EINVAL for an existing file that is not a link).
pub fn readlink(path: &[u8], buf: &mut [u8]) -> Result<usize, i32> {
    let mut z = [0u8; crate::paths::PATH_MAX + 1];
    if path.len() >= z.len() {
        return Err(libc::ENAMETOOLONG);
    }
    z[..path.len()].copy_from_slice(path);
    let n = sys(
        libc::SYS_readlinkat,
        &[
            libc::AT_FDCWD as u64,
            z.as_ptr() as u64,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
        ],
    );
    if n < 0 {
        Err(-n as i32)
    } else {
        Ok(n as usize)
    }
}

/// Number of system calls the SIGSYS handler emulated (the slow path), for telemetry.
pub static TRAPPED: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------------
// The filter (built by shim-core's one seccomp module).

/// SECCOMP_RET_DATA of our traps, seen as `si_errno` in the handler.
pub const TRAP_DATA: u32 = shim_core::seccomp::TRAP_DATA;

/// One executable segment of libc or of the main program, where un-interposed routed calls
/// come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Named by its `syscall` instructions rather than by its range: libc, and a main program
    /// that the dynamic loader mapped (`ld.so PROGRAM`). Both lie where mmap places code, as
    /// do a later image's loader, libraries and shim; a main program mapped by the kernel lies
    /// in the region the kernel keeps for programs (a PIE base, or the fixed address of a
    /// non-PIE), where nothing of a later image runs before its shim's handler is installed,
    /// so its range is safe to trap and costs four instructions instead of one per site.
    pub exact: bool,
    /// Mapped readable (`PF_R`), so its instructions can be scanned.
    pub readable: bool,
}

/// Executable segments of libc and of the main program.
pub fn code_segments() -> Vec<Segment> {
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of the callback and
        // `data` is the Vec we passed in.
        unsafe {
            let out = &mut *(data as *mut Vec<Segment>);
            let info = &*info;
            let name = if info.dlpi_name.is_null() {
                &b""[..]
            } else {
                std::ffi::CStr::from_ptr(info.dlpi_name).to_bytes()
            };
            let is_main = name.is_empty();
            let base = name.rsplit(|&c| c == b'/').next().unwrap_or(b"");
            if !(is_main || base.starts_with(b"libc.so")) {
                return 0;
            }
            // The kernel mapped the main program if its headers are the ones it reported.
            let by_kernel =
                is_main && info.dlpi_phdr as libc::c_ulong == libc::getauxval(libc::AT_PHDR);
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                    let start = info.dlpi_addr + ph.p_vaddr;
                    out.push(Segment {
                        start,
                        end: start + ph.p_memsz,
                        exact: !by_kernel,
                        readable: ph.p_flags & libc::PF_R != 0 && ph.p_filesz >= ph.p_memsz,
                    });
                }
            }
            0
        }
    }
    let mut out: Vec<Segment> = Vec::new();
    // SAFETY: the callback only reads the headers and appends to `out`.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut out as *mut _ as *mut libc::c_void) };
    out
}

/// The return address of every `syscall` instruction (the bytes `0f 05`) in `seg`: what the
/// kernel reports as a call's instruction pointer. A pair of bytes that only looks like one
/// (inside a longer instruction or in constant data) adds a site that never makes a call,
/// which is harmless.
fn syscall_sites(seg: Segment, out: &mut Vec<u64>) {
    let len = (seg.end - seg.start) as usize;
    let mut off = 0usize;
    while off + 2 <= len {
        // SAFETY: [start, end) is a readable, file-backed PT_LOAD segment of libc or of the
        // main program (checked by `code_segments`), mapped for the process's life (neither
        // is ever unloaded); memmem reads only inside [start + off, end).
        let hit = unsafe {
            libc::memmem(
                (seg.start as usize + off) as *const libc::c_void,
                len - off,
                b"\x0f\x05".as_ptr().cast(),
                2,
            )
        };
        if hit.is_null() {
            break;
        }
        let at = hit as usize - seg.start as usize;
        out.push(seg.start + at as u64 + 2);
        off = at + 1;
    }
}

/// What the trap filter names: the `syscall` sites of every exact, readable segment, and the
/// whole range of the rest. Past [`MAX_SITES`] sites the biggest segments are trapped by
/// range (the filter would not fit the kernel's limit).
///
/// [`MAX_SITES`]: shim_core::seccomp::MAX_SITES
pub fn trap_targets(segments: &[Segment]) -> (Vec<u64>, Vec<(u64, u64)>) {
    let mut per: Vec<(Segment, Vec<u64>)> = segments
        .iter()
        .map(|&seg| {
            let mut v = Vec::new();
            if seg.exact && seg.readable {
                syscall_sites(seg, &mut v);
            }
            (seg, v)
        })
        .collect();
    per.sort_by_key(|(_, v)| v.len());
    let (mut sites, mut ranges) = (Vec::new(), Vec::new());
    for (seg, v) in per {
        if seg.exact && seg.readable && sites.len() + v.len() <= shim_core::seccomp::MAX_SITES {
            sites.extend(v);
        } else {
            ranges.push((seg.start, seg.end));
        }
    }
    (sites, ranges)
}

/// Installs the filter for this thread and, with TSYNC, every other thread of the process.
///
/// Each image adds a filter (seccomp filters cannot be removed, and the kernel caps the
/// instructions of all a process's filters together at 32,768): when the site filter no longer
/// fits under an ancestor's filters, the much smaller range filter is tried instead.
pub fn install_filter(nrs: &[u32]) -> Result<(), i64> {
    let segments = code_segments();
    let (sites, ranges) = trap_targets(&segments);
    let r = sys(
        libc::SYS_prctl,
        &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
    );
    if r < 0 {
        return Err(r);
    }
    let r = install_prog(&shim_core::seccomp::trap_filter(nrs, &sites, &ranges));
    if r != -(libc::ENOMEM as i64) {
        return if r == 0 { Ok(()) } else { Err(r) };
    }
    let all: Vec<(u64, u64)> = segments.iter().map(|s| (s.start, s.end)).collect();
    match install_prog(&shim_core::seccomp::trap_filter(nrs, &[], &all)) {
        0 => Ok(()),
        r => Err(r),
    }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, TSYNC, prog)`: 0 or a negative errno.
fn install_prog(prog: &[libc::sock_filter]) -> i64 {
    if prog.len() > shim_core::seccomp::MAX_INSNS {
        return -(libc::ENOMEM as i64);
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    let r = sys(
        libc::SYS_seccomp,
        &[
            libc::SECCOMP_SET_MODE_FILTER as u64,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog as u64,
        ],
    );
    // TSYNC reports a thread it could not synchronise by its (positive) id.
    if r > 0 {
        -(libc::EBUSY as i64)
    } else {
        r
    }
}

// ---------------------------------------------------------------------------------------------
// The handler.

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers to an SA_SIGINFO handler;
    // they stay valid for the handler's duration and nothing else accesses them meanwhile.
    unsafe {
        let errno_saved = *libc::__errno_location();
        // si_errno carries SECCOMP_RET_DATA for seccomp traps.
        if (*info).si_errno as u32 != TRAP_DATA {
            return;
        }
        let uc = ctx as *mut libc::ucontext_t;
        let g = &mut (*uc).uc_mcontext.gregs;
        let nr = g[libc::REG_RAX as usize];
        let args = [
            g[libc::REG_RDI as usize] as u64,
            g[libc::REG_RSI as usize] as u64,
            g[libc::REG_RDX as usize] as u64,
            g[libc::REG_R10 as usize] as u64,
            g[libc::REG_R8 as usize] as u64,
            g[libc::REG_R9 as usize] as u64,
        ];
        TRAPPED.fetch_add(1, Ordering::Relaxed);
        if nr == libc::SYS_rt_sigprocmask {
            // The mask in effect after the handler is the one sigreturn restores from the
            // context, so the call is emulated on the context's copy (never blocking SIGSYS).
            // The kernel's sigset for rt_sigprocmask is 8 bytes: the first word of sigset_t
            // (the context's, valid and aligned as above).
            let word = &mut *(&mut (*uc).uc_sigmask as *mut libc::sigset_t as *mut u64);
            g[libc::REG_RAX as usize] = crate::signals::procmask_in_context(word, args);
        } else {
            g[libc::REG_RAX as usize] = crate::dispatch::dispatch(nr, args);
        }
        *libc::__errno_location() = errno_saved;
    }
}

/// The SIGSYS bit in a kernel signal mask word.
pub const SIGSYS_BIT: u64 = 1 << (libc::SIGSYS - 1);

/// Installs the SIGSYS handler (SA_NODEFER so a trap inside a handler still works).
pub fn install_sigsys_handler() -> Result<(), i64> {
    // SAFETY: a zeroed sigaction is valid; we set the handler, flags and an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;
    // SAFETY: `sa` is a valid sigaction and the old-action pointer may be null.
    let r = unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) };
    if r != 0 {
        return Err(-(libc::EINVAL as i64));
    }
    Ok(())
}

/// Copies `out.len()` bytes of the application's memory at `p` into `out` through the kernel
/// (`process_vm_readv` on this process): false, and nothing read, for an unreadable range.
pub fn read_user(p: u64, out: &mut [u8]) -> bool {
    if out.is_empty() {
        return true;
    }
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    let remote = libc::iovec {
        iov_base: p as *mut libc::c_void,
        iov_len: out.len(),
    };
    let pid = getpid();
    sys(
        libc::SYS_process_vm_readv,
        &[
            pid as u64,
            &local as *const libc::iovec as u64,
            1,
            &remote as *const libc::iovec as u64,
            1,
            0,
        ],
    ) == out.len() as i64
}

/// Why a string argument could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrError {
    /// Not readable: EFAULT.
    Fault,
    /// No terminator within the limit.
    TooLong,
}

/// Reads a NUL-terminated string from the application (at most `max` bytes before the NUL).
///
/// Every byte up to the terminator is first copied by the kernel (`process_vm_readv` on this
/// process, the user-space `copy_from_user`), so an unreadable address is EFAULT, as from the
/// kernel, never a SIGSEGV in the shim; the returned slice then views the checked bytes.
pub fn c_str<'a>(p: u64, max: usize) -> Result<&'a [u8], StrError> {
    if p == 0 {
        return Err(StrError::Fault);
    }
    let pid = getpid();
    let mut chunk = [0u8; 256];
    let mut at = 0usize;
    while at <= max {
        let want = chunk.len().min(max + 1 - at);
        let local = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: want,
        };
        let remote = libc::iovec {
            iov_base: (p + at as u64) as *mut libc::c_void,
            iov_len: want,
        };
        // A read that crosses into an unmapped page returns the bytes before it.
        let n = sys(
            libc::SYS_process_vm_readv,
            &[
                pid as u64,
                &local as *const libc::iovec as u64,
                1,
                &remote as *const libc::iovec as u64,
                1,
                0,
            ],
        );
        if n <= 0 {
            return Err(StrError::Fault);
        }
        if let Some(z) = chunk[..n as usize].iter().position(|&c| c == 0) {
            // SAFETY: the kernel just read every byte of `p .. p + at + z` (and the NUL) from
            // this process: they are mapped and readable, as the system call requires its
            // path argument to be; we view exactly those bytes.
            return Ok(unsafe { std::slice::from_raw_parts(p as *const u8, at + z) });
        }
        at += n as usize;
    }
    Err(StrError::TooLong)
}

/// The application's buffer `p..p+len` as a mutable byte slice.
pub fn user_buf_mut<'a>(p: u64, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the application passed this buffer for the kernel to write `len` bytes into; it
    // must be writable for that long, exactly as the system call requires.
    unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) }
}

/// The application's buffer `p..p+len` as a byte slice.
pub fn user_buf<'a>(p: u64, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the application passed this buffer for the kernel to read `len` bytes from.
    unsafe { std::slice::from_raw_parts(p as *const u8, len) }
}

/// Reads the application's `struct iovec` array.
pub fn iovecs<'a>(p: u64, n: usize) -> &'a [libc::iovec] {
    if n == 0 {
        return &[];
    }
    // SAFETY: the application passed `n` iovecs for the kernel to read.
    unsafe { std::slice::from_raw_parts(p as *const libc::iovec, n) }
}

/// Writes a value of plain type `T` into application memory at `p`.
pub fn put<T: Copy>(p: u64, v: T) {
    // SAFETY: the application passed this pointer for the kernel to store a `T` into.
    unsafe { std::ptr::write_unaligned(p as *mut T, v) }
}

/// Reads a value of plain type `T` from application memory at `p`.
pub fn get<T: Copy>(p: u64) -> T {
    // SAFETY: the application passed this pointer for the kernel to read a `T` from.
    unsafe { std::ptr::read_unaligned(p as *const T) }
}

/// `errno` of the calling thread.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trampoline_makes_real_syscalls() {
        assert_eq!(sys(libc::SYS_getpid, &[]), std::process::id() as i64);
        assert_eq!(
            sys(libc::SYS_close, &[u32::MAX as u64]),
            -(libc::EBADF as i64)
        );
    }

    #[test]
    fn code_segments_hold_libc_and_the_program() {
        let r = code_segments();
        assert!(r.len() >= 2);
        let here = code_segments as *const () as u64;
        // The test binary is the "main program" here.
        assert!(r
            .iter()
            .any(|s| s.start <= here && here < s.end && s.readable));
        // The kernel mapped the test binary: its range is trapped, libc's sites are named.
        assert!(r
            .iter()
            .any(|s| s.start <= here && here < s.end && !s.exact));
        let f = libc::getppid as *const () as u64;
        assert!(r.iter().any(|s| s.start <= f && f < s.end && s.exact));
    }

    /// How many site filters one process can stack (each image of an exec chain adds one).
    fn stack_depth() -> i64 {
        use shim_core::table::Class;
        let nrs =
            shim_core::table::numbers(&[Class::Storage, Class::Process, Class::Signal, Class::Net]);
        // The trampoline is inside the test binary's range, so the range stays out (it would
        // trap the child's own calls); a range costs six instructions.
        let (sites, _) = trap_targets(&code_segments());
        let prog = shim_core::seccomp::trap_filter(&nrs, &sites, &[]);
        let mut fds = [0i32; 2];
        assert_eq!(sys(libc::SYS_pipe2, &[fds.as_mut_ptr() as u64, 0]), 0);
        let pid = sys(libc::SYS_fork, &[]);
        if pid == 0 {
            // Only the trampoline from here on: libc's routed calls would trap.
            sys(
                libc::SYS_prctl,
                &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            );
            let mut n = 0u64;
            while install_prog(&prog) == 0 {
                n += 1;
            }
            sys(
                libc::SYS_write,
                &[fds[1] as u64, &n as *const u64 as u64, 8],
            );
            sys(libc::SYS_exit_group, &[0]);
        }
        sys(libc::SYS_close, &[fds[1] as u64]);
        let mut n = 0u64;
        let got = sys(
            libc::SYS_read,
            &[fds[0] as u64, &mut n as *mut u64 as u64, 8],
        );
        sys(libc::SYS_wait4, &[pid as u64, 0, 0, 0]);
        sys(libc::SYS_close, &[fds[0] as u64]);
        assert_eq!(got, 8, "the child died");
        n as i64
    }

    /// Each image of an exec chain stacks a filter: pyenv's shims alone are seven deep, a
    /// recursive make with a shell between levels about fifteen.
    #[test]
    fn exec_chains_stack_filters_deep() {
        let n = stack_depth();
        assert!(n >= 36, "only {n} filters fit");
    }

    #[test]
    fn sites_are_the_syscall_instructions_of_libc_and_the_program() {
        let segs = code_segments();
        let (sites, ranges) = trap_targets(&segs);
        let here = code_segments as *const () as u64;
        assert!(
            ranges.iter().any(|&(s, e)| s <= here && here < e),
            "{ranges:x?}"
        );
        // libc's getppid wrapper is one `syscall` instruction: its return address is a site.
        let f = libc::getppid as *const () as u64;
        assert!(
            sites.iter().any(|&s| s > f && s <= f + 32),
            "no site in getppid at {f:#x}"
        );
        // The shim's own trampoline is never a site (in this test it is inside the program's
        // range; in a program it is in the shim's library, which the filter never names).
        let t = virtuos_syscall6 as *const () as u64;
        assert!(!sites.iter().any(|&s| s > t && s <= t + 32));
        for s in &sites {
            assert!(segs.iter().any(|g| g.start + 2 <= *s && *s <= g.end));
            // SAFETY: `s` - 2 lies inside a readable code segment (checked above).
            let b = unsafe { std::slice::from_raw_parts((*s - 2) as *const u8, 2) };
            assert_eq!(b, [0x0f, 0x05]);
        }
    }
}
