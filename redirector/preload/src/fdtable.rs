//! The shim's file descriptor table: which local fd numbers stand for remote files.
//!
//! A remote file is represented in the application by a placeholder: a real local fd (an
//! `O_PATH` descriptor of `/dev/null`, so that any use the shim does not intercept fails loudly
//! with EBADF instead of silently reading nothing). The kernel numbers placeholders, so fd
//! numbering stays exactly Linux's (lowest free, `dup2` onto live fds, `O_CLOEXEC` at exec).
//! The table maps a placeholder's number to its remote handle; dups share one handle, counted
//! in `REFS`, and the remote file is closed when the last placeholder goes.
//!
//! Lookups and updates are single atomic operations on static arrays: no allocation, no lock,
//! safe in signal handlers. Directory paths (for `fchdir` and `*at` calls relative to a remote
//! directory) are kept per handle behind a spin lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Highest fd number that can stand for a remote file, plus one.
pub const MAX_FDS: usize = 65536;
/// Highest remote handle number, plus one.
pub const MAX_HANDLES: usize = 65536;

const PRESENT: u64 = 1 << 63;
const IS_DIR: u64 = 1 << 62;

static FDS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];
static REFS: [AtomicU32; MAX_HANDLES] = [const { AtomicU32::new(0) }; MAX_HANDLES];
static REMOTE_COUNT: AtomicU32 = AtomicU32::new(0);

/// A remote file as the table knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Handle in the storage session's table.
    pub handle: u32,
    /// Opened as a directory.
    pub is_dir: bool,
}

fn encode(r: Remote) -> u64 {
    PRESENT | if r.is_dir { IS_DIR } else { 0 } | u64::from(r.handle)
}

fn decode(v: u64) -> Option<Remote> {
    (v & PRESENT != 0).then_some(Remote {
        handle: v as u32,
        is_dir: v & IS_DIR != 0,
    })
}

/// What `fd` stands for, if it is a remote placeholder.
pub fn get(fd: i64) -> Option<Remote> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    decode(FDS[i].load(Ordering::Acquire))
}

/// True when any remote fd exists (fork/exec then need to carry the session over).
pub fn any() -> bool {
    REMOTE_COUNT.load(Ordering::Relaxed) > 0
}

/// Records that placeholder `fd` stands for `r`, taking a reference on its handle. A previous
/// remote meaning of `fd` is returned so the caller can release it.
pub fn set(fd: i64, r: Remote) -> Option<Remote> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    if (r.handle as usize) < MAX_HANDLES {
        REFS[r.handle as usize].fetch_add(1, Ordering::AcqRel);
    }
    let old = decode(FDS[i].swap(encode(r), Ordering::AcqRel));
    if old.is_none() {
        REMOTE_COUNT.fetch_add(1, Ordering::Relaxed);
    }
    old
}

/// Forgets `fd`; returns what it stood for and whether that was the handle's last reference.
pub fn clear(fd: i64) -> Option<(Remote, bool)> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    let old = decode(FDS[i].swap(0, Ordering::AcqRel))?;
    REMOTE_COUNT.fetch_sub(1, Ordering::Relaxed);
    Some((old, release(old.handle)))
}

/// Drops one reference on `handle`; true when it was the last.
pub fn release(handle: u32) -> bool {
    match REFS.get(handle as usize) {
        Some(r) => r.fetch_sub(1, Ordering::AcqRel) == 1,
        None => true,
    }
}

/// Calls `f(fd, remote)` for every remote fd.
pub fn for_each(mut f: impl FnMut(i64, Remote)) {
    if !any() {
        return;
    }
    for (i, e) in FDS.iter().enumerate() {
        if let Some(r) = decode(e.load(Ordering::Acquire)) {
            f(i as i64, r);
        }
    }
}

/// Forgets every entry (a new session starts without remote files).
pub fn reset() {
    for e in FDS.iter() {
        e.store(0, Ordering::Relaxed);
    }
    for r in REFS.iter() {
        r.store(0, Ordering::Relaxed);
    }
    REMOTE_COUNT.store(0, Ordering::Relaxed);
}

// ---- directory paths, by handle ----

static DIRS_LOCK: AtomicBool = AtomicBool::new(false);
static mut DIRS: Vec<Option<(u32, Box<[u8]>)>> = Vec::new();

fn with_dirs<R>(f: impl FnOnce(&mut Vec<Option<(u32, Box<[u8]>)>>) -> R) -> R {
    while DIRS_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: DIRS is only touched here, under DIRS_LOCK, which this thread now holds.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(DIRS) });
    DIRS_LOCK.store(false, Ordering::Release);
    r
}

/// Remembers the export-relative path of directory handle `handle`.
pub fn set_dir_path(handle: u32, path: &[u8]) {
    let boxed: Box<[u8]> = path.into();
    with_dirs(|d| {
        if let Some(slot) = d
            .iter_mut()
            .find(|s| matches!(s, Some((h, _)) if *h == handle))
        {
            *slot = Some((handle, boxed));
        } else if let Some(slot) = d.iter_mut().find(|s| s.is_none()) {
            *slot = Some((handle, boxed));
        } else {
            d.push(Some((handle, boxed)));
        }
    })
}

/// Copies the path of directory handle `handle` into `out`; returns its length.
pub fn dir_path(handle: u32, out: &mut [u8]) -> Option<usize> {
    with_dirs(|d| {
        let (_, p) = d.iter().flatten().find(|(h, _)| *h == handle)?;
        let n = p.len().min(out.len());
        out[..n].copy_from_slice(&p[..n]);
        Some(n)
    })
}

/// Forgets the path of `handle`.
pub fn forget_dir(handle: u32) {
    with_dirs(|d| {
        for s in d.iter_mut() {
            if matches!(s, Some((h, _)) if *h == handle) {
                *s = None;
            }
        }
    })
}
