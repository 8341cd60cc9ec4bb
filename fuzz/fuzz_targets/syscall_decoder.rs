//! shim-core's system-call decoder on arbitrary numbers and arguments: it never panics, every
//! path or fd it reports comes from the arguments, and numbers outside the routed table decode
//! to `Other` unchanged. Strings are then read through the caller-memory trait from a buffer
//! of arbitrary bytes: a bounded, terminated read or an error, never a read past the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shim_core::mem::{CallerMemory, MemError};
use shim_core::{decode, Syscall, UserPtr};

/// A caller whose memory is `bytes` at address 0x1000.
struct Buf<'a>(&'a [u8]);

impl CallerMemory for Buf<'_> {
    fn read(&self, addr: UserPtr, out: &mut [u8]) -> Result<(), MemError> {
        let start = addr.0.checked_sub(0x1000).ok_or(MemError::Fault)? as usize;
        let end = start.checked_add(out.len()).ok_or(MemError::Fault)?;
        out.copy_from_slice(self.0.get(start..end).ok_or(MemError::Fault)?);
        Ok(())
    }
    fn write(&self, _: UserPtr, _: &[u8]) -> Result<(), MemError> {
        Err(MemError::Fault)
    }
}

fuzz_target!(|input: (u16, [u64; 6], Vec<u8>)| {
    let (nr, args, bytes) = input;
    let nr = i64::from(nr % 600);
    let d = decode(nr, args);
    for (dirfd, path) in d.paths().into_iter().flatten() {
        assert!(args.contains(&path.0));
        assert!(dirfd == shim_core::decode::AT_FDCWD || args.iter().any(|&a| a as i32 == dirfd.0));
        // Read the path as the front ends do, from memory made of the fuzz bytes.
        let mem = Buf(&bytes);
        let mut out = [0u8; 256];
        let p = UserPtr(0x1000 + (path.0 % (bytes.len() as u64 + 1)));
        if let Ok(n) = mem.read_cstr(p, &mut out) {
            assert!(n < out.len());
            assert_eq!(out[n], 0);
        }
    }
    for f in d.fds().into_iter().flatten() {
        assert!(args.iter().any(|&a| a as i32 == f.0));
    }
    if shim_core::table::lookup(nr).is_none() {
        assert_eq!(d, Syscall::Other { nr, args });
    }
});
