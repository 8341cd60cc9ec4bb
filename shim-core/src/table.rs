//! The one table of routed system calls.
//!
//! Both front ends take their lists from here: the preload shim's seccomp safety net traps
//! exactly these calls when they come from libc's or the program's own code, and the
//! supervised mode's filter turns exactly these into user notifications. A call added here is
//! seen by both; neither keeps a list of its own.

/// What a routed call is about, which decides when a front end needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Names a path or a file descriptor that may live in the storage domain.
    Storage,
    /// A socket call, or a readiness wait that may involve a network-domain socket.
    Net,
    /// Changes the process's fd space, cwd, image or limits: the shim keeps its own state
    /// (fd table, reserved descriptors, exec hand-over) in step.
    Process,
    /// Signal masks and handlers: the preload shim keeps SIGSYS deliverable and learns which
    /// handlers restart; the supervised mode has no business with them.
    Signal,
}

/// One routed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The x86-64 system call number.
    pub nr: i64,
    /// Its name, for reports.
    pub name: &'static str,
    /// What it is about.
    pub class: Class,
}

macro_rules! table {
    ($( $class:ident : $( $name:ident ),* ; )*) => {
        /// Every routed call.
        pub const ROUTED: &[Routed] = &[
            $( $( Routed {
                nr: libc::$name,
                name: {
                    let full = stringify!($name);
                    // "SYS_openat" -> "openat"
                    let b = full.as_bytes();
                    match std::str::from_utf8(b.split_at(4).1) {
                        Ok(s) => s,
                        Err(_) => full,
                    }
                },
                class: Class::$class,
            }, )* )*
        ];
    };
}

table! {
    Storage: SYS_open, SYS_creat, SYS_openat, SYS_openat2, SYS_read, SYS_write, SYS_pread64,
        SYS_pwrite64, SYS_readv, SYS_writev, SYS_preadv, SYS_pwritev, SYS_preadv2, SYS_pwritev2,
        SYS_lseek, SYS_fstat, SYS_newfstatat, SYS_stat, SYS_lstat, SYS_statx, SYS_getdents64,
        SYS_getdents, SYS_fsync, SYS_fdatasync, SYS_ftruncate, SYS_fchmod, SYS_fchown,
        SYS_fallocate, SYS_fstatfs, SYS_fadvise64, SYS_readahead, SYS_sync_file_range,
        SYS_flock, SYS_ioctl, SYS_fgetxattr, SYS_flistxattr, SYS_fsetxattr, SYS_fremovexattr,
        SYS_copy_file_range, SYS_sendfile, SYS_splice, SYS_tee, SYS_vmsplice, SYS_mmap,
        SYS_access, SYS_faccessat, SYS_faccessat2, SYS_mkdir, SYS_mkdirat, SYS_rmdir,
        SYS_unlink, SYS_unlinkat, SYS_mknod, SYS_mknodat, SYS_rename, SYS_renameat,
        SYS_renameat2, SYS_link, SYS_linkat, SYS_symlink, SYS_symlinkat, SYS_readlink,
        SYS_readlinkat, SYS_truncate, SYS_chmod, SYS_fchmodat, SYS_fchmodat2, SYS_chown,
        SYS_lchown, SYS_fchownat, SYS_utimensat, SYS_utime, SYS_utimes, SYS_futimesat,
        SYS_statfs, SYS_getxattr, SYS_lgetxattr, SYS_listxattr, SYS_llistxattr, SYS_setxattr,
        SYS_lsetxattr, SYS_removexattr, SYS_lremovexattr;
    Process: SYS_close, SYS_close_range, SYS_fcntl, SYS_dup, SYS_dup2, SYS_dup3, SYS_chdir,
        SYS_fchdir, SYS_getcwd, SYS_execve, SYS_execveat, SYS_prlimit64, SYS_setrlimit,
        SYS_umask;
    Signal: SYS_rt_sigprocmask, SYS_rt_sigaction, SYS_rt_sigsuspend;
    Net: SYS_socket, SYS_bind, SYS_listen, SYS_accept, SYS_accept4, SYS_connect, SYS_sendto,
        SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg, SYS_recvmmsg, SYS_shutdown, SYS_getsockopt, SYS_setsockopt,
        SYS_getsockname, SYS_getpeername, SYS_poll, SYS_ppoll, SYS_select, SYS_pselect6,
        SYS_epoll_ctl, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_pwait2;
}

/// The numbers of the routed calls of the given classes.
pub fn numbers(classes: &[Class]) -> Vec<u32> {
    ROUTED
        .iter()
        .filter(|r| classes.contains(&r.class))
        .map(|r| r.nr as u32)
        .collect()
}

/// The entry for `nr`, if it is routed.
pub fn lookup(nr: i64) -> Option<&'static Routed> {
    ROUTED.iter().find(|r| r.nr == nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_named() {
        let mut nrs: Vec<i64> = ROUTED.iter().map(|r| r.nr).collect();
        nrs.sort_unstable();
        let n = nrs.len();
        nrs.dedup();
        assert_eq!(nrs.len(), n, "a call is listed twice");
        assert_eq!(lookup(libc::SYS_openat).unwrap().name, "openat");
        assert_eq!(lookup(libc::SYS_openat2).unwrap().class, Class::Storage);
        assert_eq!(lookup(libc::SYS_socket).unwrap().class, Class::Net);
        assert!(lookup(libc::SYS_getpid).is_none());
    }

    #[test]
    fn every_path_and_fd_call_the_decoder_knows_is_routed() {
        // The decoder and the table describe the same calls.
        for r in ROUTED {
            let d = crate::decode::decode(r.nr, [0; 6]);
            assert!(
                !matches!(d, crate::decode::Syscall::Other { .. }),
                "{} is routed but not decoded",
                r.name
            );
        }
    }
}
