//! The caller's memory, behind one trait: the preload shim reads its own address space, the
//! supervised mode reads a stopped child's with `process_vm_readv`/`writev`. Either way a bad
//! address is an `EFAULT` for the call, never a crash, and no safe function dereferences a
//! raw user address.

use crate::decode::UserPtr;
use crate::sys::Kernel;

/// Why a read of the caller's memory failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The address is not readable (or writable) in the caller: EFAULT.
    Fault,
    /// A string has no terminator within the limit: ENAMETOOLONG for a path.
    TooLong,
}

impl MemError {
    /// The errno the system call returns for it.
    pub fn errno(self) -> i32 {
        match self {
            MemError::Fault => libc::EFAULT,
            MemError::TooLong => libc::ENAMETOOLONG,
        }
    }
}

/// Reads and writes the memory of the process that made a call.
pub trait CallerMemory {
    /// Fills `out` from `addr`.
    fn read(&self, addr: UserPtr, out: &mut [u8]) -> Result<(), MemError>;
    /// Writes `data` at `addr`.
    fn write(&self, addr: UserPtr, data: &[u8]) -> Result<(), MemError>;

    /// Reads a NUL-terminated string of at most `out.len() - 1` bytes into `out` and returns
    /// its length (without the NUL). Reads in page-bounded pieces, so a string that ends just
    /// before an unmapped page is read whole.
    fn read_cstr(&self, addr: UserPtr, out: &mut [u8]) -> Result<usize, MemError> {
        if addr.is_null() {
            return Err(MemError::Fault);
        }
        let mut at = 0usize;
        while at < out.len() {
            let here = addr.0.wrapping_add(at as u64);
            let to_page = 4096 - (here % 4096) as usize;
            let n = to_page.min(out.len() - at);
            self.read(UserPtr(here), &mut out[at..at + n])?;
            if let Some(z) = out[at..at + n].iter().position(|&c| c == 0) {
                return Ok(at + z);
            }
            at += n;
        }
        Err(MemError::TooLong)
    }

    /// Reads a plain value of type `T` (any bit pattern valid) at `addr`.
    fn read_value<T: Copy + Default + AsBytes>(&self, addr: UserPtr) -> Result<T, MemError> {
        let mut v = T::default();
        self.read(addr, v.as_bytes_mut())?;
        Ok(v)
    }
}

/// Plain data that can be filled from bytes: integers and arrays of them.
pub trait AsBytes {
    /// The value's bytes, writable.
    fn as_bytes_mut(&mut self) -> &mut [u8];
}

macro_rules! as_bytes {
    ($($t:ty),*) => {$(
        impl AsBytes for $t {
            fn as_bytes_mut(&mut self) -> &mut [u8] {
                // SAFETY: an integer type: every bit pattern is valid and it has no padding.
                unsafe {
                    std::slice::from_raw_parts_mut(
                        self as *mut $t as *mut u8,
                        std::mem::size_of::<$t>(),
                    )
                }
            }
        }
    )*};
}
as_bytes!(u8, u16, u32, u64, i32, i64, [u64; 2], [u64; 4]);

/// Another process's memory (or this one's, by its own pid), through `process_vm_readv` and
/// `process_vm_writev`: the kernel checks every address, so a bad one is EFAULT.
pub struct ProcessMemory<K: Kernel> {
    pid: i32,
    kernel: K,
}

impl<K: Kernel> ProcessMemory<K> {
    /// The memory of process `pid`.
    pub fn new(pid: i32, kernel: K) -> Self {
        ProcessMemory { pid, kernel }
    }

    fn transfer(&self, nr: i64, addr: UserPtr, local: *mut u8, len: usize) -> Result<(), MemError> {
        if len == 0 {
            return Ok(());
        }
        let l = libc::iovec {
            iov_base: local.cast(),
            iov_len: len,
        };
        let r = libc::iovec {
            iov_base: addr.0 as *mut libc::c_void,
            iov_len: len,
        };
        let n = self.kernel.syscall(
            nr,
            [
                self.pid as u64,
                &l as *const libc::iovec as u64,
                1,
                &r as *const libc::iovec as u64,
                1,
                0,
            ],
        );
        if n == len as i64 {
            Ok(())
        } else {
            Err(MemError::Fault)
        }
    }
}

impl<K: Kernel> CallerMemory for ProcessMemory<K> {
    fn read(&self, addr: UserPtr, out: &mut [u8]) -> Result<(), MemError> {
        self.transfer(
            libc::SYS_process_vm_readv,
            addr,
            out.as_mut_ptr(),
            out.len(),
        )
    }

    fn write(&self, addr: UserPtr, data: &[u8]) -> Result<(), MemError> {
        // process_vm_writev only reads the local buffer.
        self.transfer(
            libc::SYS_process_vm_writev,
            addr,
            data.as_ptr() as *mut u8,
            data.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{mock::Mock, Real};

    fn me() -> ProcessMemory<Real> {
        ProcessMemory::new(std::process::id() as i32, Real)
    }

    #[test]
    fn reads_strings_and_reports_faults() {
        let s = b"/vt/some/path\0garbage";
        let mut out = [0u8; 64];
        let m = me();
        assert_eq!(m.read_cstr(UserPtr(s.as_ptr() as u64), &mut out), Ok(13));
        assert_eq!(&out[..13], b"/vt/some/path");
        assert_eq!(m.read_cstr(UserPtr(0), &mut out), Err(MemError::Fault));
        assert_eq!(m.read_cstr(UserPtr(8), &mut out), Err(MemError::Fault));
        let mut short = [0u8; 5];
        assert_eq!(
            m.read_cstr(UserPtr(s.as_ptr() as u64), &mut short),
            Err(MemError::TooLong)
        );
        let v: u64 = m
            .read_value(UserPtr(&0x1234_5678u64 as *const u64 as u64))
            .unwrap();
        assert_eq!(v, 0x1234_5678);
        let mut target = [0u8; 4];
        m.write(UserPtr(target.as_mut_ptr() as u64), b"abcd")
            .unwrap();
        assert_eq!(&target, b"abcd");
        assert_eq!(MemError::Fault.errno(), libc::EFAULT);
    }

    #[test]
    fn a_string_ending_before_an_unmapped_page_is_read_whole() {
        // Two pages; the second is made inaccessible; the string ends at the first's end.
        // SAFETY: a fresh anonymous mapping, unmapped at the end of the test.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as *mut u8;
            assert!(!p.is_null());
            libc::mprotect(p.add(4096).cast(), 4096, libc::PROT_NONE);
            let start = p.add(4096 - 6);
            std::ptr::copy_nonoverlapping(c"/a/b/".as_ptr().cast::<u8>(), start, 6);
            let mut out = [0u8; 4096];
            assert_eq!(me().read_cstr(UserPtr(start as u64), &mut out), Ok(5));
            // Without the terminator the read runs into the protected page: EFAULT.
            *start.add(5) = b'x';
            assert_eq!(
                me().read_cstr(UserPtr(start as u64), &mut out),
                Err(MemError::Fault)
            );
            libc::munmap(p.cast(), 8192);
        }
    }

    #[test]
    fn a_short_transfer_is_a_fault() {
        let k = Mock {
            calls: Default::default(),
            answer: |_, _| 3,
        };
        let m = ProcessMemory::new(42, k);
        let mut out = [0u8; 8];
        assert_eq!(m.read(UserPtr(0x1000), &mut out), Err(MemError::Fault));
        let calls = m.kernel.calls.borrow();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, libc::SYS_process_vm_readv);
        assert_eq!(calls[0].1[0], 42);
    }
}
