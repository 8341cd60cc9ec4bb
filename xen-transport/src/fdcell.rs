//! A descriptor that its owner may renumber while it is shared between threads.
//!
//! The application's shim keeps its session descriptors out of the program's way: when the
//! program `dup2`s onto the number of one of them, the shim first moves the descriptor to
//! another number and tells the session ([`crate::Session::renumber_fd`]), which stores the new
//! number here. Readers load the number atomically at each use.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Places a descriptor the transport just received or created (for example at a reserved
/// number) and returns the one to keep; see [`crate::ClientConfig::fd_hooks`].
pub type PlaceFd = fn(OwnedFd) -> OwnedFd;
/// Takes back a descriptor the transport no longer needs: called instead of closing it, so
/// the placer can unregister and close it its own way.
pub type ReleaseFd = fn(RawFd);

/// The hooks a client session applies to every descriptor it keeps.
#[derive(Clone, Copy, Debug)]
pub struct FdHooks {
    /// Applied to each kept descriptor when the session is set up.
    pub place: PlaceFd,
    /// Called with a kept descriptor's number instead of closing it.
    pub release: ReleaseFd,
}

/// An owned descriptor whose number can change (see the module documentation).
#[derive(Debug)]
pub struct FdCell {
    fd: AtomicI32,
    release: Option<ReleaseFd>,
}

impl FdCell {
    /// Owns `fd`, placed by `hooks` if given.
    pub fn new(fd: OwnedFd, hooks: Option<FdHooks>) -> FdCell {
        let fd = match hooks {
            Some(h) => (h.place)(fd),
            None => fd,
        };
        FdCell {
            fd: AtomicI32::new(fd.into_raw_fd()),
            release: hooks.map(|h| h.release),
        }
    }

    /// The current number.
    pub fn raw(&self) -> RawFd {
        self.fd.load(Ordering::Acquire)
    }

    /// The descriptor, borrowed.
    pub fn borrow(&self) -> BorrowedFd<'_> {
        // SAFETY: the cell owns an open descriptor for as long as it lives; a renumbering
        // moves it to another open number (the old one stays open until the caller that
        // renumbered replaces it).
        unsafe { BorrowedFd::borrow_raw(self.raw()) }
    }

    /// Replaces the number `old` by `new` (an open duplicate the caller made, or -1 to disown
    /// a descriptor that is not this process's any more); false when this cell does not hold
    /// `old`.
    pub fn renumber(&self, old: RawFd, new: RawFd) -> bool {
        self.fd
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl AsRawFd for FdCell {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl Drop for FdCell {
    fn drop(&mut self) {
        let fd = self.raw();
        if fd < 0 {
            return; // disowned (renumbered to -1): the descriptor is not this process's any more
        }
        match self.release {
            Some(r) => r(fd),
            // SAFETY: the cell owned this descriptor and nothing else refers to it any more.
            None => drop(unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // opens /dev/null and dups it (real syscalls; Miri's isolation refuses them)
    fn renumbering_moves_ownership() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let cell = FdCell::new(fd, None);
        let old = cell.raw();
        let new =
            nix::fcntl::fcntl(cell.borrow(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
        assert!(!cell.renumber(old + 1000, new));
        assert!(cell.renumber(old, new));
        assert_eq!(cell.raw(), new);
        nix::unistd::close(old).unwrap();
        drop(cell);
        assert!(nix::fcntl::fcntl(
            // SAFETY: only probing whether the number is open.
            unsafe { BorrowedFd::borrow_raw(new) },
            nix::fcntl::FcntlArg::F_GETFD
        )
        .is_err());
    }
}
