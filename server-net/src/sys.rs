//! The network domain's raw system calls: the only `unsafe` code of the crate.
//!
//! Every function takes plain values or safe slices and returns the kernel's result as
//! `Ok(value)` or `Err(errno)`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn check(r: libc::c_long) -> Result<i64, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(r)
    }
}

/// socket(2); the fd is always close-on-exec in the server.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Result<OwnedFd, i32> {
    // SAFETY: plain integer arguments.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) } as _)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// bind(2) with an address in `addr`.
pub fn bind(fd: BorrowedFd<'_>, addr: &[u8]) -> Result<i64, i32> {
    // SAFETY: `addr` is valid for `addr.len()` bytes for the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr.as_ptr() as *const libc::sockaddr,
            addr.len() as libc::socklen_t,
        )
    } as _)
}

/// connect(2) (on a non-blocking socket: EINPROGRESS).
pub fn connect(fd: BorrowedFd<'_>, addr: &[u8]) -> Result<i64, i32> {
    // SAFETY: `addr` is valid for `addr.len()` bytes for the call.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            addr.as_ptr() as *const libc::sockaddr,
            addr.len() as libc::socklen_t,
        )
    } as _)
}

/// listen(2).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<i64, i32> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) } as _)
}

/// accept4(2) without waiting (the server's sockets are O_NONBLOCK when the client's are);
/// the peer address goes to `addr`, its full length is returned beside the new fd.
pub fn accept4(
    fd: BorrowedFd<'_>,
    addr: &mut [u8; 128],
    flags: i32,
) -> Result<(OwnedFd, usize), i32> {
    let mut len = addr.len() as libc::socklen_t;
    // SAFETY: `addr` is valid for `len` bytes and `len` for one socklen_t.
    let r = check(unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            addr.as_mut_ptr() as *mut libc::sockaddr,
            &mut len,
            flags | libc::SOCK_CLOEXEC,
        )
    } as _)?;
    // SAFETY: a new fd from the kernel, owned by nobody else.
    Ok((unsafe { OwnedFd::from_raw_fd(r as RawFd) }, len as usize))
}

/// shutdown(2).
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<i64, i32> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) } as _)
}

/// getsockopt(2) into `out`; returns the value's length.
pub fn getsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, out: &mut [u8]) -> Result<i64, i32> {
    let mut len = out.len() as libc::socklen_t;
    // SAFETY: `out` is valid for `len` bytes and `len` for one socklen_t.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            out.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    } as _)?;
    Ok(len as i64)
}

/// setsockopt(2).
pub fn setsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, val: &[u8]) -> Result<i64, i32> {
    // SAFETY: `val` is valid for its length for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_ptr() as *const libc::c_void,
            val.len() as libc::socklen_t,
        )
    } as _)
}

/// getsockname(2) (`peer` false) or getpeername(2) into `out`; returns the full length.
pub fn sockname(fd: BorrowedFd<'_>, peer: bool, out: &mut [u8; 128]) -> Result<i64, i32> {
    let mut len = out.len() as libc::socklen_t;
    let p = out.as_mut_ptr() as *mut libc::sockaddr;
    // SAFETY: `out` is valid for `len` bytes and `len` for one socklen_t.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    check(r as _)?;
    Ok(len as i64)
}

/// ioctl(2) with an int argument, in (FIONBIO) or out (FIONREAD, SIOCOUTQ).
pub fn ioctl_int(fd: BorrowedFd<'_>, req: u64, val: i32) -> Result<i64, i32> {
    let mut v: libc::c_int = val;
    // SAFETY: the request takes a pointer to one int, which `v` is.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v as *mut libc::c_int) } as _)?;
    Ok(i64::from(v))
}

/// fcntl(2) F_GETFL / F_SETFL.
pub fn fcntl_fl(fd: BorrowedFd<'_>, cmd: i32, arg: i64) -> Result<i64, i32> {
    // SAFETY: F_GETFL/F_SETFL take an integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg as libc::c_int) } as _)
}

/// True when the open file is in non-blocking mode.
pub fn nonblocking(fd: BorrowedFd<'_>) -> bool {
    fcntl_fl(fd, libc::F_GETFL, 0).is_ok_and(|f| f & i64::from(libc::O_NONBLOCK) != 0)
}

/// The SO_RCVTIMEO (`send` false) or SO_SNDTIMEO timeout; `None` when unset.
pub fn timeout(fd: BorrowedFd<'_>, send: bool) -> Option<Duration> {
    let mut tv = [0u8; 16];
    let name = if send {
        libc::SO_SNDTIMEO
    } else {
        libc::SO_RCVTIMEO
    };
    getsockopt(fd, libc::SOL_SOCKET, name, &mut tv).ok()?;
    let sec = i64::from_ne_bytes(tv[..8].try_into().ok()?);
    let usec = i64::from_ne_bytes(tv[8..].try_into().ok()?);
    let d = Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.max(0) as u64);
    (!d.is_zero()).then_some(d)
}

/// What the socket is ready for now (`POLL*` bits).
pub fn readiness(fd: BorrowedFd<'_>) -> u32 {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT | libc::POLLPRI | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        0
    } else {
        p.revents as u16 as u32
    }
}

/// statx(2) of an open file (AT_EMPTY_PATH) into a 256-byte buffer.
pub fn fstatx(fd: BorrowedFd<'_>, out: &mut [u8; 256]) -> Result<i64, i32> {
    // SAFETY: `out` holds a `struct statx` (256 bytes); the path is an empty C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            out.as_mut_ptr(),
        )
    })
}

/// A `msghdr` with one iovec, for io_uring SENDMSG/RECVMSG: the pointers name the session's
/// mapped window, which the in-flight call keeps alive.
pub struct MsgBuf {
    /// The header io_uring reads (and, for RECVMSG, updates: name length, flags).
    pub hdr: libc::msghdr,
    /// The one data segment.
    pub iov: libc::iovec,
    /// Control data to send, copied out of the shared window and validated (the header
    /// points here, never into memory the client can still change).
    pub control: Vec<u8>,
}

// SAFETY: the raw pointers in a MsgBuf name the session's shared window (kept mapped by the
// in-flight call that owns the MsgBuf) or the MsgBuf itself; the struct moves between the
// worker and nothing else, and no thread dereferences the pointers but the kernel.
unsafe impl Send for MsgBuf {}

impl MsgBuf {
    /// Builds the header for `len` data bytes at `data` and `name_len` address bytes at
    /// `name` (null when none). Boxed, so the header can point at its own iovec.
    pub fn new(data: *mut u8, len: usize, name: *mut u8, name_len: usize) -> Box<MsgBuf> {
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut m = Box::new(MsgBuf {
            hdr,
            iov: libc::iovec {
                iov_base: data as *mut libc::c_void,
                iov_len: len,
            },
            control: Vec::new(),
        });
        m.hdr.msg_name = name as *mut libc::c_void;
        m.hdr.msg_namelen = name_len as libc::socklen_t;
        m.hdr.msg_iov = &mut m.iov;
        m.hdr.msg_iovlen = 1;
        m
    }

    /// Control data to send: `ctl`, owned by the header from now on.
    pub fn send_control(&mut self, ctl: Vec<u8>) {
        self.control = ctl;
        if !self.control.is_empty() {
            self.hdr.msg_control = self.control.as_mut_ptr() as *mut libc::c_void;
            self.hdr.msg_controllen = self.control.len();
        }
    }

    /// Room for received control data: `len` bytes at `at` (the shared window, where the
    /// kernel writes them for the client to copy out).
    pub fn recv_control(&mut self, at: *mut u8, len: usize) {
        if len > 0 {
            self.hdr.msg_control = at as *mut libc::c_void;
            self.hdr.msg_controllen = len;
        }
    }
}

/// linux/capability.h
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// linux/capability.h
pub const CAP_NET_ADMIN: u32 = 12;
/// linux/capability.h
pub const CAP_NET_RAW: u32 = 13;

/// The first unprivileged port (sysctl net.ipv4.ip_unprivileged_port_start; 1024 if unreadable).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Joins the network namespace at `path` (e.g. /run/netns/NAME) for this thread and every
/// thread it starts afterwards.
pub fn enter_netns(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns on an fd we own, with the namespace type named.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// recvmsg(2) with no name and no control messages into `iov`: bytes received, or errno.
///
/// # Safety
///
/// Every iovec must describe memory that stays mapped and writable for the call, and that no
/// Rust reference covers (the kernel writes it).
pub unsafe fn recv_iov(fd: BorrowedFd<'_>, iov: &[libc::iovec], flags: i32) -> Result<usize, i32> {
    // SAFETY: a zeroed msghdr is valid (no name, no control); its iovecs are the caller's,
    // valid for writing by the contract above.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_ptr() as *mut libc::iovec;
    m.msg_iovlen = iov.len();
    // SAFETY: `m` is valid for the call; the kernel writes only through the iovecs.
    check(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut m, flags) } as _).map(|n| n as usize)
}

/// Closes `fd`'s connection with a reset at its last close (SO_LINGER with a zero timeout),
/// as Linux does for a socket closed with unread data.
pub fn reset_on_close(fd: BorrowedFd<'_>) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` is a valid linger struct for SO_LINGER, of the length passed.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&l as *const libc::linger).cast::<u8>(),
            std::mem::size_of::<libc::linger>(),
        )
    };
    let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, bytes);
}

/// sendmsg(2) of `iov` with no name and no control messages: bytes sent, or errno.
///
/// # Safety
///
/// Every iovec must describe memory that stays mapped and readable for the call.
pub unsafe fn send_iov(fd: BorrowedFd<'_>, iov: &[libc::iovec], flags: i32) -> Result<usize, i32> {
    // SAFETY: a zeroed msghdr is valid (no name, no control); its iovecs are the caller's,
    // valid for reading by the contract above.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_ptr() as *mut libc::iovec;
    m.msg_iovlen = iov.len();
    // SAFETY: `m` is valid for the call; the kernel only reads through the iovecs.
    check(unsafe { libc::sendmsg(fd.as_raw_fd(), &m, flags) } as _).map(|n| n as usize)
}

/// Waits up to `ms` milliseconds for `fd` to become writable; false on timeout or error.
pub fn wait_writable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & libc::POLLOUT != 0
}
