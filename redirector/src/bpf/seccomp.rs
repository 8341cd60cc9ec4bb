//! The seccomp filter `run --enforce` installs in the program before exec: `io_uring_setup`,
//! `io_uring_enter` and `io_uring_register` fail with EPERM, so the application cannot reach
//! the devices through io_uring behind the shim's back (there is no cgroup hook for io_uring,
//! and this kernel refuses the BPF LSM `uring_allowed` variant).

/// io_uring system call numbers (x86_64; the same for x32 with `__X32_SYSCALL_BIT`).
pub const IO_URING_SYSCALLS: [u32; 3] = [425, 426, 427];
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The classic BPF program: other architectures pass untouched (this is an x86_64 build);
/// the io_uring calls (native and x32 numbers) get `SECCOMP_RET_ERRNO | EPERM`.
pub fn io_uring_filter() -> Vec<libc::sock_filter> {
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut f = vec![
        stmt(ld, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ld, 0), // seccomp_data.nr
    ];
    let nrs: Vec<u32> = IO_URING_SYSCALLS
        .iter()
        .flat_map(|n| [*n, n | X32_SYSCALL_BIT])
        .collect();
    let n = nrs.len();
    for (i, nr) in nrs.iter().enumerate() {
        // match: jump over the remaining compares and the ALLOW to the ERRNO return.
        f.push(jeq(*nr, (n - i) as u8, 0));
    }
    f.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    f.push(stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    f
}

/// Installs `filter` in the calling thread. Async-signal-safe (no allocation), for a
/// `pre_exec` hook: the filter vector is built before the fork. Sets `no_new_privs` only when
/// the kernel insists (without CAP_SYS_ADMIN), so setuid programs keep working under root.
pub fn install(filter: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    let set = |p: &libc::sock_fprog| {
        // SAFETY: `p` points at a valid sock_fprog whose filter outlives the call.
        unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                p as *const libc::sock_fprog,
            )
        }
    };
    if set(&prog) == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EACCES) {
        return Err(e);
    }
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if set(&prog) == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_setup_fails_with_eperm_under_the_filter() {
        let filter = io_uring_filter();
        // SAFETY: fork in a test; the child only makes raw syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                if install(&filter).is_err() {
                    return 10;
                }
                let mut params = [0u8; 120];
                // SAFETY: io_uring_setup with a valid params buffer.
                let r = unsafe { libc::syscall(425, 1, params.as_mut_ptr()) };
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if r != -1 || errno != libc::EPERM {
                    return 11;
                }
                // SAFETY: getppid has no arguments.
                if unsafe { libc::getppid() } <= 0 {
                    return 12;
                }
                0
            })();
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "child reported failure");
    }
}
