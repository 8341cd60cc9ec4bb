//! The storage domain's raw system calls. Every `unsafe` block of the crate is in this module;
//! each wrapper takes only safe Rust values and returns `Err(errno)` as Linux reports it.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A system call's result: the value, or Linux's errno.
pub type SysResult<T> = Result<T, i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cvt(r: libc::c_long) -> SysResult<libc::c_long> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn cvt_int(r: libc::c_int) -> SysResult<libc::c_int> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor the kernel just returned (an io_uring open completion).
pub fn own_fd(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0);
    // SAFETY: `fd` was just created by the kernel for this process (an openat2 completion) and
    // nothing else holds or will close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `openat2(dirfd, path, {flags, mode, resolve})`, retried while the kernel reports a
/// concurrent rename (`EAGAIN`, which `RESOLVE_BENEATH` may give). Under `RESOLVE_BENEATH`,
/// the kernel's `EXDEV` (the path met an absolute symlink or `..` above `dirfd`) is
/// [`abi::ESCAPE`]: the path continues outside, where the client looks next.
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: u64,
    mode: u64,
    resolve: u64,
) -> SysResult<OwnedFd> {
    let below;
    let path = if resolve & libc::RESOLVE_BENEATH != 0 {
        below = crate::path::below(path);
        &*below
    } else {
        path
    };
    let mut how: libc::open_how = zeroed_open_how();
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated, `how` is a valid open_how whose size is passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match cvt(r) {
            Ok(fd) => return Ok(own_fd(fd as RawFd)),
            Err(libc::EAGAIN) if tries < 64 => tries += 1,
            Err(libc::EXDEV) if resolve & libc::RESOLVE_BENEATH != 0 => {
                return Err(abi::ESCAPE.get())
            }
            Err(e) => return Err(e),
        }
    }
}

fn zeroed_open_how() -> libc::open_how {
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Size of `struct statx`.
pub const STATX_SIZE: usize = 256;
const _: () = assert!(std::mem::size_of::<libc::statx>() == STATX_SIZE);

/// A `struct statx` as the words the kernel writes (8-byte aligned, viewable as bytes).
pub type StatxBuf = [u64; STATX_SIZE / 8];

/// `statx(dirfd, path, flags, mask)` into `buf`.
pub fn statx(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mask: u32,
    buf: &mut StatxBuf,
) -> SysResult<()> {
    // SAFETY: `buf` is 256 writable, 8-byte aligned bytes: the size and alignment of statx.
    let r = unsafe {
        libc::statx(
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags,
            mask,
            buf.as_mut_ptr().cast::<libc::statx>(),
        )
    };
    cvt_int(r).map(drop)
}

/// The `st_mode` of an open file.
pub fn fstat_mode(fd: BorrowedFd<'_>) -> SysResult<u32> {
    let mut buf = StatxBuf::default();
    statx(
        fd,
        c"",
        libc::AT_EMPTY_PATH,
        libc::STATX_TYPE | libc::STATX_MODE,
        &mut buf,
    )?;
    // stx_mode is the u16 at byte offset 28.
    let b = zerocopy::IntoBytes::as_bytes(&buf);
    Ok(u32::from(u16::from_ne_bytes([b[28], b[29]])))
}

/// The type and permission bits (`st_mode`) and the owner of the file `fd` names.
pub fn fstat_mode_owner(fd: BorrowedFd<'_>) -> SysResult<(u32, u32)> {
    let mut buf = StatxBuf::default();
    statx(
        fd,
        c"",
        libc::AT_EMPTY_PATH,
        libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID,
        &mut buf,
    )?;
    // stx_uid is the u32 at byte offset 20, stx_mode the u16 at 28.
    let b = zerocopy::IntoBytes::as_bytes(&buf);
    let uid = u32::from_ne_bytes([b[20], b[21], b[22], b[23]]);
    Ok((u32::from(u16::from_ne_bytes([b[28], b[29]])), uid))
}

/// Whether Linux's `fs.protected_symlinks` is on now (on when unreadable, the safe side). Read
/// at each use, as the kernel reads it: only a path that left the export comes here.
pub fn protected_symlinks() -> bool {
    std::fs::read("/proc/sys/fs/protected_symlinks").map_or(true, |s| s.first() != Some(&b'0'))
}

/// Size of `struct statfs`.
pub const STATFS_SIZE: usize = 120;
const _: () = assert!(std::mem::size_of::<libc::statfs>() == STATFS_SIZE);

/// A `struct statfs` as words.
pub type StatfsBuf = [u64; STATFS_SIZE / 8];

/// `fstatfs(fd)` into `buf`.
pub fn fstatfs(fd: BorrowedFd<'_>, buf: &mut StatfsBuf) -> SysResult<()> {
    // SAFETY: `buf` is 120 writable, 8-byte aligned bytes: the size and alignment of statfs.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), buf.as_mut_ptr().cast::<libc::statfs>()) };
    cvt_int(r).map(drop)
}

/// `getdents64(fd)` into `buf`; returns the bytes filled.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    cvt(r).map(|n| n as usize)
}

/// `mkdirat`.
pub fn mkdirat(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt_int(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat`.
pub fn mknodat(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt_int(unsafe { libc::mknodat(dirfd.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

/// `unlinkat`.
pub fn unlinkat(dirfd: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt_int(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2`.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both names are NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    cvt(r).map(drop)
}

/// `linkat` (`olddir` may be `None` for `AT_FDCWD`, used with `/proc/self/fd/N`).
pub fn linkat(
    olddir: Option<BorrowedFd<'_>>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: i32,
) -> SysResult<()> {
    let od = olddir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: both names are NUL-terminated.
    let r = unsafe { libc::linkat(od, old.as_ptr(), newdir.as_raw_fd(), new.as_ptr(), flags) };
    cvt_int(r).map(drop)
}

/// `symlinkat`.
pub fn symlinkat(target: &CStr, newdir: BorrowedFd<'_>, new: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    let r = unsafe { libc::symlinkat(target.as_ptr(), newdir.as_raw_fd(), new.as_ptr()) };
    cvt_int(r).map(drop)
}

/// `readlinkat` into `buf`; returns the length (not NUL-terminated).
pub fn readlinkat(dirfd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `name` is NUL-terminated and `buf` writable for its length.
    let r = unsafe {
        libc::readlinkat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// `faccessat2`.
pub fn faccessat2(dirfd: BorrowedFd<'_>, name: &CStr, mode: i32, flags: i32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            dirfd.as_raw_fd(),
            name.as_ptr(),
            mode,
            flags,
        )
    };
    cvt(r).map(drop)
}

/// `fchmodat2` (Linux 6.6+; `ENOSYS` before).
pub fn fchmodat2(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32, flags: i32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dirfd.as_raw_fd(),
            name.as_ptr(),
            mode,
            flags,
        )
    };
    cvt(r).map(drop)
}

/// `chmod(path)`.
pub fn chmod(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    cvt_int(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// `fchmod`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: plain integers.
    cvt_int(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `fchownat`.
pub fn fchownat(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: i32,
) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    let r = unsafe { libc::fchownat(dirfd.as_raw_fd(), name.as_ptr(), uid, gid, flags) };
    cvt_int(r).map(drop)
}

/// `truncate(path)`.
pub fn truncate(path: &CStr, len: i64) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    cvt_int(unsafe { libc::truncate(path.as_ptr(), len) }).map(drop)
}

/// `ftruncate`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: i64) -> SysResult<()> {
    // SAFETY: plain integers.
    cvt_int(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

/// `utimensat(dirfd, name, times, flags)` through the raw system call (glibc refuses a null
/// name, which the kernel accepts as "the file `dirfd` itself").
pub fn utimensat(
    dirfd: BorrowedFd<'_>,
    name: Option<&CStr>,
    times: Option<&[libc::timespec; 2]>,
    flags: i32,
) -> SysResult<()> {
    let name = name.map_or(std::ptr::null(), CStr::as_ptr);
    let times = times.map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: `name` is null or NUL-terminated; `times` is null or two timespecs.
    let r = unsafe { libc::syscall(libc::SYS_utimensat, dirfd.as_raw_fd(), name, times, flags) };
    cvt(r).map(drop)
}

/// `lseek`.
pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain integers.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `fcntl(F_GETFL)`.
pub fn getfl(fd: BorrowedFd<'_>) -> SysResult<i32> {
    // SAFETY: F_GETFL takes no argument.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// `write(2)` of `buf` at the file position: bytes written.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of reading for the call's duration.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    cvt(n as libc::c_long).map(|n| n as usize)
}

/// `fcntl(F_SETFL, flags)`.
pub fn setfl(fd: BorrowedFd<'_>, flags: i32) -> SysResult<()> {
    // SAFETY: F_SETFL takes an int.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// `fcntl(cmd, &flock)` for a record-lock command.
pub fn fcntl_lock(fd: BorrowedFd<'_>, cmd: i32, lock: &mut libc::flock) -> SysResult<()> {
    // SAFETY: the lock commands read (and F_*GETLK write) one struct flock, which `lock` is.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) }).map(drop)
}

/// flock(2) on `fd`.
pub fn flock(fd: BorrowedFd<'_>, op: i32) -> SysResult<()> {
    // SAFETY: flock takes an fd and an operation; no memory is passed.
    cvt_int(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// Sets the process umask; returns the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

// ---- device mounting ----

/// `unshare(flags)` for the calling thread.
pub fn unshare(flags: i32) -> SysResult<()> {
    // SAFETY: plain integer.
    cvt_int(unsafe { libc::unshare(flags) }).map(drop)
}

/// `mount(2)`.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string.
    let r = unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    cvt_int(r).map(drop)
}

/// `umount2(target, flags)`.
pub fn umount2(target: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: `target` is NUL-terminated.
    cvt_int(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `LOOP_CTL_GET_FREE`.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE` (Linux 5.8+).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// `LO_FLAGS_AUTOCLEAR`: the device detaches itself when its last user closes it.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// `ioctl(loop-control, LOOP_CTL_GET_FREE)`: the number of a free loop device.
pub fn loop_get_free(control: BorrowedFd<'_>) -> SysResult<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument.
    cvt_int(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) }).map(|n| n as u32)
}

/// `ioctl(loop, LOOP_CONFIGURE)`: attaches `backing` with `flags` (`LO_FLAGS_*`).
pub fn loop_configure(
    dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    flags: u32,
    name: &[u8],
) -> SysResult<()> {
    let mut cfg = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    let n = name.len().min(63);
    cfg.info.lo_file_name[..n].copy_from_slice(&name[..n]);
    // SAFETY: LOOP_CONFIGURE reads one loop_config, which `cfg` is, for the call's length.
    cvt_int(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) })
        .map(drop)
}
