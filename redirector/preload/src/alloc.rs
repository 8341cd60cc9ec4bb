//! The shim's own memory allocator: it never calls the program's `malloc`.
//!
//! The shim runs inside the program's allocator (jemalloc, tcmalloc and mimalloc open and read
//! files while they initialise, through the shim's interposed `open`/`read`), inside signal
//! handlers and inside `vfork` children. Rust code in this cdylib allocates through the
//! `#[global_allocator]` below, so none of it can ever re-enter the program's allocator or take
//! one of its locks:
//!
//! * blocks up to [`MAX_SMALL`] bytes (1 MiB: sendfile's bounce buffers are reused, not
//!   mapped per call) come from per-size-class free lists, lock-free
//!   Treiber stacks whose head carries an ABA tag in its top 16 bits (user-space x86-64
//!   addresses fit 47 bits); empty lists are refilled with a fresh anonymous mapping, carved
//!   into blocks privately and published with one compare-and-swap. Small blocks are never
//!   returned to the kernel, so reading a block's link word is always a read of mapped memory;
//! * larger blocks are their own anonymous mappings, unmapped when freed.
//!
//! Nothing here takes a lock: a signal handler that allocates while the code it interrupted
//! was allocating on the same thread only makes that code's compare-and-swap fail and retry.
//! A fork child inherits consistent lists (every update is one atomic store), so nothing
//! needs resetting after fork. Memory comes from raw `mmap` system calls issued through the
//! shim's own trampoline (never trapped, never libc's wrapper).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// Largest block served from the free lists.
pub const MAX_SMALL: usize = 1024 * 1024;
const MIN_SHIFT: u32 = 4; // 16-byte blocks
const CLASSES: usize = (MAX_SMALL.trailing_zeros() - MIN_SHIFT + 1) as usize;
const PAGE: usize = 4096;
const PTR_MASK: u64 = (1 << 48) - 1;
const TAG_ONE: u64 = 1 << 48;

/// The shim's allocator (see the module documentation).
pub struct ShimAlloc {
    heads: [AtomicU64; CLASSES],
}

impl ShimAlloc {
    /// An allocator with empty free lists.
    pub const fn new() -> ShimAlloc {
        ShimAlloc {
            heads: [const { AtomicU64::new(0) }; CLASSES],
        }
    }
}

impl Default for ShimAlloc {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class of a small request, or None for a large one.
fn class_of(layout: Layout) -> Option<usize> {
    let need = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if need > MAX_SMALL || layout.align() > PAGE {
        return None;
    }
    let shift = usize::BITS - (need - 1).leading_zeros();
    Some((shift - MIN_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

/// An anonymous private read-write mapping of `len` bytes (a page multiple), or null.
fn map(len: usize) -> *mut u8 {
    let r = sys::sys(
        libc::SYS_mmap,
        &[
            0,
            len as u64,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX, // fd -1
            0,
        ],
    );
    if r < 0 {
        std::ptr::null_mut()
    } else {
        r as *mut u8
    }
}

fn unmap(p: *mut u8, len: usize) {
    if len > 0 {
        sys::sys(libc::SYS_munmap, &[p as u64, len as u64]);
    }
}

fn round_pages(n: usize) -> Option<usize> {
    n.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

/// The link word at the start of a free block.
///
/// # Safety
/// `p` must be a block of a small class (at least 16 bytes, 8-aligned, inside a mapping that
/// is never unmapped).
unsafe fn link<'a>(p: u64) -> &'a AtomicU64 {
    // SAFETY: per the contract, `p` is 8-aligned mapped memory that lives forever; the word is
    // only ever accessed atomically by this module while the block is free (a stale read of a
    // block that was just handed out is harmless: the head's tag has changed and the
    // compare-and-swap that would use the value fails).
    unsafe { &*(p as *const AtomicU64) }
}

impl ShimAlloc {
    fn pop(&self, class: usize) -> *mut u8 {
        let head = &self.heads[class];
        let mut h = head.load(Ordering::Acquire);
        loop {
            let p = h & PTR_MASK;
            if p == 0 {
                return self.refill(class);
            }
            // SAFETY: `p` came from this class's list: a small block in a permanent mapping.
            let next = unsafe { link(p) }.load(Ordering::Relaxed);
            let new = ((h & !PTR_MASK).wrapping_add(TAG_ONE)) | (next & PTR_MASK);
            match head.compare_exchange_weak(h, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return p as *mut u8,
                Err(cur) => h = cur,
            }
        }
    }

    /// Pushes the chain `first..=last` (linked through their link words) onto `class`.
    fn push_chain(&self, class: usize, first: u64, last: u64) {
        let head = &self.heads[class];
        let mut h = head.load(Ordering::Acquire);
        loop {
            // SAFETY: `last` is a small block of this class owned by the caller.
            unsafe { link(last) }.store(h & PTR_MASK, Ordering::Relaxed);
            let new = ((h & !PTR_MASK).wrapping_add(TAG_ONE)) | first;
            match head.compare_exchange_weak(h, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(cur) => h = cur,
            }
        }
    }

    /// Maps a new chunk for `class`, keeps its first block and publishes the others.
    fn refill(&self, class: usize) -> *mut u8 {
        let size = class_size(class);
        // At least 16 blocks of the small classes per mapping; one block of the largest.
        let chunk = (64 * 1024).max(size);
        let base = map(chunk);
        if base.is_null() {
            return base;
        }
        let blocks = chunk / size;
        if blocks > 1 {
            let b = base as u64;
            for i in 1..blocks - 1 {
                let at = b + (i * size) as u64;
                // SAFETY: the chunk is fresh and private to this call; blocks are `size`
                // apart, `size` ≥ 16 and the chunk is page-aligned.
                unsafe { link(at) }.store(at + size as u64, Ordering::Relaxed);
            }
            self.push_chain(class, b + size as u64, b + ((blocks - 1) * size) as u64);
        }
        base
    }
}

// SAFETY: small blocks are `class_size` bytes, aligned to their size (a power of two ≤ the page
// size inside page-aligned chunks, or a page for larger classes, whose requested alignment is
// then at most a page), so they satisfy the layout; a block is handed out once until freed;
// large blocks are fresh mappings, aligned by trimming an over-sized mapping.
unsafe impl GlobalAlloc for ShimAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(c) => self.pop(c),
            None => {
                let Some(len) = round_pages(layout.size()) else {
                    return std::ptr::null_mut();
                };
                if layout.align() <= PAGE {
                    return map(len);
                }
                let Some(over) = len.checked_add(layout.align()) else {
                    return std::ptr::null_mut();
                };
                let raw = map(over);
                if raw.is_null() {
                    return raw;
                }
                let start = (raw as usize + layout.align() - 1) & !(layout.align() - 1);
                unmap(raw, start - raw as usize);
                unmap(
                    (start + len) as *mut u8,
                    raw as usize + over - (start + len),
                );
                start as *mut u8
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(c) => self.push_chain(c, ptr as u64, ptr as u64),
            None => unmap(ptr, round_pages(layout.size()).unwrap_or(0)),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let (Some(a), Ok(nl)) = (
            class_of(layout),
            Layout::from_size_align(new_size, layout.align()),
        ) {
            if class_of(nl) == Some(a) {
                return ptr; // the block already has room
            }
        }
        // SAFETY: forwarded contract; the default strategy (allocate, copy, free).
        unsafe {
            let Ok(nl) = Layout::from_size_align(new_size, layout.align()) else {
                return std::ptr::null_mut();
            };
            let new = self.alloc(nl);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_sizes_and_alignments() {
        let l = |s, a| Layout::from_size_align(s, a).unwrap();
        assert_eq!(class_of(l(1, 1)), Some(0));
        assert_eq!(class_of(l(16, 8)), Some(0));
        assert_eq!(class_of(l(17, 8)), Some(1));
        assert_eq!(class_of(l(8, 64)), Some(2));
        assert_eq!(class_of(l(MAX_SMALL, 8)), Some(CLASSES - 1));
        assert_eq!(class_of(l(MAX_SMALL + 1, 8)), None);
        assert_eq!(class_of(l(64, 8192)), None);
    }

    #[test]
    fn blocks_are_aligned_distinct_and_reused() {
        let a = ShimAlloc::new();
        let mut got = Vec::new();
        for (s, al) in [
            (1, 1),
            (24, 8),
            (100, 16),
            (4096, 4096),
            (70_000, 8),
            (100, 16384),
        ] {
            let layout = Layout::from_size_align(s, al).unwrap();
            for _ in 0..50 {
                // SAFETY: non-zero sizes; every block is freed below with its layout.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null());
                assert_eq!(p as usize % al, 0, "{s}/{al}");
                // SAFETY: the block has `s` writable bytes.
                unsafe { std::ptr::write_bytes(p, 0xab, s) };
                got.push((p, layout));
            }
        }
        let mut addrs: Vec<usize> = got.iter().map(|g| g.0 as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), got.len(), "a block was handed out twice");
        let first = got[0];
        for (p, l) in got {
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, l) };
        }
        // LIFO: the last freed block of a class comes back first.
        // SAFETY: as above.
        let again = unsafe { a.alloc(first.1) };
        assert!(!again.is_null());
        // SAFETY: as above.
        unsafe { a.dealloc(again, first.1) };
    }

    #[test]
    fn threads_allocate_concurrently_without_sharing_blocks() {
        static A: ShimAlloc = ShimAlloc::new();
        let hs: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let l = Layout::from_size_align(48, 8).unwrap();
                    for i in 0..20_000u64 {
                        // SAFETY: non-zero size; freed right after with the same layout.
                        unsafe {
                            let p = A.alloc(l) as *mut u64;
                            assert!(!p.is_null());
                            p.write(t * 1_000_000 + i);
                            std::hint::spin_loop();
                            assert_eq!(p.read(), t * 1_000_000 + i);
                            A.dealloc(p as *mut u8, l);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}
