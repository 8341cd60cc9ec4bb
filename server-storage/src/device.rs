//! `--device`: attach an image to a loop device and mount it where only this server can see it.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::sys;
use crate::StorageError;

/// A mounted export, reachable only through `root`.
pub(crate) struct Mounted {
    pub root: OwnedFd,
    pub fstype: String,
    pub loop_dev: Option<PathBuf>,
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> StorageError {
    let what = what.into();
    move |e| StorageError::Sys {
        what,
        source: e.into(),
    }
}

fn raw_err(what: impl Into<String>) -> impl FnOnce(i32) -> StorageError {
    let what = what.into();
    move |e| StorageError::Sys {
        what,
        source: std::io::Error::from_raw_os_error(e),
    }
}

/// File systems this kernel can mount from a block device (`/proc/filesystems` without
/// `nodev`), in the kernel's order.
pub fn known_block_filesystems() -> Vec<String> {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

pub(crate) fn mount(dev: &Path, fstype: Option<&str>) -> Result<Mounted, StorageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(StorageError::NotRoot);
    }
    let known = known_block_filesystems();
    let candidates: Vec<String> = match fstype {
        Some(t) if known.iter().any(|k| k == t) => vec![t.to_string()],
        Some(t) => {
            return Err(StorageError::UnknownFsType {
                fstype: t.to_string(),
                known: known.join(", "),
            })
        }
        // Probe like mount(8) without blkid: try each block file system in turn. FUSE needs a
        // daemon and is never what an image holds.
        None => known.into_iter().filter(|k| k != "fuseblk").collect(),
    };
    let meta = std::fs::metadata(dev).map_err(|source| StorageError::Sys {
        what: format!("{}", dev.display()),
        source,
    })?;
    let (source, loop_dev, _loop_fd) = if meta.file_type().is_block_device() {
        (dev.to_path_buf(), None, None)
    } else if meta.is_file() {
        let (path, fd) = attach_loop(dev)?;
        tracing::info!(image = %dev.display(), device = %path.display(), "image attached to a loop device");
        (path.clone(), Some(path), Some(fd))
    } else {
        return Err(StorageError::NotADevice(dev.to_path_buf()));
    };
    // A thread of its own: unshare(CLONE_NEWNS) changes only the calling thread, and its
    // namespace disappears with it, leaving the mount reachable through `root` alone.
    let dev_shown = dev.to_path_buf();
    let (root, fstype) = std::thread::Builder::new()
        .name("virtuos-mount".into())
        .spawn(move || mount_private(&source, &candidates))
        .map_err(|source| StorageError::Sys {
            what: "spawning the mount thread".into(),
            source,
        })?
        .join()
        .map_err(|_| StorageError::Mount {
            path: dev_shown.clone(),
            detail: "the mount thread panicked".into(),
        })?
        .map_err(|detail| StorageError::Mount {
            path: dev_shown,
            detail,
        })?;
    // The mount now holds the loop device open; ours may go (auto-clear then detaches the
    // device when the file system is finally unmounted).
    Ok(Mounted {
        root,
        fstype,
        loop_dev,
    })
}

/// Attaches `image` to a free loop device; returns its path and an open descriptor.
fn attach_loop(image: &Path) -> Result<(PathBuf, OwnedFd), StorageError> {
    let control = nix::fcntl::open(
        "/dev/loop-control",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys_err(
        "opening /dev/loop-control (is the loop driver loaded?)",
    ))?;
    let backing = nix::fcntl::open(image, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys_err(format!("opening {}", image.display())))?;
    let name = image.as_os_str().as_bytes();
    for _ in 0..32 {
        let n = sys::loop_get_free(control.as_fd()).map_err(raw_err("LOOP_CTL_GET_FREE"))?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match nix::fcntl::open(&path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(d) => d,
            // No udev here (a container): make the node ourselves.
            Err(nix::errno::Errno::ENOENT) => {
                nix::sys::stat::mknod(
                    &path,
                    nix::sys::stat::SFlag::S_IFBLK,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(7, u64::from(n)),
                )
                .map_err(sys_err(format!("creating {}", path.display())))?;
                nix::fcntl::open(&path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(sys_err(format!("opening {}", path.display())))?
            }
            Err(e) => return Err(sys_err(format!("opening {}", path.display()))(e)),
        };
        match sys::loop_configure(dev.as_fd(), backing.as_fd(), sys::LO_FLAGS_AUTOCLEAR, name) {
            Ok(()) => return Ok((path, dev)),
            // Another process took this device between GET_FREE and CONFIGURE: next one.
            Err(libc::EBUSY) => continue,
            Err(e) => return Err(raw_err(format!("LOOP_CONFIGURE on {}", path.display()))(e)),
        }
    }
    Err(StorageError::Mount {
        path: image.to_path_buf(),
        detail: "no free loop device after 32 tries".into(),
    })
}

/// Runs on a dedicated thread: a private mount namespace, a private temporary mount point,
/// the mount, an `O_PATH` descriptor of its root, then a lazy unmount so that nothing but that
/// descriptor holds it.
fn mount_private(source: &Path, fstypes: &[String]) -> Result<(OwnedFd, String), String> {
    sys::unshare(libc::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {}", errstr(e)))?;
    // Nothing done in this namespace may propagate back to the host's mounts.
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| format!("making / private: {}", errstr(e)))?;
    let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("virtuos-storage-XXXXXX"))
        .map_err(|e| format!("creating a mount point: {e}"))?;
    let result = mount_on(source, &dir, fstypes);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn mount_on(source: &Path, dir: &Path, fstypes: &[String]) -> Result<(OwnedFd, String), String> {
    let src = CString::new(source.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut tried = Vec::new();
    let mut mounted = None;
    for t in fstypes {
        let ty = CString::new(t.as_str()).map_err(|e| e.to_string())?;
        // nodev: device nodes on an untrusted image must not open the host's devices;
        // nosuid for good measure.
        let flags = libc::MS_NODEV | libc::MS_NOSUID | libc::MS_SILENT;
        match sys::mount(Some(&src), &target, Some(&ty), flags, None) {
            Ok(()) => {
                mounted = Some(t.clone());
                break;
            }
            Err(e) => tried.push(format!("{t}: {}", errstr(e))),
        }
    }
    let Some(fstype) = mounted else {
        return Err(if fstypes.len() == 1 {
            tried.join("")
        } else {
            format!(
                "no file system type recognised it (tried {}); name one with --fstype",
                tried.join("; ")
            )
        });
    };
    let root = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening the mounted root: {e}"));
    let _ = sys::umount2(&target, libc::MNT_DETACH);
    Ok((root?, fstype))
}

fn errstr(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}
