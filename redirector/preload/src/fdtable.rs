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
//!
//! **Generations.** Every storage session the process connects gets a generation number (see
//! `remote`); a table entry records the generation its handle was opened in (bits 32..62 of
//! the entry). After the storage domain restarted, the new session numbers its handles from
//! scratch, so an entry of an older generation must never reach it: [`get`] returns such an
//! entry with the handle [`STALE`], which `remote` fails with EIO without sending anything.
//!
//! The handle that [`get`] hands out (and that [`set`] takes) is a *tagged* handle: the
//! server's handle in the low [`HANDLE_BITS`] bits and, above them, an 8-bit tag of the
//! generation it belongs to (0: untagged, meaning the current generation; 255: [`STALE`]).
//! The tag lets `remote` recheck, at the moment it sends a call, that the handle belongs to
//! the session it is about to use, closing the window between a lookup and a reconnect.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::lock::{ForkLock, SigLock};

/// Highest fd number that can stand for a remote file, plus one.
pub const MAX_FDS: usize = 65536;
/// Highest remote handle number, plus one.
pub const MAX_HANDLES: usize = 65536;

/// Bits of a tagged handle that carry the server's handle number.
pub const HANDLE_BITS: u32 = 24;
const HANDLE_MASK: u32 = (1 << HANDLE_BITS) - 1;
/// The handle of an entry from an older generation: every call on it fails with EIO.
pub const STALE: u32 = u32::MAX;
const STALE_TAG: u32 = STALE >> HANDLE_BITS;

const PRESENT: u64 = 1 << 63;
const IS_DIR: u64 = 1 << 62;
/// The entry names a socket of the network domain (else a file of the storage domain).
const NET: u64 = 1 << 31;
/// The entry names a listening socket.
const LISTENING: u64 = 1 << 30;
const GEN_SHIFT: u32 = 32;
/// Generations are 30 bits wide (bits 32..62 of an entry); 0 is never a live generation.
const GEN_MASK: u64 = (1 << 30) - 1;

static FDS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];
/// Placeholders per handle, per domain (0: storage, 1: network).
static REFS: [[AtomicU32; MAX_HANDLES]; 2] =
    [const { [const { AtomicU32::new(0) }; MAX_HANDLES] }; 2];
/// Remote placeholders per domain (0: storage, 1: network).
static REMOTE_COUNT: [AtomicU32; 2] = [const { AtomicU32::new(0) }; 2];
/// The generation of the current session of each domain (0: storage, 1: network).
static GENERATION: [AtomicU32; 2] = [const { AtomicU32::new(1) }; 2];

/// A remote file as the table knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Handle in the storage session's table, tagged with its generation (see the module
    /// documentation), or [`STALE`].
    pub handle: u32,
    /// Opened as a directory.
    pub is_dir: bool,
    /// A socket of the network domain (else a file of the storage domain).
    pub net: bool,
    /// A listening socket (a dead domain's listener then looks idle, not failed).
    pub listening: bool,
}

/// The generation of the current session of a domain.
pub fn generation(net: bool) -> u32 {
    GENERATION[usize::from(net)].load(Ordering::Acquire)
}

/// The generation after `g` (30 bits, skipping 0).
pub fn next_generation(g: u32) -> u32 {
    let n = (u64::from(g) + 1) & GEN_MASK;
    if n == 0 {
        1
    } else {
        n as u32
    }
}

/// Makes `g` a domain's current generation. Its entries of other generations become stale.
pub fn set_generation(net: bool, g: u32) {
    GENERATION[usize::from(net)].store(g, Ordering::Release);
}

/// Starts a new generation of a domain whose handle numbers begin afresh: every existing
/// entry of that domain becomes stale, its handle reference counts (and, for storage,
/// directory paths) start empty. Called before the new session is published. Returns the new
/// generation.
pub fn new_generation(net: bool) -> u32 {
    let g = next_generation(generation(net));
    set_generation(net, g);
    for r in REFS[usize::from(net)].iter() {
        r.store(0, Ordering::Relaxed);
    }
    if !net {
        with_dirs(|d| d.clear());
    }
    g
}

/// The 8-bit tag of generation `g` (1..=254).
pub fn tag_of_generation(g: u32) -> u32 {
    g % 254 + 1
}

/// Tags the server handle `raw` as belonging to generation `g`. Handles that do not fit
/// [`HANDLE_BITS`] cannot be tagged: the caller must not hand them out.
pub fn tag(raw: u32, g: u32) -> u32 {
    (tag_of_generation(g) << HANDLE_BITS) | (raw & HANDLE_MASK)
}

/// The server's handle number inside a tagged handle.
pub fn raw(handle: u32) -> u32 {
    handle & HANDLE_MASK
}

/// What a tagged handle means to a session of generation `g`: its server handle number, or
/// None when it belongs to another generation (or is [`STALE`]).
pub fn handle_in(handle: u32, g: u32) -> Option<u32> {
    let t = handle >> HANDLE_BITS;
    (t != STALE_TAG && (t == 0 || t == tag_of_generation(g))).then_some(handle & HANDLE_MASK)
}

fn encode(raw: u32, is_dir: bool, net: bool, g: u32) -> u64 {
    PRESENT
        | if is_dir { IS_DIR } else { 0 }
        | if net { NET } else { 0 }
        | ((u64::from(g) & GEN_MASK) << GEN_SHIFT)
        | u64::from(raw & HANDLE_MASK)
}

/// Decodes an entry against its domain's current generation: the tagged handle, or
/// [`STALE`] for an entry of another generation.
fn decode(v: u64) -> Option<Remote> {
    decode_in(v, generation(v & NET != 0))
}

fn decode_in(v: u64, cur: u32) -> Option<Remote> {
    if v & PRESENT == 0 {
        return None;
    }
    let g = ((v >> GEN_SHIFT) & GEN_MASK) as u32;
    let handle = if g == cur {
        tag(v as u32 & HANDLE_MASK, g)
    } else {
        STALE
    };
    Some(Remote {
        handle,
        is_dir: v & IS_DIR != 0,
        net: v & NET != 0,
        listening: v & LISTENING != 0,
    })
}

/// Marks the socket `fd` stands for as listening (after a successful `listen`).
pub fn mark_listening(fd: i64) {
    if let Some(e) = usize::try_from(fd).ok().and_then(|i| FDS.get(i)) {
        let _ = e.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v & PRESENT != 0 && v & NET != 0).then_some(v | LISTENING)
        });
    }
}

/// What `fd` stands for, if it is a remote placeholder of the storage domain.
pub fn get(fd: i64) -> Option<Remote> {
    get_any(fd).filter(|r| !r.net)
}

/// What `fd` stands for, if it is a socket of the network domain.
pub fn get_net(fd: i64) -> Option<Remote> {
    get_any(fd).filter(|r| r.net)
}

/// What `fd` stands for, if it is a remote placeholder of either domain.
pub fn get_any(fd: i64) -> Option<Remote> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    decode(FDS[i].load(Ordering::Acquire))
}

/// True when any remote fd exists (fork/exec then need to carry the session over).
pub fn any() -> bool {
    any_of(false) || any_of(true)
}

/// True when any remote fd of the domain exists.
pub fn any_of(net: bool) -> bool {
    REMOTE_COUNT[usize::from(net)].load(Ordering::Relaxed) > 0
}

/// The generation an entry for the tagged handle `handle` gets: the current one for an
/// untagged handle or one tagged with the current generation, else 0 (never live: stale).
fn generation_for(handle: u32, cur: u32) -> u32 {
    if handle_in(handle, cur).is_some() {
        cur
    } else {
        0
    }
}

/// Records that placeholder `fd` stands for `r`, taking a reference on its handle. A previous
/// remote meaning of `fd` is returned so the caller can release it. A handle of another
/// generation (or [`STALE`]) is recorded as stale and takes no reference.
pub fn set(fd: i64, r: Remote) -> Option<Remote> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    let cur = generation(r.net);
    let g = generation_for(r.handle, cur);
    let h = raw(r.handle);
    if g != 0 && (h as usize) < MAX_HANDLES {
        REFS[usize::from(r.net)][h as usize].fetch_add(1, Ordering::AcqRel);
    }
    let v = encode(h, r.is_dir, r.net, g) | if r.listening { LISTENING } else { 0 };
    let old = decode(FDS[i].swap(v, Ordering::AcqRel));
    REMOTE_COUNT[usize::from(r.net)].fetch_add(1, Ordering::Relaxed);
    if let Some(o) = old {
        REMOTE_COUNT[usize::from(o.net)].fetch_sub(1, Ordering::Relaxed);
    }
    old
}

/// Forgets `fd`; returns what it stood for and whether that was the handle's last reference
/// (always true for a stale entry, whose handle died with its session).
pub fn clear(fd: i64) -> Option<(Remote, bool)> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    let old = decode(FDS[i].swap(0, Ordering::AcqRel))?;
    REMOTE_COUNT[usize::from(old.net)].fetch_sub(1, Ordering::Relaxed);
    Some((old, release(old)))
}

/// Drops one reference on `r`'s handle; true when it was the last (or when the handle
/// belongs to another generation, which holds no references).
pub fn release(r: Remote) -> bool {
    let Some(h) = handle_in(r.handle, generation(r.net)) else {
        return true;
    };
    match REFS[usize::from(r.net)].get(h as usize) {
        Some(r) => r.fetch_sub(1, Ordering::AcqRel) == 1,
        None => true,
    }
}

/// Calls `f(fd, remote)` for every remote fd. Handles are given untagged (the server's
/// numbers, as an exec's new image will know them), stale ones as [`STALE`].
pub fn for_each(mut f: impl FnMut(i64, Remote)) {
    if !any() {
        return;
    }
    for (i, e) in FDS.iter().enumerate() {
        if let Some(mut r) = decode(e.load(Ordering::Acquire)) {
            if r.handle != STALE {
                r.handle = raw(r.handle);
            }
            f(i as i64, r);
        }
    }
}

/// The server handle number in `fd`'s entry, whatever its generation.
pub fn raw_bits(fd: i64) -> Option<u32> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    let v = FDS[i].load(Ordering::Acquire);
    (v & PRESENT != 0).then_some(v as u32 & HANDLE_MASK)
}

/// Calls `f(fd, handle)` for every listening network entry of an older generation (its
/// session died), with the server handle it had there.
pub fn for_each_stale_listener(mut f: impl FnMut(i64, u32)) {
    if !any_of(true) {
        return;
    }
    let cur = generation(true);
    for (i, e) in FDS.iter().enumerate() {
        let v = e.load(Ordering::Acquire);
        if v & PRESENT == 0 || v & NET == 0 || v & LISTENING == 0 {
            continue;
        }
        let g = ((v >> GEN_SHIFT) & GEN_MASK) as u32;
        if g != cur {
            f(i as i64, v as u32 & HANDLE_MASK);
        }
    }
}

/// Forgets every entry (a new session starts without remote files).
pub fn reset() {
    for e in FDS.iter() {
        e.store(0, Ordering::Relaxed);
    }
    for r in REFS.iter().flatten() {
        r.store(0, Ordering::Relaxed);
    }
    for c in REMOTE_COUNT.iter() {
        c.store(0, Ordering::Relaxed);
    }
}

// ---- directory paths, by handle ----

/// Directory paths by handle; the allocation inside comes from the shim's own allocator.
type Dirs = Vec<Option<(u32, Box<[u8]>)>>;
static DIRS: SigLock<Dirs> = SigLock::new(Vec::new());

fn with_dirs<R>(f: impl FnOnce(&mut Dirs) -> R) -> R {
    DIRS.with(f)
}

/// The directory-path lock, for the fork handlers.
pub(crate) fn lock() -> &'static dyn ForkLock {
    &DIRS
}

/// Remembers the export-relative path of directory handle `handle` (tagged; a handle of
/// another generation is ignored).
pub fn set_dir_path(handle: u32, path: &[u8]) {
    let Some(handle) = handle_in(handle, generation(false)) else {
        return;
    };
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

/// Copies the path of directory handle `handle` into `out`; returns its length (None for a
/// stale handle).
pub fn dir_path(handle: u32, out: &mut [u8]) -> Option<usize> {
    let handle = handle_in(handle, generation(false))?;
    with_dirs(|d| {
        let (_, p) = d.iter().flatten().find(|(h, _)| *h == handle)?;
        let n = p.len().min(out.len());
        out[..n].copy_from_slice(&p[..n]);
        Some(n)
    })
}

/// Forgets the path of `handle`.
pub fn forget_dir(handle: u32) {
    let Some(handle) = handle_in(handle, generation(false)) else {
        return;
    };
    with_dirs(|d| {
        for s in d.iter_mut() {
            if matches!(s, Some((h, _)) if *h == handle) {
                *s = None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_their_generation() {
        for g in [1u32, 2, 253, 254, 255, (1 << 30) - 1] {
            for raw_h in [0u32, 1, 7, 65535, HANDLE_MASK] {
                for is_dir in [false, true] {
                    let v = encode(raw_h, is_dir, false, g);
                    let r = decode_in(v, g).unwrap();
                    assert_eq!(r.is_dir, is_dir);
                    assert_eq!(handle_in(r.handle, g), Some(raw_h), "g {g} h {raw_h}");
                    assert_ne!(r.handle, STALE);
                    // In any other generation the entry is stale.
                    let other = decode_in(v, next_generation(g)).unwrap();
                    assert_eq!(other.handle, STALE);
                    assert_eq!(other.is_dir, is_dir);
                    assert_eq!(handle_in(other.handle, g), None);
                    assert_eq!(handle_in(other.handle, next_generation(g)), None);
                }
            }
        }
        assert_eq!(decode_in(0, 1), None);
    }

    #[test]
    fn generations_skip_zero_and_tags_stay_in_range() {
        assert_eq!(next_generation((1 << 30) - 1), 1);
        assert_eq!(next_generation(1), 2);
        for g in 1..2000u32 {
            let t = tag_of_generation(g);
            assert!((1..=254).contains(&t));
            assert_ne!(t, tag_of_generation(next_generation(g)));
        }
    }

    #[test]
    fn tagged_handles_reach_only_their_own_generation() {
        let h = tag(5, 3);
        assert_eq!(handle_in(h, 3), Some(5));
        assert_eq!(handle_in(h, 4), None);
        // Untagged handles (an exec's restored table) belong to the current generation.
        assert_eq!(handle_in(5, 4), Some(5));
        assert_eq!(handle_in(STALE, 3), None);
        assert_eq!(generation_for(h, 3), 3);
        assert_eq!(generation_for(h, 4), 0);
        assert_eq!(generation_for(STALE, 3), 0);
        assert_eq!(raw(h), 5);
    }

    #[test]
    fn table_turns_stale_across_a_new_generation() {
        // One test touches the global table, so nothing else races with it.
        let g = generation(false);
        assert_eq!(
            set(
                10,
                Remote {
                    handle: tag(4, g),
                    is_dir: false,
                    net: false,
                    listening: false,
                }
            ),
            None
        );
        assert_eq!(set(11, get(10).unwrap()), None); // a dup shares handle 4
        set_dir_path(tag(6, g), b"dir");
        assert_eq!(
            set(
                12,
                Remote {
                    handle: tag(6, g),
                    is_dir: true,
                    net: false,
                    listening: false,
                }
            ),
            None
        );
        let mut buf = [0u8; 8];
        assert_eq!(dir_path(get(12).unwrap().handle, &mut buf), Some(3));
        assert_eq!(
            clear(10).map(|(r, last)| (raw(r.handle), last)),
            Some((4, false))
        );
        let g2 = new_generation(false);
        assert_ne!(g, g2);
        let stale = get(11).unwrap();
        assert_eq!(stale.handle, STALE);
        assert_eq!(dir_path(get(12).unwrap().handle, &mut buf), None);
        // The new session's handle 4 is counted on its own.
        assert_eq!(
            set(
                20,
                Remote {
                    handle: tag(4, g2),
                    is_dir: false,
                    net: false,
                    listening: false,
                }
            ),
            None
        );
        assert_eq!(clear(11), Some((stale, true)));
        assert_eq!(
            clear(20).map(|(r, last)| (r.handle, last)),
            Some((tag(4, g2), true))
        );
        // A handle tagged by the old session, recorded late, is stale at once.
        set(
            21,
            Remote {
                handle: tag(9, g),
                is_dir: false,
                net: false,
                listening: false,
            },
        );
        assert_eq!(get(21).unwrap().handle, STALE);
        let mut seen = Vec::new();
        for_each(|fd, r| seen.push((fd, r.handle)));
        assert!(seen.contains(&(21, STALE)));
        assert!(seen.contains(&(12, STALE)));
        reset();
        assert!(!any());
    }
}
