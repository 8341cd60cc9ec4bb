//! One function decides and executes every routed system call: [`dispatch`].
//!
//! It is reached from the interposed libc functions (fast path) and from the SIGSYS handler
//! (safety net). Local calls are re-issued unchanged through the trampoline; remote ones go to
//! the storage domain. Results are raw (`-errno` on failure), as the kernel returns them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::Opcode;

use crate::fdtable::{self, Remote};
use crate::paths::{self, PathBuf};
use crate::remote;
use crate::statconv::statx_to_stat;
use crate::sys::{self, c_str, get, put, syscall6, user_buf, user_buf_mut};
use crate::{config, cwd, proc, reserve, signals};

const AT_FDCWD: i64 = libc::AT_FDCWD as i64;

fn e(n: i32) -> i64 {
    -(n as i64)
}

/// Where a path argument lives.
use paths::Route as Loc;

/// The remote file a `/proc/self/fd/N` or `/dev/fd/N` path names, if N is a placeholder.
fn proc_fd(path: &[u8]) -> Option<Remote> {
    fdtable::get(paths::proc_fd_number(path)?)
}

/// Resolves `path` relative to `dirfd` (or the cwd) against the mount prefix.
fn resolve(dirfd: i64, path: &[u8]) -> Result<Loc, i64> {
    let Some(mount) = config::get().mount.as_ref() else {
        return Ok(Loc::Local);
    };
    if proc_fd(path).is_some() {
        // Reopening a remote file through its placeholder's magic link would reach the
        // placeholder, not the file: refuse instead of silently acting on the wrong inode.
        // (chmod, chown, stat and utimens handle these paths by handle before getting here.)
        return Err(e(libc::EOPNOTSUPP));
    }
    let too_long = |_| e(libc::ENAMETOOLONG);
    // The base the kernel would resolve a relative path against, as a path.
    let base = if path.first() == Some(&b'/') {
        None
    } else if dirfd == AT_FDCWD {
        match cwd::get() {
            Some(c) => Some(c),
            None => match cwd::local() {
                Some(l) => Some(l),
                None => return Ok(Loc::Local),
            },
        }
    } else if let Some(r) = fdtable::get(dirfd) {
        if !r.is_dir {
            return Err(e(libc::ENOTDIR));
        }
        let mut dir = [0u8; paths::PATH_MAX];
        let n = fdtable::dir_path(r.handle, &mut dir).ok_or(e(libc::EBADF))?;
        let rel = dir[..n].strip_prefix(b"/").unwrap_or(&dir[..n]);
        Some(paths::join(mount.as_bytes(), rel).map_err(too_long)?)
    } else {
        return Ok(Loc::Local);
    };
    paths::route(base.as_ref().map(|b| b.as_bytes()), path, mount.as_bytes()).map_err(too_long)
}

/// Returns `a` with path argument `p` pointing at a NUL-terminated copy of `x` in `buf`.
fn local_path_arg(
    mut a: [u64; 6],
    p: u64,
    x: &PathBuf,
    buf: &mut [u8; paths::PATH_MAX + 1],
) -> [u64; 6] {
    buf.fill(0);
    buf[..x.as_bytes().len()].copy_from_slice(x.as_bytes());
    for v in a.iter_mut() {
        if *v == p {
            *v = buf.as_ptr() as u64;
        }
    }
    a
}

/// Executes a local call, replacing the path argument `p` by `rewritten` when given.
fn local_call(nr: i64, mut a: [u64; 6], p: u64, rewritten: Option<&PathBuf>) -> i64 {
    let Some(r) = rewritten else {
        return syscall6(nr, a);
    };
    let mut buf = [0u8; paths::PATH_MAX + 1];
    let b = r.as_bytes();
    buf[..b.len()].copy_from_slice(b);
    for x in a.iter_mut() {
        if *x == p {
            *x = buf.as_ptr() as u64;
        }
    }
    syscall6(nr, a)
}

fn path_arg(p: u64) -> Result<&'static [u8], i64> {
    if p == 0 {
        return Err(e(libc::EFAULT));
    }
    c_str(p, paths::PATH_MAX - 1).map_err(|x| match x {
        sys::StrError::Fault => e(libc::EFAULT),
        sys::StrError::TooLong => e(libc::ENAMETOOLONG),
    })
}

/// Dispatches system call `nr` with arguments `a`.
pub fn dispatch(nr: i64, a: [u64; 6]) -> i64 {
    if proc::internal() {
        // The shim's own set-up code (a session being connected) calling through libc.
        return syscall6(nr, a);
    }
    left_behind(psm::stack_pointer() as usize);
    if nr == libc::SYS_execve || nr == libc::SYS_execveat {
        // Before the big routing frames, and on the program's stack: an exec may run on a
        // posix_spawn child's small stack, and one that succeeds never returns to free a
        // shim stack's slot (a vfork child's is its parent's).
        // The hand-over's own calls (snapshots, the state memfd) are the shim's code.
        DEPTH.with(|d| d.set(d.get() + 2));
        proc::sweep();
        let r = crate::exec::execve(nr, a);
        DEPTH.with(|d| d.set(d.get().saturating_sub(2)));
        return r;
    }
    if matches!(nr, libc::SYS_read | libc::SYS_write)
        && DEPTH.with(|d| d.get()) > 0
        && reserve::is_owned(a[0] as i32 as i64)
    {
        // The shim's own doorbell and event fds, reached through its own `read`/`write`
        // exports by the transport (the program cannot name these numbers).
        return syscall6(nr, a);
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = sys::with_pid(|| crate::stack::run(|| routed(nr, a)));
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    r
}

thread_local! {
    /// How many routed calls this thread is inside: above 1, the call comes from the shim's
    /// own code (its dependencies' libc calls bind to the shim's exports: the transport reads
    /// its eventfds through `read`) or from a handler that interrupted the shim.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// The program's stack pointer at the entry of this thread's outermost call.
    static OUTER_SP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// At every entry: notices calls this thread left for good and gives back what they held.
///
/// A signal handler that `siglongjmp`s out of a routed call it interrupted (a timeout around
/// a blocking read, as old C code does) skips every drop of that call: its depth, its stack
/// slot, its pins and its channel lease would stay taken, and after as many jumps as a
/// session has channels the thread would wait for a free one forever. A call nested in
/// another (the shim's own code, a handler that interrupted a call) runs on a shim stack, on
/// the alternate signal stack, or deeper on the program's stack than the outer call's entry;
/// a call at or above that entry on the program's stack means the outer call is gone. The
/// check costs a thread-local read; only that case asks the kernel (`sigaltstack`, and
/// `getpid`: a vfork child running on its parent's memory is not the parent).
fn left_behind(sp: usize) {
    let depth = DEPTH.with(|d| d.get());
    if depth == 0 {
        OUTER_SP.with(|o| o.set(sp));
        return;
    }
    if sp < OUTER_SP.with(|o| o.get()) || crate::stack::on_shim_stack(sp) {
        return;
    }
    // SAFETY: a zeroed stack_t is a valid output buffer; a null new stack only queries.
    let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
    let on_alt = sys::sys(
        libc::SYS_sigaltstack,
        &[0, &mut ss as *mut libc::stack_t as u64],
    ) == 0
        && ss.ss_flags & libc::SS_ONSTACK != 0;
    if on_alt || sys::sys(libc::SYS_getpid, &[]) != proc::owner() {
        return;
    }
    DEPTH.with(|d| d.set(0));
    OUTER_SP.with(|o| o.set(sp));
    crate::stack::abandon_slots();
    sys::abandon_call_pid();
    proc::abandon_internal();
    remote::recover_abandoned();
}

/// Whether the current call was made from inside another routed call or the shim's own code.
fn nested() -> bool {
    DEPTH.with(|d| d.get() > 1)
}

/// The exec system call itself, with this thread's depth as it was before the exec began:
/// an exec that succeeds never returns, and a vfork child's thread state is its parent's.
pub fn exec_now(nr: i64, a: [u64; 6]) -> i64 {
    let depth = DEPTH.with(|d| d.replace(d.get().saturating_sub(2)));
    let r = syscall6(nr, a);
    DEPTH.with(|d| d.set(depth));
    r
}

/// Runs the shim's own code that is not a routed call (the fork handlers, a credential
/// refresh, the constructor's hand-over) on the shim's stack, with the libc calls it makes on
/// the shim's descriptors treated as the shim's, not the program's.
pub fn shim_code(f: impl FnOnce()) {
    left_behind(psm::stack_pointer() as usize);
    DEPTH.with(|d| d.set(d.get() + 2));
    crate::stack::run(|| {
        f();
        0
    });
    DEPTH.with(|d| d.set(d.get().saturating_sub(2)));
}

/// Everything but exec, on the shim's own stack.
fn routed(nr: i64, a: [u64; 6]) -> i64 {
    proc::sweep();
    if let Some(r) = guard(nr, a) {
        return r;
    }
    if matches!(
        nr,
        libc::SYS_sendmsg | libc::SYS_recvmsg | libc::SYS_sendmmsg | libc::SYS_recvmmsg
    ) && fdtable::get_any(a[0] as i32 as i64).is_none()
    {
        // A local socket (AF_UNIX): remote fds may travel in SCM_RIGHTS.
        let fd = a[0] as i32 as i64;
        let passed = match nr {
            libc::SYS_sendmsg => crate::pass::sendmsg(fd, a),
            libc::SYS_recvmsg => crate::pass::recvmsg(fd, a),
            libc::SYS_sendmmsg => crate::pass::sendmmsg(fd, a),
            _ => crate::pass::recvmmsg(fd, a),
        };
        if let Some(r) = passed {
            return r;
        }
    }
    if let Some(r) = crate::net::route(nr, a) {
        return r;
    }
    match route(nr, a) {
        Ok(Some(r)) => r,
        Ok(None) => syscall6(nr, a),
        Err(r) => r,
    }
}

/// The fd-space rules that come before any routing: the shim's own descriptors are invisible
/// to the program ([`crate::reserve`]), and a child sharing its parent's memory changes only
/// its own kernel fds, never the shared table or a server's handles ([`crate::proc`]).
fn guard(nr: i64, a: [u64; 6]) -> Option<i64> {
    let fd = a[0] as i32 as i64;
    let ebadf = e(libc::EBADF);
    match nr {
        libc::SYS_close => {
            if reserve::is_owned(fd) {
                return Some(ebadf);
            }
            if fdtable::get_any(fd).is_some() && proc::shared_child() {
                return Some(sys::sys(libc::SYS_close, &[fd as u64]));
            }
            None
        }
        libc::SYS_close_range => {
            let (first, last, flags) = (a[0] as u32, a[1] as u32, a[2] as u32);
            if first > last {
                return Some(e(libc::EINVAL));
            }
            if flags & libc::CLOSE_RANGE_CLOEXEC == 0 && fdtable::any() && !proc::shared_child() {
                let mut victims = Vec::new();
                fdtable::for_each(|fd, _| {
                    if fd >= i64::from(first) && fd <= i64::from(last) {
                        victims.push(fd);
                    }
                });
                for fd in victims {
                    let _ = close(fd);
                }
            }
            Some(reserve::close_range_around(first, last, flags))
        }
        libc::SYS_dup => {
            if reserve::is_owned(fd) {
                return Some(ebadf);
            }
            if fdtable::get_any(fd).is_some() && proc::shared_child() {
                return Some(sys::sys(libc::SYS_dup, &[fd as u64]));
            }
            None
        }
        libc::SYS_dup2 | libc::SYS_dup3 => {
            let target = a[1] as i32 as i64;
            if reserve::is_owned(fd) {
                return Some(ebadf);
            }
            if fd != target {
                reserve::before_dup_onto(target);
            }
            if (fdtable::get_any(fd).is_some() || fdtable::get_any(target).is_some())
                && proc::shared_child()
            {
                return Some(syscall6(nr, a));
            }
            None
        }
        libc::SYS_fcntl => {
            if reserve::is_owned(fd) {
                return Some(ebadf);
            }
            let cmd = a[1] as i32;
            if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC)
                && fdtable::get_any(fd).is_some()
                && proc::shared_child()
            {
                return Some(syscall6(nr, a));
            }
            None
        }
        libc::SYS_prlimit64 | libc::SYS_setrlimit => {
            let (res, new) = if nr == libc::SYS_setrlimit {
                (a[0], a[1])
            } else {
                (a[1], a[2])
            };
            let self_target =
                nr == libc::SYS_setrlimit || a[0] == 0 || a[0] as i64 == sys::getpid();
            let r = syscall6(nr, a);
            if r == 0 && res == libc::RLIMIT_NOFILE as u64 && new != 0 && self_target {
                let soft: u64 = get(new);
                reserve::after_limit(soft.min(i32::MAX as u64) as i64);
            }
            Some(r)
        }
        // Any other call that names one of the shim's own descriptors finds it closed, as
        // the program's fd table has it: a child probing its fds with fstat or F_GETFD
        // (Python's subprocess tests, daemons counting what they inherited) sees Linux's.
        // (The shim's own code reaches its descriptors through these same calls.)
        _ if nested() => None,
        // A decoded fd is one of the arguments' low 32 bits, so the decoder runs only when one
        // of those is a reserved number at all (rarely: they sit at the top of the table).
        _ if !a.iter().any(|&x| reserve::is_owned(i64::from(x as i32))) => None,
        _ => {
            let owned = shim_core::decode::decode(nr, a)
                .fds()
                .into_iter()
                .flatten()
                .any(|f| reserve::is_owned(i64::from(f.0)));
            owned.then_some(ebadf)
        }
    }
}

/// `Ok(None)`: execute locally, unchanged.
#[inline(never)]
fn route(nr: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    let fd = a[0] as i32 as i64;
    Ok(Some(match nr {
        libc::SYS_open => return open_at(AT_FDCWD, a[0], a[1], a[2], nr, a),
        libc::SYS_creat => {
            return open_at(
                AT_FDCWD,
                a[0],
                (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
                a[1],
                nr,
                a,
            )
        }
        libc::SYS_openat => return open_at(fd, a[1], a[2], a[3], nr, a),
        libc::SYS_openat2 => {
            let how: libc::open_how = get(a[2]);
            return open_at(fd, a[1], how.flags, how.mode, nr, a);
        }
        libc::SYS_close => return close(fd).map(Some),
        libc::SYS_bind | libc::SYS_connect => return unix_socket_path(nr, a),
        libc::SYS_read => return on_fd(fd, |r| rw(r, false, a[1], a[2] as usize, None)),
        libc::SYS_write => return on_fd(fd, |r| rw(r, true, a[1], a[2] as usize, None)),
        libc::SYS_pread64 => return on_fd(fd, |r| rw(r, false, a[1], a[2] as usize, Some(a[3]))),
        libc::SYS_pwrite64 => return on_fd(fd, |r| rw(r, true, a[1], a[2] as usize, Some(a[3]))),
        libc::SYS_readv
        | libc::SYS_writev
        | libc::SYS_preadv
        | libc::SYS_pwritev
        | libc::SYS_preadv2
        | libc::SYS_pwritev2 => return vectored(nr, fd, a),
        libc::SYS_lseek => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::LSeek,
                    [r.handle.into(), a[1], a[2], 0, 0],
                    &[],
                    None,
                )
            })
        }
        libc::SYS_fstat => return on_fd(fd, |r| fstat_remote(r, a[1])),
        libc::SYS_newfstatat => return stat_at(fd, a[1], a[2], a[3], None, nr, a),
        libc::SYS_stat => return stat_at(AT_FDCWD, a[0], a[1], 0, None, nr, a),
        libc::SYS_lstat => {
            return stat_at(
                AT_FDCWD,
                a[0],
                a[1],
                libc::AT_SYMLINK_NOFOLLOW as u64,
                None,
                nr,
                a,
            )
        }
        libc::SYS_statx => return stat_at(fd, a[1], a[4], a[2], Some(a[3]), nr, a),
        libc::SYS_getdents64 => {
            return on_fd(fd, |r| {
                let n = (a[2] as usize).min(remote::window());
                remote::call(
                    Opcode::GetDents64,
                    [r.handle.into(), 0, 0, 0, 0],
                    &[],
                    Some(user_buf_mut(a[1], n)),
                )
            })
        }
        libc::SYS_getdents => return on_fd(fd, |_| e(libc::ENOSYS)),
        libc::SYS_fsync | libc::SYS_fdatasync => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::FSync,
                    [
                        r.handle.into(),
                        u64::from(nr == libc::SYS_fdatasync),
                        0,
                        0,
                        0,
                    ],
                    &[],
                    None,
                )
            })
        }
        libc::SYS_ftruncate => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::FTruncate,
                    [r.handle.into(), a[1], 0, 0, 0],
                    &[],
                    None,
                )
            })
        }
        libc::SYS_fchmod => {
            return on_fd(fd, |r| {
                remote::call(Opcode::FChmod, [r.handle.into(), a[1], 0, 0, 0], &[], None)
            })
        }
        libc::SYS_fchown => return on_fd(fd, |r| fchown_remote(r, a[1], a[2])),
        libc::SYS_fallocate => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::Fallocate,
                    [r.handle.into(), a[1], a[2], a[3], 0],
                    &[],
                    None,
                )
            })
        }
        libc::SYS_fstatfs => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::FStatFs,
                    [r.handle.into(), 0, 0, 0, 0],
                    &[],
                    Some(user_buf_mut(a[1], std::mem::size_of::<libc::statfs>())),
                )
            })
        }
        // Advice goes to the server's file, whose page cache it is about.
        libc::SYS_fadvise64 => {
            return on_fd(fd, |r| {
                let (off, len, advice) = (a[1], a[2], a[3]);
                // posix_fadvise reports an error number, not -1/errno, but the system call
                // returns -errno: the shim emulates the system call.
                remote::call(
                    Opcode::Advise,
                    [r.handle.into(), 0, off, len, advice],
                    &[],
                    None,
                )
            });
        }
        libc::SYS_readahead => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::Advise,
                    [r.handle.into(), 1, a[1], a[2], 0],
                    &[],
                    None,
                )
            })
        }
        libc::SYS_sync_file_range => {
            return on_fd(fd, |r| {
                remote::call(
                    Opcode::Advise,
                    [r.handle.into(), 2, a[1], a[2], a[3]],
                    &[],
                    None,
                )
            })
        }
        libc::SYS_flock => {
            return on_fd(fd, |r| {
                remote::call(Opcode::Flock, [r.handle.into(), a[1], 0, 0, 0], &[], None)
            })
        }
        libc::SYS_ioctl => return on_fd(fd, |_| e(libc::ENOTTY)),
        libc::SYS_fgetxattr
        | libc::SYS_flistxattr
        | libc::SYS_fsetxattr
        | libc::SYS_fremovexattr => {
            return on_fd(fd, |r| xattr_remote(nr, Some(r), &[], a));
        }
        libc::SYS_copy_file_range if either_remote(fd, a[2]) => copy_range(a),
        libc::SYS_sendfile => return sendfile(a),
        libc::SYS_splice if either_remote(fd, a[2]) => splice_remote(a),
        // tee and vmsplice take pipes only: a routed file is never one.
        libc::SYS_tee | libc::SYS_vmsplice if either_remote(fd, a[2]) => e(libc::EINVAL),
        libc::SYS_fcntl => return fcntl(fd, a),
        libc::SYS_dup => return dup(fd, None, None),
        libc::SYS_dup2 => return dup(fd, Some(a[1] as i32 as i64), None),
        libc::SYS_dup3 => return dup(fd, Some(a[1] as i32 as i64), Some(a[2])),
        libc::SYS_mmap => return mmap(a),
        libc::SYS_access => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(Opcode::AccessAt, [a[1], 0, 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_faccessat | libc::SYS_faccessat2 => {
            let flags = if nr == libc::SYS_faccessat2 { a[3] } else { 0 };
            return path_op(fd, a[1], nr, a, |p| {
                remote::call(Opcode::AccessAt, [a[2], flags, 0, 0, 0], &[p], None)
            });
        }
        libc::SYS_mkdir => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(Opcode::MkdirAt, [0, masked(a[1]), 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_mkdirat => {
            return path_op(fd, a[1], nr, a, |p| {
                remote::call(Opcode::MkdirAt, [0, masked(a[2]), 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_rmdir => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(
                    Opcode::UnlinkAt,
                    [libc::AT_REMOVEDIR as u64, 0, 0, 0, 0],
                    &[p],
                    None,
                )
            })
        }
        libc::SYS_unlink => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(Opcode::UnlinkAt, [0; 5], &[p], None)
            })
        }
        libc::SYS_unlinkat => {
            return path_op(fd, a[1], nr, a, |p| {
                remote::call(Opcode::UnlinkAt, [a[2], 0, 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_mknod | libc::SYS_mknodat => {
            let (d, p) = if nr == libc::SYS_mknod {
                (AT_FDCWD, a[0])
            } else {
                (fd, a[1])
            };
            let (mode, dev) = if nr == libc::SYS_mknod {
                (a[1], a[2])
            } else {
                (a[2], a[3])
            };
            // The type bits as given, the permission bits under the umask (as the kernel).
            let mode = (mode & libc::S_IFMT as u64) | masked(mode);
            return path_op(d, p, nr, a, |rp| {
                remote::call(Opcode::MknodAt, [0, mode, dev, 0, 0], &[rp], None)
            });
        }
        libc::SYS_rename => {
            return two_paths(AT_FDCWD, a[0], AT_FDCWD, a[1], nr, a, Opcode::RenameAt, 0)
        }
        libc::SYS_renameat => {
            return two_paths(
                fd,
                a[1],
                a[2] as i32 as i64,
                a[3],
                nr,
                a,
                Opcode::RenameAt,
                0,
            )
        }
        libc::SYS_renameat2 => {
            return two_paths(
                fd,
                a[1],
                a[2] as i32 as i64,
                a[3],
                nr,
                a,
                Opcode::RenameAt,
                a[4],
            )
        }
        libc::SYS_link => {
            return two_paths(AT_FDCWD, a[0], AT_FDCWD, a[1], nr, a, Opcode::LinkAt, 0)
        }
        libc::SYS_linkat => {
            return two_paths(
                fd,
                a[1],
                a[2] as i32 as i64,
                a[3],
                nr,
                a,
                Opcode::LinkAt,
                a[4],
            )
        }
        libc::SYS_symlink => return symlink(a[0], AT_FDCWD, a[1], nr, a),
        libc::SYS_symlinkat => return symlink(a[0], a[1] as i32 as i64, a[2], nr, a),
        libc::SYS_readlink => return readlink(AT_FDCWD, a[0], a[1], a[2], nr, a),
        libc::SYS_readlinkat => return readlink(fd, a[1], a[2], a[3], nr, a),
        libc::SYS_truncate => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(Opcode::TruncateAt, [0, a[1], 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_chmod | libc::SYS_fchmodat | libc::SYS_fchmodat2
            if by_proc_fd(if nr == libc::SYS_chmod { a[0] } else { a[1] }).is_some() =>
        {
            let r = by_proc_fd(if nr == libc::SYS_chmod { a[0] } else { a[1] }).expect("guard");
            let mode = if nr == libc::SYS_chmod { a[1] } else { a[2] };
            remote::call(Opcode::FChmod, [r.handle.into(), mode, 0, 0, 0], &[], None)
        }
        libc::SYS_chown | libc::SYS_lchown | libc::SYS_fchownat
            if by_proc_fd(if nr == libc::SYS_fchownat { a[1] } else { a[0] }).is_some() =>
        {
            let r = by_proc_fd(if nr == libc::SYS_fchownat { a[1] } else { a[0] }).expect("guard");
            let (u, g) = if nr == libc::SYS_fchownat {
                (a[2], a[3])
            } else {
                (a[1], a[2])
            };
            fchown_remote(r, u, g)
        }
        libc::SYS_chmod => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(Opcode::ChmodAt, [0, a[1], 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_fchmodat => {
            return path_op(fd, a[1], nr, a, |p| {
                remote::call(Opcode::ChmodAt, [0, a[2], 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_fchmodat2 => {
            return path_op(fd, a[1], nr, a, |p| {
                remote::call(Opcode::ChmodAt, [a[3], a[2], 0, 0, 0], &[p], None)
            })
        }
        libc::SYS_chown => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(
                    Opcode::ChownAt,
                    [0, a[1] as u32 as u64, a[2] as u32 as u64, 0, 0],
                    &[p],
                    None,
                )
            })
        }
        libc::SYS_lchown => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| {
                remote::call(
                    Opcode::ChownAt,
                    [
                        libc::AT_SYMLINK_NOFOLLOW as u64,
                        a[1] as u32 as u64,
                        a[2] as u32 as u64,
                        0,
                        0,
                    ],
                    &[p],
                    None,
                )
            })
        }
        libc::SYS_fchownat => {
            if a[4] & libc::AT_EMPTY_PATH as u64 != 0 && path_arg(a[1])?.is_empty() {
                return on_fd(fd, |r| fchown_remote(r, a[2], a[3]));
            }
            return path_op(fd, a[1], nr, a, |p| {
                remote::call(
                    Opcode::ChownAt,
                    [a[4], a[2] as u32 as u64, a[3] as u32 as u64, 0, 0],
                    &[p],
                    None,
                )
            });
        }
        libc::SYS_utimensat => return utimensat(fd, a[1], a[2], a[3], nr, a),
        libc::SYS_utime | libc::SYS_utimes | libc::SYS_futimesat => return old_utimes(nr, a),
        libc::SYS_statfs => return path_op(AT_FDCWD, a[0], nr, a, |p| statfs_remote(p, a[1])),
        libc::SYS_getxattr
        | libc::SYS_lgetxattr
        | libc::SYS_listxattr
        | libc::SYS_llistxattr
        | libc::SYS_setxattr
        | libc::SYS_lsetxattr
        | libc::SYS_removexattr
        | libc::SYS_lremovexattr => {
            return path_op(AT_FDCWD, a[0], nr, a, |p| xattr_remote(nr, None, p, a))
        }
        libc::SYS_chdir => return chdir(AT_FDCWD, a[0], nr, a),
        libc::SYS_fchdir => {
            if fdtable::get(fd).is_some() {
                return chdir(fd, c".".as_ptr() as u64, nr, a);
            }
            let r = syscall6(nr, a);
            if r == 0 {
                cwd::set(None);
                cwd::invalidate_local();
            }
            r
        }
        libc::SYS_getcwd => match cwd::get() {
            Some(c) => {
                let b = c.as_bytes();
                if (a[1] as usize) < b.len() + 1 {
                    e(libc::ERANGE)
                } else {
                    user_buf_mut(a[0], b.len()).copy_from_slice(b);
                    put::<u8>(a[0] + b.len() as u64, 0);
                    b.len() as i64 + 1
                }
            }
            None => return Ok(None),
        },
        // SIGSYS must never be blocked or taken over: a blocked or ignored SIGSYS makes the
        // kernel kill the process at the next trap (`crate::signals`).
        libc::SYS_rt_sigprocmask => return Ok(Some(signals::procmask(nr, a))),
        libc::SYS_rt_sigsuspend => return Ok(Some(signals::sigsuspend(nr, a))),
        libc::SYS_ppoll | libc::SYS_pselect6 | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => {
            return Ok(Some(signals::wait(nr, a)))
        }
        libc::SYS_rt_sigaction if a[0] as i32 != libc::SIGSYS => {
            return Ok(Some(signals::sigaction(nr, a)))
        }
        libc::SYS_rt_sigaction => {
            // SIGSYS: report the old action as the default and keep ours.
            if a[2] != 0 {
                // A zeroed kernel sigaction is SIG_DFL with no flags.
                let zero = [0u8; 32];
                sys::user_buf_mut(a[2], zero.len()).copy_from_slice(&zero);
            }
            0
        }
        libc::SYS_umask => {
            let old = syscall6(nr, a);
            UMASK.store(a[0] as u32 & 0o777, Ordering::Relaxed);
            old
        }
        _ => return Ok(None),
    }))
}

/// `proc_fd` of a path argument.
fn by_proc_fd(p: u64) -> Option<Remote> {
    c_str(p, 64).ok().and_then(proc_fd)
}

/// FChown on a remote file (uid/gid `u32::MAX`, as -1 from C, leave it unchanged).
fn fchown_remote(r: Remote, uid: u64, gid: u64) -> i64 {
    let args = [r.handle.into(), uid as u32 as u64, gid as u32 as u64, 0, 0];
    remote::call(Opcode::FChown, args, &[], None)
}

/// The `loff_t` a call's offset pointer `p` names (None for a null pointer): EFAULT for an
/// unreadable one, EINVAL for a negative offset, as copy_file_range and splice answer.
fn user_offset(p: u64) -> Result<Option<u64>, i64> {
    if p == 0 {
        return Ok(None);
    }
    let mut b = [0u8; 8];
    if !sys::read_user(p, &mut b) {
        return Err(e(libc::EFAULT));
    }
    let o = i64::from_ne_bytes(b);
    if o < 0 {
        return Err(e(libc::EINVAL));
    }
    Ok(Some(o as u64))
}

/// copy_file_range with a routed file: between two files of the storage domain, done there by
/// the kernel (offsets given by pointer are read and written back, as Linux does); between a
/// routed and a local file, EXDEV, as Linux answers for two file systems that cannot copy
/// between each other (programs fall back to read and write).
fn copy_range(a: [u64; 6]) -> i64 {
    let (fd_in, p_in, fd_out, p_out, len, flags) = (
        a[0] as i32 as i64,
        a[1],
        a[2] as i32 as i64,
        a[3],
        a[4],
        a[5],
    );
    if flags != 0 {
        return e(libc::EINVAL);
    }
    let (Some(rin), Some(rout)) = (fdtable::get(fd_in), fdtable::get(fd_out)) else {
        return e(libc::EXDEV);
    };
    let (oin, oout) = match (user_offset(p_in), user_offset(p_out)) {
        (Ok(i), Ok(o)) => (i.unwrap_or(u64::MAX), o.unwrap_or(u64::MAX)),
        (Err(x), _) | (_, Err(x)) => return x,
    };
    let mut args = [rin.handle.into(), oin, rout.handle.into(), oout, len];
    let (n, _) = remote::call_aux(Opcode::CopyRange, &mut args, &[], None);
    if n > 0 {
        if p_in != 0 {
            put(p_in, (oin + n as u64) as i64);
        }
        if p_out != 0 {
            put(p_out, (oout + n as u64) as i64);
        }
    }
    n
}

/// The extended-attribute calls on a routed file (`r`) or path (`path`), in the storage
/// domain ([`Opcode::Xattr`]): the same answers, errors and sizes as the kernel's there.
fn xattr_remote(nr: i64, r: Option<Remote>, path: &[u8], a: [u64; 6]) -> i64 {
    use crate::storage_call::{Xattr, XATTR_MAX};
    let Some(x) = Xattr::decode(nr, a) else {
        return e(libc::ENOSYS);
    };
    let name: &[u8] = if x.op == 2 {
        &[]
    } else {
        match sys::c_str(x.name, 256) {
            Ok(n) => n,
            Err(sys::StrError::Fault) => return e(libc::EFAULT),
            Err(sys::StrError::TooLong) => return e(libc::ERANGE),
        }
    };
    if x.op == 1 && x.size > XATTR_MAX {
        return e(libc::E2BIG);
    }
    let value: &[u8] = if x.op == 1 && x.size > 0 {
        let mut probe = [0u8; 1];
        if !sys::read_user(x.buf, &mut probe) {
            return e(libc::EFAULT);
        }
        user_buf(x.buf, x.size as usize)
    } else {
        &[]
    };
    let mut args = x.args(r.map_or(u64::MAX, |r| u64::from(r.handle)));
    let out = x
        .answers_bytes()
        .then(|| user_buf_mut(x.buf, x.room() as usize));
    // The path, the name and the value back to back (their lengths in args[4], args[3] and
    // args[2]).
    remote::call_aux(Opcode::Xattr, &mut args, &[path, name, value], out).0
}

/// splice between a routed file and a local pipe (Linux needs a pipe on one side: anything
/// else is EINVAL, a pipe side with an offset ESPIPE): up to 64 KiB go through a buffer, and
/// the file's offset (or `*off`) advances by exactly what reached the other side.
fn splice_remote(a: [u64; 6]) -> i64 {
    let (fd_in, off_in, fd_out, off_out, len, flags) = (
        a[0] as i32 as i64,
        a[1],
        a[2] as i32 as i64,
        a[3],
        a[4],
        a[5],
    );
    let nonblock = flags & libc::SPLICE_F_NONBLOCK as u64 != 0;
    // The local end `fd` (its offset pointer `off`), which must be a pipe ready for `events`:
    // the error Linux gives when it is not (EINVAL not a pipe, ESPIPE an offset for it,
    // EAGAIN with SPLICE_F_NONBLOCK when it is not ready now).
    let pipe_end = |fd: i64, off: u64, events: i16| -> Option<i64> {
        // SAFETY: a zeroed stat is a valid output buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let is_pipe = sys::sys(libc::SYS_fstat, &[fd as u64, &mut st as *mut _ as u64]) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFIFO;
        if !is_pipe {
            return Some(e(libc::EINVAL));
        }
        if off != 0 {
            return Some(e(libc::ESPIPE));
        }
        let mut p = libc::pollfd {
            fd: fd as i32,
            events,
            revents: 0,
        };
        if nonblock && sys::sys(libc::SYS_poll, &[&mut p as *mut _ as u64, 1, 0]) <= 0 {
            return Some(e(libc::EAGAIN));
        }
        None
    };
    let chunk = (len as usize).min(64 << 10);
    if len == 0 {
        return 0;
    }
    let seek = |r: Remote, off: u64, whence: i32| {
        remote::call(
            Opcode::LSeek,
            [r.handle.into(), off, whence as u64, 0, 0],
            &[],
            None,
        )
    };
    match (fdtable::get(fd_in), fdtable::get(fd_out)) {
        (Some(r), None) => {
            if let Some(err) = pipe_end(fd_out, off_out, libc::POLLOUT) {
                return err;
            }
            let at = match user_offset(off_in) {
                Ok(Some(o)) => o,
                Ok(None) => match seek(r, 0, libc::SEEK_CUR) {
                    x if x < 0 => return x,
                    x => x as u64,
                },
                Err(x) => return x,
            };
            let mut buf = vec![0u8; chunk];
            let n = rw(r, false, buf.as_mut_ptr() as u64, chunk, Some(at));
            if n <= 0 {
                return n;
            }
            let w = sys::sys(
                libc::SYS_write,
                &[fd_out as u64, buf.as_ptr() as u64, n as u64],
            );
            if w > 0 {
                if off_in != 0 {
                    put(off_in, (at + w as u64) as i64);
                } else {
                    seek(r, at + w as u64, libc::SEEK_SET);
                }
            }
            w
        }
        (None, Some(r)) => {
            if let Some(err) = pipe_end(fd_in, off_in, libc::POLLIN) {
                return err;
            }
            let at = match user_offset(off_out) {
                Ok(o) => o,
                Err(x) => return x,
            };
            let mut buf = vec![0u8; chunk];
            let n = sys::sys(
                libc::SYS_read,
                &[fd_in as u64, buf.as_mut_ptr() as u64, chunk as u64],
            );
            if n <= 0 {
                return n;
            }
            let w = rw(r, true, buf.as_ptr() as u64, n as usize, at);
            if w > 0 {
                if let Some(o) = at {
                    put(off_out, (o + w as u64) as i64);
                }
            }
            w
        }
        // Two routed files: neither is a pipe.
        _ => e(libc::EINVAL),
    }
}

fn either_remote(fd: i64, other: u64) -> bool {
    fdtable::get(fd).is_some() || fdtable::get(other as i32 as i64).is_some()
}

/// Runs `f` if `fd` is remote; otherwise the call runs locally, unchanged.
fn on_fd(fd: i64, f: impl FnOnce(Remote) -> i64) -> Result<Option<i64>, i64> {
    Ok(fdtable::get(fd).map(f))
}

/// How many times one call's path may leave the export and come back under the mount (each
/// time through at least one symlink: Linux's `MAXSYMLINKS` bounds them as well).
const MAX_ESCAPES: usize = 40;

/// Where the remote path `rp`, which the server answered with [`abi::ESCAPE`], continues:
/// the server says (`Opcode::Resolve`), and the continuation is routed like a path the program
/// gave (a local one always as an absolute path). `entry`: the call acts on the last
/// component itself (rename, link), so only the components before it can lead out.
/// `Remote(rp)` again when the path does not leave the export (it changed meanwhile, or the
/// other path of the call is the one that did): the call is tried again.
fn continuation(rp: &[u8], entry: bool) -> Result<Loc, i64> {
    let Some(mount) = config::get().mount.as_ref() else {
        return Err(e(libc::EXDEV));
    };
    let mut buf = [0u8; paths::PATH_MAX];
    let n = remote::call(
        Opcode::Resolve,
        [u64::from(entry), 0, 0, 0, 0],
        &[rp],
        Some(&mut buf),
    );
    if n == e(libc::EAGAIN) {
        return PathBuf::from_bytes(rp)
            .map(Loc::Remote)
            .ok_or(e(libc::ENAMETOOLONG));
    }
    if n < 0 {
        return Err(n);
    }
    // A server's length is not trusted beyond the buffer.
    let c = &buf[..(n as usize).min(buf.len())];
    paths::route_continuation(c, mount.as_bytes()).map_err(|_| e(libc::ENAMETOOLONG))
}

/// Runs a path call where `loc` says: `local` in the program's own kernel (with the path
/// rewritten, or as the program gave it), `remote` on the export-relative path. When the
/// remote path leaves the export (a symlink with an absolute target, `..` above the root),
/// the call continues where the path does, as Linux's path walk would: locally, under the
/// program's own credentials, or again in the storage domain.
/// A local call's ENOENT, followed into the mount when the program's own symlinks lead there
/// (the kernel cannot walk the remote part): `local` is the path the kernel was given,
/// relative to `dirfd` when not absolute. None leaves the kernel's answer.
fn local_into_mount(dirfd: i64, local: &[u8], follow_last: bool) -> Option<PathBuf> {
    let mount = config::get().mount.as_ref()?;
    let base = if local.first() == Some(&b'/') {
        PathBuf::default()
    } else if dirfd == AT_FDCWD {
        cwd::local()?
    } else {
        fd_path(dirfd)?
    };
    paths::local_into_mount(
        base.as_bytes(),
        local,
        mount.as_bytes(),
        follow_last,
        sys::readlink,
    )
}

/// The path of a local directory fd, from its magic link.
fn fd_path(fd: i64) -> Option<PathBuf> {
    let mut name = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(fd).ok()?;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    name[14..14 + d.len()].copy_from_slice(d);
    let mut buf = [0u8; paths::PATH_MAX];
    let len = sys::readlink(&name[..14 + d.len()], &mut buf).ok()?;
    (buf.first() == Some(&b'/')).then(|| PathBuf::from_bytes(&buf[..len]))?
}

/// Runs a path call where `loc` says: `local` in the program's own kernel (with the path
/// rewritten, or as the program gave it), `remote` on the export-relative path. When the
/// remote path leaves the export (a symlink with an absolute target, `..` above the root),
/// the call continues where the path does, as Linux's path walk would: locally, under the
/// program's own credentials, or again in the storage domain. A local path that the kernel
/// cannot walk (ENOENT) because one of the program's own symlinks leads into the mount
/// continues in the storage domain (`origin`: the call's dirfd and path as given).
fn follow(
    origin: (i64, &[u8]),
    loc: Loc,
    mut remote: impl FnMut(&[u8]) -> i64,
    mut local: impl FnMut(Option<&PathBuf>) -> i64,
) -> i64 {
    let mut loc = loc;
    for _ in 0..MAX_ESCAPES {
        let rp = match loc {
            Loc::Local | Loc::LocalAt(_) => {
                let lp = match &loc {
                    Loc::LocalAt(lp) => Some(lp),
                    _ => None,
                };
                let r = local(lp);
                if r != e(libc::ENOENT) {
                    return r;
                }
                let into = match lp {
                    Some(lp) => local_into_mount(AT_FDCWD, lp.as_bytes(), true),
                    None => local_into_mount(origin.0, origin.1, true),
                };
                match into {
                    Some(rp) => rp,
                    None => return r,
                }
            }
            Loc::Remote(rp) => rp,
        };
        let r = remote(rp.as_bytes());
        if r != abi::ESCAPE.as_result() {
            return r;
        }
        loc = match continuation(rp.as_bytes(), false) {
            Ok(Loc::Local) => return e(libc::EXDEV),
            Ok(next) => next,
            Err(x) => return x,
        };
    }
    e(libc::ELOOP)
}

/// Where an exec's program lives.
pub(crate) enum ExecAt {
    /// The kernel's, under the path the program gave.
    Local,
    /// The kernel's, under this path (a symlink in the export led out of it).
    LocalAt(PathBuf),
    /// In the storage domain: the export-relative path, which does not leave the export.
    Remote(PathBuf),
}

/// Where the program an exec names lives; a remote path is followed through the symlinks
/// that lead out of the export (probed with the execute-permission check the exec makes).
pub(crate) fn exec_target(dirfd: i64, p: u64) -> Result<ExecAt, i64> {
    let at = std::cell::Cell::new(ExecAt::Local);
    let path = path_arg(p)?;
    let r = follow(
        (dirfd, path),
        resolve(dirfd, path)?,
        |rp| {
            let r = remote::call(
                Opcode::AccessAt,
                [libc::X_OK as u64, 0, 0, 0, 0],
                &[rp],
                None,
            );
            if r >= 0 {
                at.set(ExecAt::Remote(
                    PathBuf::from_bytes(rp).expect("came from a PathBuf"),
                ));
            }
            r
        },
        |lp| {
            if let Some(lp) = lp {
                at.set(ExecAt::LocalAt(lp.clone()));
            }
            0
        },
    );
    if r < 0 {
        return Err(r);
    }
    Ok(at.into_inner())
}

/// Runs `f` on the remote path (following it out of the export and back), or the call
/// locally.
fn path_op(
    dirfd: i64,
    p: u64,
    nr: i64,
    a: [u64; 6],
    f: impl FnMut(&[u8]) -> i64,
) -> Result<Option<i64>, i64> {
    path_op_on(dirfd, p, path_arg(p)?, nr, a, f)
}

/// As [`path_op`], with the path already read from `p`.
fn path_op_on(
    dirfd: i64,
    p: u64,
    path: &[u8],
    nr: i64,
    a: [u64; 6],
    f: impl FnMut(&[u8]) -> i64,
) -> Result<Option<i64>, i64> {
    let loc = resolve(dirfd, path)?;
    Ok(Some(follow((dirfd, path), loc, f, |lp| {
        local_call(nr, a, p, lp)
    })))
}

fn open_at(
    dirfd: i64,
    p: u64,
    flags: u64,
    mode: u64,
    nr: i64,
    a: [u64; 6],
) -> Result<Option<i64>, i64> {
    let path = path_arg(p)?;
    if let Some(fd) = crate::net::net_table(path, flags) {
        return Ok(Some(fd));
    }
    path_op_on(dirfd, p, path, nr, a, |rp| open_remote(rp, flags, mode))
}

/// Creates a placeholder fd at the lowest free number: an `O_PATH` descriptor of a fresh,
/// private memfd. `O_PATH` makes any use the shim does not intercept fail with EBADF instead
/// of silently succeeding, and the private inode means a stray `chmod("/proc/self/fd/N")` or
/// similar can only ever touch that memfd, never a shared file.
pub(crate) fn new_placeholder(cloexec: u64) -> i64 {
    let m = sys::sys(
        libc::SYS_memfd_create,
        &[c"virtuos-remote".as_ptr() as u64, 0],
    );
    if m < 0 {
        return m;
    }
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let (mut v, mut n) = (m as u64, 0);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        path[14 + i] = digits[n - 1 - i];
    }
    let p = sys::sys(
        libc::SYS_openat,
        &[
            AT_FDCWD as u64,
            path.as_ptr() as u64,
            (libc::O_PATH | libc::O_CLOEXEC) as u64,
        ],
    );
    if p < 0 {
        sys::sys(libc::SYS_close, &[m as u64]);
        return p;
    }
    // Move the O_PATH descriptor onto the memfd's (lowest free) number.
    let r = sys::sys(libc::SYS_dup3, &[p as u64, m as u64, cloexec]);
    sys::sys(libc::SYS_close, &[p as u64]);
    if r < 0 {
        sys::sys(libc::SYS_close, &[m as u64]);
        return r;
    }
    m
}

/// Opens `rp` remotely and returns a placeholder fd for it.
pub fn open_remote(rp: &[u8], flags: u64, mode: u64) -> i64 {
    let creates = flags & (libc::O_CREAT | libc::O_TMPFILE) as u64 != 0;
    let mut args = [flags, if creates { masked(mode) } else { 0 }, 0, 0, 0];
    let mut st = [0u8; remote::open_stat::SIZE];
    let (h, st_mode) = remote::call_aux(Opcode::OpenAt, &mut args, &[rp], Some(&mut st));
    if h < 0 {
        return h;
    }
    let handle = h as u32;
    remote::opened(handle, flags, st_mode);
    // stx_mask (the first u32) is set only when the server sent the stat.
    if st[..4] != [0; 4] && !proc::shared_child() {
        remote::open_stat::put(handle, &st);
    }
    let cloexec = if flags & libc::O_CLOEXEC as u64 != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    let ph = new_placeholder(cloexec as u64);
    if ph < 0 {
        remote::call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
        return ph;
    }
    let is_dir = st_mode as u32 & libc::S_IFMT == libc::S_IFDIR;
    let r = Remote {
        handle,
        is_dir,
        net: false,
        listening: false,
    };
    if proc::shared_child() {
        // Opened by a vfork/posix_spawn child on its parent's session: the table is the
        // parent's, so the child only remembers it for its exec.
        if !proc::child_opened(ph, r) {
            sys::sys(libc::SYS_close, &[ph as u64]);
            remote::call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
            return e(libc::EMFILE);
        }
        return ph;
    }
    if is_dir {
        // Kept folded: later relative paths are joined to it lexically.
        match paths::normalize(rp) {
            Ok(n) => fdtable::set_dir_path(handle, n.as_bytes()),
            Err(_) => fdtable::set_dir_path(handle, rp),
        }
    }
    fdtable::set(ph, r);
    ph
}

fn close(fd: i64) -> Result<i64, i64> {
    match fdtable::clear(fd) {
        None => {
            crate::netpoll::closed_local(fd);
            Ok(sys::sys(libc::SYS_close, &[fd as u64]))
        }
        Some((r, last)) => {
            let rc = sys::sys(libc::SYS_close, &[fd as u64]);
            if r.net {
                crate::net::forget_fd(fd);
            }
            if last {
                if r.is_dir && !r.net {
                    fdtable::forget_dir(r.handle);
                }
                let rr = remote::close_handle(r);
                if rr < 0 && rr != e(libc::EBADF) {
                    return Ok(rr);
                }
            }
            Ok(rc)
        }
    }
}

/// A write larger than the window: its chunks are assembled by the storage domain and
/// written with one system call, so that it is as atomic as Linux makes a write to a regular
/// file (two processes appending large records never interleave them).
fn assembled_write(r: Remote, buf: u64, len: usize, off: Option<u64>, w: usize) -> i64 {
    static TOKENS: AtomicU64 = AtomicU64::new(1);
    let token = TOKENS.fetch_add(1, Ordering::Relaxed);
    let (op, at) = match off {
        Some(o) => (Opcode::PWrite, o),
        None => (Opcode::Write, 0),
    };
    let mut sent = 0usize;
    loop {
        let chunk = (len - sent).min(w);
        let last = sent + chunk == len;
        let flags = if last { 0 } else { abi::WRITE_MORE };
        let n = remote::call(
            op,
            [r.handle.into(), at, flags, token, 0],
            &[user_buf(buf + sent as u64, chunk)],
            None,
        );
        if n < 0 || last {
            return n;
        }
        sent += chunk;
    }
}

/// `bind`/`connect` of an AF_UNIX socket to a path: a path the kernel would resolve somewhere
/// else than the program means (relative to a routed cwd, or under the mount) must not land
/// in the process's real cwd. Under the mount: EOPNOTSUPP (the storage domain cannot host a
/// socket another process could reach); out of it through `..`: the full path.
fn unix_socket_path(nr: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    const SUN: usize = std::mem::size_of::<libc::sockaddr_un>();
    let (addr, len) = (a[1], a[2] as usize);
    if config::get().mount.is_none() || addr == 0 || len <= 2 || len > SUN {
        return Ok(None);
    }
    let mut un = [0u8; SUN];
    if !sys::read_user(addr, &mut un[..len]) {
        return Err(e(libc::EFAULT));
    }
    if u16::from_ne_bytes([un[0], un[1]]) != libc::AF_UNIX as u16 || un[2] == 0 {
        return Ok(None); // not AF_UNIX, or an abstract address
    }
    let p = &un[2..len];
    let p = &p[..p.iter().position(|&c| c == 0).unwrap_or(p.len())];
    match resolve(AT_FDCWD, p)? {
        Loc::Local => Ok(None),
        Loc::Remote(_) => Err(e(libc::EOPNOTSUPP)),
        Loc::LocalAt(full) => {
            let f = full.as_bytes();
            if f.len() + 1 > SUN - 2 {
                return Err(e(libc::ENAMETOOLONG));
            }
            let mut out = [0u8; SUN];
            out[..2].copy_from_slice(&un[..2]);
            out[2..2 + f.len()].copy_from_slice(f);
            let mut b = a;
            b[1] = out.as_ptr() as u64;
            b[2] = (2 + f.len() + 1) as u64;
            Ok(Some(syscall6(nr, b)))
        }
    }
}

/// Reads or writes a remote file in window-sized chunks, at the file position or `off`.
fn rw(r: Remote, write: bool, buf: u64, len: usize, off: Option<u64>) -> i64 {
    if r.is_dir {
        return e(libc::EISDIR);
    }
    let w = remote::window();
    if write && len > w && len <= abi::WRITE_ASSEMBLE_MAX {
        return assembled_write(r, buf, len, off, w);
    }
    let mut done = 0usize;
    while done < len || len == 0 {
        let chunk = (len - done).min(w);
        let at = off.map(|o| o + done as u64).unwrap_or(u64::MAX);
        let (op, args) = match (write, off.is_some()) {
            (false, false) => (Opcode::Read, [r.handle.into(), 0, 0, 0, 0]),
            (false, true) => (Opcode::PRead, [r.handle.into(), at, 0, 0, 0]),
            (true, false) => (Opcode::Write, [r.handle.into(), 0, 0, 0, 0]),
            (true, true) => (Opcode::PWrite, [r.handle.into(), at, 0, 0, 0]),
        };
        let n = if write {
            remote::call(op, args, &[user_buf(buf + done as u64, chunk)], None)
        } else {
            remote::call(op, args, &[], Some(user_buf_mut(buf + done as u64, chunk)))
        };
        if n < 0 {
            return if done > 0 { done as i64 } else { n };
        }
        done += n as usize;
        if (n as usize) < chunk || len == 0 {
            break;
        }
    }
    done as i64
}

fn vectored(nr: i64, fd: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    let Some(r) = fdtable::get(fd) else {
        return Ok(None);
    };
    let write = matches!(
        nr,
        libc::SYS_writev | libc::SYS_pwritev | libc::SYS_pwritev2
    );
    let positioned = !matches!(nr, libc::SYS_readv | libc::SYS_writev);
    let mut off = positioned.then_some(a[3]);
    if matches!(nr, libc::SYS_preadv2 | libc::SYS_pwritev2) && a[3] as i64 == -1 {
        off = None;
    }
    if a[2] > libc::UIO_MAXIOV as u64 {
        return Err(e(libc::EINVAL));
    }
    let mut total = 0i64;
    for v in sys::iovecs(a[1], a[2] as usize) {
        let n = rw(
            r,
            write,
            v.iov_base as u64,
            v.iov_len,
            off.map(|o| o + total as u64),
        );
        if n < 0 {
            return Ok(Some(if total > 0 { total } else { n }));
        }
        total += n;
        if (n as usize) < v.iov_len {
            break;
        }
    }
    Ok(Some(total))
}

const STATX_SIZE: usize = std::mem::size_of::<libc::statx>();

fn fetch_statx(op: Opcode, args: [u64; 5], path: Option<&[u8]>) -> Result<libc::statx, i64> {
    let mut buf = [0u8; STATX_SIZE];
    let inputs: &[&[u8]] = match path {
        Some(p) => &[p],
        None => &[],
    };
    let r = remote::call(op, args, inputs, Some(&mut buf));
    if r < 0 {
        return Err(r);
    }
    // SAFETY: statx is plain data of exactly STATX_SIZE bytes; any bytes are a valid value.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const libc::statx) })
}

/// The statx of the open remote file `r`: the one its open brought, if this thread just
/// opened it ([`remote::open_stat`]), else asked of the server.
fn fstat_of(r: Remote) -> Result<libc::statx, i64> {
    if let Some(st) = remote::open_stat::take(r.handle) {
        // SAFETY: `st` is the 256 bytes of a struct statx the server wrote (statx is plain
        // data: any bytes are a valid value).
        return Ok(unsafe { std::mem::transmute::<[u8; 256], libc::statx>(st) });
    }
    fetch_statx(Opcode::FStat, [r.handle.into(), 0, 0, 0, 0], None)
}

fn fstat_remote(r: Remote, out: u64) -> i64 {
    match fstat_of(r) {
        Ok(x) => {
            put(out, statx_to_stat(&x));
            0
        }
        Err(e) => e,
    }
}

/// newfstatat / stat / lstat (`statx_mask` None, `out` a struct stat) and statx (`Some`).
fn stat_at(
    dirfd: i64,
    p: u64,
    out: u64,
    flags: u64,
    statx_mask: Option<u64>,
    nr: i64,
    a: [u64; 6],
) -> Result<Option<i64>, i64> {
    let path = path_arg(p)?;
    let emit = |x: libc::statx| {
        match statx_mask {
            Some(_) => put(out, x),
            None => put(out, statx_to_stat(&x)),
        }
        0
    };
    if path.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 {
        return match fdtable::get(dirfd) {
            Some(r) => Ok(Some(fstat_of(r).map(emit).unwrap_or_else(|e| e))),
            None => Ok(None),
        };
    }
    if let Some(r) = proc_fd(path) {
        let x = fetch_statx(Opcode::FStat, [r.handle.into(), 0, 0, 0, 0], None);
        return Ok(Some(x.map(emit).unwrap_or_else(|e| e)));
    }
    let f = flags & libc::AT_SYMLINK_NOFOLLOW as u64;
    let mask = statx_mask.unwrap_or(libc::STATX_BASIC_STATS as u64);
    Ok(Some(follow(
        (dirfd, path),
        resolve(dirfd, path)?,
        |rp| {
            fetch_statx(Opcode::StatAt, [f, mask, 0, 0, 0], Some(rp))
                .map(emit)
                .unwrap_or_else(|e| e)
        },
        |lp| local_call(nr, a, p, lp),
    )))
}

#[allow(clippy::too_many_arguments)] // mirrors the syscall's own arguments
fn two_paths(
    d1: i64,
    p1: u64,
    d2: i64,
    p2: u64,
    nr: i64,
    a: [u64; 6],
    op: Opcode,
    flags: u64,
) -> Result<Option<i64>, i64> {
    let mut l1 = resolve(d1, path_arg(p1)?)?;
    let mut l2 = resolve(d2, path_arg(p2)?)?;
    for _ in 0..MAX_ESCAPES {
        let r = match (&l1, &l2) {
            (Loc::Local, Loc::Local) => syscall6(nr, a),
            (l1 @ (Loc::Local | Loc::LocalAt(_)), l2 @ (Loc::Local | Loc::LocalAt(_))) => {
                let mut buf = [0u8; paths::PATH_MAX + 1];
                let a1 = if let Loc::LocalAt(x) = l1 {
                    local_path_arg(a, p1, x, &mut buf)
                } else {
                    a
                };
                match l2 {
                    Loc::LocalAt(y) => local_call(nr, a1, p2, Some(y)),
                    _ => syscall6(nr, a1),
                }
            }
            (Loc::Remote(x), Loc::Remote(y)) => {
                remote::call(op, [flags, 0, 0, 0, 0], &[x.as_bytes(), y.as_bytes()], None)
            }
            // One local, one remote: EXDEV, unless the remote one leads out as well.
            _ => abi::ESCAPE.as_result(),
        };
        if r == e(libc::ENOENT) {
            // A local path the kernel could not walk: one of the program's own symlinks may
            // lead into the mount (see [`follow`]). The last component is the link itself.
            let mut moved = false;
            for (l, d, p) in [(&mut l1, d1, p1), (&mut l2, d2, p2)] {
                let into = match &*l {
                    Loc::Local => local_into_mount(d, path_arg(p)?, false),
                    Loc::LocalAt(x) => local_into_mount(AT_FDCWD, x.as_bytes(), false),
                    Loc::Remote(_) => None,
                };
                if let Some(rp) = into {
                    *l = Loc::Remote(rp);
                    moved = true;
                }
            }
            if moved {
                continue;
            }
        }
        if r != abi::ESCAPE.as_result() {
            return Ok(Some(r));
        }
        // A path left the export: the first one that does continues where the server says.
        let mut moved = false;
        for l in [&mut l1, &mut l2] {
            if let Loc::Remote(x) = &*l {
                match continuation(x.as_bytes(), true)? {
                    Loc::Remote(n) if n.as_bytes() == x.as_bytes() => {}
                    n => {
                        *l = n;
                        moved = true;
                        break;
                    }
                }
            }
        }
        if !moved && !matches!((&l1, &l2), (Loc::Remote(_), Loc::Remote(_))) {
            return Ok(Some(e(libc::EXDEV)));
        }
    }
    Ok(Some(e(libc::ELOOP)))
}

/// A symlink's target is stored as the program wrote it, and read back so: a target under
/// the mount resolves because the server hands a path that meets an absolute symlink back to
/// the shim ([`follow`]), which routes the target again.
fn symlink(target: u64, dirfd: i64, p: u64, nr: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    let t = path_arg(target)?;
    path_op(dirfd, p, nr, a, |rp| {
        remote::call(Opcode::SymlinkAt, [0; 5], &[t, rp], None)
    })
}

fn readlink(
    dirfd: i64,
    p: u64,
    buf: u64,
    size: u64,
    nr: i64,
    a: [u64; 6],
) -> Result<Option<i64>, i64> {
    if (size as i64) <= 0 {
        return Err(e(libc::EINVAL));
    }
    path_op(dirfd, p, nr, a, |rp| {
        let mut target = [0u8; paths::PATH_MAX];
        let room = paths::PATH_MAX.min(remote::window());
        let n = remote::call(Opcode::ReadLinkAt, [0; 5], &[rp], Some(&mut target[..room]));
        if n < 0 {
            return n;
        }
        let t = &target[..(n as usize).min(room)];
        let k = t.len().min(size as usize);
        user_buf_mut(buf, k).copy_from_slice(&t[..k]);
        k as i64
    })
}

fn utimensat(
    dirfd: i64,
    p: u64,
    times: u64,
    flags: u64,
    nr: i64,
    a: [u64; 6],
) -> Result<Option<i64>, i64> {
    let ts: [u8; 32] = if times == 0 { [0; 32] } else { get(times) };
    let given = u64::from(times != 0);
    if p == 0 {
        // futimens(fd, times): the fd itself.
        return match fdtable::get(dirfd) {
            Some(r) => Ok(Some(remote_utimens(
                [r.handle.into(), flags, given, 0, 0],
                &ts,
                b"",
            ))),
            None => Ok(None),
        };
    }
    if let Some(r) = by_proc_fd(p) {
        return Ok(Some(remote_utimens(
            [r.handle.into(), flags, given, 0, 0],
            &ts,
            b"",
        )));
    }
    path_op(dirfd, p, nr, a, |rp| {
        remote_utimens([u64::MAX, flags, given, 0, 0], &ts, rp)
    })
}

/// UtimensAt with the times at the window start and the path right after them.
fn remote_utimens(mut args: [u64; 5], ts: &[u8; 32], path: &[u8]) -> i64 {
    let mut buf = [0u8; 32 + paths::PATH_MAX];
    buf[..32].copy_from_slice(ts);
    buf[32..32 + path.len()].copy_from_slice(path);
    args[4] = path.len() as u64;
    remote::call_raw(Opcode::UtimensAt, args, &buf[..32 + path.len()], None)
}

fn old_utimes(nr: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    // utime(path, utimbuf*), utimes(path, timeval[2]), futimesat(dirfd, path, timeval[2]).
    let (dirfd, p, t) = match nr {
        libc::SYS_futimesat => (a[0] as i32 as i64, a[1], a[2]),
        _ => (AT_FDCWD, a[0], a[1]),
    };
    let path = path_arg(p)?;
    let loc = resolve(dirfd, path)?;
    if matches!(loc, Loc::Local) {
        return Ok(None);
    }
    let mut ts = [0u8; 32];
    let given = t != 0;
    if given {
        let (at, mt) = if nr == libc::SYS_utime {
            let u: libc::utimbuf = get(t);
            ((u.actime, 0i64), (u.modtime, 0i64))
        } else {
            let tv: [libc::timeval; 2] = get(t);
            (
                (tv[0].tv_sec, tv[0].tv_usec * 1000),
                (tv[1].tv_sec, tv[1].tv_usec * 1000),
            )
        };
        for (i, (s, ns)) in [at, mt].into_iter().enumerate() {
            ts[i * 16..i * 16 + 8].copy_from_slice(&s.to_ne_bytes());
            ts[i * 16 + 8..i * 16 + 16].copy_from_slice(&ns.to_ne_bytes());
        }
    }
    Ok(Some(follow(
        (dirfd, path),
        loc,
        |rp| remote_utimens([u64::MAX, 0, u64::from(given), 0, 0], &ts, rp),
        |lp| local_call(nr, a, p, lp),
    )))
}

fn statfs_remote(rp: &[u8], out: u64) -> i64 {
    let h = remote::call(
        Opcode::OpenAt,
        [libc::O_PATH as u64, 0, 0, 0, 0],
        &[rp],
        None,
    );
    if h < 0 {
        return h;
    }
    let r = remote::call(
        Opcode::FStatFs,
        [h as u64, 0, 0, 0, 0],
        &[],
        Some(user_buf_mut(out, std::mem::size_of::<libc::statfs>())),
    );
    remote::call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
    r
}

fn chdir(dirfd: i64, p: u64, nr: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    let path = path_arg(p)?;
    let local = |rewritten: Option<&PathBuf>| {
        let r = local_call(nr, a, p, rewritten);
        if r == 0 {
            cwd::set(None);
            cwd::invalidate_local();
        }
        r
    };
    let remote = |rp: &[u8]| {
        let x = match fetch_statx(
            Opcode::StatAt,
            [0, libc::STATX_TYPE as u64, 0, 0, 0],
            Some(rp),
        ) {
            Ok(x) => x,
            Err(r) => return r,
        };
        if u32::from(x.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
            return e(libc::ENOTDIR);
        }
        let r = remote::call(
            Opcode::AccessAt,
            [libc::X_OK as u64, 0, 0, 0, 0],
            &[rp],
            None,
        );
        if r < 0 {
            return r;
        }
        let mount = config::get()
            .mount
            .as_ref()
            .expect("remote implies a mount");
        let Ok(full) = paths::join(mount.as_bytes(), rp.strip_prefix(b"/").unwrap_or(rp)) else {
            return e(libc::ENAMETOOLONG);
        };
        if !cwd::set(Some(full)) {
            return e(libc::ENOMEM);
        }
        0
    };
    Ok(Some(follow(
        (dirfd, path),
        resolve(dirfd, path)?,
        remote,
        local,
    )))
}

/// dup (no target), dup2 (`dup3_flags` None) and dup3.
fn dup(fd: i64, target: Option<i64>, dup3_flags: Option<u64>) -> Result<Option<i64>, i64> {
    let src = fdtable::get_any(fd);
    if src.is_none()
        && target
            .map(|t| fdtable::get_any(t).is_none())
            .unwrap_or(true)
    {
        return Ok(None);
    }
    let r = match (target, dup3_flags) {
        (None, _) => sys::sys(libc::SYS_dup, &[fd as u64]),
        // dup2(fd, fd) returns fd when it is open; dup3(fd, fd, _) is EINVAL.
        (Some(t), None) if t == fd => {
            return Ok(Some(sys::sys(libc::SYS_dup2, &[fd as u64, t as u64])))
        }
        (Some(t), Some(_)) if t == fd => return Err(e(libc::EINVAL)),
        (Some(t), flags) => sys::sys(libc::SYS_dup3, &[fd as u64, t as u64, flags.unwrap_or(0)]),
    };
    if r < 0 {
        return Ok(Some(r));
    }
    replace_entry(r, src);
    Ok(Some(r))
}

/// `newfd` now refers to what `src` describes (or a local file): release its old meaning.
pub(crate) fn replace_entry(newfd: i64, src: Option<Remote>) {
    let old = match src {
        // `set` leaves the old entry's reference to the caller; `clear` drops it.
        Some(r) => fdtable::set(newfd, r).map(|o| (o, fdtable::release(o))),
        None => fdtable::clear(newfd),
    };
    if let Some((o, last)) = old {
        if o.net {
            crate::net::forget_fd(newfd);
        }
        if last {
            remote::close_handle(o);
        }
    }
}

fn fcntl(fd: i64, a: [u64; 6]) -> Result<Option<i64>, i64> {
    let Some(r) = fdtable::get(fd) else {
        return Ok(None);
    };
    let cmd = a[1] as i32;
    Ok(Some(match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let n = syscall6(libc::SYS_fcntl, a);
            if n >= 0 {
                fdtable::set(n, r);
            }
            n
        }
        libc::F_GETFD | libc::F_SETFD => syscall6(libc::SYS_fcntl, a),
        libc::F_GETFL | libc::F_SETFL => remote::call(
            Opcode::Fcntl,
            [r.handle.into(), cmd as u64, a[2], 0, 0],
            &[],
            None,
        ),
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => {
            let mut fl: [u8; std::mem::size_of::<libc::flock>()] = get(a[2]);
            let input = fl;
            let args = [r.handle.into(), cmd as u64, 0, 0, 0];
            if matches!(cmd, libc::F_GETLK | libc::F_OFD_GETLK) {
                let n = remote::call(Opcode::Fcntl, args, &[&input], Some(&mut fl));
                if n >= 0 {
                    put(a[2], fl);
                }
                n
            } else {
                remote::call(Opcode::Fcntl, args, &[&input], None)
            }
        }
        _ => e(libc::EINVAL),
    }))
}

fn sendfile(a: [u64; 6]) -> Result<Option<i64>, i64> {
    let (out_fd, in_fd) = (a[0] as i32 as i64, a[1] as i32 as i64);
    let rin = fdtable::get(in_fd);
    let rout = fdtable::get(out_fd);
    if rin.is_none() && rout.is_none() {
        return Ok(None);
    }
    // Emulated with a per-thread bounce buffer. The source is always read at an explicit
    // position, so bytes read but not written (a short write to a non-blocking socket) are
    // not consumed: with a NULL offset the file position moves by what was sent, as Linux's.
    let seek = |whence: i32, to: u64| -> i64 {
        match rin {
            Some(r) => remote::call(
                Opcode::LSeek,
                [r.handle.into(), to, whence as u64, 0, 0],
                &[],
                None,
            ),
            None => sys::sys(libc::SYS_lseek, &[in_fd as u64, to, whence as u64]),
        }
    };
    // An unreadable offset is EFAULT and a negative one EINVAL, as from the kernel (the
    // offset itself, returned as the result, read as -EPERM for -1).
    let start = match user_offset(a[2])? {
        Some(o) => o as i64,
        None => seek(libc::SEEK_CUR, 0),
    };
    if start < 0 {
        return Ok(Some(start));
    }
    let count = a[3] as usize;
    let mut done = 0usize;
    let r = (|| {
        // Per call, from the shim's own allocator (see net::sendfile).
        let mut buf = vec![0u8; count.min(remote::window().clamp(64 << 10, 1 << 20)).max(1)];
        while done < count {
            let want = (count - done).min(buf.len());
            let at = start as u64 + done as u64;
            let n = match rin {
                Some(r) => rw(r, false, buf.as_mut_ptr() as u64, want, Some(at)),
                None => sys::sys(
                    libc::SYS_pread64,
                    &[in_fd as u64, buf.as_mut_ptr() as u64, want as u64, at],
                ),
            };
            if n <= 0 {
                return if n < 0 && done == 0 { n } else { done as i64 };
            }
            let w = match rout {
                Some(r) => rw(r, true, buf.as_ptr() as u64, n as usize, None),
                None => dispatch(
                    libc::SYS_write,
                    [out_fd as u64, buf.as_ptr() as u64, n as u64, 0, 0, 0],
                ),
            };
            if w < 0 {
                return if done > 0 { done as i64 } else { w };
            }
            done += w as usize;
            if (w as usize) < n as usize {
                break;
            }
        }
        done as i64
    })();
    if done > 0 || r >= 0 {
        let end = start as u64 + done as u64;
        if a[2] != 0 {
            put(a[2], end as i64);
        } else {
            seek(libc::SEEK_SET, end);
        }
    }
    Ok(Some(r))
}

/// File mappings of remote files: private ones, and read-only shared ones (Python's
/// `mmap(..., access=ACCESS_READ)`), are emulated with an anonymous mapping filled from the
/// file at the time of the call; writable shared ones fail with ENODEV, as on a file system
/// without shared writable mappings. A read-only shared mapping does not see later writes to
/// the file (documented in docs/ARCHITECTURE.md).
fn mmap(a: [u64; 6]) -> Result<Option<i64>, i64> {
    let fd = a[4] as i32 as i64;
    let Some(r) = fdtable::get(fd) else {
        return Ok(None);
    };
    let (addr, len, prot, flags, off) = (a[0], a[1], a[2], a[3] as i32, a[5]);
    let shared = flags & libc::MAP_SHARED != 0
        || flags & libc::MAP_SHARED_VALIDATE == libc::MAP_SHARED_VALIDATE;
    if shared && prot & libc::PROT_WRITE as u64 != 0 {
        return Err(e(libc::ENODEV));
    }
    let flags = flags & !(libc::MAP_SHARED_VALIDATE | libc::MAP_SHARED);
    let anon_flags = (flags & !libc::MAP_SHARED) | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let m = sys::sys(
        libc::SYS_mmap,
        &[
            addr,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            anon_flags as u64,
            u64::MAX,
            0,
        ],
    );
    if m < 0 {
        return Ok(Some(m));
    }
    let n = rw(r, false, m as u64, len as usize, Some(off));
    if n < 0 {
        sys::sys(libc::SYS_munmap, &[m as u64, len]);
        return Ok(Some(n));
    }
    let p = sys::sys(libc::SYS_mprotect, &[m as u64, len, prot]);
    if p < 0 {
        sys::sys(libc::SYS_munmap, &[m as u64, len]);
        return Ok(Some(p));
    }
    Ok(Some(m))
}

/// The process's umask, applied to modes sent to the storage domain (which creates files
/// with the mode it is given: its own umask is 0).
static UMASK: AtomicU32 = AtomicU32::new(0o022);

/// Reads the umask once at start-up (the constructor runs before any other thread).
pub fn init_umask() {
    let old = sys::sys(libc::SYS_umask, &[0o022]);
    sys::sys(libc::SYS_umask, &[old as u64]);
    UMASK.store(old as u32 & 0o777, Ordering::Relaxed);
}

fn masked(mode: u64) -> u64 {
    mode & 0o7777 & !u64::from(UMASK.load(Ordering::Relaxed))
}
