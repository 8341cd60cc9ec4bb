//! The shim's own stacks: routing runs on a per-thread stack of the shim's, never on the
//! program's.
//!
//! A system call takes no user stack; the shim's routing (paths of up to PATH_MAX folded and
//! copied, replies decoded) takes tens of KiB, more in a debug build. A thread started with a
//! small stack (`PTHREAD_STACK_MIN`, 64 KiB pools, musl-sized 128 KiB) or a handler running
//! on a `sigaltstack` that opened a file under the mount overflowed into its guard page. So
//! [`run`] moves onto a stack of the shim's (`psm::on_stack`), mapped for the thread at its
//! first routed call and unmapped by a thread-specific-data destructor when it exits.
//!
//! Each thread's mapping holds [`SLOTS`] stacks, each with a guard page below it. A call made
//! while already on one (a signal handler that interrupted the shim and runs on the same
//! stack) stays on it; a call from elsewhere while a slot is busy (a handler on an alternate
//! stack that interrupted the shim) takes the next free slot. With none free, or none mapped
//! (out of memory), the call runs where it is, as before.
//!
//! Async-signal-safe: per-thread state is const `Cell`s (static TLS); the mapping is made by
//! the kernel with signals blocked, and `pthread_setspecific` of a key below 32 is a store
//! into the thread's descriptor.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys;

/// One stack's size: room for the deepest routing of a debug build, and handlers nested on it.
pub const SLOT: usize = 1 << 20;
/// Stacks per thread: one, and one for a handler on an alternate stack that interrupts it.
pub const SLOTS: usize = 2;
const GUARD: usize = 4096;
const MAPPING: usize = SLOTS * (SLOT + GUARD);

thread_local! {
    /// The base of this thread's mapping (0: none yet).
    static BASE: Cell<usize> = const { Cell::new(0) };
    /// Bit i set while slot i is in use.
    static BUSY: Cell<u8> = const { Cell::new(0) };
}

/// The thread-specific-data key whose destructor unmaps an exiting thread's stacks
/// (`u32::MAX`: none, and threads keep the program's stack).
static KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// Creates the destructor's key (constructor only: `pthread_key_create` may allocate).
/// A key of 32 or more would make `pthread_setspecific` allocate: then none is used.
pub fn init() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; `release` is an extern "C" fn for the process's
    // life.
    if unsafe { libc::pthread_key_create(&mut key, Some(release)) } != 0 {
        return;
    }
    if key < 32 {
        KEY.store(key, Ordering::Release);
    } else {
        // SAFETY: the key was just created and is used nowhere.
        unsafe { libc::pthread_key_delete(key) };
    }
}

/// The destructor: unmaps the exiting thread's stacks (it runs on the thread's own stack).
extern "C" fn release(p: *mut libc::c_void) {
    let base = p as usize;
    if base != 0 && BASE.with(|b| b.get()) == base && BUSY.with(|b| b.get()) == 0 {
        BASE.with(|b| b.set(0));
        sys::sys(libc::SYS_munmap, &[base as u64, MAPPING as u64]);
    }
}

/// Maps this thread's stacks, with signals blocked so that a handler cannot map a second set
/// in between; `None` when the kernel refuses (the call then runs where it is).
fn map() -> Option<usize> {
    let key = KEY.load(Ordering::Acquire);
    if key == u32::MAX {
        return None;
    }
    let _masked = crate::lock::Masked::new();
    let mapped = BASE.with(|b| b.get());
    if mapped != 0 {
        return Some(mapped);
    }
    let p = sys::sys(
        libc::SYS_mmap,
        &[
            0,
            MAPPING as u64,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK)
                as u64,
            u64::MAX,
            0,
        ],
    );
    if p < 0 {
        return None;
    }
    let base = p as usize;
    for i in 0..SLOTS {
        let guard = base + i * (SLOT + GUARD);
        sys::sys(
            libc::SYS_mprotect,
            &[guard as u64, GUARD as u64, libc::PROT_NONE as u64],
        );
    }
    // SAFETY: `key` is a live key below 32 (set in `init`); the value is a plain address.
    if unsafe { libc::pthread_setspecific(key, base as *const libc::c_void) } != 0 {
        sys::sys(libc::SYS_munmap, &[base as u64, MAPPING as u64]);
        return None;
    }
    BASE.with(|b| b.set(base));
    Some(base)
}

/// Whether `sp` lies in one of the thread's stacks at `base`.
fn on_ours(base: usize, sp: usize) -> bool {
    base != 0 && sp >= base && sp < base + MAPPING
}

/// Whether `sp` lies in one of this thread's shim stacks.
pub fn on_shim_stack(sp: usize) -> bool {
    on_ours(BASE.with(|b| b.get()), sp)
}

/// Frees every slot of this thread: its calls were left for good (a signal handler
/// `longjmp`ed out of them), and it runs on none of them now.
pub fn abandon_slots() {
    BUSY.with(|b| b.set(0));
}

/// The first free slot in `busy`.
fn free_slot(busy: u8) -> Option<usize> {
    (0..SLOTS).find(|&i| busy & (1 << i) == 0)
}

/// Runs `f` on one of this thread's shim stacks (see the module's description).
pub fn run(f: impl FnOnce() -> i64) -> i64 {
    let sp = psm::stack_pointer() as usize;
    let base = BASE.with(|b| b.get());
    if on_ours(base, sp) {
        return f();
    }
    let base = match base {
        0 => match map() {
            Some(b) => b,
            None => return f(),
        },
        b => b,
    };
    let busy = BUSY.with(|b| b.get());
    let Some(i) = free_slot(busy) else {
        return f();
    };
    BUSY.with(|b| b.set(busy | 1 << i));
    let low = base + i * (SLOT + GUARD) + GUARD;
    // SAFETY: [low, low + SLOT) is a readable and writable mapping of this thread's, with a
    // PROT_NONE guard page just below it; both ends are page-aligned. Slot i is marked busy, so
    // nothing else runs on it until `f` returns: calls nested on it stay on it below `f`'s
    // frames, and calls from other stacks take another slot.
    let r = unsafe { psm::on_stack(low as *mut u8, SLOT, f) };
    BUSY.with(|b| b.set(b.get() & !(1 << i)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_lowest_first() {
        assert_eq!(free_slot(0), Some(0));
        assert_eq!(free_slot(0b01), Some(1));
        assert_eq!(free_slot(0b11), None);
        assert!(on_ours(4096, 4096));
        assert!(!on_ours(4096, 4095));
        assert!(!on_ours(4096, 4096 + MAPPING));
        assert!(!on_ours(0, 10));
    }

    #[test]
    fn deep_frames_run_on_the_shim_stack() {
        // Without a key the call runs where it is; with one, on a fresh 1 MiB stack that a
        // 512 KiB frame fits.
        init();
        fn deep(n: usize) -> i64 {
            // 64 KiB per level, kept live across the recursion.
            let mut buf = [0u8; 64 * 1024];
            buf[n] = 1;
            let sp = if n == 0 {
                psm::stack_pointer() as i64
            } else {
                deep(n - 1)
            };
            std::hint::black_box(&buf);
            sp
        }
        let handle = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                let sp = run(|| deep(8)) as usize;
                (sp, BASE.with(|b| b.get()))
            })
            .unwrap();
        let (sp, base) = handle.join().unwrap();
        assert!(on_ours(base, sp), "sp {sp:#x} base {base:#x}");
    }
}
