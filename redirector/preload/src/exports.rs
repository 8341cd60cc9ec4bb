//! The interposed libc functions: the fast path into [`crate::dispatch::dispatch`].
//!
//! Each one passes its arguments exactly as the matching system call takes them, and turns a
//! `-errno` result into `errno` and -1, as libc does. Variadic C prototypes (`open`,
//! `openat`, `fcntl`) are declared with their optional argument: on x86-64 it travels in the
//! same register either way.
#![allow(clippy::missing_safety_doc)]

use libc::{c_char, c_int, c_uint, c_ulong, c_void, mode_t, off_t, size_t, ssize_t};

use crate::dispatch::dispatch;

fn ret(r: i64) -> i64 {
    if (-4095..0).contains(&r) {
        crate::sys::set_errno(-r as i32);
        -1
    } else {
        r
    }
}

macro_rules! interpose {
    ($( fn $name:ident($($arg:ident : $ty:ty),*) -> $rt:ty = $nr:expr, [$($val:expr),*]; )*) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name($($arg: $ty),*) -> $rt {
                let a: [u64; 6] = {
                    let v: &[u64] = &[$($val as u64),*];
                    let mut a = [0u64; 6];
                    a[..v.len()].copy_from_slice(v);
                    a
                };
                ret(dispatch($nr, a)) as $rt
            }
        )*
    };
}

const AT_FDCWD: c_int = libc::AT_FDCWD;

interpose! {
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t = libc::SYS_read, [fd, buf, n];
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t = libc::SYS_write, [fd, buf, n];
    fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t = libc::SYS_pread64, [fd, buf, n, off];
    fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t = libc::SYS_pread64, [fd, buf, n, off];
    fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t = libc::SYS_pwrite64, [fd, buf, n, off];
    fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t = libc::SYS_pwrite64, [fd, buf, n, off];
    fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t = libc::SYS_readv, [fd, iov, n];
    fn writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t = libc::SYS_writev, [fd, iov, n];
    fn close(fd: c_int) -> c_int = libc::SYS_close, [fd];
    fn lseek(fd: c_int, off: off_t, whence: c_int) -> off_t = libc::SYS_lseek, [fd, off, whence];
    fn lseek64(fd: c_int, off: off_t, whence: c_int) -> off_t = libc::SYS_lseek, [fd, off, whence];
    fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int = libc::SYS_openat, [AT_FDCWD, path, flags, mode];
    fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int = libc::SYS_openat, [AT_FDCWD, path, flags, mode];
    fn openat(dfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int = libc::SYS_openat, [dfd, path, flags, mode];
    fn openat64(dfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int = libc::SYS_openat, [dfd, path, flags, mode];
    fn creat(path: *const c_char, mode: mode_t) -> c_int = libc::SYS_openat, [AT_FDCWD, path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode];
    fn fstat(fd: c_int, st: *mut libc::stat) -> c_int = libc::SYS_fstat, [fd, st];
    fn fstat64(fd: c_int, st: *mut libc::stat) -> c_int = libc::SYS_fstat, [fd, st];
    fn stat(path: *const c_char, st: *mut libc::stat) -> c_int = libc::SYS_newfstatat, [AT_FDCWD, path, st, 0];
    fn stat64(path: *const c_char, st: *mut libc::stat) -> c_int = libc::SYS_newfstatat, [AT_FDCWD, path, st, 0];
    fn lstat(path: *const c_char, st: *mut libc::stat) -> c_int = libc::SYS_newfstatat, [AT_FDCWD, path, st, libc::AT_SYMLINK_NOFOLLOW];
    fn lstat64(path: *const c_char, st: *mut libc::stat) -> c_int = libc::SYS_newfstatat, [AT_FDCWD, path, st, libc::AT_SYMLINK_NOFOLLOW];
    fn fstatat(dfd: c_int, path: *const c_char, st: *mut libc::stat, flags: c_int) -> c_int = libc::SYS_newfstatat, [dfd, path, st, flags];
    fn fstatat64(dfd: c_int, path: *const c_char, st: *mut libc::stat, flags: c_int) -> c_int = libc::SYS_newfstatat, [dfd, path, st, flags];
    fn statx(dfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut libc::statx) -> c_int = libc::SYS_statx, [dfd, path, flags, mask, buf];
    fn access(path: *const c_char, mode: c_int) -> c_int = libc::SYS_access, [path, mode];
    fn faccessat(dfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int = libc::SYS_faccessat2, [dfd, path, mode, flags];
    fn fsync(fd: c_int) -> c_int = libc::SYS_fsync, [fd];
    fn fdatasync(fd: c_int) -> c_int = libc::SYS_fdatasync, [fd];
    fn ftruncate(fd: c_int, len: off_t) -> c_int = libc::SYS_ftruncate, [fd, len];
    fn ftruncate64(fd: c_int, len: off_t) -> c_int = libc::SYS_ftruncate, [fd, len];
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int = libc::SYS_fcntl, [fd, cmd, arg];
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int = libc::SYS_fcntl, [fd, cmd, arg];
    fn dup(fd: c_int) -> c_int = libc::SYS_dup, [fd];
    fn dup2(fd: c_int, to: c_int) -> c_int = libc::SYS_dup2, [fd, to];
    fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int = libc::SYS_dup3, [fd, to, flags];
    fn mkdir(path: *const c_char, mode: mode_t) -> c_int = libc::SYS_mkdir, [path, mode];
    fn mkdirat(dfd: c_int, path: *const c_char, mode: mode_t) -> c_int = libc::SYS_mkdirat, [dfd, path, mode];
    fn unlink(path: *const c_char) -> c_int = libc::SYS_unlink, [path];
    fn unlinkat(dfd: c_int, path: *const c_char, flags: c_int) -> c_int = libc::SYS_unlinkat, [dfd, path, flags];
    fn rmdir(path: *const c_char) -> c_int = libc::SYS_rmdir, [path];
    fn rename(a: *const c_char, b: *const c_char) -> c_int = libc::SYS_rename, [a, b];
    fn renameat(da: c_int, a: *const c_char, db: c_int, b: *const c_char) -> c_int = libc::SYS_renameat, [da, a, db, b];
    fn chdir(path: *const c_char) -> c_int = libc::SYS_chdir, [path];
    fn fchdir(fd: c_int) -> c_int = libc::SYS_fchdir, [fd];
    fn readlink(path: *const c_char, buf: *mut c_char, n: size_t) -> ssize_t = libc::SYS_readlink, [path, buf, n];
    fn fchmod(fd: c_int, mode: mode_t) -> c_int = libc::SYS_fchmod, [fd, mode];
    fn chmod(path: *const c_char, mode: mode_t) -> c_int = libc::SYS_chmod, [path, mode];
    fn sigprocmask(how: c_int, set: *const u64, old: *mut u64) -> c_int = libc::SYS_rt_sigprocmask, [how, set, old, 8];
    fn umask(mask: mode_t) -> mode_t = libc::SYS_umask, [mask];
    fn getdents64(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t = libc::SYS_getdents64, [fd, buf, n];
    fn sendfile(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t = libc::SYS_sendfile, [out, inp, off, n];
    fn sendfile64(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t = libc::SYS_sendfile, [out, inp, off, n];
    fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int = libc::SYS_socket, [domain, ty, proto];
    fn bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int = libc::SYS_bind, [fd, addr, len];
    fn listen(fd: c_int, backlog: c_int) -> c_int = libc::SYS_listen, [fd, backlog];
    fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int = libc::SYS_accept, [fd, addr, len];
    fn accept4(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int = libc::SYS_accept4, [fd, addr, len, flags];
    fn connect(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int = libc::SYS_connect, [fd, addr, len];
    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t = libc::SYS_sendto, [fd, buf, n, flags, 0, 0];
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> ssize_t = libc::SYS_sendto, [fd, buf, n, flags, addr, len];
    fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t = libc::SYS_sendmsg, [fd, msg, flags];
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t = libc::SYS_recvfrom, [fd, buf, n, flags, 0, 0];
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> ssize_t = libc::SYS_recvfrom, [fd, buf, n, flags, addr, len];
    fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t = libc::SYS_recvmsg, [fd, msg, flags];
    fn sendmmsg(fd: c_int, vec: *mut libc::mmsghdr, vlen: c_uint, flags: c_int) -> c_int = libc::SYS_sendmmsg, [fd, vec, vlen, flags];
    fn recvmmsg(fd: c_int, vec: *mut libc::mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int = libc::SYS_recvmmsg, [fd, vec, vlen, flags, timeout];
    fn shutdown(fd: c_int, how: c_int) -> c_int = libc::SYS_shutdown, [fd, how];
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut libc::socklen_t) -> c_int = libc::SYS_getsockopt, [fd, level, name, val, len];
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: libc::socklen_t) -> c_int = libc::SYS_setsockopt, [fd, level, name, val, len];
    fn getsockname(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int = libc::SYS_getsockname, [fd, addr, len];
    fn getpeername(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int = libc::SYS_getpeername, [fd, addr, len];
    fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int = libc::SYS_poll, [fds, n, timeout];
    fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int = libc::SYS_ppoll, [fds, n, ts, mask, 8];
    fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, x: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int = libc::SYS_select, [n, r, w, x, tv];
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int = libc::SYS_epoll_ctl, [epfd, op, fd, ev];
    fn epoll_wait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int = libc::SYS_epoll_wait, [epfd, ev, max, timeout];
    fn epoll_pwait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int = libc::SYS_epoll_pwait, [epfd, ev, max, timeout, mask, 8];
    fn ioctl(fd: c_int, req: c_ulong, arg: c_ulong) -> c_int = libc::SYS_ioctl, [fd, req, arg];
}

/// glibc's pselect takes the signal mask itself; the system call takes {mask, size}.
#[no_mangle]
pub extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    x: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // The kernel may update the timeout; pselect's is const, so pass a copy.
    let mut t = if ts.is_null() {
        None
    } else {
        Some(crate::sys::get::<libc::timespec>(ts as u64))
    };
    let tp = t.as_mut().map_or(0, |t| t as *mut libc::timespec as u64);
    let m: [u64; 2] = [mask as u64, 8];
    let mp = if mask.is_null() { 0 } else { m.as_ptr() as u64 };
    ret(dispatch(
        libc::SYS_pselect6,
        [n as u64, r as u64, w as u64, x as u64, tp, mp],
    )) as c_int
}

/// `getcwd` must also allocate when `buf` is null (glibc extension), so it is not a plain wrapper.
#[no_mangle]
pub extern "C" fn getcwd(buf: *mut c_char, size: size_t) -> *mut c_char {
    if crate::cwd::get().is_none() || !buf.is_null() {
        if buf.is_null() {
            // Local cwd with glibc's allocate-for-me convention: let the kernel size it.
            let mut tmp = [0u8; crate::paths::PATH_MAX];
            let r = ret(dispatch(
                libc::SYS_getcwd,
                [tmp.as_mut_ptr() as u64, tmp.len() as u64, 0, 0, 0, 0],
            ));
            if r < 0 {
                return std::ptr::null_mut();
            }
            return dup_c(&tmp[..r as usize], size);
        }
        let r = ret(dispatch(
            libc::SYS_getcwd,
            [buf as u64, size as u64, 0, 0, 0, 0],
        ));
        return if r < 0 { std::ptr::null_mut() } else { buf };
    }
    let c = crate::cwd::get().expect("checked");
    let mut tmp = c.as_bytes().to_vec();
    tmp.push(0);
    dup_c(&tmp, size)
}

fn dup_c(with_nul: &[u8], size: size_t) -> *mut c_char {
    let n = if size == 0 {
        with_nul.len()
    } else {
        size.max(with_nul.len())
    };
    if size != 0 && size < with_nul.len() {
        crate::sys::set_errno(libc::ERANGE);
        return std::ptr::null_mut();
    }
    // SAFETY: malloc of n bytes; we copy at most n bytes into it.
    unsafe {
        let p = libc::malloc(n) as *mut u8;
        if p.is_null() {
            return std::ptr::null_mut();
        }
        std::ptr::copy_nonoverlapping(with_nul.as_ptr(), p, with_nul.len());
        p as *mut c_char
    }
}

/// `pthread_sigmask` returns the error number instead of setting errno.
#[no_mangle]
pub extern "C" fn pthread_sigmask(how: c_int, set: *const u64, old: *mut u64) -> c_int {
    let r = dispatch(
        libc::SYS_rt_sigprocmask,
        [how as u64, set as u64, old as u64, 8, 0, 0],
    );
    if r < 0 {
        -r as c_int
    } else {
        0
    }
}

// ---- fork: the parent learns its child's pid ----
//
// glibc's own `fork` runs the shim's atfork handlers (a fork token per domain before, the
// child's adoption after); only its caller learns the child's pid, which the domains use to
// drop a token whose child died before adopting (see `crate::fork_done`).

static REAL_FORK: AtomicUsize = AtomicUsize::new(0);

#[no_mangle]
pub extern "C" fn fork() -> libc::pid_t {
    let mut f = REAL_FORK.load(Ordering::Acquire);
    if f == 0 {
        // A fork before the shim's constructor ran (another library's constructor): resolve
        // it now (dlsym may allocate, which is fine outside a signal handler).
        // SAFETY: dlsym with a valid NUL-terminated name; the result is an address or null.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"fork".as_ptr()) } as usize;
        if f == 0 {
            crate::sys::set_errno(libc::ENOSYS);
            return -1;
        }
    }
    // SAFETY: `f` is libc's own `fork` (dlsym with RTLD_NEXT in the constructor).
    let real: extern "C" fn() -> libc::pid_t = unsafe { std::mem::transmute(f) };
    let pid = real();
    if pid != 0 {
        // SAFETY: this thread's errno slot.
        let e = unsafe { *libc::__errno_location() };
        crate::fork_done(pid);
        crate::sys::set_errno(e);
    }
    pid
}

// ---- credential changes reach every domain before the call returns ----
//
// The domains act with the credentials the kernel reported when the session connected
// (SO_PEERCRED). After a successful setuid/setgid/... the shim connects each domain anew (the
// new connection carries the new credentials) and adopts the old session's handles into it
// (see `remote::refresh_credentials`). The real functions are resolved once, in the
// constructor ([`resolve_real`]): glibc applies them to every thread of the process.

use std::sync::atomic::{AtomicUsize, Ordering};

macro_rules! creds {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) => $slot:ident; )*) => {
        $(
            static $slot: AtomicUsize = AtomicUsize::new(0);

            #[no_mangle]
            pub extern "C" fn $name($($arg: $ty),*) -> c_int {
                let f = $slot.load(Ordering::Acquire);
                if f == 0 {
                    crate::sys::set_errno(libc::ENOSYS);
                    return -1;
                }
                // SAFETY: `f` is libc's own function of this name and prototype (dlsym with
                // RTLD_NEXT in the constructor).
                let real: extern "C" fn($($ty),*) -> c_int = unsafe { std::mem::transmute(f) };
                let r = real($($arg),*);
                if r == 0 {
                    // SAFETY: this thread's errno slot.
                    let e = unsafe { *libc::__errno_location() };
                    crate::dispatch::shim_code(crate::remote::refresh_credentials);
                    crate::sys::set_errno(e);
                }
                r
            }
        )*

        /// Resolves libc's credential functions and `fork` (constructor only: dlsym may
        /// allocate).
        pub fn resolve_real() {
            // SAFETY: as below.
            let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"fork".as_ptr()) };
            REAL_FORK.store(p as usize, Ordering::Release);
            $(
                // SAFETY: dlsym with a valid NUL-terminated name; the result is a function
                // address or null.
                let p = unsafe {
                    libc::dlsym(
                        libc::RTLD_NEXT,
                        concat!(stringify!($name), "\0").as_ptr().cast(),
                    )
                };
                $slot.store(p as usize, Ordering::Release);
            )*
        }
    };
}

creds! {
    setuid(uid: libc::uid_t) => REAL_SETUID;
    setgid(gid: libc::gid_t) => REAL_SETGID;
    seteuid(uid: libc::uid_t) => REAL_SETEUID;
    setegid(gid: libc::gid_t) => REAL_SETEGID;
    setreuid(r: libc::uid_t, e: libc::uid_t) => REAL_SETREUID;
    setregid(r: libc::gid_t, e: libc::gid_t) => REAL_SETREGID;
    setresuid(r: libc::uid_t, e: libc::uid_t, s: libc::uid_t) => REAL_SETRESUID;
    setresgid(r: libc::gid_t, e: libc::gid_t, s: libc::gid_t) => REAL_SETRESGID;
    setgroups(n: size_t, list: *const libc::gid_t) => REAL_SETGROUPS;
    initgroups(user: *const c_char, group: libc::gid_t) => REAL_INITGROUPS;
    capset(hdr: *mut c_void, data: *const c_void) => REAL_CAPSET;
}
