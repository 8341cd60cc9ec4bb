//! Carrying remote fds and the routed cwd across `execve`.
//!
//! Before the kernel replaces the program, the shim asks each domain it uses for an exec token
//! (a snapshot of the session's open files or sockets) and writes the tokens, the routed cwd
//! and the fd table to `/dev/shm/virtuos-exec-<pid>`. The new image's shim reads and deletes that file,
//! redeems the token in its new session and keeps the entries whose placeholder survived the
//! exec (those without `O_CLOEXEC`). Everything here uses raw system calls and a static
//! buffer, because it may run in a SIGSYS handler or in a `vfork` child.

use std::sync::atomic::{AtomicBool, Ordering};

use abi::Opcode;

use crate::fdtable::{self, Remote};
use crate::paths::{PathBuf, PATH_MAX};
use crate::sys::{self, syscall6};
use crate::{cwd, remote};

const MAGIC: u64 = 0x5649_5254_4558_4543; // "VIRTEXEC"
const BUF: usize = 1 << 20;
static LOCK: AtomicBool = AtomicBool::new(false);
static mut STATE: [u8; BUF] = [0; BUF];

fn state_path(pid: i64, out: &mut [u8; 64]) -> usize {
    let prefix = b"/dev/shm/virtuos-exec-";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let mut digits = [0u8; 20];
    let mut d = 0;
    let mut v = pid.max(0) as u64;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        out[n] = digits[d];
        n += 1;
    }
    out[n] = 0;
    n
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> bool {
        let Some(end) = self
            .at
            .checked_add(b.len())
            .filter(|&e| e <= self.buf.len())
        else {
            return false;
        };
        self.buf[self.at..end].copy_from_slice(b);
        self.at = end;
        true
    }
}

/// Handles `execve`/`execveat`: saves the state if there is any, then executes for real.
pub fn execve(nr: i64, a: [u64; 6]) -> i64 {
    let cwd = cwd::get();
    if !fdtable::any() && cwd.is_none() {
        return syscall6(nr, a);
    }
    let mut tokens = [0u64; 2];
    for (i, d) in [&remote::STORAGE, &remote::NET].into_iter().enumerate() {
        if fdtable::any_of(d.net) || (!d.net && cwd.is_some()) {
            let mut args = [1, 0, 0, 0, 0];
            let (r, token) = d.call_aux(Opcode::PrepareClone, &mut args, &[], None);
            tokens[i] = if r < 0 { 0 } else { token };
        }
    }
    let pid = sys::sys(libc::SYS_getpid, &[]);
    let mut path = [0u8; 64];
    state_path(pid, &mut path);
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: STATE is only used here, under LOCK.
    let buf = unsafe { &mut *std::ptr::addr_of_mut!(STATE) };
    let mut w = Writer {
        buf: &mut buf[..],
        at: 0,
    };
    let mut ok = w.put(&MAGIC.to_ne_bytes())
        && w.put(&tokens[0].to_ne_bytes())
        && w.put(&tokens[1].to_ne_bytes());
    let c = cwd.as_ref().map(|c| c.as_bytes()).unwrap_or(b"");
    ok &= w.put(&(c.len() as u32).to_ne_bytes()) && w.put(c);
    let mut dir = [0u8; PATH_MAX];
    fdtable::for_each(|fd, rem| {
        let n = if rem.is_dir {
            fdtable::dir_path(rem.handle, &mut dir).unwrap_or(0)
        } else {
            0
        };
        ok &= w.put(&(fd as i32).to_ne_bytes())
            && w.put(&rem.handle.to_ne_bytes())
            && w.put(&[u8::from(rem.is_dir) | (u8::from(rem.net) << 1)])
            && w.put(&(n as u32).to_ne_bytes())
            && w.put(&dir[..n]);
    });
    let len = w.at;
    if ok {
        let fd = sys::sys(
            libc::SYS_openat,
            &[
                libc::AT_FDCWD as u64,
                path.as_ptr() as u64,
                (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64,
                0o600,
            ],
        );
        if fd >= 0 {
            sys::sys(
                libc::SYS_write,
                &[fd as u64, buf.as_ptr() as u64, len as u64],
            );
            sys::sys(libc::SYS_close, &[fd as u64]);
        }
    }
    LOCK.store(false, Ordering::Release);
    let r = syscall6(nr, a);
    // Still here: the exec failed. The old image keeps its state; drop the file.
    sys::sys(libc::SYS_unlink, &[path.as_ptr() as u64]);
    r
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

/// In a new image: restores what the previous image saved, if anything.
pub fn restore() {
    let pid = sys::sys(libc::SYS_getpid, &[]);
    let mut path = [0u8; 64];
    let n = state_path(pid, &mut path);
    let p = std::path::Path::new(std::str::from_utf8(&path[..n]).unwrap_or(""));
    let Ok(data) = std::fs::read(p) else { return };
    let _ = std::fs::remove_file(p);
    let mut b = &data[..];
    let u64_at = |b: &mut &[u8]| take(b, 8).map(|x| u64::from_ne_bytes(x.try_into().expect("8")));
    let u32_at = |b: &mut &[u8]| take(b, 4).map(|x| u32::from_ne_bytes(x.try_into().expect("4")));
    if u64_at(&mut b) != Some(MAGIC) {
        return;
    }
    let tokens = [u64_at(&mut b).unwrap_or(0), u64_at(&mut b).unwrap_or(0)];
    let mut adopted = [true; 2];
    for (i, d) in [&remote::STORAGE, &remote::NET].into_iter().enumerate() {
        if tokens[i] == 0 {
            continue;
        }
        let mut args = [tokens[i], 0, 0, 0, 0];
        let r = d.call_aux(Opcode::Adopt, &mut args, &[], None).0;
        if r < 0 {
            eprintln!(
                "virtuos: pid {pid}: the previous program's remote {} are lost (adopt failed: {})",
                if d.net { "sockets" } else { "files" },
                std::io::Error::from_raw_os_error(-r as i32)
            );
            adopted[i] = false;
        }
    }
    let clen = u32_at(&mut b).unwrap_or(0) as usize;
    if let Some(c) = take(&mut b, clen) {
        if !c.is_empty() {
            cwd::set(PathBuf::from_bytes(c));
        }
    }
    let mut dead = Vec::new();
    let mut alive = Vec::new();
    while let (Some(fd), Some(h)) = (u32_at(&mut b), u32_at(&mut b)) {
        let flags = take(&mut b, 1).map(|x| x[0]).unwrap_or(0);
        let (is_dir, net) = (flags & 1 != 0, flags & 2 != 0);
        let plen = u32_at(&mut b).unwrap_or(0) as usize;
        let dpath = take(&mut b, plen).unwrap_or(b"");
        let fd = fd as i32 as i64;
        if !adopted[usize::from(net)] {
            // The placeholder stays, naming nothing: calls on it fail with EIO.
            fdtable::set(
                fd,
                Remote {
                    handle: fdtable::STALE,
                    is_dir,
                    net,
                },
            );
            continue;
        }
        if sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_GETFD as u64]) >= 0 {
            if is_dir {
                fdtable::set_dir_path(h, dpath);
            }
            fdtable::set(
                fd,
                Remote {
                    handle: h,
                    is_dir,
                    net,
                },
            );
            alive.push((net, h));
        } else {
            dead.push((net, h));
        }
    }
    // Handles only close-on-exec placeholders referred to are closed now.
    for (net, h) in dead {
        if !alive.contains(&(net, h)) {
            let d = if net { &remote::NET } else { &remote::STORAGE };
            d.call_aux(Opcode::Close, &mut [h.into(), 0, 0, 0, 0], &[], None);
        }
    }
}
