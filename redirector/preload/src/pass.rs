//! Remote fds sent over AF_UNIX sockets with SCM_RIGHTS.
//!
//! A placeholder is a local file, so the kernel passes it like any fd; what it stands for
//! lives in this process's sessions. **Sending** ([`sendmsg`]): when the SCM_RIGHTS array
//! names placeholders, the shim parks their handles in each domain under a one-time pass
//! token ([`Opcode::PrepareClone`] of kind 2) and appends one more fd to the array: a sealed
//! memfd that says which positions are remote and under which token (the exec hand-over's
//! [`State`] record, its `fd` field being the position). **Receiving** ([`recvmsg`]): when
//! the last received fd is such a memfd, the shim imports the handles into its own sessions
//! ([`Opcode::Import`]: new numbers, same open files), records the received placeholders as
//! remote, closes the memfd and takes it out of the array, so the program sees exactly the fds
//! it was sent. A receiver that is not redirected sees one extra fd (a small memfd); a token
//! nobody imports is dropped by the server when it expires.
//!
//! The memfd is as untrusted as any message from another process: it is decoded with bounds,
//! positions outside the received array are ignored, and a token names only what its sender
//! parked (the same files it could have passed).

use abi::Opcode;

use crate::exec::{self, State};
use crate::fdtable::{self, Remote};
use crate::remote;
use crate::sys::{self, get, put, syscall6, user_buf};

const HDR: usize = abi::cmsg::HDR;
const SPACE_INT: usize = abi::cmsg::align(HDR + 4);

/// `CMSG_LEN`-style walk over a control buffer: (offset, level, type, cmsg_len) per message.
fn walk(ctl: &[u8], mut f: impl FnMut(usize, i32, i32, usize)) {
    let mut at = 0usize;
    while ctl.len().saturating_sub(at) >= HDR {
        let len = u64::from_ne_bytes(ctl[at..at + 8].try_into().expect("8")) as usize;
        let level = i32::from_ne_bytes(ctl[at + 8..at + 12].try_into().expect("4"));
        let kind = i32::from_ne_bytes(ctl[at + 12..at + 16].try_into().expect("4"));
        if len < HDR || len > ctl.len() - at {
            return;
        }
        f(at, level, kind, len);
        at += abi::cmsg::align(len);
    }
}

fn is_rights(level: i32, kind: i32) -> bool {
    level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS
}

/// sendmsg on a local socket: None when no remote fd travels (the call runs as it is).
pub fn sendmsg(fd: i64, a: [u64; 6]) -> Option<i64> {
    if !fdtable::any() || a[1] == 0 {
        return None;
    }
    let m: libc::msghdr = get(a[1]);
    if m.msg_control.is_null() || m.msg_controllen < HDR || m.msg_controllen > 1 << 16 {
        return None;
    }
    let ctl = user_buf(m.msg_control as u64, m.msg_controllen);
    // (position in the array of every SCM_RIGHTS fd, what it stands for)
    let mut remote_fds: Vec<(i32, Remote)> = Vec::new();
    let mut pos = 0i32;
    walk(ctl, |at, level, kind, len| {
        if is_rights(level, kind) {
            for c in ctl[at + HDR..at + len].chunks_exact(4) {
                let f = i32::from_ne_bytes(c.try_into().expect("4"));
                if let Some(r) = fdtable::get_any(i64::from(f)) {
                    remote_fds.push((pos, r));
                }
                pos += 1;
            }
        }
    });
    if remote_fds.is_empty() {
        return None;
    }
    let mut st = State {
        token: exec::random_token(),
        pid: sys::sys(libc::SYS_getpid, &[]),
        ..State::default()
    };
    for (i, d) in [&remote::STORAGE, &remote::NET].into_iter().enumerate() {
        let mine: Vec<u32> = remote_fds
            .iter()
            .filter(|(_, r)| r.net == d.net && r.handle != fdtable::STALE)
            .map(|(_, r)| fdtable::raw(r.handle))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let list: Vec<u8> = mine.iter().flat_map(|h| h.to_ne_bytes()).collect();
        let mut args = [2, mine.len() as u64, 0, 0, 0];
        let (r, token) = d.call_aux(Opcode::PrepareClone, &mut args, &[&list], None);
        if r >= 0 {
            st.tokens[i] = token;
        }
    }
    let mut dir = vec![0u8; crate::paths::PATH_MAX];
    for (p, r) in &remote_fds {
        let n = if r.is_dir {
            fdtable::dir_path(r.handle, &mut dir).unwrap_or(0)
        } else {
            0
        };
        st.entries.push(crate::exec_state::Entry {
            fd: *p,
            handle: fdtable::raw(r.handle),
            is_dir: r.is_dir,
            net: r.net,
            listening: r.listening,
            may_block: !r.net && remote::may_block(r.handle),
            dir: dir[..n].to_vec(),
        });
    }
    let Some(memfd) = exec::sealed_memfd_at_any(&st.encode(), c"virtuos-pass") else {
        exec::drop_tokens(st.tokens);
        return None;
    };
    // The program's control data, then one more SCM_RIGHTS message with the memfd: the
    // kernel joins the arrays, so the memfd arrives last.
    let mut out = ctl.to_vec();
    out.resize(abi::cmsg::align(out.len()), 0);
    abi::cmsg::encode(
        libc::SOL_SOCKET,
        libc::SCM_RIGHTS,
        &(memfd as i32).to_ne_bytes(),
        &mut out,
    );
    let mut m2 = m;
    m2.msg_control = out.as_mut_ptr().cast();
    m2.msg_controllen = out.len();
    let r = syscall6(
        libc::SYS_sendmsg,
        [fd as u64, &m2 as *const _ as u64, a[2], 0, 0, 0],
    );
    sys::sys(libc::SYS_close, &[memfd as u64]);
    if r < 0 {
        exec::drop_tokens(st.tokens);
    }
    Some(r)
}

/// recvmsg on a local socket: runs it, then takes in the remote fds a redirected sender
/// passed. None when the program gave no room for control data (the call runs as it is).
pub fn recvmsg(fd: i64, a: [u64; 6]) -> Option<i64> {
    if a[1] == 0 {
        return None;
    }
    let m: libc::msghdr = get(a[1]);
    if m.msg_control.is_null() || m.msg_controllen < SPACE_INT {
        return None;
    }
    let r = syscall6(libc::SYS_recvmsg, [fd as u64, a[1], a[2], 0, 0, 0]);
    if r >= 0 {
        take_in(a[1]);
    }
    Some(r)
}

/// The size of a `struct mmsghdr` and the offset of its `msg_len`.
const MMSG: u64 = std::mem::size_of::<libc::mmsghdr>() as u64;
const MMSG_LEN_AT: u64 = std::mem::size_of::<libc::msghdr>() as u64;

/// sendmmsg on a local socket while this process holds remote fds: each message as a
/// [`sendmsg`] (so each one's SCM_RIGHTS are translated), until one fails; the count sent, or
/// the first message's error, as Linux answers. None when no remote fd exists (the call runs
/// as it is).
pub fn sendmmsg(fd: i64, a: [u64; 6]) -> Option<i64> {
    if !fdtable::any() || a[1] == 0 {
        return None;
    }
    let vlen = a[2].min(libc::UIO_MAXIOV as u64);
    for i in 0..vlen {
        let hdr = a[1] + i * MMSG;
        let b = [fd as u64, hdr, a[3], 0, 0, 0];
        let r = sendmsg(fd, b).unwrap_or_else(|| syscall6(libc::SYS_sendmsg, b));
        if r < 0 {
            return Some(if i == 0 { r } else { i as i64 });
        }
        put::<u32>(hdr + MMSG_LEN_AT, r as u32);
    }
    Some(vlen as i64)
}

/// recvmmsg on a local socket: runs it, then takes in the remote fds passed in each message
/// received. None when no message has room for control data (the call runs as it is).
pub fn recvmmsg(fd: i64, a: [u64; 6]) -> Option<i64> {
    if a[1] == 0 {
        return None;
    }
    let vlen = a[2].min(libc::UIO_MAXIOV as u64);
    let room = (0..vlen).any(|i| {
        let m: libc::msghdr = get(a[1] + i * MMSG);
        !m.msg_control.is_null() && m.msg_controllen >= SPACE_INT
    });
    if !room {
        return None;
    }
    let r = syscall6(libc::SYS_recvmmsg, [fd as u64, a[1], a[2], a[3], a[4], 0]);
    for i in 0..r.max(0) as u64 {
        take_in(a[1] + i * MMSG);
    }
    Some(r)
}

/// After a message was received into the `msghdr` at `hdr`: when its last SCM_RIGHTS fd is a
/// pass memfd, imports what it names, records the placeholders as remote, and takes the memfd
/// out of the array (and of the program's sight).
fn take_in(hdr: u64) {
    let mut m: libc::msghdr = get(hdr);
    if m.msg_control.is_null() {
        return;
    }
    let len = m.msg_controllen.min(1 << 16);
    if len < SPACE_INT {
        return;
    }
    let ctl = sys::user_buf_mut(m.msg_control as u64, len);
    // The last SCM_RIGHTS message (the kernel writes one, last but for security labels).
    let mut last: Option<(usize, usize)> = None;
    walk(ctl, |at, level, kind, clen| {
        if is_rights(level, kind) && clen >= HDR + 4 {
            last = Some((at, clen));
        }
    });
    let Some((at, clen)) = last else {
        return;
    };
    let n = (clen - HDR) / 4;
    let fd_at = |i: usize| {
        let o = at + HDR + 4 * i;
        i64::from(i32::from_ne_bytes(ctl[o..o + 4].try_into().expect("4")))
    };
    let memfd = fd_at(n - 1);
    let Some(st) = exec::read_sealed(memfd)
        .as_deref()
        .and_then(State::decode)
        .filter(|_| is_pass_memfd(memfd))
    else {
        return;
    };
    let received: Vec<i64> = (0..n - 1).map(fd_at).collect();
    import(&st, &received);
    sys::sys(libc::SYS_close, &[memfd as u64]);
    // Out of the program's sight: the array is one fd shorter.
    let new_len = clen - 4;
    ctl[at..at + 8].copy_from_slice(&(new_len as u64).to_ne_bytes());
    let tail = at + abi::cmsg::align(clen);
    if tail >= m.msg_controllen {
        m.msg_controllen = (at + abi::cmsg::align(new_len)).min(m.msg_controllen);
        put(hdr, m);
    }
}

/// Whether `fd` is a memfd this module made (its name), not just any sealed file.
fn is_pass_memfd(fd: i64) -> bool {
    let mut path = [0u8; 64];
    let mut link = [0u8; 64];
    let p = {
        use std::io::Write;
        let mut w = &mut path[..];
        let _ = write!(w, "/proc/self/fd/{fd}\0");
        path.as_ptr()
    };
    let n = sys::sys(
        libc::SYS_readlinkat,
        &[
            libc::AT_FDCWD as u64,
            p as u64,
            link.as_mut_ptr() as u64,
            link.len() as u64,
        ],
    );
    n > 0 && link[..n as usize].starts_with(b"/memfd:virtuos-pass")
}

/// Imports the passed handles and records the received placeholders `received` as remote.
fn import(st: &State, received: &[i64]) {
    for (i, d) in [&remote::STORAGE, &remote::NET].into_iter().enumerate() {
        let t = st.tokens[i];
        if t == 0 || !d.configured() {
            continue;
        }
        let mut pairs = [0u8; 8 * 253];
        let (bytes, _) = d.call_aux(Opcode::Import, &mut [t, 0, 0, 0, 0], &[], Some(&mut pairs));
        if bytes < 0 {
            crate::diag!(
                "virtuos: pid {}: remote {} received over a Unix socket are lost (import failed: errno {})",
                crate::diag::pid(),
                if d.net { "sockets" } else { "files" },
                -bytes
            );
            continue;
        }
        let g = fdtable::generation(d.net);
        let new_of = |old: u32| {
            pairs[..(bytes as usize).min(pairs.len())]
                .chunks_exact(8)
                .find(|p| u32::from_ne_bytes(p[..4].try_into().expect("4")) == old)
                .map(|p| u32::from_ne_bytes(p[4..].try_into().expect("4")))
        };
        for e in &st.entries {
            let (pos, h, is_dir, net, listening, dpath) =
                (&e.fd, &e.handle, &e.is_dir, &e.net, &e.listening, &e.dir);
            if *net != d.net {
                continue;
            }
            let (Some(&fd), Some(new)) = (
                usize::try_from(*pos).ok().and_then(|p| received.get(p)),
                new_of(*h),
            ) else {
                continue;
            };
            let tagged = fdtable::tag(new, g);
            if *is_dir {
                fdtable::set_dir_path(tagged, dpath);
            }
            if e.may_block {
                remote::mark_may_block(tagged);
            }
            if let Some(old) = fdtable::set(
                fd,
                Remote {
                    handle: tagged,
                    is_dir: *is_dir,
                    net: *net,
                    listening: *listening,
                },
            ) {
                // The number was remote before (cannot normally happen: the kernel gave a
                // free one); drop that reference.
                if fdtable::release(old) {
                    let _ = remote::close_handle(old);
                }
            }
            if *net {
                crate::net::learn_state(tagged);
            }
        }
    }
}
