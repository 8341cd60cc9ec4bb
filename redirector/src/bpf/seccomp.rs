//! The seccomp filter `run --enforce` installs in the program before exec: `io_uring_setup`,
//! `io_uring_enter` and `io_uring_register` fail with EPERM, so the application cannot reach
//! the devices through io_uring behind the shim's back (there is no cgroup hook for io_uring,
//! and this kernel refuses the BPF LSM `uring_allowed` variant). The filter itself is built in
//! shim-core's seccomp module, with every other filter virtuos installs.

/// The classic BPF program, built in shim-core's one seccomp module (with `seccompiler`):
/// the io_uring calls (native and x32 numbers) get `SECCOMP_RET_ERRNO | EPERM`.
pub fn io_uring_filter() -> Vec<libc::sock_filter> {
    shim_core::seccomp::io_uring_filter().expect("a fixed filter that seccompiler compiles")
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
