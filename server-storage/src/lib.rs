//! virtuos's storage service domain: file system calls forwarded over the session rings are
//! executed here, confined to an export root and with the client's identity.
//!
//! [`Storage`] is the [`Handler`] the service runtime drives. It exports a directory
//! ([`Storage::with_root`]) or a block device / image file that it mounts where no other
//! process can see it ([`Storage::with_device`]). The root is held as one `O_PATH` descriptor;
//! every path a client sends is resolved from it with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so nothing outside can be named: magic
//! links fail, and a path that meets `..` above the root or a symlink with an absolute target
//! fails with [`abi::ESCAPE`]; `Resolve` then tells the client where the path continues (its
//! own file system, or again its mount), which it walks with its own credentials, as Linux
//! would.
//!
//! How each opcode runs:
//!
//! - **io_uring** (under the session's io_uring personality, so the kernel checks the client's
//!   uid, gid and groups): `OpenAt` (`IORING_OP_OPENAT2` from the root with the resolve flags),
//!   `Read`/`Write` (offset -1: the open file's own position, shared by every handle and
//!   session that shares the open file), `PRead`/`PWrite`, `FStat` (`IORING_OP_STATX` with
//!   `AT_EMPTY_PATH`), `FSync`, `Fallocate`, `FTruncate` (Linux 6.9+), `Close` (when this was
//!   the last holder of the open file).
//! - **worker, inline** (in-memory, cannot block): `LSeek` with `SEEK_SET`/`SEEK_CUR`/
//!   `SEEK_END`, `Fcntl` `F_GETFL` and the non-waiting lock commands (`F_GETLK`, `F_SETLK` and
//!   their OFD forms), `Close` of a file another session still shares.
//! - **a thread of its own**: `Fcntl(F_SETLKW)` and `Flock` without `LOCK_NB`, which wait as long as another client holds
//!   the lock (so waiters cannot occupy the whole blocking pool).
//! - **blocking pool** (a thread switched to the client's fsuid, fsgid and groups): every path
//!   operation io_uring cannot confine (`StatAt`, `MkdirAt`, `UnlinkAt`, `RenameAt`, `LinkAt`,
//!   `SymlinkAt`, `ReadLinkAt`, `Resolve`, `AccessAt`, `TruncateAt`, `ChmodAt`, `ChownAt`, `UtimensAt`),
//!   and the handle operations that may block or need the client's identity: `GetDents64`,
//!   `FStatFs`, `FChmod`, `FChown`, `UtimensAt` on a handle, `LSeek` with `SEEK_DATA`/
//!   `SEEK_HOLE`, `Fcntl(F_SETFL)`.
//!
//! Modes are applied as given: the server runs with umask 0 and the client applies its own.
//!
//! Record locks (`Fcntl` `F_GETLK`/`F_SETLK`/`F_SETLKW`, the `struct flock` at the window start)
//! are taken as open-file-description locks on the handle's open file: the server holds every
//! client's files, so process-owned POSIX locks would never conflict between clients.

#![deny(missing_docs)]

mod device;
mod ops;
pub mod path;
mod sys;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi::{Errno, Opcode, Response};
use io_uring::{opcode, types};
use service::fdtable::Handle;
use service::{Call, Handler, Outcome};
use thiserror::Error;
use xen_transport::Credentials;
use zerocopy::IntoBytes;

pub use device::known_block_filesystems;
pub use service::raise_nofile_limit;

/// Why the storage domain could not start.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The export directory cannot be opened.
    #[error("cannot open the export root {path}: {source}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--device` without the privilege to mount.
    #[error("--device needs root (CAP_SYS_ADMIN) to attach a loop device and mount it in a private mount namespace; run virtuos-storage as root, or export a directory with --root")]
    NotRoot,
    /// `--fstype` names a file system this kernel does not know.
    #[error("unknown file system type {fstype:?}; this kernel mounts block devices as: {known}")]
    UnknownFsType {
        /// What was asked for.
        fstype: String,
        /// What `/proc/filesystems` lists for block devices.
        known: String,
    },
    /// `--device` names something that is neither a block device nor an image file.
    #[error("{0}: not a block device or a regular (image) file")]
    NotADevice(PathBuf),
    /// The device could not be mounted.
    #[error("cannot mount {path}: {detail}")]
    Mount {
        /// The device or image.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A system call failed while setting up.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The storage domain's [`Handler`].
pub struct Storage {
    root: Arc<OwnedFd>,
    ftruncate_uring: bool,
    export: String,
    /// Chunks of writes larger than the window, by (session, token), until their last chunk.
    staging: std::sync::Mutex<std::collections::HashMap<(u64, u64), Staged>>,
}

/// A write larger than the window, being assembled (see `Opcode::Write`).
struct Staged {
    handle: u64,
    off: u64,
    buf: Vec<u8>,
}

/// Most bytes one session may have staged at once.
const STAGED_PER_SESSION_MAX: usize = 2 * abi::WRITE_ASSEMBLE_MAX;

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("export", &self.export)
            .field("root_fd", &self.root.as_raw_fd())
            .finish()
    }
}

impl Storage {
    /// Exports the directory `dir`.
    ///
    /// Sets the process umask to 0: modes from clients are applied as given.
    pub fn with_root(dir: impl AsRef<Path>) -> Result<Storage, StorageError> {
        let dir = dir.as_ref();
        let root = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| StorageError::Root {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Storage::new(root, format!("directory {}", dir.display())))
    }

    /// Mounts the block device or image file `dev` (type `fstype`, or probed) where only this
    /// server can reach it, and exports it. Needs root.
    ///
    /// An image file is attached to a free loop device (`LOOP_CONFIGURE`, auto-clearing). The
    /// mount is made by a short-lived thread in a mount namespace of its own, with `/` made
    /// private so nothing propagates to the host, on a private temporary directory; the thread
    /// keeps an `O_PATH` descriptor of the mounted root and detaches the mount. It stays alive
    /// only through that descriptor: no mount table lists it, no other process can reach it,
    /// and it is unmounted (and the loop device released) when the server exits.
    pub fn with_device(
        dev: impl AsRef<Path>,
        fstype: Option<&str>,
    ) -> Result<Storage, StorageError> {
        let device::Mounted {
            root,
            fstype,
            loop_dev,
        } = device::mount(dev.as_ref(), fstype)?;
        let export = format!(
            "{} ({fstype}{})",
            dev.as_ref().display(),
            loop_dev
                .map(|l| format!(" on {}", l.display()))
                .unwrap_or_default()
        );
        Ok(Storage::new(root, export))
    }

    fn new(root: OwnedFd, export: String) -> Storage {
        let old = sys::umask(0);
        if old != 0 {
            tracing::debug!(
                old = format!("{old:03o}"),
                "umask set to 0: clients apply their own"
            );
        }
        Storage {
            root: Arc::new(root),
            ftruncate_uring: uring_supports(opcode::Ftruncate::CODE),
            export,
            staging: Default::default(),
        }
    }

    /// What is exported, for logs.
    pub fn export(&self) -> &str {
        &self.export
    }
}

fn uring_supports(op: u8) -> bool {
    let Ok(ring) = io_uring::IoUring::new(2) else {
        return false;
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(op)
}

fn errno(e: i32) -> Errno {
    Errno::new(e).unwrap_or(Errno::EIO)
}

fn done(call: &Call<'_>, r: Result<Response, i32>) -> Response {
    r.unwrap_or_else(|e| Response::err(call.id(), errno(e)))
}

/// Installs a freshly opened file in the session's table (charged to the client's uid: `EMFILE`,
/// the file closed, past its budget): result = handle, `aux[0]` = st_mode.
pub(crate) fn install(call: &Call<'_>, fd: OwnedFd) -> Result<Response, i32> {
    // The whole stat, as FStat gives it: most programs fstat what they just opened (nginx
    // does for every file it serves), and the client answers that fstat from this one.
    let mut st = sys::StatxBuf::default();
    sys::statx(
        fd.as_fd(),
        c"",
        libc::AT_EMPTY_PATH,
        libc::STATX_BASIC_STATS | libc::STATX_BTIME,
        &mut st,
    )?;
    let b = zerocopy::IntoBytes::as_bytes(&st);
    // stx_mode is the u16 at byte offset 28.
    let mode = u32::from(u16::from_ne_bytes([b[28], b[29]]));
    let (h, _) = call.fds().insert_new(fd).map_err(|e| e.get())?;
    let mut r = Response::ok(call.id(), i64::from(h));
    r.aux[0] = u64::from(mode);
    if call.request().raw.data_len as usize >= sys::STATX_SIZE {
        // The path was read: its room now carries the stat.
        r.data_len = call.write_payload(b) as u32;
        r.aux[1] = 1;
    }
    Ok(r)
}

/// Open flags as `openat(2)` would take them, made acceptable to the stricter `openat2(2)`:
/// unknown bits dropped, O_PATH's companions limited, the mode kept only when creating, and
/// the server's own descriptor always close-on-exec.
fn open_how(flags: u64, mode: u64) -> (u64, u64) {
    const TMPFILE_BIT: i32 = 0o20000000; // __O_TMPFILE
    let valid = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DSYNC
        | libc::O_ASYNC
        | libc::O_DIRECT
        | libc::O_LARGEFILE
        | libc::O_DIRECTORY
        | libc::O_NOFOLLOW
        | libc::O_NOATIME
        | libc::O_CLOEXEC
        | libc::O_SYNC
        | libc::O_PATH
        | libc::O_TMPFILE;
    let mut f = (flags as u32 as i32) & valid;
    if f & libc::O_PATH != 0 {
        f &= libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    }
    let mode = if f & (libc::O_CREAT | TMPFILE_BIT) != 0 {
        mode & 0o7777
    } else {
        0
    };
    ((f | libc::O_CLOEXEC) as u32 as u64, mode)
}

/// What an `OpenAt` entry points at.
struct OpenKeep {
    path: CString,
    /// The kernel reads it when the operation starts.
    _how: Box<types::OpenHow>,
    flags: u64,
    mode: u64,
}

impl Storage {
    fn dispatch(&self, call: &Call<'_>) -> Result<Outcome, i32> {
        let req = call.request();
        let a = req.raw.args;
        let len = req.raw.data_len;
        let fd = |h: u64| call.fds().get(h).map_err(|e| e.get());
        let keep = |e: io_uring::squeue::Entry, fd: Handle| Outcome::SubmitKeep(e, Box::new(fd));
        let offset = |o: u64| {
            if o > i64::MAX as u64 {
                Err(libc::EINVAL)
            } else {
                Ok(o)
            }
        };
        Ok(match req.opcode {
            Opcode::OpenAt => {
                if !call.fds().has_room() {
                    return Err(libc::EMFILE);
                }
                let path = path::below(&ops::path_at(call, 0, a[4])?).into_owned();
                let (flags, mode) = open_how(a[0], a[1]);
                let how = Box::new(
                    types::OpenHow::new()
                        .flags(flags)
                        .mode(mode)
                        .resolve(ops::RESOLVE),
                );
                let e = opcode::OpenAt2::new(
                    types::Fd(self.root.as_raw_fd()),
                    path.as_ptr(),
                    &*how as *const types::OpenHow,
                )
                .build();
                Outcome::SubmitKeep(
                    e,
                    Box::new(OpenKeep {
                        path,
                        _how: how,
                        flags,
                        mode,
                    }),
                )
            }
            Opcode::Close => {
                let f = call.fds().remove(a[0]).map_err(|e| e.get())?;
                match Arc::try_unwrap(f) {
                    // The last holder: close through io_uring (close may flush, and fail).
                    Ok(f) => {
                        Outcome::Submit(opcode::Close::new(types::Fd(f.into_raw_fd())).build())
                    }
                    // Another session (a forked child) still shares the open file.
                    Err(_) => Outcome::Done(Response::ok(call.id(), 0)),
                }
            }
            Opcode::Read | Opcode::PRead => {
                let f = fd(a[0])?;
                let off = if req.opcode == Opcode::Read {
                    u64::MAX
                } else {
                    offset(a[1])?
                };
                if req.opcode == Opcode::PRead && len > 0 {
                    // A read the page cache holds is answered at once, on this thread, without
                    // an io_uring submission (RWF_NOWAIT: never blocks). Anything else — not
                    // cached (EAGAIN), a file system without NOWAIT, an error, a read cut short
                    // by a page not cached — goes to io_uring as before, which has the final
                    // word; a pread has no side effect to undo. Only an explicit offset: a short
                    // read at the file position would have moved it.
                    if let Ok(n) = call.pread_payload(f.as_fd(), off as i64, libc::RWF_NOWAIT) {
                        if n == len as usize {
                            return Ok(Outcome::Done(Response {
                                data_len: len,
                                ..Response::ok(call.id(), i64::from(len))
                            }));
                        }
                    }
                }
                if nonblocking(&f, req.opcode, a[2])? {
                    let n = call.pread_payload(f.as_fd(), -1, 0)?;
                    return Ok(Outcome::Done(Response {
                        data_len: n as u32,
                        ..Response::ok(call.id(), n as i64)
                    }));
                }
                let e = opcode::Read::new(types::Fd(f.as_raw_fd()), call.window_ptr(), len)
                    .offset(off)
                    .build();
                keep(e, f)
            }
            Opcode::Write | Opcode::PWrite => {
                let f = fd(a[0])?;
                let off = if req.opcode == Opcode::Write {
                    u64::MAX
                } else {
                    offset(a[1])?
                };
                let token = a[3];
                if token != 0 {
                    // A chunk of a write larger than the window (see `Opcode::Write`).
                    let key = (call.session_id(), token);
                    let mut chunk = vec![0u8; len as usize];
                    call.read_payload(&mut chunk);
                    let mut st = self.staging.lock().unwrap_or_else(|p| p.into_inner());
                    if a[2] & abi::WRITE_MORE != 0 {
                        let staged: usize = st
                            .iter()
                            .filter(|((s, _), _)| *s == key.0)
                            .map(|(_, v)| v.buf.len())
                            .sum();
                        let e = st.entry(key).or_insert_with(|| Staged {
                            handle: a[0],
                            off,
                            buf: Vec::new(),
                        });
                        if e.handle != a[0]
                            || e.buf.len() + chunk.len() > abi::WRITE_ASSEMBLE_MAX
                            || staged + chunk.len() > STAGED_PER_SESSION_MAX
                        {
                            st.remove(&key);
                            return Err(libc::EFBIG);
                        }
                        e.buf.extend_from_slice(&chunk);
                        return Ok(Outcome::Done(Response::ok(call.id(), i64::from(len))));
                    }
                    let mut whole = match st.remove(&key) {
                        Some(s) if s.handle == a[0] => s,
                        Some(_) => return Err(libc::EINVAL),
                        None => Staged {
                            handle: a[0],
                            off,
                            buf: Vec::new(),
                        },
                    };
                    drop(st);
                    whole.buf.extend_from_slice(&chunk);
                    if nonblocking(&f, req.opcode, a[2])? {
                        let n = sys::write(f.as_fd(), &whole.buf)?;
                        return Ok(Outcome::Done(Response::ok(call.id(), n as i64)));
                    }
                    let n = u32::try_from(whole.buf.len()).map_err(|_| libc::EFBIG)?;
                    let e = opcode::Write::new(types::Fd(f.as_raw_fd()), whole.buf.as_ptr(), n)
                        .offset(whole.off)
                        .build();
                    // The buffer lives (boxed, not moved) until the write completes.
                    return Ok(Outcome::SubmitKeep(e, Box::new((f, whole.buf))));
                }
                if nonblocking(&f, req.opcode, a[2])? {
                    let mut buf = vec![0u8; len as usize];
                    call.read_payload(&mut buf);
                    let n = sys::write(f.as_fd(), &buf)?;
                    return Ok(Outcome::Done(Response::ok(call.id(), n as i64)));
                }
                let e = opcode::Write::new(
                    types::Fd(f.as_raw_fd()),
                    call.window_ptr().cast_const(),
                    len,
                )
                .offset(off)
                .build();
                keep(e, f)
            }
            Opcode::FStat => {
                if (len as usize) < sys::STATX_SIZE {
                    return Err(libc::EFAULT);
                }
                // Inline on the polling worker: statx of an open descriptor reads the inode
                // already in memory and needs no credentials, while IORING_OP_STATX is always
                // punted to an io-wq thread (a thread wake-up per fstat; measured with nginx,
                // which fstats every file it serves).
                let f = fd(a[0])?;
                let mut buf = sys::StatxBuf::default();
                sys::statx(
                    f.as_fd(),
                    c"",
                    libc::AT_EMPTY_PATH,
                    libc::STATX_BASIC_STATS | libc::STATX_BTIME,
                    &mut buf,
                )?;
                let n = call.write_payload(buf.as_bytes());
                Outcome::Done(Response {
                    data_len: n as u32,
                    ..Response::ok(call.id(), 0)
                })
            }
            Opcode::FSync => {
                let flags = match a[1] {
                    0 => types::FsyncFlags::empty(),
                    1 => types::FsyncFlags::DATASYNC,
                    _ => return Err(libc::EINVAL),
                };
                let f = fd(a[0])?;
                keep(
                    opcode::Fsync::new(types::Fd(f.as_raw_fd()))
                        .flags(flags)
                        .build(),
                    f,
                )
            }
            Opcode::Fallocate => {
                let f = fd(a[0])?;
                let e = opcode::Fallocate::new(types::Fd(f.as_raw_fd()), a[3])
                    .offset(a[2])
                    .mode(a[1] as i32)
                    .build();
                keep(e, f)
            }
            Opcode::FTruncate if self.ftruncate_uring => {
                let f = fd(a[0])?;
                if a[1] > i64::MAX as u64 {
                    return Err(libc::EINVAL);
                }
                keep(
                    opcode::Ftruncate::new(types::Fd(f.as_raw_fd()), a[1]).build(),
                    f,
                )
            }
            Opcode::LSeek if a[2] <= 2 => {
                let f = fd(a[0])?;
                let pos = sys::lseek(f.as_fd(), a[1] as i64, a[2] as i32)?;
                Outcome::Done(Response::ok(call.id(), pos))
            }
            Opcode::Fcntl => {
                let f = fd(a[0])?;
                match i32::try_from(a[1]) {
                    Ok(libc::F_GETFL) => {
                        Outcome::Done(Response::ok(call.id(), i64::from(sys::getfl(f.as_fd())?)))
                    }
                    Ok(libc::F_SETFL) => blocking_fd(f, ops::setfl),
                    // Non-blocking lock calls: in-memory, answered at once.
                    Ok(
                        cmd @ (libc::F_GETLK
                        | libc::F_SETLK
                        | libc::F_OFD_GETLK
                        | libc::F_OFD_SETLK),
                    ) => Outcome::Done(done(call, ops::lock(f.as_fd(), call, cmd))),
                    // A lock wait may last as long as another client holds the lock.
                    Ok(cmd @ (libc::F_SETLKW | libc::F_OFD_SETLKW)) => {
                        Outcome::Wait(Box::new(move |c: &Call<'_>| {
                            done(c, ops::lock(f.as_fd(), c, cmd))
                        }))
                    }
                    _ => return Err(libc::EINVAL),
                }
            }
            Opcode::Flock => {
                let f = fd(a[0])?;
                let op = i32::try_from(a[1]).map_err(|_| libc::EINVAL)?;
                if op & libc::LOCK_NB != 0 || op == libc::LOCK_UN {
                    Outcome::Done(done(call, ops::flock(f.as_fd(), call, op)))
                } else {
                    // A wait may last as long as another holder keeps the lock.
                    Outcome::Wait(Box::new(move |c: &Call<'_>| {
                        done(c, ops::flock(f.as_fd(), c, op))
                    }))
                }
            }
            Opcode::FTruncate => blocking_fd(fd(a[0])?, ops::ftruncate),
            Opcode::CopyRange => {
                let (fin, fout) = (fd(a[0])?, fd(a[2])?);
                Outcome::Blocking(Box::new(move |c: &Call<'_>| {
                    done(c, ops::copy_range(fin.as_fd(), fout.as_fd(), c))
                }))
            }
            Opcode::Advise => blocking_fd(fd(a[0])?, ops::advise),
            Opcode::Xattr if a[0] != u64::MAX => blocking_fd(fd(a[0])?, ops::xattr_fd),
            Opcode::Xattr => self.blocking_path(ops::xattr_at),
            Opcode::LSeek => blocking_fd(fd(a[0])?, ops::lseek),
            Opcode::GetDents64 => blocking_fd(fd(a[0])?, ops::getdents64),
            Opcode::FStatFs => blocking_fd(fd(a[0])?, ops::fstatfs),
            Opcode::FChmod => blocking_fd(fd(a[0])?, ops::fchmod),
            Opcode::FChown => blocking_fd(fd(a[0])?, ops::fchown),
            Opcode::UtimensAt if a[0] != u64::MAX => blocking_fd(fd(a[0])?, ops::futimens),
            Opcode::UtimensAt => self.blocking_path(ops::utimens_at),
            Opcode::StatAt => self.blocking_path(ops::stat_at),
            Opcode::MkdirAt => self.blocking_path(ops::mkdir_at),
            Opcode::MknodAt => self.blocking_path(ops::mknod_at),
            Opcode::UnlinkAt => self.blocking_path(ops::unlink_at),
            Opcode::RenameAt => self.blocking_path(ops::rename_at),
            Opcode::LinkAt => self.blocking_path(ops::link_at),
            Opcode::SymlinkAt => self.blocking_path(ops::symlink_at),
            Opcode::ReadLinkAt => self.blocking_path(ops::readlink_at),
            Opcode::Resolve => self.blocking_path(ops::escape),
            Opcode::AccessAt => self.blocking_path(ops::access_at),
            Opcode::TruncateAt => self.blocking_path(ops::truncate_at),
            Opcode::ChmodAt => self.blocking_path(ops::chmod_at),
            Opcode::ChownAt => self.blocking_path(ops::chown_at),
            // The runtime answers its probes and the session opcodes itself.
            _ => return Err(libc::ENOSYS),
        })
    }

    fn blocking_path(&self, op: fn(BorrowedFd<'_>, &Call<'_>) -> Result<Response, i32>) -> Outcome {
        let root = self.root.clone();
        Outcome::Blocking(Box::new(move |c: &Call<'_>| done(c, op(root.as_fd(), c))))
    }
}

/// Whether a read or write at the file position, whose client said the file may be a FIFO or
/// character device ([`abi::RW_MAY_BLOCK`]), is on an `O_NONBLOCK` file: such a call is made
/// at once on this thread, where it cannot block, since io_uring does not honour `O_NONBLOCK`
/// for files that can wait (it waits for them to be ready; `RWF_NOWAIT` is refused for a
/// named FIFO). A status-flags query only for those calls.
fn nonblocking(f: &Handle, op: Opcode, arg2: u64) -> Result<bool, i32> {
    if !matches!(op, Opcode::Read | Opcode::Write) || arg2 & abi::RW_MAY_BLOCK == 0 {
        return Ok(false);
    }
    Ok(sys::getfl(f.as_fd())? & libc::O_NONBLOCK != 0)
}

fn blocking_fd(fd: Handle, op: fn(BorrowedFd<'_>, &Call<'_>) -> Result<Response, i32>) -> Outcome {
    Outcome::Blocking(Box::new(move |c: &Call<'_>| done(c, op(fd.as_fd(), c))))
}

impl Handler for Storage {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn acts_as_client(&self) -> bool {
        true
    }

    fn session_closed(&self, id: u64, _creds: Credentials) {
        // Writes the session left half-sent are dropped.
        self.staging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| *s != id);
    }

    fn session_opened(&self, id: u64, creds: Credentials) {
        tracing::debug!(
            session = id,
            pid = creds.pid,
            uid = creds.uid,
            "storage session"
        );
    }

    fn handle(&self, call: &Call<'_>) -> Outcome {
        self.dispatch(call)
            .unwrap_or_else(|e| Outcome::Done(Response::err(call.id(), errno(e))))
    }

    fn complete(&self, call: &Call<'_>, result: i32) -> Outcome {
        let id = call.id();
        let op = call.request().opcode;
        if result < 0 {
            if op == Opcode::OpenAt && result == -libc::EAGAIN {
                // RESOLVE_BENEATH saw a concurrent rename: retry synchronously on the pool.
                if let Some(k) = call.kept::<OpenKeep>() {
                    let (path, flags, mode) = (k.path.clone(), k.flags, k.mode);
                    let root = self.root.clone();
                    return Outcome::Blocking(Box::new(move |c: &Call<'_>| {
                        done(c, ops::open_at(root.as_fd(), c, &path, flags, mode))
                    }));
                }
            }
            if op == Opcode::OpenAt && result == -libc::EXDEV {
                // RESOLVE_BENEATH met an absolute symlink or `..` above the root.
                return Outcome::Done(Response::err(id, abi::ESCAPE));
            }
            return Outcome::Done(Response::err(id, errno(-result)));
        }
        Outcome::Done(match op {
            Opcode::OpenAt => done(call, install(call, sys::own_fd(result))),
            Opcode::Read | Opcode::PRead => Response {
                data_len: result as u32,
                ..Response::ok(id, i64::from(result))
            },
            _ => Response::ok(id, i64::from(result)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_become_acceptable_to_openat2() {
        let (f, m) = open_how((libc::O_RDONLY | 0x4000_0000) as u64, 0o644);
        assert_eq!(
            (f as i32, m),
            (libc::O_CLOEXEC, 0),
            "unknown bit and mode dropped"
        );
        let (f, m) = open_how((libc::O_CREAT | libc::O_WRONLY) as u64, 0o100644);
        assert_eq!(
            (f as i32, m),
            (libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644)
        );
        let (f, _) = open_how(
            (libc::O_PATH | libc::O_RDWR | libc::O_TRUNC | libc::O_NOFOLLOW) as u64,
            0,
        );
        assert_eq!(f as i32, libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC);
        let (_, m) = open_how((libc::O_TMPFILE | libc::O_RDWR) as u64, 0o600);
        assert_eq!(m, 0o600);
        let (f, _) = open_how(1 << 40, 0);
        assert_eq!(
            f as i32,
            libc::O_CLOEXEC,
            "upper word ignored, as int flags"
        );
    }
}
