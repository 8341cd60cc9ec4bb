//! Carrying remote fds and the routed cwd across `execve`.
//!
//! Before the kernel replaces the program, the shim asks each domain it uses for an exec token
//! (a snapshot of exactly the handles that survive the exec) and writes the tokens, the routed
//! cwd and the surviving fds into a sealed memfd that the exec inherits, at a number from the
//! shim's reserved range ([`crate::reserve`]). The new image finds it through one environment
//! entry, `VIRTUOS_EXEC=<fd>:<token>`, added to the exec's environment (and removed again by
//! the new image's constructor, so its own children never see it).
//!
//! Nothing here touches a shared directory: no path exists that another user could plant,
//! link or fill. The new image adopts the state only if all of these hold, else it starts
//! clean and leaves the fd alone:
//! * the fd is a memfd sealed against every change, owned by the process's own uid;
//! * its contents start with the magic and carry the same 128-bit random token as the
//!   environment entry (a stale or copied environment names nothing);
//! * it was written by this very process before its exec (the pid inside matches `getpid`).
//!
//! A child sharing its parent's memory (`vfork`, `posix_spawn`) decides what survives from
//! its own kernel fd table ([`crate::proc`]), never from the parent's entries alone, and
//! leaves the parent's state untouched.
//!
//! Everything here uses raw system calls and the shim's own allocator (lock-free), because it
//! may run in a SIGSYS handler or in a `vfork` child.

use std::sync::atomic::{AtomicI32, Ordering};

use abi::Opcode;

use crate::dispatch::ExecAt;
use crate::fdtable::{self, Remote};
use crate::paths::{PathBuf, PATH_MAX};
use crate::sys;
use crate::{config, cwd, proc, remote, reserve};

pub use crate::exec_state::State;
pub use crate::exec_state::ENV_EXEC;
use crate::exec_state::{hex, unhex, Entry as HandedOver};
pub(crate) const SEALS: i32 =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// One fd carried across exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Carried {
    fd: i64,
    r: Remote,
}

/// The remote fds that survive this exec, as this process's kernel sees them.
fn carried() -> Vec<Carried> {
    let mut out = Vec::new();
    let shared = proc::shared_child();
    if !fdtable::any() && !shared {
        return out;
    }
    if !shared {
        fdtable::for_each(|fd, r| out.push(Carried { fd, r }));
        return out;
    }
    // A child sharing its parent's memory: the table is the parent's. Match each of the
    // child's own fds against the parent's remote placeholders by the file they refer to.
    let mut parents: Vec<((u64, u64), Remote)> = Vec::new();
    fdtable::for_each(|fd, r| {
        if let Some(id) = proc::identity_in_owner(fd) {
            parents.push((id, r));
        }
    });
    proc::child_opens(|id, r| parents.push((id, r)));
    if parents.is_empty() {
        return out;
    }
    each_open_fd(|fd| {
        if let Some(id) = proc::identity_fd(fd) {
            if let Some(&(_, r)) = parents.iter().find(|(p, _)| *p == id) {
                out.push(Carried { fd, r });
            }
        }
    });
    out
}

/// Calls `f` with every fd open in this process (from `/proc/self/fd`), except the shim's.
fn each_open_fd(mut f: impl FnMut(i64)) {
    let dir = sys::sys(
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as u64,
            c"/proc/self/fd".as_ptr() as u64,
            (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        ],
    );
    if dir < 0 {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        let n = sys::sys(
            libc::SYS_getdents64,
            &[dir as u64, buf.as_mut_ptr() as u64, buf.len() as u64],
        );
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[at + 19..(at + reclen).min(n as usize)];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if let Some(fd) = std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                if fd != dir && !reserve::is_owned(fd) {
                    f(fd);
                }
            }
            at += reclen;
        }
    }
    sys::sys(libc::SYS_close, &[dir as u64]);
}

pub(crate) fn random_token() -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut got = 0;
    while got < t.len() {
        let r = sys::sys(
            libc::SYS_getrandom,
            &[t[got..].as_mut_ptr() as u64, (t.len() - got) as u64, 0],
        );
        if r <= 0 {
            break;
        }
        got += r as usize;
    }
    t
}

/// Writes `data` into a new sealed memfd at a reserved number that survives exec.
fn sealed_memfd(data: &[u8]) -> Option<i64> {
    let m = sealed_memfd_at_any(data, c"virtuos-exec")?;
    // Not close-on-exec: the new image inherits it. Registered, so the program cannot close it.
    Some(i64::from(reserve::place_raw(m as i32, false)))
}

/// Writes `data` into a new close-on-exec memfd named `name` (at the lowest free number),
/// sealed against any change.
pub(crate) fn sealed_memfd_at_any(data: &[u8], name: &std::ffi::CStr) -> Option<i64> {
    let m = sys::sys(
        libc::SYS_memfd_create,
        &[
            name.as_ptr() as u64,
            libc::MFD_ALLOW_SEALING as u64 | libc::MFD_CLOEXEC as u64,
        ],
    );
    if m < 0 {
        return None;
    }
    let mut done = 0usize;
    while done < data.len() {
        let w = sys::sys(
            libc::SYS_pwrite64,
            &[
                m as u64,
                data[done..].as_ptr() as u64,
                (data.len() - done) as u64,
                done as u64,
            ],
        );
        if w <= 0 {
            sys::sys(libc::SYS_close, &[m as u64]);
            return None;
        }
        done += w as usize;
    }
    if sys::sys(
        libc::SYS_fcntl,
        &[m as u64, libc::F_ADD_SEALS as u64, SEALS as u64],
    ) < 0
    {
        sys::sys(libc::SYS_close, &[m as u64]);
        return None;
    }
    Some(m)
}

/// The contents of `fd` if it is a memfd sealed as [`sealed_memfd_at_any`] seals them, a
/// regular file of at most 16 MiB; None otherwise.
pub(crate) fn read_sealed(fd: i64) -> Option<Vec<u8>> {
    let seals = sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_GET_SEALS as u64]);
    if seals < 0 || seals as i32 & SEALS != SEALS {
        return None;
    }
    // SAFETY: a zeroed stat is a valid output buffer.
    let mut stt: libc::stat = unsafe { std::mem::zeroed() };
    if sys::sys(libc::SYS_fstat, &[fd as u64, &mut stt as *mut _ as u64]) < 0
        || stt.st_mode & libc::S_IFMT != libc::S_IFREG
        || stt.st_size as u64 > 16 << 20
    {
        return None;
    }
    let mut data = vec![0u8; stt.st_size as usize];
    let n = sys::sys(
        libc::SYS_pread64,
        &[fd as u64, data.as_mut_ptr() as u64, data.len() as u64, 0],
    );
    (n == data.len() as i64).then_some(data)
}

/// The fd of a pending exec state (so a program's `dup2` onto it moves it).
static PENDING: AtomicI32 = AtomicI32::new(-1);

/// Tells this module that the shim moved its descriptor `old` to `new`.
pub fn renumber(old: i32, new: i32) -> bool {
    PENDING
        .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// The environment entry that names a prepared state: `VIRTUOS_EXEC=<fd>:<token>\0`.
struct Entry {
    buf: [u8; 64],
    fd: i32,
    /// The exec tokens parked in each domain (storage, network; 0: none).
    tokens: [u64; 2],
}

/// True when the local file at `path` (NUL-terminated) is an ELF executable without a
/// program interpreter: statically linked, so the shim cannot enter it.
fn is_static_elf(path: u64) -> bool {
    let fd = sys::sys(
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as u64,
            path,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        ],
    );
    if fd < 0 {
        return false;
    }
    let mut h = [0u8; 64];
    let n = sys::sys(
        libc::SYS_pread64,
        &[fd as u64, h.as_mut_ptr() as u64, 64, 0],
    );
    let mut is_static = false;
    if n == 64 && h.starts_with(b"\x7fELF") && h[4] == 2 {
        let phoff = u64::from_le_bytes(h[32..40].try_into().unwrap_or([0; 8]));
        let phentsize = u16::from_le_bytes([h[54], h[55]]) as u64;
        let phnum = u16::from_le_bytes([h[56], h[57]]) as u64;
        if phentsize >= 56 && phnum <= 64 {
            is_static = true;
            for i in 0..phnum {
                let mut t = [0u8; 4];
                let r = sys::sys(
                    libc::SYS_pread64,
                    &[fd as u64, t.as_mut_ptr() as u64, 4, phoff + i * phentsize],
                );
                if r != 4 || u32::from_le_bytes(t) == libc::PT_INTERP {
                    is_static = false;
                    break;
                }
            }
        }
    }
    sys::sys(libc::SYS_close, &[fd as u64]);
    is_static
}

/// A static program this one execs (the shim cannot enter it) runs under the supervised
/// mode instead: `virtuos-redirect run [--storage S --mount M] [--net N] -- PROG ARGS...`, with the routed
/// cwd handed over in `VIRTUOS_SUPERVISE_CWD` and without `LD_PRELOAD` (the supervisor itself
/// must not be redirected), and with the exec hand-over (`VIRTUOS_EXEC`) that the supervisor
/// adopts: the remote fds that survive the exec follow the program.
fn exec_supervised(a: [u64; 6]) -> Option<i64> {
    let cfg = config::get();
    let redirect = cfg.redirect.as_ref()?;
    let storage = cfg.storage_sock.as_ref().zip(cfg.mount.as_ref());
    if storage.is_none() && cfg.net_sock.is_none() {
        return None;
    }
    if a[0] == 0 || !is_static_elf(a[0]) {
        return None;
    }
    let z = |p: &PathBuf| {
        let mut v = p.as_bytes().to_vec();
        v.push(0);
        v
    };
    let redirect = z(redirect);
    let storage = storage.map(|(s, m)| (z(s), z(m)));
    let net = cfg.net_sock.as_ref().map(z);
    let mut argv: Vec<*const libc::c_char> = vec![redirect.as_ptr().cast(), c"run".as_ptr()];
    if let Some((sock, mount)) = &storage {
        argv.extend([
            c"--storage".as_ptr(),
            sock.as_ptr().cast(),
            c"--mount".as_ptr(),
            mount.as_ptr().cast(),
        ]);
    }
    if let Some(sock) = &net {
        argv.extend([c"--net".as_ptr(), sock.as_ptr().cast()]);
    }
    argv.extend([c"--".as_ptr(), a[0] as *const libc::c_char]);
    let old = a[1] as *const *const libc::c_char;
    if !old.is_null() {
        let mut i = 1usize;
        loop {
            // SAFETY: the program's argv for execve: a NULL-terminated array of strings.
            let p = unsafe { *old.add(i.min(1 << 20)) };
            if p.is_null() || i >= 1 << 20 {
                break;
            }
            argv.push(p);
            i += 1;
        }
    }
    argv.push(std::ptr::null());
    let mut cwd_entry = Vec::new();
    if let Some(c) = cwd::get() {
        cwd_entry.extend_from_slice(b"VIRTUOS_SUPERVISE_CWD=");
        cwd_entry.extend_from_slice(c.as_bytes());
        cwd_entry.push(0);
    }
    let b = [
        redirect.as_ptr() as u64,
        argv.as_ptr() as u64,
        a[2],
        0,
        0,
        0,
    ];
    // The remote fds that survive the exec go to the supervisor, which adopts them for the
    // static program (the same hand-over a dynamic image would take).
    let entry = prepare();
    let mut add: Vec<*const libc::c_char> = Vec::new();
    if !cwd_entry.is_empty() {
        add.push(cwd_entry.as_ptr().cast());
    }
    if let Some(e) = &entry {
        add.push(e.buf.as_ptr().cast());
    }
    let r = exec_with_env_edited(libc::SYS_execve, b, 2, &add, b"LD_PRELOAD");
    if let Some(e) = entry {
        abandon(e);
    }
    Some(r)
}

/// Handles `execve`/`execveat`: saves the state if there is any, then executes for real.
///
/// The exec may come from a `posix_spawn` child running on a 32 KiB stack inside the SIGSYS
/// handler, so the heavy part ([`prepare`]) runs in a frame of its own that has returned (and
/// freed everything it allocated) before the exec itself.
pub fn execve(nr: i64, a: [u64; 6]) -> i64 {
    if nr == libc::SYS_execve {
        if let Some(r) = sys::on_big_stack(256 << 10, || exec_supervised(a)) {
            return r;
        }
    }
    // A program that lives in the storage domain: the kernel cannot open it, so its image
    // is copied into a memfd and executed from there (as fexecve does).
    // The preparation may resolve paths and build the hand-over: on a stack of its own, as
    // the exec may come from a posix_spawn child's 32 KiB stack.
    let mut local = [0u8; crate::paths::PATH_MAX + 1];
    let prepared = sys::on_big_stack(256 << 10, || remote_image(nr, a, &mut local));
    let (nr, a, image) = match prepared {
        Ok(Some((-1, b))) => (nr, b, None),
        Ok(Some((fd, b))) => (libc::SYS_execveat, b, Some(fd)),
        Ok(None) => (nr, a, None),
        Err(r) => return r,
    };
    let r = execve_local(nr, a);
    if let Some(fd) = image {
        reserve::release(fd);
    }
    r
}

/// Copies the program `a` names into a memfd when it lives in the storage domain: the
/// arguments of an `execveat(memfd, "", argv, envp, AT_EMPTY_PATH)`, and the memfd. Scripts
/// (`#!`) keep the memfd open across the exec, at a reserved number, for their interpreter
/// to read as `/dev/fd/N`; binaries get a close-on-exec one. A program that a symlink in the
/// export names outside it: the arguments with its local path (written into `local`), and
/// -1 for the memfd.
fn remote_image(
    nr: i64,
    a: [u64; 6],
    local: &mut [u8; crate::paths::PATH_MAX + 1],
) -> Result<Option<(i32, [u64; 6])>, i64> {
    let (dirfd, p, argv, envp, flags) = if nr == libc::SYS_execveat {
        (a[0] as i32 as i64, a[1], a[2], a[3], a[4])
    } else {
        (libc::AT_FDCWD as i64, a[0], a[1], a[2], 0)
    };
    if p == 0 || config::get().mount.is_none() {
        return Ok(None);
    }
    // Search and execute permission are checked on the way, as the kernel checks them,
    // under the caller's credentials in the domain.
    let rp = match crate::dispatch::exec_target(dirfd, p)? {
        ExecAt::Remote(rp) => rp,
        ExecAt::Local => return Ok(None),
        ExecAt::LocalAt(lp) => {
            // A symlink in the export led out of it: the kernel executes the program it
            // names, under that path.
            let n = lp.as_bytes().len();
            local[..n].copy_from_slice(lp.as_bytes());
            local[n] = 0;
            let mut b = a;
            b[if nr == libc::SYS_execveat { 1 } else { 0 }] = local.as_ptr() as u64;
            return Ok(Some((-1, b)));
        }
    };
    let mut args = [(libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0];
    let (h, mode) = remote::call_aux(Opcode::OpenAt, &mut args, &[rp.as_bytes()], None);
    if h < 0 {
        return Err(h);
    }
    let close = |h: i64| remote::call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
    if mode as u32 & libc::S_IFMT != libc::S_IFREG {
        close(h);
        return Err(-(libc::EACCES as i64));
    }
    let m = sys::sys(
        libc::SYS_memfd_create,
        &[c"virtuos-exec-image".as_ptr() as u64, 0],
    );
    if m < 0 {
        close(h);
        return Err(m);
    }
    let mut buf = vec![0u8; remote::window().clamp(4096, 1 << 20)];
    let mut off = 0u64;
    let mut script = false;
    loop {
        let n = remote::call(Opcode::PRead, [h as u64, off, 0, 0, 0], &[], Some(&mut buf));
        if n < 0 {
            close(h);
            sys::sys(libc::SYS_close, &[m as u64]);
            return Err(n);
        }
        if n == 0 {
            break;
        }
        if off == 0 {
            script = buf.starts_with(b"#!");
        }
        let w = sys::sys(
            libc::SYS_pwrite64,
            &[m as u64, buf.as_ptr() as u64, n as u64, off],
        );
        if w != n {
            close(h);
            sys::sys(libc::SYS_close, &[m as u64]);
            return Err(if w < 0 { w } else { -(libc::EIO as i64) });
        }
        off += n as u64;
    }
    close(h);
    drop(buf);
    // Binaries: close-on-exec; scripts: inherited, for the interpreter.
    let fd = reserve::place_raw(m as i32, !script);
    let _ = flags;
    Ok(Some((
        fd,
        [
            fd as u64,
            c"".as_ptr() as u64,
            argv,
            envp,
            libc::AT_EMPTY_PATH as u64,
            0,
        ],
    )))
}

fn execve_local(nr: i64, a: [u64; 6]) -> i64 {
    let env_at = if nr == libc::SYS_execveat { 3 } else { 2 };
    let entry = sys::on_big_stack(256 << 10, prepare);
    let r = exec_with_env(nr, a, env_at, entry.as_ref().map(|e| &e.buf[..]));
    if let Some(e) = entry {
        abandon(e);
    }
    r
}

/// Still here after an exec: it failed. The old image keeps its state; the hand-over `e`
/// prepared for the new one (its memfd and its tokens) is dropped.
fn abandon(e: Entry) {
    let cur = PENDING.swap(-1, Ordering::AcqRel);
    reserve::release(if cur >= 0 { cur } else { e.fd });
    drop_tokens(e.tokens);
}

/// Gives up clone tokens (storage, network) that no program will redeem: the servers would
/// hold their snapshots (a listener stays bound) until the tokens expired.
pub(crate) fn drop_tokens(tokens: [u64; 2]) {
    for (d, t) in [&remote::STORAGE, &remote::NET].into_iter().zip(tokens) {
        if t != 0 {
            d.call_aux(Opcode::DropClone, &mut [t, 0, 0, 0, 0], &[], None);
        }
    }
}

/// Snapshots what survives the exec into a sealed memfd; the environment entry naming it, or
/// None when nothing needs carrying (or it could not be saved: the new image starts clean).
#[inline(never)]
fn prepare() -> Option<Entry> {
    let shared = proc::shared_child();
    // In a shared child: its own cwd if it changed directory, else the parent's. (What such a
    // child keeps in the owner's memory is swept by the owner afterwards: `proc::sweep`.)
    let cwd: Vec<u8> = cwd::get()
        .map(|c| c.as_bytes().to_vec())
        .unwrap_or_default();

    let carried = carried();
    if carried.is_empty() && cwd.is_empty() {
        return None;
    }
    let mut st = State {
        token: random_token(),
        pid: sys::sys(libc::SYS_getpid, &[]),
        cwd,
        ..State::default()
    };
    for (i, d) in [&remote::STORAGE, &remote::NET].into_iter().enumerate() {
        let mine: Vec<u32> = carried
            .iter()
            .filter(|c| c.r.net == d.net && c.r.handle != fdtable::STALE)
            .map(|c| fdtable::raw(c.r.handle))
            .collect();
        if mine.is_empty() && (d.net || st.cwd.is_empty()) {
            continue;
        }
        // An empty list (only the cwd needs the session) names a handle that cannot exist,
        // rather than 0, which would mean every handle.
        let list: Vec<u8> = if mine.is_empty() {
            u32::MAX.to_ne_bytes().to_vec()
        } else {
            mine.iter().flat_map(|h| h.to_ne_bytes()).collect()
        };
        let mut args = [1, (list.len() / 4) as u64, 0, 0, 0];
        let (r, token) = d.call_aux(Opcode::PrepareClone, &mut args, &[&list], None);
        st.tokens[i] = if r < 0 { 0 } else { token };
    }

    let mut dir = vec![0u8; PATH_MAX];
    for c in &carried {
        let n = if c.r.is_dir {
            fdtable::dir_path(c.r.handle, &mut dir).unwrap_or(0)
        } else {
            0
        };
        st.entries.push(HandedOver {
            fd: c.fd as i32,
            handle: c.r.handle,
            is_dir: c.r.is_dir,
            net: c.r.net,
            listening: c.r.listening,
            may_block: !c.r.net && remote::may_block(c.r.handle),
            dir: dir[..n].to_vec(),
        });
    }
    let Some(fd) = sealed_memfd(&st.encode()) else {
        crate::diag!(
            "virtuos: pid {}: cannot hand the remote files over to the new program (memfd); it starts without them",
            st.pid
        );
        drop_tokens(st.tokens);
        return None;
    };
    if !shared {
        PENDING.store(fd as i32, Ordering::Release);
    }
    let mut e = Entry {
        buf: [0; 64],
        fd: fd as i32,
        tokens: st.tokens,
    };
    let mut w = crate::diag::Line::default();
    {
        use std::fmt::Write;
        let _ = write!(w, "{ENV_EXEC}={fd}:");
    }
    let mut tok = Vec::with_capacity(32);
    hex(&st.token, &mut tok);
    let head = w.as_bytes();
    e.buf[..head.len()].copy_from_slice(head);
    e.buf[head.len()..head.len() + 32].copy_from_slice(&tok);
    Some(e)
}

/// Executes with the program's environment minus any `VIRTUOS_EXEC` entry, plus `extra` (a
/// NUL-terminated entry), and with the redirection put back where the program dropped it: a
/// program that sanitises the environment of what it execs (nginx's binary upgrade keeps only
/// `NGINX=`, `env -i`, daemons) must still start redirected, or the remote fds it inherits
/// mean nothing to it. Missing `VIRTUOS_*` settings and `LD_PRELOAD` come back as this process
/// got them; an `LD_PRELOAD` of the program's own that lacks the shim gets it in front. The
/// new array lives on the stack when it is small: in a `vfork` child, heap memory would be
/// the parent's, lost to it once the exec succeeds.
fn exec_with_env(nr: i64, a: [u64; 6], env_at: usize, extra: Option<&[u8]>) -> i64 {
    let c = config::get();
    let envp = a[env_at] as *const *const libc::c_char;
    let name_of = |s: &[u8]| -> usize { s.iter().position(|&b| b == b'=').unwrap_or(s.len()) };
    let mut present = [false; config::MAX_CARRIED];
    let mut preload: Option<&[u8]> = None;
    if !envp.is_null() {
        let mut i = 0;
        loop {
            // SAFETY: the program passed envp to execve: a NULL-terminated array of
            // NUL-terminated strings (the kernel reads it the same way).
            let p = unsafe { *envp.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: as above.
            let s = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
            let n = name_of(s);
            for (k, e) in c.carried_env.iter().enumerate() {
                if e[..name_of(e)] == s[..n] {
                    present[k] = true;
                }
            }
            if &s[..n] == b"LD_PRELOAD" && preload.is_none() {
                preload = Some(s.get(n + 1..).unwrap_or_default());
            }
            i += 1;
        }
    }
    let mut add = [std::ptr::null::<libc::c_char>(); config::MAX_CARRIED + 2];
    let mut n = 0;
    let mut push = |p: *const libc::c_char| {
        add[n] = p;
        n += 1;
    };
    if let Some(x) = extra {
        push(x.as_ptr() as *const libc::c_char);
    }
    for (k, e) in c.carried_env.iter().enumerate() {
        let is_preload = &e[..name_of(e)] == b"LD_PRELOAD";
        if !(present[k] || is_preload && preload.is_some()) {
            push(e.as_ptr() as *const libc::c_char);
        }
    }
    let mut composed = Vec::new();
    let mut drop: &[u8] = b"";
    if let Some(v) = preload {
        let lib = &c.lib[..];
        let has = v
            .split(|&b| b == b':' || b == b' ')
            .any(|x| !x.is_empty() && x == lib);
        if !has && !lib.is_empty() {
            // Rare (the program set a preload of its own): a few bytes of the shim's heap,
            // which in a vfork child stay allocated in the parent.
            composed.extend_from_slice(b"LD_PRELOAD=");
            composed.extend_from_slice(lib);
            if !v.is_empty() {
                composed.push(b':');
                composed.extend_from_slice(v);
            }
            composed.push(0);
            push(composed.as_ptr() as *const libc::c_char);
            drop = b"LD_PRELOAD";
        }
    }
    exec_with_env_edited(nr, a, env_at, &add[..n], drop)
}

/// Executes with the program's environment minus `VIRTUOS_EXEC` and the entries named `drop`
/// (none when empty), plus the NUL-terminated entries `add`.
fn exec_with_env_edited(
    nr: i64,
    mut a: [u64; 6],
    env_at: usize,
    add: &[*const libc::c_char],
    drop: &[u8],
) -> i64 {
    const ON_STACK: usize = 256;
    let envp = a[env_at] as *const *const libc::c_char;
    let is_ours = |p: *const libc::c_char| {
        // SAFETY: the program passed envp to execve: a NULL-terminated array of
        // NUL-terminated strings (the kernel reads it the same way).
        let s = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
        [ENV_EXEC.as_bytes(), drop]
            .iter()
            .any(|n| !n.is_empty() && s.starts_with(n) && s.get(n.len()) == Some(&b'='))
    };
    let mut n = 0usize;
    let mut had = false;
    if !envp.is_null() {
        loop {
            // SAFETY: as above.
            let p = unsafe { *envp.add(n) };
            if p.is_null() {
                break;
            }
            had |= is_ours(p);
            n += 1;
        }
    }
    if !had && add.is_empty() {
        return crate::dispatch::exec_now(nr, a);
    }
    let mut small = [std::ptr::null::<libc::c_char>(); ON_STACK];
    let mut big: Vec<*const libc::c_char> = Vec::new();
    let room = n + add.len() + 1;
    let list: &mut [*const libc::c_char] = if room <= ON_STACK {
        &mut small[..]
    } else {
        big.resize(room, std::ptr::null());
        &mut big[..]
    };
    let mut w = 0usize;
    for i in 0..n {
        // SAFETY: as above, `i` < the array's length.
        let p = unsafe { *envp.add(i) };
        if !is_ours(p) {
            list[w] = p;
            w += 1;
        }
    }
    for &x in add {
        list[w] = x;
        w += 1;
    }
    list[w] = std::ptr::null();
    a[env_at] = list.as_ptr() as u64;
    crate::dispatch::exec_now(nr, a)
}

/// Finds, validates and removes the exec state named by the environment: the state, or None
/// for a clean start. The environment entry is removed in any case.
fn take_state() -> Option<State> {
    let v = config::env(ENV_EXEC)?;
    let parsed = {
        let colon = v.iter().position(|&c| c == b':')?;
        let fd: i64 = std::str::from_utf8(&v[..colon]).ok()?.parse().ok()?;
        (fd, unhex(&v[colon + 1..]))
    };
    remove_env_entry();
    let (fd, token) = parsed;
    let token = token?;
    // The fd must be a memfd we could have written: sealed against everything, ours.
    // SAFETY: a zeroed stat is a valid output buffer.
    let mut stt: libc::stat = unsafe { std::mem::zeroed() };
    if sys::sys(libc::SYS_fstat, &[fd as u64, &mut stt as *mut _ as u64]) < 0
        || stt.st_uid != sys::sys(libc::SYS_geteuid, &[]) as u32
    {
        return None;
    }
    let data = read_sealed(fd)?;
    // Ours, from here on: close it whatever it holds.
    sys::sys(libc::SYS_close, &[fd as u64]);
    let st = State::decode(&data)?;
    (st.token == token && st.pid == sys::sys(libc::SYS_getpid, &[])).then_some(st)
}

/// Removes `VIRTUOS_EXEC=` from `environ`, in place (no allocation).
fn remove_env_entry() {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: the constructor runs before main, single-threaded; `environ` is the process's
    // NULL-terminated array, and shifting its pointers down is what unsetenv does.
    unsafe {
        let env = *std::ptr::addr_of!(environ);
        if env.is_null() {
            return;
        }
        let mut r = 0usize;
        let mut w = 0usize;
        loop {
            let p = *env.add(r);
            if p.is_null() {
                *env.add(w) = p;
                break;
            }
            let s = std::ffi::CStr::from_ptr(p).to_bytes();
            let ours = s.starts_with(ENV_EXEC.as_bytes()) && s.get(ENV_EXEC.len()) == Some(&b'=');
            if !ours {
                *env.add(w) = p;
                w += 1;
            }
            r += 1;
        }
    }
}

/// In a new image: restores what the previous image handed over, if anything valid.
pub fn restore() {
    let Some(st) = take_state() else { return };
    let pid = st.pid;
    let mut adopted = [true; 2];
    for (i, d) in [&remote::STORAGE, &remote::NET].into_iter().enumerate() {
        if st.tokens[i] == 0 {
            continue;
        }
        let mut args = [st.tokens[i], 0, 0, 0, 0];
        let r = d.call_aux(Opcode::Adopt, &mut args, &[], None).0;
        if r < 0 {
            crate::diag!(
                "virtuos: pid {pid}: the previous program's remote {} are lost (adopt failed: errno {})",
                if d.net { "sockets" } else { "files" },
                -r
            );
            adopted[i] = false;
        }
    }
    if !st.cwd.is_empty() {
        cwd::set(PathBuf::from_bytes(&st.cwd));
    }
    let mut dead = Vec::new();
    let mut alive = Vec::new();
    for e in &st.entries {
        let fd = i64::from(e.fd);
        let (h, is_dir, net, listening) = (e.handle, e.is_dir, e.net, e.listening);
        let dpath = &e.dir;
        if !adopted[usize::from(net)] {
            // The placeholder stays, naming nothing: calls on it fail with EIO.
            fdtable::set(
                fd,
                Remote {
                    handle: fdtable::STALE,
                    is_dir,
                    net,
                    listening,
                },
            );
            continue;
        }
        if sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_GETFD as u64]) >= 0 {
            if is_dir {
                fdtable::set_dir_path(h, dpath);
            }
            if e.may_block {
                remote::mark_may_block(h);
            }
            fdtable::set(
                fd,
                Remote {
                    handle: h,
                    is_dir,
                    net,
                    listening,
                },
            );
            if net && !alive.contains(&(net, h)) {
                crate::net::learn_state(h);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        fd: i32,
        handle: u32,
        is_dir: bool,
        net: bool,
        listening: bool,
        may_block: bool,
        dir: &[u8],
    ) -> HandedOver {
        HandedOver {
            fd,
            handle,
            is_dir,
            net,
            listening,
            may_block,
            dir: dir.to_vec(),
        }
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let st = State {
            token: [7; 16],
            pid: 1234,
            tokens: [5, 0],
            cwd: b"/vt/d".to_vec(),
            entries: vec![
                entry(3, 9, false, false, false, false, b""),
                entry(4, 2, true, false, false, false, b"/d"),
                entry(5, 7, false, true, true, false, b""),
                entry(6, 8, false, false, false, true, b""),
            ],
        };
        let b = st.encode();
        assert_eq!(State::decode(&b), Some(st));
        assert_eq!(State::decode(&b[..b.len() - 1]), None);
        assert_eq!(State::decode(b"VIRTEXEC"), None);
        assert_eq!(State::decode(&[]), None);
    }

    #[test]
    fn tokens_are_hex_and_random() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        let mut s = Vec::new();
        hex(&a, &mut s);
        assert_eq!(unhex(&s), Some(a));
        assert_eq!(unhex(b"zz"), None);
    }

    #[test]
    fn sealed_memfd_is_sealed_and_readable() {
        let fd = sealed_memfd(b"hello").unwrap();
        let seals = sys::sys(libc::SYS_fcntl, &[fd as u64, libc::F_GET_SEALS as u64]);
        assert_eq!(seals as i32 & SEALS, SEALS);
        let w = sys::sys(libc::SYS_pwrite64, &[fd as u64, b"x".as_ptr() as u64, 1, 0]);
        assert_eq!(w, -(libc::EPERM as i64));
        reserve::release(fd as i32);
    }
}
