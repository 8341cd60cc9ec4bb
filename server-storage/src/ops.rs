//! The calls that run on the blocking pool, on a thread acting as the client.
//!
//! Path operations io_uring cannot confine run here. Every path is resolved with
//! `openat2(root, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`; a path that meets an
//! absolute symlink or `..` above the root fails with [`abi::ESCAPE`], and [`escape`] tells
//! the client where it continues:
//!
//! - operations on the *object* a path names (stat, readlink, access, truncate, chmod, chown,
//!   utimens, the source of a following link) open it `O_PATH` (plus `O_NOFOLLOW` when the call
//!   does not follow a final symlink) and act on that descriptor with `AT_EMPTY_PATH`, or
//!   through `/proc/self/fd/N` where the kernel has no empty-path form (truncate, link with
//!   follow, chmod before Linux 6.6); the magic link is the server's own and names a file
//!   already resolved inside the root;
//! - operations on a directory *entry* (mkdir, unlink, rename, link, symlink) open the parent
//!   `O_PATH | O_DIRECTORY` and act on `(parent, last component)` ([`crate::path`]).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use abi::Response;
use service::Call;
use zerocopy::IntoBytes;

use crate::path::{self, Last};
use crate::sys::{self, SysResult};

/// How every client path is resolved.
pub const RESOLVE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

/// Symlinks one lookup follows before `ELOOP` (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Resolve: where a path that failed with [`abi::ESCAPE`] continues ([`abi::Opcode::Resolve`]).
pub fn escape(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let path = path_at(call, 0, args(call)[4])?;
    let entry = args(call)[0] == 1;
    // The blocking pool runs this as the client: its fsuid is the follower's.
    let follower = service::creds::current_fsuid();
    let cont = match walk(root, path.to_bytes(), false, follower)? {
        Some(c) => c,
        None if entry => return Err(libc::EAGAIN),
        None => walk(root, path.to_bytes(), true, follower)?.ok_or(libc::EAGAIN)?,
    };
    if cont.len() >= path::PATH_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    if data_len(call) < cont.len() {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(with_bytes(call, &cont))
}

/// Walks `path` from the root one component at a time, as path lookup does, up to the first
/// place it leaves the export: a symlink with an absolute target (its target, then the rest)
/// or `..` above the root (`../`, then the rest). `None` when it stays inside. The last
/// component is followed only with `follow_last` (or a trailing slash). A link that is the
/// last component (with or without a trailing slash) is followed only where Linux's
/// `fs.protected_symlinks` lets `follower` (an fsuid) follow it ([`may_follow`]), as the
/// kernel checks trailing links only: it checked when the call first met the link, and this
/// walk reads the links again, so a link swapped in between must meet the same rule.
fn walk(
    root: BorrowedFd<'_>,
    path: &[u8],
    follow_last: bool,
    follower: u32,
) -> SysResult<Option<Vec<u8>>> {
    // The directories entered, physically: `..` pops one.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut rest: Vec<u8> = path.to_vec();
    let mut links = 0usize;
    loop {
        let start = rest.iter().position(|&b| b != b'/').unwrap_or(rest.len());
        if start == rest.len() {
            return Ok(None);
        }
        let end = rest[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(rest.len(), |i| start + i);
        let name = rest[start..end].to_vec();
        let after = rest[end..].to_vec();
        let last = after.iter().all(|&b| b == b'/');
        let cur = dirs.last().map_or(root, |d| d.as_fd());
        match &name[..] {
            b"." => {}
            b".." => {
                if dirs.pop().is_none() {
                    let mut c = b"..".to_vec();
                    c.extend_from_slice(&after);
                    return Ok(Some(c));
                }
            }
            _ => {
                let cname = CString::new(name).map_err(|_| libc::EINVAL)?;
                let fd = sys::openat2(
                    cur,
                    &cname,
                    (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
                    0,
                    RESOLVE,
                )?;
                let (mode, owner) = sys::fstat_mode_owner(fd.as_fd())?;
                let mode = mode & libc::S_IFMT;
                if mode == libc::S_IFLNK && (!last || follow_last || !after.is_empty()) {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(libc::ELOOP);
                    }
                    let (dir_mode, dir_owner) = sys::fstat_mode_owner(cur)?;
                    if last
                        && sys::protected_symlinks()
                        && !may_follow(follower, owner, dir_mode, dir_owner)
                    {
                        return Err(libc::EACCES);
                    }
                    let mut t = vec![0u8; path::PATH_MAX];
                    let n = sys::readlinkat(fd.as_fd(), c"", &mut t)?;
                    t.truncate(n);
                    if t.first() == Some(&b'/') {
                        t.extend_from_slice(&after);
                        return Ok(Some(t));
                    }
                    // `after` is empty or starts with its slash.
                    t.extend_from_slice(&after);
                    rest = t;
                    continue;
                }
                if last {
                    return Ok(None);
                }
                if mode != libc::S_IFDIR {
                    return Err(libc::ENOTDIR);
                }
                dirs.push(fd);
            }
        }
        rest = after;
    }
}

/// Linux's `may_follow_link` under `fs.protected_symlinks`: a link in a sticky, world-writable
/// directory is followed only by its owner, or when the directory's owner owns it too.
fn may_follow(follower: u32, link_owner: u32, dir_mode: u32, dir_owner: u32) -> bool {
    let guarded = libc::S_ISVTX | libc::S_IWOTH;
    link_owner == follower || dir_mode & guarded != guarded || dir_owner == link_owner
}

/// A directory to act in: the export root itself, or one opened below it.
enum Dir<'a> {
    Root(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl Dir<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Root(fd) => *fd,
            Dir::Opened(fd) => fd.as_fd(),
        }
    }
}

/// Opens the parent directory of an entry, confined.
fn open_parent<'a>(root: BorrowedFd<'a>, parent: &CStr) -> SysResult<Dir<'a>> {
    if parent.to_bytes().iter().all(|&b| b == b'/') || parent == c"." {
        return Ok(Dir::Root(root));
    }
    sys::openat2(
        root,
        parent,
        (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        0,
        RESOLVE,
    )
    .map(Dir::Opened)
}

/// Opens the object `path` names, confined, as an `O_PATH` descriptor.
pub fn resolve(root: BorrowedFd<'_>, path: &CStr, nofollow: bool) -> SysResult<OwnedFd> {
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    sys::openat2(root, path, flags as u64, 0, RESOLVE)
}

/// `/proc/self/fd/N` for a descriptor of this server.
fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

fn is_symlink(fd: BorrowedFd<'_>) -> SysResult<bool> {
    Ok(sys::fstat_mode(fd)? & libc::S_IFMT == libc::S_IFLNK)
}

fn args(call: &Call<'_>) -> [u64; 5] {
    call.request().raw.args
}

fn data_len(call: &Call<'_>) -> usize {
    call.request().raw.data_len as usize
}

/// Copies `len` bytes at `off` of the request's payload; `EFAULT` outside it.
pub fn payload(call: &Call<'_>, off: usize, len: u64) -> SysResult<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| libc::EFAULT)?;
    match off.checked_add(len) {
        Some(end) if end <= data_len(call) => {}
        _ => return Err(libc::EFAULT),
    }
    let mut buf = vec![0u8; len];
    call.read_payload_at(off, &mut buf);
    Ok(buf)
}

/// The path at `off`, `len` bytes long.
pub fn path_at(call: &Call<'_>, off: usize, len: u64) -> SysResult<CString> {
    path::c_path(&payload(call, off, len)?)
}

/// A path for an object operation: empty plus `AT_EMPTY_PATH` names the root itself.
fn object_path(call: &Call<'_>, off: usize, len: u64, flags: i32) -> SysResult<CString> {
    let p = path_at(call, off, len)?;
    if p.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        return Ok(c"/".into());
    }
    Ok(p)
}

fn ok(call: &Call<'_>, v: i64) -> Response {
    Response::ok(call.id(), v)
}

/// A response carrying `bytes` of payload; `EFAULT` when the window range cannot hold a whole
/// record of `need` bytes.
fn with_record(call: &Call<'_>, bytes: &[u8], result: i64) -> SysResult<Response> {
    if data_len(call) < bytes.len() {
        return Err(libc::EFAULT);
    }
    let n = call.write_payload(bytes);
    Ok(Response {
        data_len: n as u32,
        ..ok(call, result)
    })
}

/// Output of variable length (readlink, getdents): `result` = bytes written.
fn with_bytes(call: &Call<'_>, bytes: &[u8]) -> Response {
    let n = call.write_payload(bytes);
    Response {
        data_len: n as u32,
        ..ok(call, n as i64)
    }
}

/// Flags an `AT_*` argument may carry; anything else is `EINVAL`, as the kernel says.
fn check_flags(flags: u64, allowed: i32) -> SysResult<i32> {
    let f = i32::try_from(flags).map_err(|_| libc::EINVAL)?;
    if f & !allowed != 0 {
        return Err(libc::EINVAL);
    }
    Ok(f)
}

// ---- object operations ----

/// StatAt: `args[0]` = AT_* flags, `args[1]` = mask.
pub fn stat_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let flags = check_flags(
        a[0],
        libc::AT_SYMLINK_NOFOLLOW
            | libc::AT_EMPTY_PATH
            | libc::AT_NO_AUTOMOUNT
            | libc::AT_STATX_SYNC_TYPE,
    )?;
    let p = object_path(call, 0, a[4], flags)?;
    let fd = resolve(root, &p, flags & libc::AT_SYMLINK_NOFOLLOW != 0)?;
    let mut buf = sys::StatxBuf::default();
    sys::statx(
        fd.as_fd(),
        c"",
        libc::AT_EMPTY_PATH | (flags & (libc::AT_NO_AUTOMOUNT | libc::AT_STATX_SYNC_TYPE)),
        a[1] as u32,
        &mut buf,
    )?;
    with_record(call, buf.as_bytes(), 0)
}

/// ReadLinkAt: the target into the window.
pub fn readlink_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let p = path_at(call, 0, args(call)[4])?;
    let fd = resolve(root, &p, true)?;
    let mut buf = vec![0u8; data_len(call)];
    // On a descriptor that is not a symlink, an empty-path readlinkat says ENOENT where
    // readlink(path) says EINVAL.
    let n = sys::readlinkat(fd.as_fd(), c"", &mut buf).map_err(|e| match e {
        libc::ENOENT => libc::EINVAL,
        e => e,
    })?;
    Ok(with_bytes(call, &buf[..n]))
}

/// AccessAt: `args[0]` = mode, `args[1]` = AT_* flags. Always checked with the client's
/// effective ids (the server knows only those: `SO_PEERCRED`).
pub fn access_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let flags = check_flags(
        a[1],
        libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH,
    )?;
    let mode = i32::try_from(a[0]).map_err(|_| libc::EINVAL)?;
    let p = object_path(call, 0, a[4], flags)?;
    let fd = resolve(root, &p, flags & libc::AT_SYMLINK_NOFOLLOW != 0)?;
    // Without AT_EACCESS the kernel would check the thread's *real* uid, which is the
    // server's; the client's identity is in the fs ids.
    sys::faccessat2(
        fd.as_fd(),
        c"",
        mode,
        libc::AT_EMPTY_PATH | libc::AT_EACCESS | (flags & libc::AT_SYMLINK_NOFOLLOW),
    )?;
    Ok(ok(call, 0))
}

/// TruncateAt: `args[1]` = length.
pub fn truncate_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let p = path_at(call, 0, a[4])?;
    let fd = resolve(root, &p, false)?;
    sys::truncate(&proc_path(fd.as_fd()), a[1] as i64)?;
    Ok(ok(call, 0))
}

/// ChmodAt: `args[0]` = AT_SYMLINK_NOFOLLOW or 0, `args[1]` = mode.
pub fn chmod_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let flags = check_flags(a[0], libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH)?;
    let p = object_path(call, 0, a[4], flags)?;
    let nofollow = flags & libc::AT_SYMLINK_NOFOLLOW != 0;
    let fd = resolve(root, &p, nofollow)?;
    if nofollow && is_symlink(fd.as_fd())? {
        // Linux cannot change a symlink's mode (fchmodat2 and glibc's fchmodat agree).
        return Err(libc::EOPNOTSUPP);
    }
    let mode = (a[1] & 0o7777) as u32;
    match sys::fchmodat2(fd.as_fd(), c"", mode, libc::AT_EMPTY_PATH) {
        Err(libc::ENOSYS) => sys::chmod(&proc_path(fd.as_fd()), mode)?,
        r => r?,
    }
    Ok(ok(call, 0))
}

/// ChownAt: `args[0]` = AT_* flags, `args[1]` = uid, `args[2]` = gid.
pub fn chown_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let flags = check_flags(a[0], libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH)?;
    let p = object_path(call, 0, a[4], flags)?;
    let fd = resolve(root, &p, flags & libc::AT_SYMLINK_NOFOLLOW != 0)?;
    sys::fchownat(
        fd.as_fd(),
        c"",
        a[1] as u32,
        a[2] as u32,
        libc::AT_EMPTY_PATH,
    )?;
    Ok(ok(call, 0))
}

/// The two timespecs of UtimensAt (`args[2]` = 1), or `None` for "now".
fn times(call: &Call<'_>) -> SysResult<Option<[libc::timespec; 2]>> {
    if args(call)[2] != 1 {
        return Ok(None);
    }
    let raw = payload(call, 0, 32)?;
    let word = |i: usize| i64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(Some([
        libc::timespec {
            tv_sec: word(0),
            tv_nsec: word(1),
        },
        libc::timespec {
            tv_sec: word(2),
            tv_nsec: word(3),
        },
    ]))
}

/// UtimensAt by path (`args[0]` = `u64::MAX`).
pub fn utimens_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let flags = check_flags(a[1], libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH)?;
    let t = times(call)?;
    let p = object_path(call, 32, a[4], flags)?;
    let fd = resolve(root, &p, flags & libc::AT_SYMLINK_NOFOLLOW != 0)?;
    sys::utimensat(fd.as_fd(), Some(c""), t.as_ref(), libc::AT_EMPTY_PATH)?;
    Ok(ok(call, 0))
}

/// UtimensAt on an open handle.
pub fn futimens(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let flags = i32::try_from(args(call)[1]).map_err(|_| libc::EINVAL)?;
    let t = times(call)?;
    // The kernel decides about flags with a null name (EINVAL for AT_SYMLINK_NOFOLLOW).
    match sys::utimensat(fd, None, t.as_ref(), flags) {
        // An O_PATH handle: AT_EMPTY_PATH on the handle reaches the same inode.
        Err(libc::EBADF) => sys::utimensat(fd, Some(c""), t.as_ref(), flags | libc::AT_EMPTY_PATH)?,
        r => r?,
    }
    Ok(ok(call, 0))
}

// ---- entry operations ----

/// MkdirAt: `args[1]` = mode (applied as given: the client applies its umask).
pub fn mkdir_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let p = path_at(call, 0, a[4])?;
    let sp = path::split(&p)?;
    let dir = open_parent(root, &sp.parent)?;
    match sp.last {
        Last::Name(name) => sys::mkdirat(dir.fd(), &name, (a[1] & 0o7777) as u32)?,
        Last::Dot | Last::DotDot | Last::Root => return Err(libc::EEXIST),
    }
    Ok(ok(call, 0))
}

/// MknodAt: `args[1]` = mode (type and permissions), `args[2]` = device.
pub fn mknod_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let mode = u32::try_from(a[1]).map_err(|_| libc::EINVAL)?;
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {}
        _ => return Err(libc::EINVAL),
    }
    let p = path_at(call, 0, a[4])?;
    let sp = path::split(&p)?;
    let dir = open_parent(root, &sp.parent)?;
    match sp.last {
        Last::Name(name) if !name.to_bytes().ends_with(b"/") => {
            sys::mknodat(dir.fd(), &name, mode, a[2])?
        }
        Last::Name(_) => return Err(libc::ENOENT),
        Last::Dot | Last::DotDot | Last::Root => return Err(libc::EEXIST),
    }
    Ok(ok(call, 0))
}

/// UnlinkAt: `args[0]` = 0 or AT_REMOVEDIR.
pub fn unlink_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let flags = check_flags(a[0], libc::AT_REMOVEDIR)?;
    let rmdir = flags & libc::AT_REMOVEDIR != 0;
    let p = path_at(call, 0, a[4])?;
    let sp = path::split(&p)?;
    let dir = open_parent(root, &sp.parent)?;
    match (sp.last, rmdir) {
        (Last::Name(name), _) => sys::unlinkat(dir.fd(), &name, flags)?,
        (Last::Dot, true) => return Err(libc::EINVAL),
        (Last::DotDot, true) => return Err(libc::ENOTEMPTY),
        (Last::Root, true) => return Err(libc::EBUSY),
        (_, false) => return Err(libc::EISDIR),
    }
    Ok(ok(call, 0))
}

/// The two paths of RenameAt/LinkAt/SymlinkAt: `args[4]` bytes, then `args[3]` bytes.
fn two_paths(call: &Call<'_>) -> SysResult<(Vec<u8>, CString)> {
    let a = args(call);
    let first_len = usize::try_from(a[4]).map_err(|_| libc::EFAULT)?;
    let first = payload(call, 0, a[4])?;
    let second = path_at(call, first_len, a[3])?;
    Ok((first, second))
}

/// RenameAt: `args[0]` = RENAME_* flags.
pub fn rename_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let flags = u32::try_from(args(call)[0]).map_err(|_| libc::EINVAL)?;
    let (old, new) = two_paths(call)?;
    let old = path::c_path(&old)?;
    let os = path::split(&old)?;
    let ns = path::split(&new)?;
    let odir = open_parent(root, &os.parent)?;
    let ndir = open_parent(root, &ns.parent)?;
    match (os.last, ns.last) {
        (Last::Name(o), Last::Name(n)) => sys::renameat2(odir.fd(), &o, ndir.fd(), &n, flags)?,
        _ => return Err(libc::EBUSY),
    }
    Ok(ok(call, 0))
}

/// LinkAt: `args[0]` = AT_SYMLINK_FOLLOW or 0. Both ends resolve inside the root, so a link
/// can never name a file outside it.
pub fn link_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let flags = check_flags(args(call)[0], libc::AT_SYMLINK_FOLLOW)?;
    let (old, new) = two_paths(call)?;
    let old = path::c_path(&old)?;
    if old.is_empty() {
        return Err(libc::ENOENT);
    }
    let follow = flags & libc::AT_SYMLINK_FOLLOW != 0;
    // The source, first (as Linux looks it up first).
    enum Source<'a> {
        Entry(Dir<'a>, CString),
        Object(OwnedFd),
    }
    let source = if !follow && path::is_plain_last(&old) {
        let sp = path::split(&old)?;
        let Last::Name(name) = sp.last else {
            unreachable!("is_plain_last")
        };
        Source::Entry(open_parent(root, &sp.parent)?, name)
    } else {
        // Following, or a last component of ".", "..", or with a trailing slash (all of
        // which name a directory: the kernel then answers EEXIST, EXDEV or EPERM in its order).
        Source::Object(resolve(root, &old, !follow)?)
    };
    let ns = path::split(&new)?;
    let ndir = open_parent(root, &ns.parent)?;
    let Last::Name(nname) = ns.last else {
        return Err(libc::EEXIST);
    };
    match source {
        Source::Entry(dir, name) => sys::linkat(Some(dir.fd()), &name, ndir.fd(), &nname, 0)?,
        Source::Object(fd) => sys::linkat(
            None,
            &proc_path(fd.as_fd()),
            ndir.fd(),
            &nname,
            libc::AT_SYMLINK_FOLLOW,
        )?,
    }
    Ok(ok(call, 0))
}

/// SymlinkAt: the target is stored verbatim (it is resolved, confined, when used).
pub fn symlink_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let (target, new) = two_paths(call)?;
    let target = path::c_path(&target)?;
    let ns = path::split(&new)?;
    let ndir = open_parent(root, &ns.parent)?;
    let Last::Name(nname) = ns.last else {
        return Err(libc::EEXIST);
    };
    sys::symlinkat(&target, ndir.fd(), &nname)?;
    Ok(ok(call, 0))
}

// ---- handle operations that may block ----

/// GetDents64 into the window.
pub fn getdents64(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let mut buf = vec![0u8; data_len(call)];
    let n = sys::getdents64(fd, &mut buf)?;
    Ok(with_bytes(call, &buf[..n]))
}

/// FStatFs into the window.
pub fn fstatfs(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let mut buf = sys::StatfsBuf::default();
    sys::fstatfs(fd, &mut buf)?;
    with_record(call, buf.as_bytes(), 0)
}

/// FChmod.
pub fn fchmod(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let mode = (args(call)[1] & 0o7777) as u32;
    match sys::fchmod(fd, mode) {
        // An O_PATH handle (glibc's fchmodat(AT_SYMLINK_NOFOLLOW) opens one): go through the
        // server's own magic link to the same inode, as glibc does locally.
        Err(libc::EBADF) => sys::chmod(&proc_fd_path(fd), mode)?,
        r => r?,
    }
    Ok(ok(call, 0))
}

/// `/proc/self/fd/N` for one of the server's own descriptors.
fn proc_fd_path(fd: BorrowedFd<'_>) -> std::ffi::CString {
    use std::os::fd::AsRawFd;
    std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// FChown.
pub fn fchown(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    // AT_EMPTY_PATH works on O_PATH handles too.
    sys::fchownat(fd, c"", a[1] as u32, a[2] as u32, libc::AT_EMPTY_PATH)?;
    Ok(ok(call, 0))
}

/// FTruncate (kernels without IORING_OP_FTRUNCATE).
pub fn ftruncate(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    sys::ftruncate(fd, args(call)[1] as i64)?;
    Ok(ok(call, 0))
}

/// LSeek with SEEK_DATA/SEEK_HOLE (which may search the file's extents).
pub fn lseek(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let whence = i32::try_from(a[2]).map_err(|_| libc::EINVAL)?;
    Ok(ok(call, sys::lseek(fd, a[1] as i64, whence)?))
}

/// Fcntl F_SETFL (O_NOATIME needs the client's identity: owner only).
pub fn setfl(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    sys::setfl(fd, args(call)[2] as i32)?;
    Ok(ok(call, 0))
}

/// Size of `struct flock`.
pub const FLOCK_SIZE: usize = 32;
const _: () = assert!(std::mem::size_of::<libc::flock>() == FLOCK_SIZE);

/// Record locks (`Fcntl` with a lock command; the `struct flock` at the window start, written
/// back for the GETLK commands). The server holds every client's locks, so process-owned POSIX
/// locks would never conflict between clients: they become open-file-description locks, owned
/// by the open file the handle names (what a client's process sees as its own locks, since
/// handles are per process and shared only with forked children).
pub fn lock(fd: BorrowedFd<'_>, call: &Call<'_>, cmd: i32) -> SysResult<Response> {
    let raw = payload(call, 0, FLOCK_SIZE as u64)?;
    let i16_at = |o: usize| i16::from_ne_bytes([raw[o], raw[o + 1]]);
    let i64_at = |o: usize| i64::from_ne_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
    let mut fl = libc::flock {
        l_type: i16_at(0),
        l_whence: i16_at(2),
        l_start: i64_at(8),
        l_len: i64_at(16),
        // OFD lock commands require 0.
        l_pid: 0,
    };
    let ofd = match cmd {
        libc::F_GETLK | libc::F_OFD_GETLK => libc::F_OFD_GETLK,
        libc::F_SETLK | libc::F_OFD_SETLK => libc::F_OFD_SETLK,
        libc::F_SETLKW | libc::F_OFD_SETLKW => libc::F_OFD_SETLKW,
        _ => return Err(libc::EINVAL),
    };
    sys::fcntl_lock(fd, ofd, &mut fl)?;
    if ofd != libc::F_OFD_GETLK {
        return Ok(ok(call, 0));
    }
    let mut out = [0u8; FLOCK_SIZE];
    out[0..2].copy_from_slice(&fl.l_type.to_ne_bytes());
    out[2..4].copy_from_slice(&fl.l_whence.to_ne_bytes());
    out[8..16].copy_from_slice(&fl.l_start.to_ne_bytes());
    out[16..24].copy_from_slice(&fl.l_len.to_ne_bytes());
    // The holder is an open file, not a process: -1, as F_OFD_GETLK reports.
    out[24..28].copy_from_slice(&fl.l_pid.to_ne_bytes());
    with_record(call, &out, 0)
}

/// Flock: a whole-file lock on the handle's open file (see [`abi::Opcode::Flock`]).
pub fn flock(fd: BorrowedFd<'_>, call: &Call<'_>, op: i32) -> SysResult<Response> {
    sys::flock(fd, op)?;
    Ok(ok(call, 0))
}

/// OpenAt the slow way (io_uring reported a concurrent rename): `openat2` retried here.
pub fn open_at(
    root: BorrowedFd<'_>,
    call: &Call<'_>,
    path: &CStr,
    flags: u64,
    mode: u64,
) -> SysResult<Response> {
    let fd = sys::openat2(root, path, flags, mode, RESOLVE)?;
    crate::install(call, fd)
}

/// CopyRange: copy_file_range between two of the session's files, in the kernel.
pub fn copy_range(
    fin: BorrowedFd<'_>,
    fout: BorrowedFd<'_>,
    call: &Call<'_>,
) -> SysResult<Response> {
    let a = call.request().raw.args;
    let mut off_in = a[1] as i64;
    let mut off_out = a[3] as i64;
    let p_in = if a[1] == u64::MAX {
        std::ptr::null_mut()
    } else {
        &mut off_in as *mut i64
    };
    let p_out = if a[3] == u64::MAX {
        std::ptr::null_mut()
    } else {
        &mut off_out as *mut i64
    };
    let len = (a[4] as usize).min(isize::MAX as usize);
    // SAFETY: the offsets are locals (or null, for the files' own offsets); the fds are the
    // session's open files, borrowed for the call.
    let n = unsafe {
        libc::copy_file_range(
            std::os::fd::AsRawFd::as_raw_fd(&fin),
            p_in,
            std::os::fd::AsRawFd::as_raw_fd(&fout),
            p_out,
            len,
            0,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let mut r = Response::ok(call.id(), n as i64);
    r.aux[0] = off_in as u64;
    r.aux[1] = off_out as u64;
    Ok(r)
}

/// Advise: posix_fadvise, readahead or sync_file_range on the session's file.
pub fn advise(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = call.request().raw.args;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let (off, len) = (a[2] as i64, a[3] as i64);
    // SAFETY: plain system calls on a borrowed descriptor, no pointers.
    let r = unsafe {
        match a[1] {
            0 => {
                let e = libc::posix_fadvise(raw, off, len, a[4] as i32);
                if e != 0 {
                    return Err(e);
                }
                0
            }
            1 => libc::readahead(raw, off, len as usize) as i32,
            2 => libc::sync_file_range(raw, off, len, a[4] as u32),
            _ => return Err(libc::EINVAL),
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(Response::ok(call.id(), 0))
}

/// Largest extended-attribute value or list Linux has (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: usize = 65536;

/// Xattr on a path: the object is resolved in the export (a final symlink followed unless
/// 0x100 is set) and reached through its `O_PATH` descriptor's `/proc/self/fd` link, which
/// lands on the inode itself (for a symlink, the link's own attributes, as the `l*` calls).
pub fn xattr_at(root: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let a = args(call);
    let p = path_at(call, 0, a[4])?;
    let fd = resolve(root, &p, a[1] & 0x100 != 0)?;
    let target = proc_path(fd.as_fd());
    xattr(call, a[4] as usize, |op, name, buf, flags| {
        // SAFETY: `target` and `name` are NUL-terminated; `buf` is valid for its length.
        unsafe {
            match op {
                0 => libc::getxattr(target.as_ptr(), name, buf.as_mut_ptr().cast(), buf.len()),
                1 => libc::setxattr(target.as_ptr(), name, buf.as_ptr().cast(), buf.len(), flags)
                    as isize,
                2 => libc::listxattr(target.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
                _ => libc::removexattr(target.as_ptr(), name) as isize,
            }
        }
    })
}

/// Xattr on an open file of the session.
pub fn xattr_fd(fd: BorrowedFd<'_>, call: &Call<'_>) -> SysResult<Response> {
    let raw = fd.as_raw_fd();
    xattr(call, 0, |op, name, buf, flags| {
        // SAFETY: `name` is NUL-terminated; `buf` is valid for its length; `raw` is the
        // session's open file, borrowed for the call.
        unsafe {
            match op {
                0 => libc::fgetxattr(raw, name, buf.as_mut_ptr().cast(), buf.len()),
                1 => libc::fsetxattr(raw, name, buf.as_ptr().cast(), buf.len(), flags) as isize,
                2 => libc::flistxattr(raw, buf.as_mut_ptr().cast(), buf.len()),
                _ => libc::fremovexattr(raw, name) as isize,
            }
        }
    })
}

/// The common part of the xattr calls: decodes the name and value after `at` bytes of path,
/// runs `f(op, name, buffer, flags)` and answers.
fn xattr(
    call: &Call<'_>,
    at: usize,
    f: impl FnOnce(u64, *const libc::c_char, &mut [u8], i32) -> isize,
) -> SysResult<Response> {
    let a = args(call);
    let op = a[1] & 0xff;
    let flags = ((a[1] >> 16) & 0xffff) as i32;
    if op > 3 {
        return Err(libc::EINVAL);
    }
    let name = if op == 2 {
        CString::default()
    } else {
        let raw = payload(call, at, a[3])?;
        CString::new(raw).map_err(|_| libc::EINVAL)?
    };
    let size = usize::try_from(a[2]).map_err(|_| libc::E2BIG)?;
    let mut buf = match op {
        1 => payload(call, at + a[3] as usize, a[2])?,
        // Room for the answer, bounded by the window and by the largest the kernel gives.
        _ => vec![0u8; size.min(XATTR_MAX).min(data_len(call))],
    };
    let r = f(op, name.as_ptr(), &mut buf, flags);
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    if matches!(op, 0 | 2) && !buf.is_empty() {
        let n = (r as usize).min(buf.len());
        let w = call.write_payload(&buf[..n]);
        return Ok(Response {
            data_len: w as u32,
            ..ok(call, r as i64)
        });
    }
    Ok(ok(call, r as i64))
}

#[cfg(test)]
mod tests {
    use super::may_follow;

    #[test]
    fn protected_symlinks_follow_linux_may_follow_link() {
        let sticky_world = 0o41777;
        // The owner follows its own link anywhere.
        assert!(may_follow(1000, 1000, sticky_world, 0));
        // Another user's link in a sticky world-writable directory: refused, even for root.
        assert!(!may_follow(0, 1000, sticky_world, 0));
        assert!(!may_follow(1001, 1000, sticky_world, 0));
        // ...unless the directory's owner owns the link.
        assert!(may_follow(1001, 1000, sticky_world, 1000));
        // Sticky but not world-writable, or world-writable but not sticky: followed.
        assert!(may_follow(0, 1000, 0o41775, 0));
        assert!(may_follow(0, 1000, 0o40777, 0));
    }
}
