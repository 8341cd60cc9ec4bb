//! The only module that touches raw shared memory.
//!
//! A [`SharedMem`] is a byte range mapped into this process that the peer may write at any
//! moment. It is never exposed as a Rust slice or reference to plain data: control words are
//! reached as atomics, slots are copied word by word with atomic loads and stores, and payloads
//! are copied with `ptr::copy` into or out of private buffers. Every accessor checks its range
//! against the mapping, so an offset that slipped past validation panics instead of reading
//! out of bounds.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::RawSlot;

/// What keeps the mapping alive (held, never read).
#[allow(dead_code)]
enum Backing {
    /// A shared mapping of a memfd, gntalloc or gntdev file.
    Mmap(memmap2::MmapRaw),
    /// Process-private memory, for tests and Miri: a `Box<[AtomicU64]>` turned into a raw
    /// pointer and freed when the `SharedMem` drops. Kept raw on purpose: moving a `Box` retags
    /// it as unique, which (under Stacked Borrows) invalidates `base`, derived from it earlier.
    Heap(*mut [AtomicU64]),
}

/// A mapped region shared with a (possibly hostile) peer.
pub struct SharedMem {
    base: *mut u8,
    len: usize,
    _backing: Backing,
}

// SAFETY: all access to the memory behind `base` goes through atomics or raw copies that are
// valid under concurrent modification; the backing keeps the mapping alive for `self`'s life.
unsafe impl Send for SharedMem {}
// SAFETY: as above; no method hands out `&mut` or plain references into the region.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// Wraps a shared mapping. The mapping must be at least 8-byte aligned (mmap gives pages).
    pub fn from_mmap(map: memmap2::MmapRaw) -> Self {
        let base = map.as_mut_ptr();
        let len = map.len();
        assert_eq!(base as usize % 8, 0, "mapping is page aligned");
        SharedMem {
            base,
            len,
            _backing: Backing::Mmap(map),
        }
    }

    /// Process-private zeroed memory of `len` bytes (rounded up to 8), for tests and Miri.
    pub fn heap(len: usize) -> Self {
        let words: Box<[AtomicU64]> = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        let words = Box::into_raw(words);
        let base = words as *mut u8;
        SharedMem {
            base,
            len,
            _backing: Backing::Heap(words),
        }
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize, align: usize) {
        let end = off.checked_add(len).expect("offset overflow");
        assert!(
            end <= self.len,
            "shared-memory access {off}+{len} beyond {}",
            self.len
        );
        assert_eq!(off % align, 0, "misaligned shared-memory access at {off}");
    }

    /// The 32-bit control word at `off` (4-aligned, in bounds).
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked above); the mapping lives as long as `self`;
        // AtomicU32 has the layout of u32 and tolerates concurrent writes by the peer.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// The 64-bit control word at `off` (8-aligned, in bounds).
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as for `u32_at`, with 8-byte alignment checked.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    /// Copies the slot at `off` out of shared memory, word by word.
    pub fn read_slot(&self, off: usize) -> RawSlot {
        let mut slot = RawSlot::default();
        for (i, w) in slot.iter_mut().enumerate() {
            *w = self.u64_at(off + i * 8).load(Ordering::Relaxed);
        }
        slot
    }

    /// Writes `slot` into shared memory at `off`, word by word.
    pub fn write_slot(&self, off: usize, slot: &RawSlot) {
        for (i, w) in slot.iter().enumerate() {
            self.u64_at(off + i * 8).store(*w, Ordering::Relaxed);
        }
    }

    /// Copies `out.len()` bytes at `off` out of shared memory.
    pub fn copy_out(&self, off: usize, out: &mut [u8]) {
        self.check(off, out.len(), 1);
        // SAFETY: the source range is inside the mapping (checked) and `out` is private memory
        // that cannot overlap it. The peer may write the source concurrently; any byte value is
        // a valid u8, and the bytes are only validated after this copy.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), out.as_mut_ptr(), out.len()) }
    }

    /// Copies `data` into shared memory at `off`.
    pub fn copy_in(&self, off: usize, data: &[u8]) {
        self.check(off, data.len(), 1);
        // SAFETY: the destination range is inside the mapping (checked) and `data` is private
        // memory that cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len()) }
    }

    /// `preadv2(fd, off..off+len, file_off, flags)`: the kernel reads `fd` straight into
    /// shared memory (as an io_uring read into [`SharedMem::raw_range`] would). Bytes read, or
    /// Linux's errno. `file_off` -1 reads at the file position.
    pub fn pread_into(
        &self,
        off: usize,
        len: usize,
        fd: std::os::fd::BorrowedFd<'_>,
        file_off: i64,
        flags: i32,
    ) -> Result<usize, i32> {
        use std::os::fd::AsRawFd;
        let iov = libc::iovec {
            iov_base: self.raw_range(off, len).cast(),
            iov_len: len,
        };
        // SAFETY: the iovec covers `len` bytes inside the mapping (checked by raw_range), which
        // lives as long as `self`; the kernel writes it with its own user-copy routines, so a
        // peer writing the same bytes concurrently cannot fault the call, only see the bytes.
        let r = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, file_off, flags) };
        if r < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        } else {
            Ok(r as usize)
        }
    }

    /// Raw pointer to `off..off+len` for handing to the kernel (io_uring, read/write).
    ///
    /// The range is checked; the pointer is valid while `self` lives. Dereferencing it is the
    /// caller's business (the kernel copies safely from memory the peer may change).
    pub fn raw_range(&self, off: usize, len: usize) -> *mut u8 {
        self.check(off, len, 1);
        // SAFETY: `off` is within the mapping (checked), so the result stays in bounds.
        unsafe { self.base.add(off) }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        if let Backing::Heap(words) = self._backing {
            // SAFETY: `words` came from `Box::into_raw` in `heap` and is freed only here, once;
            // no reference into the region outlives `self` (accessors borrow `self`).
            drop(unsafe { Box::from_raw(words) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // a real file and preadv2
    fn pread_into_reads_a_file_into_the_range() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("xt-pread-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"0123456789")
            .unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let m = SharedMem::heap(64);
        use std::os::fd::AsFd;
        assert_eq!(m.pread_into(8, 4, f.as_fd(), 3, 0), Ok(4));
        let mut out = [0u8; 4];
        m.copy_out(8, &mut out);
        assert_eq!(&out, b"3456");
        // Short at the end of the file, zero past it.
        assert_eq!(m.pread_into(0, 8, f.as_fd(), 6, 0), Ok(4));
        assert_eq!(m.pread_into(0, 8, f.as_fd(), 100, 0), Ok(0));
        assert_eq!(
            m.pread_into(0, 8, f.as_fd(), -5, 0),
            Err(libc::EINVAL),
            "a negative offset other than -1"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    #[should_panic]
    #[cfg_attr(miri, ignore)] // a real file
    fn pread_into_refuses_a_range_outside_the_mapping() {
        let f = std::fs::File::open("/dev/zero").unwrap();
        use std::os::fd::AsFd;
        let _ = SharedMem::heap(64).pread_into(60, 8, f.as_fd(), 0, 0);
    }

    #[test]
    fn copies_and_words() {
        let m = SharedMem::heap(256);
        m.copy_in(3, b"hello");
        let mut out = [0u8; 5];
        m.copy_out(3, &mut out);
        assert_eq!(&out, b"hello");
        m.u32_at(64).store(7, Ordering::Relaxed);
        assert_eq!(m.u32_at(64).load(Ordering::Relaxed), 7);
        let slot = [1, 2, 3, 4, 5, 6, 7, 8];
        m.write_slot(128, &slot);
        assert_eq!(m.read_slot(128), slot);
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn out_of_bounds_panics_instead_of_reading() {
        let m = SharedMem::heap(64);
        let mut out = [0u8; 8];
        m.copy_out(60, &mut out);
    }
}
