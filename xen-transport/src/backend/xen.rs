//! The `xen` backend: region pages shared with grant tables, doorbells on event channels.
//!
//! The service domain (server) allocates the region with `/dev/xen/gntalloc`, granting every
//! page to the primary domain, and binds an unbound event channel for it; the primary domain
//! (client) maps those grants with `/dev/xen/gntdev` and binds the channel interdomain. The
//! rendezvous values (domain ids, grant references, port) travel through xenstore; that
//! bring-up, and running these paths for real, belong to the Xen issue. On a kernel without Xen
//! every entry point fails with [`TransportError::XenUnavailable`] naming the missing device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::{ClientBell, ServerBell};
use crate::layout::PAGE;
use crate::mem::SharedMem;
use crate::TransportError;

/// Grant-table allocation device (service domain side).
pub const GNTALLOC: &str = "/dev/xen/gntalloc";
/// Grant-table mapping device (primary domain side).
pub const GNTDEV: &str = "/dev/xen/gntdev";
/// Event-channel device (both sides).
pub const EVTCHN: &str = "/dev/xen/evtchn";

const fn ioc_none(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

#[repr(C)]
struct GntallocAllocGref<const N: usize> {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
    gref_ids: [u32; N],
}
const GNTALLOC_FLAG_WRITABLE: u16 = 1;

// Only the sizes of the gntdev structures are used (the ioctl number; `map_granted_region`
// lays out the variable-length form in a buffer).
#[allow(dead_code)]
#[repr(C)]
struct GntdevGrantRef {
    domid: u32,
    gref: u32,
}

#[allow(dead_code)]
#[repr(C)]
struct GntdevMapGrantRef<const N: usize> {
    count: u32,
    pad: u32,
    index: u64,
    refs: [GntdevGrantRef; N],
}

#[repr(C)]
struct EvtchnBindUnbound {
    remote_domain: u32,
}

#[repr(C)]
struct EvtchnBindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}

#[repr(C)]
struct EvtchnNotify {
    port: u32,
}

/// The kernel headers size these structures with a one-element array.
const IOCTL_GNTALLOC_ALLOC_GREF: libc::c_ulong =
    ioc_none(b'G', 5, std::mem::size_of::<GntallocAllocGref<1>>());
const IOCTL_GNTDEV_MAP_GRANT_REF: libc::c_ulong =
    ioc_none(b'G', 0, std::mem::size_of::<GntdevMapGrantRef<1>>());
const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong =
    ioc_none(b'E', 1, std::mem::size_of::<EvtchnBindInterdomain>());
const IOCTL_EVTCHN_BIND_UNBOUND_PORT: libc::c_ulong =
    ioc_none(b'E', 2, std::mem::size_of::<EvtchnBindUnbound>());
const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, std::mem::size_of::<EvtchnNotify>());

fn open_dev(path: &'static str) -> Result<File, TransportError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| TransportError::XenUnavailable { path, source })
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` points to a live `repr(C)` structure of the size encoded in `req`, which
    // the Xen driver reads and writes for the duration of the call only.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Grants `pages` fresh pages to domain `peer` (server side). Returns the mapping and the
/// grant references to publish in xenstore.
pub fn grant_region(peer: u16, pages: usize) -> Result<(SharedMem, Vec<u32>), TransportError> {
    let dev = open_dev(GNTALLOC)?;
    let mut refs = Vec::with_capacity(pages);
    let mut first_index = None;
    // One ioctl per page keeps the structure fixed-size; the driver hands out consecutive
    // offsets for consecutive allocations on the same file.
    for _ in 0..pages {
        let mut a = GntallocAllocGref::<1> {
            domid: peer,
            flags: GNTALLOC_FLAG_WRITABLE,
            count: 1,
            index: 0,
            gref_ids: [0],
        };
        ioctl(dev.as_fd(), IOCTL_GNTALLOC_ALLOC_GREF, &mut a).map_err(TransportError::Xen)?;
        first_index.get_or_insert(a.index);
        refs.push(a.gref_ids[0]);
    }
    let raw = memmap2::MmapOptions::new()
        .len(pages * PAGE)
        .offset(first_index.unwrap_or(0))
        .map_raw(&dev)
        .map_err(TransportError::Xen)?;
    Ok((SharedMem::from_mmap(raw), refs))
}

/// Maps the pages that domain `peer` granted with `refs` (client side).
///
/// All grants go into one `IOCTL_GNTDEV_MAP_GRANT_REF`: gntdev only mmaps a range that is
/// exactly one such map (a map per page gives `EINVAL` on the mmap of more than one page).
pub fn map_granted_region(peer: u16, refs: &[u32]) -> Result<SharedMem, TransportError> {
    let dev = open_dev(GNTDEV)?;
    if refs.is_empty() {
        return Err(TransportError::Xen(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    }
    // `struct ioctl_gntdev_map_grant_ref` with `count` entries: u32 count, u32 pad, u64 index,
    // then (u32 domid, u32 ref) pairs. A u64 buffer keeps `index` aligned.
    let mut buf = vec![0u64; 2 + refs.len()];
    buf[0] = refs.len() as u64; // count (low half), pad (high half) on little-endian x86-64
    for (slot, &gref) in buf[2..].iter_mut().zip(refs) {
        *slot = u64::from(peer) | (u64::from(gref) << 32);
    }
    // SAFETY: `buf` holds the header and `refs.len()` entries, the size the driver reads for
    // `count`; it writes back `index` only, within the buffer, during the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOCTL_GNTDEV_MAP_GRANT_REF,
            buf.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(TransportError::Xen(io::Error::last_os_error()));
    }
    let index = buf[1];
    let raw = memmap2::MmapOptions::new()
        .len(refs.len() * PAGE)
        .offset(index)
        .map_raw(&dev)
        .map_err(TransportError::Xen)?;
    Ok(SharedMem::from_mmap(raw))
}

/// One bound event channel, used as the session's doorbell in both directions.
pub struct XenBell {
    dev: File,
    port: u32,
}

impl XenBell {
    /// Server side: allocates a port that domain `peer` may bind to.
    pub fn bind_unbound(peer: u16) -> Result<Self, TransportError> {
        let dev = open_dev(EVTCHN)?;
        let mut b = EvtchnBindUnbound {
            remote_domain: u32::from(peer),
        };
        let port = ioctl(dev.as_fd(), IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut b)
            .map_err(TransportError::Xen)? as u32;
        Ok(XenBell { dev, port })
    }

    /// Client side: binds to `remote_port` of domain `peer`.
    pub fn bind_interdomain(peer: u16, remote_port: u32) -> Result<Self, TransportError> {
        let dev = open_dev(EVTCHN)?;
        let mut b = EvtchnBindInterdomain {
            remote_domain: u32::from(peer),
            remote_port,
        };
        let port = ioctl(dev.as_fd(), IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut b)
            .map_err(TransportError::Xen)? as u32;
        Ok(XenBell { dev, port })
    }

    /// The local port number (the server publishes it in xenstore).
    pub fn port(&self) -> u32 {
        self.port
    }

    fn notify(&self) -> io::Result<()> {
        let mut n = EvtchnNotify { port: self.port };
        ioctl(self.dev.as_fd(), IOCTL_EVTCHN_NOTIFY, &mut n).map(|_| ())
    }

    /// Reads fired ports and unmasks ours again.
    fn consume(&self) {
        let mut buf = [0u8; 4];
        // SAFETY: `buf` is a valid 4-byte buffer for the duration of the call.
        let n = unsafe { libc::read(self.dev.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        if n == 4 {
            // SAFETY: as above; writing a port number back unmasks it.
            unsafe { libc::write(self.dev.as_raw_fd(), buf.as_ptr().cast(), 4) };
        }
    }
}

impl ClientBell for XenBell {
    fn notify_server(&self, _channel: u32) -> io::Result<()> {
        self.notify()
    }

    fn wait_response(&self, word: &AtomicU32, seen: u32, timeout: Duration) -> io::Result<()> {
        if word.load(std::sync::atomic::Ordering::Acquire) != seen {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: self.dev.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            self.consume();
        }
        Ok(())
    }
}

impl ServerBell for XenBell {
    fn notify_client(&self, _channel: u32, _word: &AtomicU32) -> io::Result<()> {
        self.notify()
    }

    fn doorbell_fd(&self, _worker: usize) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    fn drain(&self, _worker: usize) {
        self.consume();
    }

    fn workers(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_linux_headers() {
        // Values computed from include/uapi/xen/{gntalloc,gntdev,evtchn}.h on x86-64.
        assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF, 0x0018_4705);
        assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF, 0x0018_4700);
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
        assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x0004_4502);
        assert_eq!(IOCTL_EVTCHN_NOTIFY, 0x0004_4504);
    }

    #[test]
    fn gntdev_map_layout_is_header_then_pairs() {
        // map_granted_region writes a 16-byte header and 8-byte (domid, ref) entries.
        assert_eq!(std::mem::size_of::<GntdevMapGrantRef<1>>(), 16 + 8);
        assert_eq!(std::mem::size_of::<GntdevMapGrantRef<3>>(), 16 + 3 * 8);
        assert_eq!(std::mem::offset_of!(GntdevMapGrantRef<1>, index), 8);
        assert_eq!(std::mem::offset_of!(GntdevMapGrantRef<1>, refs), 16);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // opens /dev/xen/* (real syscalls; Miri's isolation refuses them)
    fn missing_xen_is_a_clear_error() {
        if std::path::Path::new(EVTCHN).exists() {
            eprintln!("skipping: this machine has Xen devices");
            return;
        }
        let err = XenBell::bind_unbound(0).err().expect("no Xen here");
        let msg = err.to_string();
        assert!(msg.contains(EVTCHN) && msg.contains("Xen"), "{msg}");
    }
}
