//! The system-call layer under shim-core: one trait, so that the code above it (the caller's
//! memory, and whatever else comes to run on it) is unit-tested against a mock instead of a
//! kernel, as aya's `sys` module does for its loader.

/// Makes raw system calls: the result, or `-errno`.
pub trait Kernel {
    /// System call `nr` with six arguments.
    fn syscall(&self, nr: i64, a: [u64; 6]) -> i64;
}

/// The real kernel, through libc's `syscall()`.
///
/// (The preload shim uses its own trampoline instead, which its seccomp filter lets through;
/// it implements [`Kernel`] over that.)
#[derive(Clone, Copy, Debug, Default)]
pub struct Real;

impl Kernel for Real {
    fn syscall(&self, nr: i64, a: [u64; 6]) -> i64 {
        // SAFETY: the caller chose the call and its arguments as for the system call itself;
        // `syscall` only forwards them.
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if r == -1 {
            // SAFETY: errno of this thread, read right after the call.
            -i64::from(unsafe { *libc::__errno_location() })
        } else {
            r
        }
    }
}

#[cfg(test)]
pub(crate) mod mock {
    //! A scripted kernel for unit tests.
    use std::cell::RefCell;

    /// Records every call and answers from a closure.
    pub struct Mock<F: Fn(i64, [u64; 6]) -> i64> {
        pub calls: RefCell<Vec<(i64, [u64; 6])>>,
        pub answer: F,
    }

    impl<F: Fn(i64, [u64; 6]) -> i64> super::Kernel for Mock<F> {
        fn syscall(&self, nr: i64, a: [u64; 6]) -> i64 {
            self.calls.borrow_mut().push((nr, a));
            (self.answer)(nr, a)
        }
    }
}
