//! The `local` backend: a sealed memfd shared between processes, futex words for waking
//! clients, and one eventfd per server worker for waking the server.

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};

use super::{ClientBell, ServerBell};
use crate::fdcell::{FdCell, FdHooks};
use crate::mem::SharedMem;
use crate::{futex, TransportError};

/// Creates a zeroed, size-sealed memfd region of `len` bytes and maps it.
///
/// The seals stop the client from shrinking the file under the server, which would turn the
/// server's next access into SIGBUS.
pub fn create_region(len: usize) -> Result<(OwnedFd, SharedMem), TransportError> {
    let fd = memfd_create(
        c"virtuos-session",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| TransportError::Region(io::Error::from(e)))?;
    let file = File::from(fd);
    file.set_len(len as u64).map_err(TransportError::Region)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(|e| TransportError::Region(io::Error::from(e)))?;
    let mem = map(&file, len)?;
    Ok((OwnedFd::from(file), mem))
}

/// Maps a region received from a server, checking that the file really has `len` bytes and
/// cannot shrink.
pub fn map_region(fd: OwnedFd, len: usize) -> Result<SharedMem, TransportError> {
    let file = File::from(fd);
    let size = file.metadata().map_err(TransportError::Region)?.len();
    if size != len as u64 {
        return Err(TransportError::BadRegion(format!(
            "memfd is {size} bytes, the server announced {len}"
        )));
    }
    let seals = fcntl(&file, FcntlArg::F_GET_SEALS)
        .map_err(|e| TransportError::Region(io::Error::from(e)))?;
    if SealFlag::from_bits_truncate(seals) & SealFlag::F_SEAL_SHRINK != SealFlag::F_SEAL_SHRINK {
        return Err(TransportError::BadRegion(
            "region memfd is not sealed against shrinking".into(),
        ));
    }
    map(&file, len)
}

fn map(file: &File, len: usize) -> Result<SharedMem, TransportError> {
    let raw = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(TransportError::Region)?;
    Ok(SharedMem::from_mmap(raw))
}

/// Creates the server doorbells of a session: one non-blocking eventfd per worker.
pub fn create_doorbells(workers: usize) -> Result<Vec<OwnedFd>, TransportError> {
    (0..workers.max(1))
        .map(|_| {
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map(OwnedFd::from)
                .map_err(|e| TransportError::Region(io::Error::from(e)))
        })
        .collect()
}

/// Creates a session's readiness eventfd: semaphore mode, so each waiting client thread takes
/// one unit (see [`crate::events`]).
pub fn create_event_fd() -> Result<OwnedFd, TransportError> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_SEMAPHORE)
        .map(OwnedFd::from)
        .map_err(|e| TransportError::Region(io::Error::from(e)))
}

/// Doorbells of a local session, usable from either side.
pub struct LocalBell {
    doorbells: Vec<FdCell>,
}

impl LocalBell {
    /// Wraps the per-worker eventfds (at least one).
    pub fn new(doorbells: Vec<OwnedFd>) -> Self {
        Self::with_hooks(doorbells, None)
    }

    /// Wraps the per-worker eventfds (at least one), placing each with `hooks`.
    pub fn with_hooks(doorbells: Vec<OwnedFd>, hooks: Option<FdHooks>) -> Self {
        assert!(!doorbells.is_empty(), "a session has at least one doorbell");
        LocalBell {
            doorbells: doorbells
                .into_iter()
                .map(|f| FdCell::new(f, hooks))
                .collect(),
        }
    }

    /// The eventfds, for passing to a client.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.doorbells.iter().map(|f| f.borrow())
    }
}

impl ClientBell for LocalBell {
    fn notify_server(&self, channel: u32) -> io::Result<()> {
        let fd = self.doorbells[channel as usize % self.doorbells.len()].borrow();
        match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn wait_response(&self, word: &AtomicU32, seen: u32, timeout: Duration) -> io::Result<()> {
        futex::wait(word, seen, timeout)
    }

    fn renumber(&self, old: RawFd, new: RawFd) -> bool {
        self.doorbells.iter().any(|d| d.renumber(old, new))
    }

    fn kept_fds(&self, f: &mut dyn FnMut(RawFd)) {
        for d in &self.doorbells {
            f(d.raw());
        }
    }
}

impl ServerBell for LocalBell {
    fn notify_client(&self, _channel: u32, word: &AtomicU32) -> io::Result<()> {
        futex::wake(word, i32::MAX).map(|_| ())
    }

    fn doorbell_fd(&self, worker: usize) -> BorrowedFd<'_> {
        self.doorbells[worker % self.doorbells.len()].borrow()
    }

    fn drain(&self, worker: usize) {
        let mut buf = [0u8; 8];
        let fd = self.doorbells[worker % self.doorbells.len()].borrow();
        // Non-blocking: EAGAIN when nothing was pending, which is fine.
        let _ = nix::unistd::read(fd, &mut buf);
    }

    fn workers(&self) -> usize {
        self.doorbells.len()
    }
}
