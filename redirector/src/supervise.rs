//! Supervised mode: statically linked programs, which the preload shim cannot enter.
//!
//! The child installs (before exec) a seccomp filter that turns every routed system call into
//! a user notification and hands the listener to this process. A supervisor thread answers
//! each notification: calls on local paths and fds continue in the kernel unchanged
//! (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`); calls on the storage mount are executed against the
//! storage domain, with arguments and results copied through `process_vm_readv`/`writev`, and
//! remote files appear in the program as placeholder fds installed with
//! `SECCOMP_IOCTL_NOTIF_ADDFD`. Slower than the shim (a notification round trip per routed
//! call), but correct for programs that never go through libc's dynamic symbols.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use abi::Opcode;
use anyhow::{bail, Context, Result};
use shim_core::{CallerMemory, ProcessMemory, Syscall, UserPtr};
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, Session};

mod net;

#[path = "../preload/src/paths.rs"]
#[allow(dead_code)]
mod paths;

#[path = "../preload/src/statconv.rs"]
mod statconv;

#[path = "../preload/src/storage_call.rs"]
mod storage_call;

#[path = "../preload/src/exec_state.rs"]
#[allow(dead_code)] // the encoder is the shim's
mod exec_state;

use paths::PathBuf as FixedPath;

const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;
/// Once the supervisor has received a notification, a non-fatal signal no longer interrupts
/// the call (Linux 5.19): without it, a `close` interrupted by SIGCHLD while the supervisor
/// answers returns EINTR with the fd still open, which no program expects of `close` (a
/// shell's pipelines then keep their write ends and hang).
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: u64 = 1 << 5;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
const SECCOMP_ADDFD_FLAG_SETFD: u32 = 1;
const SECCOMP_ADDFD_FLAG_SEND: u32 = 2;

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((b'!' as u64) << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | ((b'!' as u64) << 8) | nr
}
const NOTIF_RECV: u64 = iowr(0, std::mem::size_of::<libc::seccomp_notif>());
const NOTIF_SEND: u64 = iowr(1, std::mem::size_of::<libc::seccomp_notif_resp>());
const NOTIF_ADDFD: u64 = iow(3, 24);
const NOTIF_ID_VALID: u64 = iow(2, 8);

/// The system calls supervised: with a storage domain, the storage and process classes of
/// shim-core's one table of routed calls (the preload shim routes the same ones), so the two
/// modes cannot drift apart; with a network domain, the calls of the table's network class
/// that make or name a socket (see [`net`]: data and readiness go through the kernel).
fn supervised(storage: bool, network: bool) -> Vec<u32> {
    use shim_core::table::Class;
    let mut classes = Vec::new();
    if storage {
        classes.extend([Class::Storage, Class::Process]);
    }
    if network {
        classes.push(Class::Net);
    }
    // `close` and `close_range` are not notified: a call that a signal interrupts before the
    // supervisor has received it fails with EINTR, and a `close` failing so would leave the
    // fd open, which Linux's never does (shells then kept pipe ends open and hung). The
    // supervisor instead notices a closed placeholder by comparing files (`kcmp`) when the fd
    // is next named, and in a periodic sweep.
    shim_core::table::numbers(&classes)
        .into_iter()
        .filter(|&n| n != libc::SYS_close as u32 && n != libc::SYS_close_range as u32)
        .filter(|&n| {
            shim_core::table::lookup(i64::from(n)).is_some_and(|r| r.class != Class::Net)
                || net::NOTIFIED.contains(&i64::from(n))
        })
        .collect()
}

fn filter(storage: bool, network: bool) -> Vec<libc::sock_filter> {
    shim_core::seccomp::notify_filter(&supervised(storage, network))
}

/// Environment entry with the routed cwd a redirected program had when it exec'd the static
/// program now supervised (set by the shim; removed from the program's environment).
pub const SUPERVISE_CWD: &str = "VIRTUOS_SUPERVISE_CWD";

/// Where a supervised program's calls go: the storage domain (its socket and mount) and the
/// network domain (its socket), either or both.
pub struct Domains<'a> {
    pub storage: Option<(&'a Path, &'a Path)>,
    pub net: Option<&'a Path>,
}

/// Runs `prog` supervised, routed as `domains` says. Returns its exit status.
pub fn run(prog: &Path, argv: &[OsString], domains: Domains<'_>) -> Result<i32> {
    let storage = match domains.storage {
        Some((sock, mount)) => Some((
            connect_session(sock, &ClientConfig::default())
                .with_context(|| format!("storage domain at {}", sock.display()))?,
            mount,
        )),
        None => None,
    };
    let net = match domains.net {
        Some(sock) => Some(
            net::Net::new(
                connect_session(sock, &ClientConfig::default())
                    .with_context(|| format!("network domain at {}", sock.display()))?,
            )
            .context("starting the network pump")?,
        ),
        None => None,
    };
    let mount_arg = storage.as_ref().map(|(_, m)| *m);
    // A redirected program that exec'd this static one had its cwd under the mount.
    let initial_cwd = std::env::var_os(SUPERVISE_CWD).and_then(|c| {
        let mount = mount_arg?;
        paths::normalize(c.as_encoded_bytes()).ok().filter(|p| {
            paths::normalize(mount.as_os_str().as_encoded_bytes())
                .is_ok_and(|m| paths::strip_prefix(p.as_bytes(), m.as_bytes()).is_some())
        })
    });
    let mount = match mount_arg {
        Some(m) => paths::normalize(m.as_os_str().as_encoded_bytes())
            .map_err(|_| anyhow::anyhow!("--mount path too long"))?,
        None => paths::normalize(b"/").map_err(|_| anyhow::anyhow!("root path"))?,
    };
    let session = storage.map(|(s, _)| Arc::new(s));
    let routes = (session.is_some(), net.is_some());
    let mut pair = [0; 2];
    // SAFETY: `pair` has room for the two descriptors socketpair writes.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    // SAFETY: socketpair just created both descriptors; we own them.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let prog_filter = filter(routes.0, routes.1);
    let child_end = theirs.as_raw_fd();
    // What a redirected program that exec'd this static one handed over: its remote fds,
    // adopted here for the program (storage files as placeholders this supervisor serves,
    // sockets as pairs its pump serves), at the same numbers.
    let placeholder = private_placeholder()?;
    let handed = Handover::take(session.as_deref(), net.as_deref(), &placeholder);
    let moves = handed.moves.clone();
    let mut cmd = Command::new(prog);
    cmd.args(&argv[1..])
        .env_remove(SUPERVISE_CWD)
        .env_remove(exec_state::ENV_EXEC);
    // SAFETY: the hook runs in the forked child before exec and only makes raw system calls on
    // memory prepared before the fork (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let fprog = libc::sock_fprog {
                len: prog_filter.len() as u16,
                filter: prog_filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let install = |flags: u64| {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &fprog,
                )
            };
            let mut fd =
                install(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
            if fd < 0 && *libc::__errno_location() == libc::EINVAL {
                // A kernel before 5.19: without the flag (signals may then interrupt calls).
                fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER);
            }
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            send_fd(child_end, fd as RawFd)?;
            libc::close(fd as RawFd);
            Ok(())
        });
    }
    let initial_files = handed.files;
    let initial_copies = handed.copies;
    let handle = std::thread::spawn(move || -> Result<()> {
        let listener = recv_fd(ours.as_raw_fd()).context("receiving the seccomp listener")?;
        let mut sup = Supervisor::new(session, net, mount, placeholder)?;
        sup.initial_cwd = initial_cwd;
        for (fd, r, dir) in initial_files {
            if let Some(d) = dir {
                sup.initial_dirs.insert(r.handle, d);
            }
            sup.initial_fds.insert(fd, r);
        }
        sup.files.extend(initial_copies);
        sup.serve(&listener);
        Ok(())
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", prog.display()))?;
    drop(theirs);
    // The program has its copies now: this process's (inherited) ones go, but for the
    // standard streams.
    drop(handed.sockets);
    for fd in handed.inherited {
        if fd > 2 {
            // SAFETY: closes a descriptor this process inherited and no longer needs.
            unsafe { libc::close(fd) };
        }
    }
    forward_signals_to(child.id() as i32);
    let status = child.wait()?;
    // The listener closes with the child; the supervisor then returns.
    let _ = handle.join();
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The supervised program, for [`forward`].
static CHILD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD_PID.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; the pid is our unreaped child's.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The supervisor stands where the program would: the signals a service manager or a user
/// sends to its pid (SIGTERM to stop it, SIGHUP to reload, SIGUSR1/2) reach the program, which
/// then ends (or not) as it would without the supervisor; `run` exits with its status.
/// (SIGINT and SIGQUIT from a terminal reach the whole process group already.)
fn forward_signals_to(pid: i32) {
    CHILD_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: installing a handler that only reads an atomic and calls kill(2).
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
}

fn send_fd(sock: RawFd, fd: RawFd) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr/cmsghdr are filled within `cbuf` (32 bytes, enough for one fd) and the
    // pointers stay valid for the sendmsg call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(sock: RawFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: as in send_fd; the kernel writes at most msg_controllen bytes into `cbuf`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) <= 0 {
            bail!("the child exited before installing its filter");
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            bail!("no listener fd received");
        }
        Ok(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(c) as *const RawFd,
        )))
    }
}

#[derive(Clone, Copy)]
struct Rem {
    handle: u32,
    is_dir: bool,
    /// A FIFO in the export: its opens, reads and writes may wait for another process, so
    /// they run on threads of their own (the answering thread would otherwise wait for the
    /// very call that could wake it).
    fifo: bool,
}

/// What the answering thread works on: notifications, and opens that finished elsewhere.
enum Event {
    Notif(libc::seccomp_notif),
    /// The receiver ended: the last supervised process has exited.
    Ended,
    /// A supervised process exited: its remote files are released now (closes are not
    /// notified; a FIFO's reader waits for its writers' handles to go).
    Exited(i32),
    /// A FIFO's open, done on a thread: its result, to be installed.
    Opened {
        id: u64,
        pid: i32,
        flags: u64,
        rp: Vec<u8>,
        handle: i64,
        st_mode: u64,
    },
}

#[derive(Clone, Default)]
struct Target {
    fds: HashMap<i32, Rem>,
    cwd: Option<FixedPath>,
    dirs: HashMap<u32, Vec<u8>>,
}

enum Answer {
    Continue,
    Val(i64),
    /// Already answered by `SECCOMP_ADDFD_FLAG_SEND`.
    Sent,
}

struct Supervisor {
    /// The storage domain (absent: only the network domain is routed).
    session: Option<Arc<Session>>,
    net: Option<Arc<net::Net>>,
    mount: FixedPath,
    targets: HashMap<i32, Target>,
    tgid: HashMap<i32, i32>,
    refs: HashMap<u32, u32>,
    placeholder: OwnedFd,
    /// The routed cwd the first program starts in (handed over by a redirected program that
    /// exec'd a static one: `VIRTUOS_SUPERVISE_CWD`).
    initial_cwd: Option<FixedPath>,
    /// The remote files the first program starts with (handed over at the exec), by fd.
    initial_fds: HashMap<i32, Rem>,
    /// Their directories' export paths, by handle.
    initial_dirs: HashMap<u32, Vec<u8>>,
    /// Per remote handle, the supervisor's copy of the placeholder file installed for it (a
    /// file description of its own, so that `kcmp` tells whether a target's fd still is it).
    files: HashMap<u32, OwnedFd>,
    /// Per remote handle, memfd copies installed in place of its placeholder for `mmap`
    /// (the target's fd then is one of these: `kcmp` accepts them too).
    twins: HashMap<u32, Vec<OwnedFd>>,
    /// Notifications served, for the periodic sweep.
    served: u64,
    /// Where helper threads hand results back to the answering thread (while serving).
    events: Option<std::sync::mpsc::Sender<Event>>,
    /// Watches the targets for their exit (while serving).
    exits: Option<ExitWatch>,
}

fn proc_field(pid: i32, file: &str, key: &str) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

impl Supervisor {
    fn new(
        session: Option<Arc<Session>>,
        net: Option<Arc<net::Net>>,
        mount: FixedPath,
        placeholder: OwnedFd,
    ) -> Result<Self> {
        Ok(Supervisor {
            session,
            net,
            mount,
            targets: HashMap::new(),
            tgid: HashMap::new(),
            refs: HashMap::new(),
            files: HashMap::new(),
            twins: HashMap::new(),
            served: 0,
            initial_fds: HashMap::new(),
            initial_dirs: HashMap::new(),
            events: None,
            exits: None,
            initial_cwd: None,
            placeholder,
        })
    }

    fn serve(&mut self, listener: &OwnedFd) {
        // One thread only receives: a call is picked up microseconds after it stops, and from
        // then on (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) a signal no longer interrupts it,
        // however long the answer takes (a SIGCHLD that interrupted a `close` waiting in the
        // queue made it fail with EINTR, its fd still open: shells leaked pipe ends and hung).
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        self.events = Some(tx.clone());
        self.exits = ExitWatch::start(tx.clone()).ok();
        let raw = listener.as_raw_fd();
        let ended = tx.clone();
        let receive = move || loop {
            // Wait for a notification, or for the last supervised process to exit (HUP).
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            if pfd.revents & libc::POLLIN == 0 {
                return;
            }
            // SAFETY: an all-zero seccomp_notif is what NOTIF_RECV requires.
            let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: `n` is a valid, writable seccomp_notif; the listener outlives this
            // thread (serve joins it before returning).
            if unsafe { libc::ioctl(raw, NOTIF_RECV as _, &mut n) } != 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                    _ => return, // the target is gone
                }
            }
            if tx.send(Event::Notif(n)).is_err() {
                return;
            }
        };
        let receiver = std::thread::spawn(move || {
            receive();
            let _ = ended.send(Event::Ended);
        });
        // The loop ends with the receiver, which ends with the last supervised process:
        // helpers of FIFO opens still holding a sender do not keep it alive.
        while let Ok(ev) = rx.recv() {
            match ev {
                Event::Ended => break,
                Event::Notif(n) => {
                    let pid = self.process_of(n.pid as i32);
                    let answer = self.handle(listener, pid, &n);
                    send_answer(listener.as_raw_fd(), n.id, answer);
                }
                Event::Exited(pid) => self.exited(pid),
                Event::Opened {
                    id,
                    pid,
                    flags,
                    rp,
                    handle,
                    st_mode,
                } => {
                    let answer = self.finish_open(listener, id, pid, flags, &rp, handle, st_mode);
                    send_answer(listener.as_raw_fd(), id, answer);
                }
            }
        }
        self.events = None;
        self.exits = None;
        let _ = receiver.join();
    }

    /// Thread id → process id, and a fork child's inherited table.
    fn process_of(&mut self, tid: i32) -> i32 {
        let pid = *self
            .tgid
            .entry(tid)
            .or_insert_with(|| proc_field(tid, "status", "Tgid:").unwrap_or(tid));
        if !self.targets.contains_key(&pid) {
            let parent =
                proc_field(pid, "status", "PPid:").and_then(|pp| self.targets.get(&pp).cloned());
            let first = self.targets.is_empty();
            let t = parent.unwrap_or_else(|| Target {
                cwd: if first { self.initial_cwd.take() } else { None },
                fds: if first {
                    std::mem::take(&mut self.initial_fds)
                } else {
                    HashMap::new()
                },
                dirs: if first {
                    std::mem::take(&mut self.initial_dirs)
                } else {
                    HashMap::new()
                },
            });
            for r in t.fds.values() {
                *self.refs.entry(r.handle).or_insert(0) += 1;
            }
            self.targets.insert(pid, t);
            if let (Some(w), Some(pfd)) = (&self.exits, pidfd_open(pid)) {
                w.watch(pid, pfd);
            }
        }
        pid
    }

    /// The storage domain's session (storage calls are notified only when there is one).
    fn st(&self) -> &Session {
        self.session
            .as_deref()
            .expect("storage calls are notified only with a storage domain")
    }

    fn mem(pid: i32) -> ProcessMemory<shim_core::sys::Real> {
        ProcessMemory::new(pid, shim_core::sys::Real)
    }

    fn read_mem(&self, pid: i32, addr: u64, out: &mut [u8]) -> bool {
        Self::mem(pid).read(UserPtr(addr), out).is_ok()
    }

    fn write_mem(&self, pid: i32, addr: u64, data: &[u8]) -> bool {
        Self::mem(pid).write(UserPtr(addr), data).is_ok()
    }

    /// The path at `addr` in `pid`: EFAULT for a bad address, ENAMETOOLONG without a
    /// terminator within PATH_MAX, as the kernel answers.
    fn read_path(&self, pid: i32, addr: u64) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; paths::PATH_MAX];
        let n = Self::mem(pid)
            .read_cstr(UserPtr(addr), &mut buf)
            .map_err(|e| e.errno())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Where `path` (relative to `dirfd` of `pid`) lives: `Some` export-relative path, as the
    /// program wrote it wherever the server can resolve it so (shared with the preload shim:
    /// `paths::route`), `None` when the kernel should run the call, or an errno.
    fn resolve(&self, pid: i32, dirfd: i64, path: &[u8]) -> Result<Option<FixedPath>, i32> {
        let Some(t) = self.targets.get(&pid) else {
            return Ok(None);
        };
        let local_cwd;
        let remote_dir;
        let (base, routed): (Option<&[u8]>, bool) = if path.first() == Some(&b'/') {
            (None, false)
        } else if dirfd == libc::AT_FDCWD as i64 {
            match &t.cwd {
                Some(c) => (Some(c.as_bytes()), true),
                None => {
                    // A local cwd: a relative path may still enter the mount (`../vt/x`).
                    local_cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
                    match &local_cwd {
                        Some(c) => (Some(c.as_os_str().as_encoded_bytes()), false),
                        None => return Ok(None),
                    }
                }
            }
        } else {
            let Some(r) = t.fds.get(&(dirfd as i32)) else {
                return Ok(None);
            };
            if !r.is_dir {
                return Err(libc::ENOTDIR);
            }
            let rel = t.dirs.get(&r.handle).ok_or(libc::EBADF)?;
            remote_dir = paths::join(self.mount.as_bytes(), rel.strip_prefix(b"/").unwrap_or(rel))
                .map_err(|_| libc::ENAMETOOLONG)?;
            (Some(remote_dir.as_bytes()), true)
        };
        match paths::route(base, path, self.mount.as_bytes()).map_err(|_| libc::ENAMETOOLONG)? {
            paths::Route::Remote(rp) => Ok(Some(rp)),
            paths::Route::Local => Ok(None),
            // `..` led from a routed directory out of the mount: the kernel would walk the
            // path from the process's real cwd, which the supervisor cannot rewrite it for.
            paths::Route::LocalAt(_) if routed => Err(libc::EXDEV),
            paths::Route::LocalAt(_) => Ok(None),
        }
    }

    /// Where the export-relative path `rp`, which the server answered with `ESCAPE`,
    /// continues under the mount (`rp` itself when it no longer leaves the export: the call is
    /// tried again). A continuation outside the mount is `EXDEV`: the supervisor cannot
    /// rewrite the path the kernel would walk for the supervised process (the shim can).
    fn continuation(&self, rp: &[u8], entry: bool) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; paths::PATH_MAX];
        let (n, _) = self.call(
            Opcode::Resolve,
            [u64::from(entry), 0, 0, 0, 0],
            &[rp],
            Some(&mut buf),
        );
        if n == -(libc::EAGAIN as i64) {
            return Ok(rp.to_vec());
        }
        if n < 0 {
            return Err(-n as i32);
        }
        let c = &buf[..(n as usize).min(buf.len())];
        match paths::route_continuation(c, self.mount.as_bytes()).map_err(|_| libc::ENAMETOOLONG)? {
            paths::Route::Remote(next) => Ok(next.as_bytes().to_vec()),
            _ => Err(libc::EXDEV),
        }
    }

    /// One storage call (the shim's own encoding: `storage_call::call_on`).
    fn call(
        &self,
        op: Opcode,
        mut args: [u64; 5],
        inputs: &[&[u8]],
        out: Option<&mut [u8]>,
    ) -> (i64, u64) {
        storage_call::call_on(self.st(), op, &mut args, inputs, out)
    }

    fn release(&mut self, h: u32) {
        let n = self.refs.entry(h).or_insert(1);
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&h);
            self.files.remove(&h);
            self.twins.remove(&h);
            self.call(Opcode::Close, [h.into(), 0, 0, 0, 0], &[], None);
        }
    }

    fn handle(&mut self, listener: &OwnedFd, pid: i32, n: &libc::seccomp_notif) -> Answer {
        let a = n.data.args;
        let nr = n.data.nr as i64;
        if net::NOTIFIED.contains(&nr) {
            return match &self.net {
                Some(net) => net.handle(listener, pid, n).unwrap_or(Answer::Continue),
                None => Answer::Continue,
            };
        }
        if self.session.is_none() {
            return Answer::Continue;
        }
        let fd = a[0] as i32;
        // Closes are not notified: a remote fd the call names may have been closed (and its
        // number reused) since; so may a path's directory fd.
        let named = shim_core::decode(nr, a);
        for f in named.fds().into_iter().flatten() {
            self.prune(pid, f.0);
        }
        for (d, _) in named.paths().into_iter().flatten() {
            if d.0 >= 0 {
                self.prune(pid, d.0);
            }
        }
        self.served += 1;
        if self.served.is_multiple_of(256) {
            self.sweep();
        }
        let rem = |s: &Self, fd: i32| s.targets.get(&pid).and_then(|t| t.fds.get(&fd)).copied();
        let e = |x: i32| Answer::Val(-(x as i64));
        // Path-taking calls: (dirfd, path pointer), from shim-core's decoder.
        let decoded = shim_core::decode(nr, a);
        let path_arg = match decoded {
            // Handled below with their own argument layouts (two paths, a target, no path).
            Syscall::RenameAt { .. } | Syscall::LinkAt { .. } | Syscall::SymlinkAt { .. } => None,
            Syscall::Execve { .. } => None,
            _ => decoded.paths()[0].map(|(d, p)| (i64::from(d.0), p.0)),
        };
        if let Some((dirfd, p)) = path_arg {
            if p == 0 {
                return Answer::Continue;
            }
            let path = match self.read_path(pid, p) {
                Ok(path) => path,
                Err(errno) => return e(errno),
            };
            if let Some(r) = paths::proc_fd_number(&path).and_then(|f| rem(self, f as i32)) {
                // A remote file named through its magic link (glibc's fchmodat with
                // AT_SYMLINK_NOFOLLOW does it): the handle, as the shim does.
                return self.by_proc_fd(pid, nr, a, r);
            }
            if path.is_empty() {
                // AT_EMPTY_PATH on a remote fd.
                return match rem(self, dirfd as i32) {
                    Some(r) if matches!(nr, libc::SYS_newfstatat | libc::SYS_statx) => self
                        .stat_out(
                            pid,
                            nr,
                            a,
                            Opcode::FStat,
                            [r.handle.into(), 0, 0, 0, 0],
                            &[],
                        ),
                    Some(_) => e(libc::EOPNOTSUPP),
                    None => Answer::Continue,
                };
            }
            let rp = match self.resolve(pid, dirfd, &path) {
                Ok(Some(rp)) => rp,
                Ok(None) => return Answer::Continue,
                Err(errno) => return e(errno),
            };
            let mut rp = rp.as_bytes().to_vec();
            // A path that leaves the export (an absolute symlink, `..` above the root) goes
            // on where the server says, as in the shim (`dispatch::follow`).
            for _ in 0..40 {
                let answer = self.path_call(listener, n.id, pid, nr, a, &rp);
                if !matches!(answer, Answer::Val(v) if v == abi::ESCAPE.as_result()) {
                    return answer;
                }
                match self.continuation(&rp, false) {
                    Ok(next) => rp = next,
                    Err(errno) => return e(errno),
                }
            }
            return e(libc::ELOOP);
        }
        match nr {
            libc::SYS_close => {
                if let Some(r) = self.targets.get_mut(&pid).and_then(|t| t.fds.remove(&fd)) {
                    self.release(r.handle);
                }
                Answer::Continue
            }
            libc::SYS_read | libc::SYS_pread64 | libc::SYS_write | libc::SYS_pwrite64 => {
                let Some(r) = rem(self, fd) else {
                    return Answer::Continue;
                };
                if r.is_dir {
                    return e(libc::EISDIR);
                }
                let write = matches!(nr, libc::SYS_write | libc::SYS_pwrite64);
                let off = matches!(nr, libc::SYS_pread64 | libc::SYS_pwrite64).then_some(a[3]);
                if r.fifo {
                    if off.is_some() {
                        return e(libc::ESPIPE);
                    }
                    return self.fifo_io(
                        listener,
                        n.id,
                        pid,
                        r,
                        write,
                        vec![(a[1], a[2] as usize)],
                    );
                }
                Answer::Val(self.rw(pid, r, write, a[1], a[2] as usize, off))
            }
            libc::SYS_readv | libc::SYS_writev => {
                let Some(r) = rem(self, fd) else {
                    return Answer::Continue;
                };
                let cnt = (a[2] as usize).min(1024);
                let mut iov = vec![0u8; cnt * 16];
                if !self.read_mem(pid, a[1], &mut iov) {
                    return e(libc::EFAULT);
                }
                if r.fifo {
                    let segs = iov
                        .chunks(16)
                        .map(|v| {
                            (
                                u64::from_ne_bytes(v[..8].try_into().expect("8")),
                                u64::from_ne_bytes(v[8..].try_into().expect("8")) as usize,
                            )
                        })
                        .collect();
                    return self.fifo_io(listener, n.id, pid, r, nr == libc::SYS_writev, segs);
                }
                let mut total = 0i64;
                for v in iov.chunks(16) {
                    let base = u64::from_ne_bytes(v[..8].try_into().expect("8"));
                    let len = u64::from_ne_bytes(v[8..].try_into().expect("8")) as usize;
                    let k = self.rw(pid, r, nr == libc::SYS_writev, base, len, None);
                    if k < 0 {
                        return Answer::Val(if total > 0 { total } else { k });
                    }
                    total += k;
                    if (k as usize) < len {
                        break;
                    }
                }
                Answer::Val(total)
            }
            libc::SYS_lseek => match rem(self, fd) {
                Some(r) => Answer::Val(
                    self.call(
                        Opcode::LSeek,
                        [r.handle.into(), a[1], a[2], 0, 0],
                        &[],
                        None,
                    )
                    .0,
                ),
                None => Answer::Continue,
            },
            libc::SYS_fstat => match rem(self, fd) {
                Some(r) => self.stat_out(
                    pid,
                    nr,
                    a,
                    Opcode::FStat,
                    [r.handle.into(), 0, 0, 0, 0],
                    &[],
                ),
                None => Answer::Continue,
            },
            libc::SYS_getdents64 => match rem(self, fd) {
                Some(r) => {
                    let mut buf =
                        vec![0u8; (a[2] as usize).min(self.st().layout().window as usize)];
                    let (k, _) = self.call(
                        Opcode::GetDents64,
                        [r.handle.into(), 0, 0, 0, 0],
                        &[],
                        Some(&mut buf),
                    );
                    if k > 0 && !self.write_mem(pid, a[1], &buf[..k as usize]) {
                        return e(libc::EFAULT);
                    }
                    Answer::Val(k)
                }
                None => Answer::Continue,
            },
            libc::SYS_fsync | libc::SYS_fdatasync => match rem(self, fd) {
                Some(r) => Answer::Val(
                    self.call(
                        Opcode::FSync,
                        [
                            r.handle.into(),
                            u64::from(nr == libc::SYS_fdatasync),
                            0,
                            0,
                            0,
                        ],
                        &[],
                        None,
                    )
                    .0,
                ),
                None => Answer::Continue,
            },
            libc::SYS_ftruncate => self.fd_op(pid, fd, Opcode::FTruncate, [0, a[1], 0, 0, 0]),
            libc::SYS_fchmod => self.fd_op(pid, fd, Opcode::FChmod, [0, a[1], 0, 0, 0]),
            libc::SYS_fchown => self.fd_op(
                pid,
                fd,
                Opcode::FChown,
                [0, a[1] as u32 as u64, a[2] as u32 as u64, 0, 0],
            ),
            libc::SYS_fstatfs => match rem(self, fd) {
                Some(r) => self.statfs_out(pid, r.handle, a[1]),
                None => Answer::Continue,
            },
            libc::SYS_fallocate => self.fd_op(pid, fd, Opcode::Fallocate, [0, a[1], a[2], a[3], 0]),
            // posix_fadvise reports an error number, but the system call returns -errno.
            libc::SYS_fadvise64 => self.fd_op(pid, fd, Opcode::Advise, [0, 0, a[1], a[2], a[3]]),
            libc::SYS_readahead => self.fd_op(pid, fd, Opcode::Advise, [0, 1, a[1], a[2], 0]),
            libc::SYS_sync_file_range => {
                self.fd_op(pid, fd, Opcode::Advise, [0, 2, a[1], a[2], a[3]])
            }
            libc::SYS_flock => match rem(self, fd) {
                Some(r) => self.flock(listener, n.id, r, a[1]),
                None => Answer::Continue,
            },
            libc::SYS_fgetxattr
            | libc::SYS_flistxattr
            | libc::SYS_fsetxattr
            | libc::SYS_fremovexattr => match rem(self, fd) {
                Some(r) => self.xattr(pid, nr, Some(r.handle), &[], a),
                None => Answer::Continue,
            },
            libc::SYS_splice if rem(self, fd).is_some() || rem(self, a[2] as i32).is_some() => {
                self.splice(listener, n.id, pid, a)
            }
            // tee and vmsplice take pipes only: a routed file is never one.
            libc::SYS_tee | libc::SYS_vmsplice
                if rem(self, fd).is_some()
                    || (nr == libc::SYS_tee && rem(self, a[1] as i32).is_some()) =>
            {
                e(libc::EINVAL)
            }
            libc::SYS_fchdir => match rem(self, fd) {
                Some(r) if r.is_dir => {
                    let rel = self.targets[&pid]
                        .dirs
                        .get(&r.handle)
                        .cloned()
                        .unwrap_or_else(|| b"/".to_vec());
                    let full = paths::join(
                        self.mount.as_bytes(),
                        rel.strip_prefix(b"/").unwrap_or(&rel),
                    )
                    .ok();
                    self.targets.get_mut(&pid).expect("known").cwd = full;
                    Answer::Val(0)
                }
                Some(_) => e(libc::ENOTDIR),
                None => {
                    self.targets.get_mut(&pid).expect("known").cwd = None;
                    Answer::Continue
                }
            },
            libc::SYS_getcwd => match self.targets[&pid].cwd.clone() {
                Some(c) => {
                    let mut b = c.as_bytes().to_vec();
                    b.push(0);
                    if (a[1] as usize) < b.len() {
                        return e(libc::ERANGE);
                    }
                    if !self.write_mem(pid, a[0], &b) {
                        return e(libc::EFAULT);
                    }
                    Answer::Val(b.len() as i64)
                }
                None => Answer::Continue,
            },
            libc::SYS_fcntl => match rem(self, fd) {
                Some(r) => match a[1] as i32 {
                    libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
                        // ADDFD allocates the lowest free fd (not ">= arg"); close enough for
                        // the common F_DUPFD 0 / small-arg uses.
                        self.dup_to(
                            listener,
                            n.id,
                            pid,
                            r,
                            None,
                            a[1] as i32 == libc::F_DUPFD_CLOEXEC,
                        )
                    }
                    libc::F_GETFL | libc::F_SETFL => Answer::Val(
                        self.call(
                            Opcode::Fcntl,
                            [r.handle.into(), a[1], a[2], 0, 0],
                            &[],
                            None,
                        )
                        .0,
                    ),
                    libc::F_GETFD | libc::F_SETFD => Answer::Continue,
                    libc::F_GETLK
                    | libc::F_SETLK
                    | libc::F_SETLKW
                    | libc::F_OFD_GETLK
                    | libc::F_OFD_SETLK
                    | libc::F_OFD_SETLKW => self.lock(listener, n.id, pid, r, a[1] as i32, a[2]),
                    _ => e(libc::EINVAL),
                },
                None => Answer::Continue,
            },
            libc::SYS_dup => match rem(self, fd) {
                Some(r) => self.dup_to(listener, n.id, pid, r, None, false),
                None => Answer::Continue,
            },
            libc::SYS_dup2 | libc::SYS_dup3 => {
                let to = a[1] as i32;
                let src = rem(self, fd);
                if src.is_none() && rem(self, to).is_none() {
                    return Answer::Continue;
                }
                if to == fd {
                    return if nr == libc::SYS_dup3 {
                        e(libc::EINVAL)
                    } else {
                        Answer::Val(fd as i64)
                    };
                }
                if let Some(old) = self.targets.get_mut(&pid).and_then(|t| t.fds.remove(&to)) {
                    self.release(old.handle);
                }
                match src {
                    Some(r) => self.dup_to(
                        listener,
                        n.id,
                        pid,
                        r,
                        Some(to),
                        a[2] as i32 & libc::O_CLOEXEC != 0 && nr == libc::SYS_dup3,
                    ),
                    None => Answer::Continue,
                }
            }
            libc::SYS_mmap => match rem(self, a[4] as i32) {
                Some(r) => self.mmap_copy(listener, n.id, pid, a[4] as i32, r, a),
                None => Answer::Continue,
            },
            libc::SYS_ioctl => match rem(self, fd) {
                Some(_) => e(libc::ENOTTY),
                None => Answer::Continue,
            },
            libc::SYS_copy_file_range
                if rem(self, fd).is_some() || rem(self, a[2] as i32).is_some() =>
            {
                self.copy_range(pid, a)
            }
            libc::SYS_sendfile if rem(self, a[1] as i32).is_some() && rem(self, fd).is_none() => {
                self.sendfile(listener, n.id, pid, a)
            }
            libc::SYS_sendfile | libc::SYS_copy_file_range => {
                if rem(self, fd).is_some()
                    || rem(self, a[if nr == libc::SYS_sendfile { 1 } else { 2 }] as i32).is_some()
                {
                    // Programs fall back to read/write, which are served.
                    e(if nr == libc::SYS_sendfile {
                        libc::EINVAL
                    } else {
                        libc::EXDEV
                    })
                } else {
                    Answer::Continue
                }
            }
            libc::SYS_rename
            | libc::SYS_renameat
            | libc::SYS_renameat2
            | libc::SYS_link
            | libc::SYS_linkat => {
                let (d1, p1, d2, p2, flags) = match nr {
                    libc::SYS_rename | libc::SYS_link => {
                        (libc::AT_FDCWD as i64, a[0], libc::AT_FDCWD as i64, a[1], 0)
                    }
                    _ => (
                        a[0] as i32 as i64,
                        a[1],
                        a[2] as i32 as i64,
                        a[3],
                        if nr == libc::SYS_renameat { 0 } else { a[4] },
                    ),
                };
                let (x, y) = match (self.read_path(pid, p1), self.read_path(pid, p2)) {
                    (Ok(x), Ok(y)) => (x, y),
                    (Err(errno), _) | (_, Err(errno)) => return e(errno),
                };
                let op = if matches!(nr, libc::SYS_link | libc::SYS_linkat) {
                    Opcode::LinkAt
                } else {
                    Opcode::RenameAt
                };
                let (x, y) = match (self.resolve(pid, d1, &x), self.resolve(pid, d2, &y)) {
                    (Ok(x), Ok(y)) => (x, y),
                    (Err(errno), _) | (_, Err(errno)) => return e(errno),
                };
                match (x, y) {
                    (None, None) => Answer::Continue,
                    (Some(x), Some(y)) => {
                        let (mut x, mut y) = (x.as_bytes().to_vec(), y.as_bytes().to_vec());
                        for _ in 0..40 {
                            let r = self.call(op, [flags, 0, 0, 0, 0], &[&x, &y], None).0;
                            if r != abi::ESCAPE.as_result() {
                                return Answer::Val(r);
                            }
                            // The first of the two that leaves the export goes on.
                            match self.continuation(&x, true) {
                                Ok(n) if n == x => match self.continuation(&y, true) {
                                    Ok(n) => y = n,
                                    Err(errno) => return e(errno),
                                },
                                Ok(n) => x = n,
                                Err(errno) => return e(errno),
                            }
                        }
                        e(libc::ELOOP)
                    }
                    _ => e(libc::EXDEV),
                }
            }
            libc::SYS_symlink | libc::SYS_symlinkat => {
                let (target, d, p) = if nr == libc::SYS_symlink {
                    (a[0], libc::AT_FDCWD as i64, a[1])
                } else {
                    (a[0], a[1] as i32 as i64, a[2])
                };
                let (t, lp) = match (self.read_path(pid, target), self.read_path(pid, p)) {
                    (Ok(t), Ok(lp)) => (t, lp),
                    (Err(errno), _) | (_, Err(errno)) => return e(errno),
                };
                // The target is stored as written, as the shim does.
                match self.resolve(pid, d, &lp) {
                    Ok(Some(rp)) => Answer::Val(
                        self.call(Opcode::SymlinkAt, [0; 5], &[&t, rp.as_bytes()], None)
                            .0,
                    ),
                    Ok(None) => Answer::Continue,
                    Err(errno) => e(errno),
                }
            }
            // futimens(fd, times): the remote file itself.
            libc::SYS_utimensat if a[1] == 0 => match rem(self, fd) {
                Some(r) => self.utimens(pid, r.handle.into(), a[3], a[2], b""),
                None => Answer::Continue,
            },
            libc::SYS_close_range => {
                let (first, last, flags) = (a[0] as u32, a[1] as u32, a[2] as u32);
                if flags & libc::CLOSE_RANGE_CLOEXEC == 0 {
                    let gone: Vec<(i32, u32)> = self
                        .targets
                        .get(&pid)
                        .map(|t| {
                            t.fds
                                .iter()
                                .filter(|(&f, _)| (f as u32) >= first && (f as u32) <= last)
                                .map(|(&f, r)| (f, r.handle))
                                .collect()
                        })
                        .unwrap_or_default();
                    for (f, h) in gone {
                        if let Some(t) = self.targets.get_mut(&pid) {
                            t.fds.remove(&f);
                        }
                        self.release(h);
                    }
                }
                Answer::Continue
            }
            // A routed call on a remote fd that the supervised mode does not execute: an
            // error, never the call on the placeholder.
            _ if shim_core::decode(nr, a)
                .fds()
                .into_iter()
                .flatten()
                .any(|f| rem(self, f.0).is_some()) =>
            {
                e(libc::EOPNOTSUPP)
            }
            _ => Answer::Continue,
        }
    }

    /// splice between a routed file and the target's pipe (Linux needs a pipe on one side:
    /// anything else is EINVAL, a pipe side with an offset ESPIPE), as the shim does it: up to
    /// 64 KiB through a buffer, the file's offset (or `*off`) advanced by exactly what reached
    /// the other side. The pipe is reached through a copy of the target's descriptor
    /// (`pidfd_getfd`); a blocking splice waits on a thread of its own, which answers it.
    fn splice(&self, listener: &OwnedFd, id: u64, pid: i32, a: [u64; 6]) -> Answer {
        let (fd_in, off_in, fd_out, off_out, len, flags) =
            (a[0] as i32, a[1], a[2] as i32, a[3], a[4], a[5]);
        let nonblock = flags & libc::SPLICE_F_NONBLOCK as u64 != 0;
        let t = &self.targets[&pid];
        let (from_file, r, pipe_fd, pipe_off) =
            match (t.fds.get(&fd_in).copied(), t.fds.get(&fd_out).copied()) {
                (Some(r), None) => (true, r, fd_out, off_out),
                (None, Some(r)) => (false, r, fd_in, off_in),
                // Two routed files: neither is a pipe.
                _ => return Answer::Val(-(libc::EINVAL as i64)),
            };
        let Some(pipe) = net::pidfd_getfd(pid, pipe_fd) else {
            return Answer::Val(-(libc::EBADF as i64));
        };
        let is_pipe = std::fs::File::from(match pipe.try_clone() {
            Ok(p) => p,
            Err(_) => return Answer::Val(-(libc::ENOMEM as i64)),
        })
        .metadata()
        .is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_fifo()
        });
        if !is_pipe {
            return Answer::Val(-(libc::EINVAL as i64));
        }
        if pipe_off != 0 {
            return Answer::Val(-(libc::ESPIPE as i64));
        }
        if len == 0 {
            return Answer::Val(0);
        }
        let file_off = if from_file { off_in } else { off_out };
        let at = match self.user_offset(pid, file_off) {
            Ok(o) => o,
            Err(x) => return Answer::Val(-i64::from(x)),
        };
        let events = if from_file {
            libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let pipe_raw = pipe.as_raw_fd();
        let ready = move || {
            let mut p = libc::pollfd {
                fd: pipe_raw,
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        if nonblock && !ready() {
            return Answer::Val(-(libc::EAGAIN as i64));
        }
        let job = SpliceJob {
            session: Arc::clone(self.session.as_ref().expect("storage routed")),
            pid,
            handle: r.handle,
            pipe,
            from_file,
            at,
            file_off,
            chunk: (len as usize).min(64 << 10),
        };
        if ready() {
            return Answer::Val(job.run());
        }
        answer_later(listener, id, move || job.run())
    }

    /// mmap of a routed file: the target's fd is replaced by a sealed memfd holding a copy
    /// of the file taken now (its placeholder twin: `kcmp` accepts either, and its calls are
    /// still served by the handle), and the kernel maps that with the program's own
    /// arguments. So read-only shared and private mappings work, as the shim's (a copy: later
    /// writes to the file do not show), pages past the end fault as a file's do, and a
    /// writable shared mapping is ENODEV (the sealed copy could not write back).
    fn mmap_copy(
        &mut self,
        listener: &OwnedFd,
        id: u64,
        pid: i32,
        fd: i32,
        r: Rem,
        a: [u64; 6],
    ) -> Answer {
        let (prot, flags) = (a[2], a[3] as i32);
        let shared = flags & libc::MAP_SHARED != 0
            || flags & libc::MAP_SHARED_VALIDATE == libc::MAP_SHARED_VALIDATE;
        if shared && prot & libc::PROT_WRITE as u64 != 0 {
            return Answer::Val(-(libc::ENODEV as i64));
        }
        if r.is_dir {
            return Answer::Val(-(libc::ENODEV as i64));
        }
        let copy = match self.file_copy(r.handle) {
            Ok(f) => f,
            Err(x) => return Answer::Val(-i64::from(x)),
        };
        let cloexec = fd_has(pid, fd, libc::O_CLOEXEC);
        let k = install_fd(
            listener.as_raw_fd(),
            id,
            Some(fd),
            cloexec,
            copy.as_raw_fd(),
            false,
        );
        if k < 0 {
            return Answer::Val(k);
        }
        self.twins.entry(r.handle).or_default().push(copy);
        Answer::Continue
    }

    /// A sealed memfd holding the whole of remote file `h` as it is now.
    fn file_copy(&self, h: u32) -> Result<OwnedFd, i32> {
        let mut x = [0u8; std::mem::size_of::<libc::statx>()];
        let (k, _) = self.call(Opcode::FStat, [h.into(), 0, 0, 0, 0], &[], Some(&mut x));
        if k < 0 {
            return Err(-k as i32);
        }
        // SAFETY: statx is plain data of exactly this size.
        let sx: libc::statx = unsafe { std::ptr::read_unaligned(x.as_ptr().cast()) };
        // SAFETY: memfd_create with a static name and constant flags; the result is checked.
        let m = unsafe {
            libc::memfd_create(
                c"virtuos-mmap".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if m < 0 {
            return Err(libc::ENOMEM);
        }
        // SAFETY: memfd_create just returned this descriptor; we own it.
        let m = unsafe { OwnedFd::from_raw_fd(m) };
        let mut file = std::fs::File::from(m);
        let window = self.st().layout().window as usize;
        let mut buf = vec![0u8; window];
        let mut at = 0u64;
        while at < sx.stx_size {
            let want = ((sx.stx_size - at) as usize).min(window);
            let (n, _) = self.call(
                Opcode::PRead,
                [h.into(), at, 0, 0, 0],
                &[],
                Some(&mut buf[..want]),
            );
            if n < 0 {
                return Err(-n as i32);
            }
            if n == 0 {
                break;
            }
            use std::io::Write;
            file.write_all(&buf[..n as usize])
                .map_err(|_| libc::ENOMEM)?;
            at += n as u64;
        }
        let m = OwnedFd::from(file);
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own memfd with integer arguments.
        if unsafe { libc::fcntl(m.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(libc::EIO);
        }
        Ok(m)
    }

    /// True when export path `rp` names a FIFO (following a final symlink unless the open
    /// says O_NOFOLLOW).
    fn is_fifo(&self, rp: &[u8], flags: u64) -> bool {
        let nofollow = if flags & libc::O_NOFOLLOW as u64 != 0 {
            libc::AT_SYMLINK_NOFOLLOW as u64
        } else {
            0
        };
        let mut x = [0u8; std::mem::size_of::<libc::statx>()];
        let (k, _) = self.call(
            Opcode::StatAt,
            [nofollow, libc::STATX_TYPE as u64, 0, 0, 0],
            &[rp],
            Some(&mut x),
        );
        // SAFETY: statx is plain data of exactly this size.
        let sx: libc::statx = unsafe { std::ptr::read_unaligned(x.as_ptr().cast()) };
        k >= 0 && u32::from(sx.stx_mode) & libc::S_IFMT == libc::S_IFIFO
    }

    /// The rest of an open of `rp` whose handle (or -errno) is `h`: the placeholder installed
    /// as the call's answer.
    #[allow(clippy::too_many_arguments)]
    fn finish_open(
        &mut self,
        listener: &OwnedFd,
        id: u64,
        pid: i32,
        flags: u64,
        rp: &[u8],
        h: i64,
        st_mode: u64,
    ) -> Answer {
        if h < 0 {
            return Answer::Val(h);
        }
        if !self.targets.contains_key(&pid) {
            self.call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
            return Answer::Val(-(libc::ESRCH as i64));
        }
        let kind = st_mode as u32 & libc::S_IFMT;
        let r = Rem {
            handle: h as u32,
            is_dir: kind == libc::S_IFDIR,
            fifo: kind == libc::S_IFIFO,
        };
        if r.is_dir {
            self.targets
                .get_mut(&pid)
                .expect("known")
                .dirs
                .insert(r.handle, rp.to_vec());
        }
        // The placeholder's reference (taken by dup_to) is the open's only one.
        let ans = self.dup_to(
            listener,
            id,
            pid,
            r,
            None,
            flags & libc::O_CLOEXEC as u64 != 0,
        );
        if let Answer::Val(err) = ans {
            self.call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
            return Answer::Val(err);
        }
        ans
    }

    /// Record locks on a routed file, held by the storage domain (open-file-description
    /// locks there, as the shim's). A waiting F_SETLKW runs on a thread of its own, which
    /// answers it (its holder is usually another supervised process).
    fn lock(&self, listener: &OwnedFd, id: u64, pid: i32, r: Rem, cmd: i32, p: u64) -> Answer {
        let mut fl = [0u8; std::mem::size_of::<libc::flock>()];
        if !self.read_mem(pid, p, &mut fl) {
            return Answer::Val(-(libc::EFAULT as i64));
        }
        let args = [r.handle.into(), cmd as u64, 0, 0, 0];
        if matches!(cmd, libc::F_GETLK | libc::F_OFD_GETLK) {
            let input = fl;
            let (k, _) = self.call(Opcode::Fcntl, args, &[&input], Some(&mut fl));
            if k >= 0 && !self.write_mem(pid, p, &fl) {
                return Answer::Val(-(libc::EFAULT as i64));
            }
            return Answer::Val(k);
        }
        if matches!(cmd, libc::F_SETLK | libc::F_OFD_SETLK) {
            return Answer::Val(self.call(Opcode::Fcntl, args, &[&fl], None).0);
        }
        let Some(session) = self.session.clone() else {
            return Answer::Val(-(libc::EIO as i64));
        };
        answer_later(listener, id, move || {
            let mut args = args;
            storage_call::call_on(&session, Opcode::Fcntl, &mut args, &[&fl], None).0
        })
    }

    /// flock on a routed file, held by the storage domain on its open file; a wait (no
    /// LOCK_NB) runs on a thread of its own, which answers it (as a waiting F_SETLKW).
    fn flock(&self, listener: &OwnedFd, id: u64, r: Rem, op: u64) -> Answer {
        let args = [r.handle.into(), op, 0, 0, 0];
        if !storage_call::waits(Opcode::Flock, &args) {
            return Answer::Val(self.call(Opcode::Flock, args, &[], None).0);
        }
        let Some(session) = self.session.clone() else {
            return Answer::Val(-(libc::EIO as i64));
        };
        answer_later(listener, id, move || {
            let mut args = args;
            storage_call::call_on(&session, Opcode::Flock, &mut args, &[], None).0
        })
    }

    /// utimensat of export path `rp` (`handle` u64::MAX) or of remote `handle` (`rp` empty):
    /// the times at `times` in the target (null: now), as the shim encodes them.
    fn utimens(&self, pid: i32, handle: u64, flags: u64, times: u64, rp: &[u8]) -> Answer {
        let mut ts = [0u8; 32];
        let given = times != 0;
        if given && !self.read_mem(pid, times, &mut ts) {
            return Answer::Val(-(libc::EFAULT as i64));
        }
        let mut payload = ts.to_vec();
        payload.extend_from_slice(rp);
        let mut lease = self.st().lease();
        if lease.write(0, &payload).is_err() {
            return Answer::Val(-(libc::ENAMETOOLONG as i64));
        }
        let req = abi::Request {
            opcode: Opcode::UtimensAt as u16,
            data_len: payload.len() as u32,
            args: [handle, flags, u64::from(given), 0, rp.len() as u64],
            ..Default::default()
        };
        Answer::Val(
            lease
                .call(req)
                .map(|r| r.result)
                .unwrap_or(-(libc::EIO as i64)),
        )
    }

    /// A path call on `/proc/self/fd/N` or `/dev/fd/N` whose N is remote file `r`.
    fn by_proc_fd(&self, pid: i32, nr: i64, a: [u64; 6], r: Rem) -> Answer {
        let h = u64::from(r.handle);
        match nr {
            libc::SYS_chmod => self.fd_call(Opcode::FChmod, [h, a[1], 0, 0, 0]),
            libc::SYS_fchmodat | libc::SYS_fchmodat2 => {
                self.fd_call(Opcode::FChmod, [h, a[2], 0, 0, 0])
            }
            libc::SYS_chown | libc::SYS_lchown => self.fd_call(
                Opcode::FChown,
                [h, a[1] as u32 as u64, a[2] as u32 as u64, 0, 0],
            ),
            libc::SYS_fchownat => self.fd_call(
                Opcode::FChown,
                [h, a[2] as u32 as u64, a[3] as u32 as u64, 0, 0],
            ),
            libc::SYS_stat | libc::SYS_lstat | libc::SYS_newfstatat | libc::SYS_statx => {
                self.stat_out(pid, nr, a, Opcode::FStat, [h, 0, 0, 0, 0], &[])
            }
            libc::SYS_utimensat => self.utimens(pid, h, a[3], a[2], b""),
            // Reopening through the link would reach the placeholder, not the file: refused
            // rather than acting on the wrong inode (as the shim does).
            _ => Answer::Val(-(libc::EOPNOTSUPP as i64)),
        }
    }

    fn fd_call(&self, op: Opcode, args: [u64; 5]) -> Answer {
        Answer::Val(self.call(op, args, &[], None).0)
    }

    /// sendfile from a routed file to a local fd (a socket, a pipe, a file): a chunk of up to
    /// 64 KiB read from the storage domain and written to the target's fd (reached through
    /// `pidfd_getfd`), the file's offset (or `*offset`) advanced by exactly what was written,
    /// so a short write to a non-blocking socket loses nothing. A write that would block on a
    /// blocking fd waits on a thread of its own, which answers the call.
    fn sendfile(&self, listener: &OwnedFd, id: u64, pid: i32, a: [u64; 6]) -> Answer {
        let (out_fd, off_p, count) = (a[0] as i32, a[2], a[3]);
        let r = self.targets[&pid].fds[&(a[1] as i32)];
        if r.is_dir {
            return Answer::Val(-(libc::EINVAL as i64));
        }
        let Some(out) = net::pidfd_getfd(pid, out_fd) else {
            return Answer::Val(-(libc::EBADF as i64));
        };
        if count == 0 {
            return Answer::Val(0);
        }
        let at = match self.user_offset(pid, off_p) {
            Ok(o) => o,
            Err(x) => return Answer::Val(-i64::from(x)),
        };
        let raw = out.as_raw_fd();
        let job = SpliceJob {
            session: Arc::clone(self.session.as_ref().expect("storage routed")),
            pid,
            handle: r.handle,
            pipe: out,
            from_file: true,
            at,
            file_off: off_p,
            chunk: (count as usize).min(64 << 10),
        };
        let mut p = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let ready = unsafe { libc::poll(&mut p, 1, 0) } == 1;
        if ready || fd_has(pid, out_fd, libc::O_NONBLOCK) {
            return Answer::Val(job.run());
        }
        answer_later(listener, id, move || job.run())
    }

    /// statfs of handle `h`, written to the target at `out`.
    fn statfs_out(&self, pid: i32, h: u32, out: u64) -> Answer {
        let mut buf = [0u8; std::mem::size_of::<libc::statfs>()];
        let (k, _) = self.call(Opcode::FStatFs, [h.into(), 0, 0, 0, 0], &[], Some(&mut buf));
        if k >= 0 && !self.write_mem(pid, out, &buf) {
            return Answer::Val(-(libc::EFAULT as i64));
        }
        Answer::Val(k)
    }

    /// A file offset argument: `None` for a null pointer, EFAULT, EINVAL when negative.
    fn user_offset(&self, pid: i32, p: u64) -> Result<Option<u64>, i32> {
        if p == 0 {
            return Ok(None);
        }
        let mut b = [0u8; 8];
        if !self.read_mem(pid, p, &mut b) {
            return Err(libc::EFAULT);
        }
        let o = i64::from_ne_bytes(b);
        if o < 0 {
            return Err(libc::EINVAL);
        }
        Ok(Some(o as u64))
    }

    /// copy_file_range with a routed file: between two files of the storage domain, done
    /// there by its kernel; EXDEV between a routed and a local one (callers fall back to
    /// read and write), as the shim answers.
    fn copy_range(&self, pid: i32, a: [u64; 6]) -> Answer {
        let (p_in, p_out, len, flags) = (a[1], a[3], a[4], a[5]);
        if flags != 0 {
            return Answer::Val(-(libc::EINVAL as i64));
        }
        let t = &self.targets[&pid];
        let (Some(rin), Some(rout)) = (t.fds.get(&(a[0] as i32)), t.fds.get(&(a[2] as i32))) else {
            return Answer::Val(-(libc::EXDEV as i64));
        };
        let (oin, oout) = match (self.user_offset(pid, p_in), self.user_offset(pid, p_out)) {
            (Ok(i), Ok(o)) => (i.unwrap_or(u64::MAX), o.unwrap_or(u64::MAX)),
            (Err(x), _) | (_, Err(x)) => return Answer::Val(-i64::from(x)),
        };
        let (n, _) = self.call(
            Opcode::CopyRange,
            [rin.handle.into(), oin, rout.handle.into(), oout, len],
            &[],
            None,
        );
        if n > 0 {
            for (p, o) in [(p_in, oin), (p_out, oout)] {
                if p != 0 && !self.write_mem(pid, p, &(o + n as u64).to_ne_bytes()) {
                    return Answer::Val(-(libc::EFAULT as i64));
                }
            }
        }
        Answer::Val(n)
    }

    /// The extended-attribute calls on remote handle `h` or export path `path`
    /// ([`Opcode::Xattr`], encoded as the shim encodes them).
    fn xattr(&self, pid: i32, nr: i64, h: Option<u32>, path: &[u8], a: [u64; 6]) -> Answer {
        use storage_call::{Xattr, XATTR_MAX};
        let Some(x) = Xattr::decode(nr, a) else {
            return Answer::Val(-(libc::ENOSYS as i64));
        };
        let mut name = vec![0u8; 256];
        if x.op != 2 {
            match Self::mem(pid).read_cstr(UserPtr(x.name), &mut name) {
                Ok(n) => name.truncate(n),
                Err(shim_core::MemError::TooLong) => return Answer::Val(-(libc::ERANGE as i64)),
                Err(_) => return Answer::Val(-(libc::EFAULT as i64)),
            }
        } else {
            name.clear();
        }
        if x.op == 1 && x.size > XATTR_MAX {
            return Answer::Val(-(libc::E2BIG as i64));
        }
        let mut value = Vec::new();
        if x.op == 1 && x.size > 0 {
            value.resize(x.size as usize, 0);
            if !self.read_mem(pid, x.buf, &mut value) {
                return Answer::Val(-(libc::EFAULT as i64));
            }
        }
        let mut out = vec![
            0u8;
            if x.answers_bytes() {
                x.room() as usize
            } else {
                0
            }
        ];
        let (k, _) = self.call(
            Opcode::Xattr,
            x.args(h.map_or(u64::MAX, u64::from)),
            &[path, &name, &value],
            (!out.is_empty()).then_some(&mut out[..]),
        );
        if k > 0
            && !out.is_empty()
            && !self.write_mem(pid, x.buf, &out[..(k as usize).min(out.len())])
        {
            return Answer::Val(-(libc::EFAULT as i64));
        }
        Answer::Val(k)
    }

    fn fd_op(&self, pid: i32, fd: i32, op: Opcode, mut args: [u64; 5]) -> Answer {
        match self.targets.get(&pid).and_then(|t| t.fds.get(&fd)) {
            Some(r) => {
                args[0] = r.handle.into();
                Answer::Val(self.call(op, args, &[], None).0)
            }
            None => Answer::Continue,
        }
    }

    fn dup_to(
        &mut self,
        listener: &OwnedFd,
        id: u64,
        pid: i32,
        r: Rem,
        to: Option<i32>,
        cloexec: bool,
    ) -> Answer {
        let src = match self.file_of(r.handle) {
            Ok(f) => f,
            Err(e) => return Answer::Val(-i64::from(e)),
        };
        let newfd = add_fd(listener.as_raw_fd(), id, to, cloexec, src);
        if newfd < 0 {
            return Answer::Val(newfd);
        }
        *self.refs.entry(r.handle).or_insert(0) += 1;
        // The number may have held another remote file (a dup2 onto it): that one is gone.
        let old = self
            .targets
            .get_mut(&pid)
            .expect("known")
            .fds
            .insert(newfd as i32, r);
        if let Some(o) = old {
            self.release(o.handle);
        }
        Answer::Sent
    }

    /// The supervisor's copy of the placeholder file for handle `h` (made on first use: a
    /// new file description of the private placeholder directory).
    fn file_of(&mut self, h: u32) -> Result<RawFd, i32> {
        if let Some(f) = self.files.get(&h) {
            return Ok(f.as_raw_fd());
        }
        let f = placeholder_copy(&self.placeholder)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let raw = f.as_raw_fd();
        self.files.insert(h, f);
        Ok(raw)
    }

    /// True when the target's fd `fd` still is the placeholder of handle `h`.
    fn still_placeholder(&self, pid: i32, fd: i32, h: u32) -> bool {
        let same = |f: &OwnedFd| {
            // SAFETY: kcmp with integer arguments only.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    pid,
                    std::process::id() as i32,
                    0, /* KCMP_FILE */
                    fd,
                    f.as_raw_fd(),
                )
            };
            r == 0
        };
        self.files.get(&h).is_some_and(same)
            || self.twins.get(&h).is_some_and(|t| t.iter().any(same))
    }

    /// Forgets the target's remote fd `fd` if the target closed or replaced it since.
    fn prune(&mut self, pid: i32, fd: i32) {
        let Some(r) = self.targets.get(&pid).and_then(|t| t.fds.get(&fd)).copied() else {
            return;
        };
        if !self.still_placeholder(pid, fd, r.handle) {
            if let Some(t) = self.targets.get_mut(&pid) {
                t.fds.remove(&fd);
            }
            self.release(r.handle);
        }
    }

    /// Every so often: drops closed placeholders and targets that have exited, releasing
    /// their handles (closes are not notified: see `supervised`).
    fn sweep(&mut self) {
        let pids: Vec<i32> = self.targets.keys().copied().collect();
        for pid in pids {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            {
                self.exited(pid);
                continue;
            }
            let fds: Vec<i32> = self.targets[&pid].fds.keys().copied().collect();
            for fd in fds {
                self.prune(pid, fd);
            }
        }
    }

    /// Forgets an exited target, releasing its remote files.
    fn exited(&mut self, pid: i32) {
        if let Some(t) = self.targets.remove(&pid) {
            for r in t.fds.values() {
                self.release(r.handle);
            }
        }
        self.tgid.retain(|_, p| *p != pid);
    }

    fn rw(&self, pid: i32, r: Rem, write: bool, buf: u64, len: usize, off: Option<u64>) -> i64 {
        rw_on(self.st(), pid, r.handle, write, buf, len, off)
    }

    /// read/write (and their offset and vector forms) on a remote FIFO, on a thread of its
    /// own that answers the call: the other end may be another supervised process whose
    /// calls this thread answers.
    fn fifo_io(
        &self,
        listener: &OwnedFd,
        id: u64,
        pid: i32,
        r: Rem,
        write: bool,
        segs: Vec<(u64, usize)>,
    ) -> Answer {
        let Some(session) = self.session.clone() else {
            return Answer::Val(-(libc::EIO as i64));
        };
        answer_later(listener, id, move || {
            let mut total = 0i64;
            for (base, len) in segs {
                let k = rw_on(&session, pid, r.handle, write, base, len, None);
                if k < 0 {
                    if total == 0 {
                        total = k;
                    }
                    break;
                }
                total += k;
                if (k as usize) < len {
                    break;
                }
            }
            total
        })
    }

    fn stat_out(
        &self,
        pid: i32,
        nr: i64,
        a: [u64; 6],
        op: Opcode,
        args: [u64; 5],
        inputs: &[&[u8]],
    ) -> Answer {
        let mut x = [0u8; std::mem::size_of::<libc::statx>()];
        let (k, _) = self.call(op, args, inputs, Some(&mut x));
        if k < 0 {
            return Answer::Val(k);
        }
        // SAFETY: statx is plain data of exactly this size.
        let sx: libc::statx = unsafe { std::ptr::read_unaligned(x.as_ptr().cast()) };
        let (addr, bytes): (u64, Vec<u8>) = if nr == libc::SYS_statx {
            (a[4], x.to_vec())
        } else {
            let st = statconv::statx_to_stat(&sx);
            let addr = match nr {
                libc::SYS_fstat | libc::SYS_stat | libc::SYS_lstat => a[1],
                _ => a[2],
            };
            // SAFETY: `st` is plain data; viewing it as bytes is sound.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&st as *const libc::stat).cast::<u8>(),
                    std::mem::size_of::<libc::stat>(),
                )
            };
            (addr, b.to_vec())
        };
        if !self.write_mem(pid, addr, &bytes) {
            return Answer::Val(-(libc::EFAULT as i64));
        }
        Answer::Val(0)
    }

    fn path_call(
        &mut self,
        listener: &OwnedFd,
        id: u64,
        pid: i32,
        nr: i64,
        a: [u64; 6],
        rp: &[u8],
    ) -> Answer {
        let call0 = |s: &Self, op, args| Answer::Val(s.call(op, args, &[rp], None).0);
        match nr {
            libc::SYS_open | libc::SYS_openat | libc::SYS_creat => {
                let (flags, mode) = match nr {
                    libc::SYS_open => (a[1], a[2]),
                    libc::SYS_creat => (
                        (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
                        a[1],
                    ),
                    _ => (a[2], a[3]),
                };
                let umask = proc_umask(pid);
                let args = [flags, mode & 0o7777 & !umask, 0, 0, 0];
                if flags & (libc::O_NONBLOCK | libc::O_PATH) as u64 == 0 && self.is_fifo(rp, flags)
                {
                    // Opening a FIFO waits for its other end, which another supervised
                    // process opens through this same thread: open it on a thread of its own.
                    let (Some(tx), Some(session)) = (self.events.clone(), self.session.clone())
                    else {
                        return Answer::Val(-(libc::EIO as i64));
                    };
                    let rp = rp.to_vec();
                    std::thread::spawn(move || {
                        let mut args = args;
                        let (handle, st_mode) = storage_call::call_on(
                            &session,
                            Opcode::OpenAt,
                            &mut args,
                            &[&rp],
                            None,
                        );
                        let _ = tx.send(Event::Opened {
                            id,
                            pid,
                            flags,
                            rp,
                            handle,
                            st_mode,
                        });
                    });
                    return Answer::Sent;
                }
                let (h, st_mode) = self.call(Opcode::OpenAt, args, &[rp], None);
                self.finish_open(listener, id, pid, flags, rp, h, st_mode)
            }
            libc::SYS_stat | libc::SYS_lstat | libc::SYS_newfstatat | libc::SYS_statx => {
                let flags = match nr {
                    libc::SYS_lstat => libc::AT_SYMLINK_NOFOLLOW as u64,
                    libc::SYS_newfstatat => a[3],
                    libc::SYS_statx => a[2],
                    _ => 0,
                } & libc::AT_SYMLINK_NOFOLLOW as u64;
                self.stat_out(
                    pid,
                    nr,
                    a,
                    Opcode::StatAt,
                    [flags, libc::STATX_BASIC_STATS as u64, 0, 0, 0],
                    &[rp],
                )
            }
            libc::SYS_access => call0(self, Opcode::AccessAt, [a[1], 0, 0, 0, 0]),
            libc::SYS_faccessat => call0(self, Opcode::AccessAt, [a[2], 0, 0, 0, 0]),
            libc::SYS_faccessat2 => call0(self, Opcode::AccessAt, [a[2], a[3], 0, 0, 0]),
            libc::SYS_mkdir => call0(
                self,
                Opcode::MkdirAt,
                [0, a[1] & 0o7777 & !proc_umask(pid), 0, 0, 0],
            ),
            libc::SYS_mkdirat => call0(
                self,
                Opcode::MkdirAt,
                [0, a[2] & 0o7777 & !proc_umask(pid), 0, 0, 0],
            ),
            libc::SYS_mknod | libc::SYS_mknodat => {
                let (mode, dev) = if nr == libc::SYS_mknod {
                    (a[1], a[2])
                } else {
                    (a[2], a[3])
                };
                let mode = (mode & libc::S_IFMT as u64) | (mode & 0o7777 & !proc_umask(pid));
                call0(self, Opcode::MknodAt, [0, mode, dev, 0, 0])
            }
            libc::SYS_rmdir => call0(
                self,
                Opcode::UnlinkAt,
                [libc::AT_REMOVEDIR as u64, 0, 0, 0, 0],
            ),
            libc::SYS_unlink => call0(self, Opcode::UnlinkAt, [0; 5]),
            libc::SYS_unlinkat => call0(self, Opcode::UnlinkAt, [a[2], 0, 0, 0, 0]),
            libc::SYS_fchmodat2 => call0(self, Opcode::ChmodAt, [a[3], a[2], 0, 0, 0]),
            libc::SYS_getxattr
            | libc::SYS_lgetxattr
            | libc::SYS_listxattr
            | libc::SYS_llistxattr
            | libc::SYS_setxattr
            | libc::SYS_lsetxattr
            | libc::SYS_removexattr
            | libc::SYS_lremovexattr => self.xattr(pid, nr, None, rp, a),
            libc::SYS_statfs => {
                let (h, _) = self.call(
                    Opcode::OpenAt,
                    [libc::O_PATH as u64, 0, 0, 0, 0],
                    &[rp],
                    None,
                );
                if h < 0 {
                    return Answer::Val(h);
                }
                let r = self.statfs_out(pid, h as u32, a[1]);
                self.call(Opcode::Close, [h as u64, 0, 0, 0, 0], &[], None);
                r
            }
            libc::SYS_chmod => call0(self, Opcode::ChmodAt, [0, a[1], 0, 0, 0]),
            libc::SYS_fchmodat => call0(self, Opcode::ChmodAt, [0, a[2], 0, 0, 0]),
            libc::SYS_chown => call0(
                self,
                Opcode::ChownAt,
                [0, a[1] as u32 as u64, a[2] as u32 as u64, 0, 0],
            ),
            libc::SYS_lchown => call0(
                self,
                Opcode::ChownAt,
                [
                    libc::AT_SYMLINK_NOFOLLOW as u64,
                    a[1] as u32 as u64,
                    a[2] as u32 as u64,
                    0,
                    0,
                ],
            ),
            libc::SYS_fchownat => call0(
                self,
                Opcode::ChownAt,
                [a[4], a[2] as u32 as u64, a[3] as u32 as u64, 0, 0],
            ),
            libc::SYS_truncate => call0(self, Opcode::TruncateAt, [0, a[1], 0, 0, 0]),
            libc::SYS_readlink | libc::SYS_readlinkat => {
                let (buf, size) = if nr == libc::SYS_readlink {
                    (a[1], a[2])
                } else {
                    (a[2], a[3])
                };
                if (size as i64) <= 0 {
                    return Answer::Val(-(libc::EINVAL as i64));
                }
                let mut out = vec![0u8; paths::PATH_MAX];
                let (k, _) = self.call(Opcode::ReadLinkAt, [0; 5], &[rp], Some(&mut out));
                if k < 0 {
                    return Answer::Val(k);
                }
                let t = &out[..(k as usize).min(out.len())];
                let k = t.len().min(size as usize);
                if !self.write_mem(pid, buf, &t[..k]) {
                    return Answer::Val(-(libc::EFAULT as i64));
                }
                Answer::Val(k as i64)
            }
            libc::SYS_utimensat => self.utimens(pid, u64::MAX, a[3], a[2], rp),
            libc::SYS_chdir => {
                let mut x = [0u8; std::mem::size_of::<libc::statx>()];
                let (k, _) = self.call(
                    Opcode::StatAt,
                    [0, libc::STATX_TYPE as u64, 0, 0, 0],
                    &[rp],
                    Some(&mut x),
                );
                if k < 0 {
                    return Answer::Val(k);
                }
                // SAFETY: statx is plain data of exactly this size.
                let sx: libc::statx = unsafe { std::ptr::read_unaligned(x.as_ptr().cast()) };
                if u32::from(sx.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
                    return Answer::Val(-(libc::ENOTDIR as i64));
                }
                let full =
                    paths::join(self.mount.as_bytes(), rp.strip_prefix(b"/").unwrap_or(rp)).ok();
                self.targets.get_mut(&pid).expect("known").cwd = full;
                Answer::Val(0)
            }
            // A routed path, a call the supervised mode does not execute remotely: an error,
            // never the call on a local file of the same name.
            _ => Answer::Val(-i64::from(match shim_core::decode(nr, a) {
                // Callers fall back to the older call (openat, utimensat).
                Syscall::OpenAt2 { .. } | Syscall::Utimes { .. } => libc::ENOSYS,
                _ => libc::EOPNOTSUPP,
            })),
        }
    }
}

/// The source of every placeholder: a descriptor of a private, already removed directory.
/// seccomp's ADDFD cannot install O_PATH descriptors, and this is the next best thing: read
/// gives EISDIR, write EBADF, so any use the supervisor does not intercept fails loudly, and
/// nothing shared can be reached through it. Its name is random and created exclusively:
/// another user can neither predict it nor make the supervisor fail by planting something
/// there first.
fn private_placeholder() -> Result<OwnedFd> {
    let dir = (0..16)
        .find_map(|_| {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).ok()?;
            let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let d = std::env::temp_dir().join(format!("virtuos-placeholder-{name}"));
            std::fs::create_dir(&d).ok().map(|()| d)
        })
        .context("creating a private placeholder directory in the temporary directory")?;
    let placeholder = OwnedFd::from(
        std::fs::File::open(&dir).with_context(|| format!("opening {}", dir.display()))?,
    );
    std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(placeholder)
}

/// A new file description of `placeholder` (one per remote handle, so that `kcmp` tells
/// whether a target's fd still is that handle's).
fn placeholder_copy(placeholder: &OwnedFd) -> std::io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", placeholder.as_raw_fd());
    std::fs::File::open(path).map(OwnedFd::from)
}

/// What a redirected program handed over when it exec'd the static program now supervised
/// (`VIRTUOS_EXEC`, the shim's own hand-over), adopted into this supervisor's sessions.
struct Handover {
    /// Remote files: (fd, the file, its directory path if a directory).
    files: Vec<(i32, Rem, Option<Vec<u8>>)>,
    /// Per handle, this process's copy of the placeholder the program gets for it.
    copies: Vec<(u32, OwnedFd)>,
    /// Sockets: the program's ends of new pairs.
    sockets: Vec<OwnedFd>,
    /// (descriptor here, the fd number it takes in the program), for each of both kinds.
    moves: Vec<(RawFd, RawFd)>,
    /// The fds this process inherited for the program.
    inherited: Vec<i32>,
}

impl Handover {
    /// Takes the hand-over named by the environment (removing the entry), if it is valid:
    /// a sealed memfd owned by this uid whose token matches and that this very process wrote
    /// before its exec. Anything else is a clean start.
    fn take(storage: Option<&Session>, net: Option<&net::Net>, placeholder: &OwnedFd) -> Handover {
        let mut h = Handover {
            files: Vec::new(),
            copies: Vec::new(),
            sockets: Vec::new(),
            moves: Vec::new(),
            inherited: Vec::new(),
        };
        let Some(v) = std::env::var_os(exec_state::ENV_EXEC) else {
            return h;
        };
        // SAFETY: run is called before this process starts threads of its own that read
        // the environment.
        unsafe { std::env::remove_var(exec_state::ENV_EXEC) };
        let Some(st) = Self::state(v.as_encoded_bytes()) else {
            return h;
        };
        let adopt = |s: &Session, t: u64| {
            t != 0 && {
                let mut args = [t, 0, 0, 0, 0];
                storage_call::call_on(s, Opcode::Adopt, &mut args, &[], None).0 >= 0
            }
        };
        let files_ok = storage.is_some_and(|s| adopt(s, st.tokens[0]));
        let socks_ok = net.is_some_and(|n| n.adopt_token(st.tokens[1]));
        // One pair or placeholder per handle: fds that share a file description (a
        // connection dup'd onto 0 and 1) share it here too.
        let mut ends: HashMap<(bool, u32), RawFd> = HashMap::new();
        for e in st.entries {
            let (fd, handle, is_dir, is_net, listening, dir) =
                (e.fd, e.handle, e.is_dir, e.net, e.listening, e.dir);
            // A FIFO the shim opened: its calls run on threads of their own here too.
            let fifo = e.may_block;
            h.inherited.push(fd);
            if let Some(&raw) = ends.get(&(is_net, handle)) {
                h.moves.push((raw, fd));
                if !is_net {
                    let r = Rem {
                        handle,
                        is_dir,
                        fifo,
                    };
                    h.files.push((fd, r, is_dir.then_some(dir)));
                }
                continue;
            }
            if is_net {
                if let (true, Some(n)) = (socks_ok, net) {
                    if let Ok(end) = n.adopt(handle, listening) {
                        ends.insert((true, handle), end.as_raw_fd());
                        h.moves.push((end.as_raw_fd(), fd));
                        h.sockets.push(end);
                    }
                }
            } else if files_ok {
                // A placeholder of this supervisor's own takes the shim's place at `fd` (ADDFD,
                // which dup and dup2 use, cannot install the shim's O_PATH ones).
                if let Ok(copy) = placeholder_copy(placeholder) {
                    let r = Rem {
                        handle,
                        is_dir,
                        fifo,
                    };
                    ends.insert((false, handle), copy.as_raw_fd());
                    h.moves.push((copy.as_raw_fd(), fd));
                    h.files.push((fd, r, is_dir.then_some(dir)));
                    h.copies.push((handle, copy));
                }
            }
        }
        h
    }

    fn state(v: &[u8]) -> Option<exec_state::State> {
        let colon = v.iter().position(|&c| c == b':')?;
        let fd: RawFd = std::str::from_utf8(&v[..colon]).ok()?.parse().ok()?;
        let token = exec_state::unhex(&v[colon + 1..])?;
        // SAFETY: fcntl with integer arguments.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        if seals < 0 || seals & want != want {
            return None;
        }
        // SAFETY: the fd was inherited for us; from here on it is ours (closed on drop).
        let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = f.metadata().ok()?;
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } || meta.len() > 16 << 20 {
            return None;
        }
        use std::os::unix::fs::FileExt;
        let mut data = vec![0u8; meta.len() as usize];
        f.read_exact_at(&mut data, 0).ok()?;
        let st = exec_state::State::decode(&data)?;
        (st.token == token && st.pid == i64::from(std::process::id() as i32)).then_some(st)
    }
}

/// The kernel's "restart this call after the signal" answer: a call answered so is restarted
/// (no handler, or one with SA_RESTART) or fails with EINTR, exactly as a blocking call that
/// a signal interrupts in the kernel.
const ERESTARTSYS: i64 = 512;

/// True when thread `tid` has a signal pending that it does not block (its own or its
/// process's: `SigPnd`/`ShdPnd` less `SigBlk` in /proc/TID/status).
fn signal_pending(tid: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    let mask = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

/// A pidfd for process `pid`.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: pidfd_open returned a new descriptor; we own it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Watches processes for their exit on a thread of its own, which reports each as
/// [`Event::Exited`] (its pidfd polls readable) and sleeps in between (no periodic wake-up).
/// The thread ends when this is dropped.
struct ExitWatch {
    tx: std::sync::mpsc::Sender<(i32, OwnedFd)>,
    wake: Arc<OwnedFd>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ExitWatch {
    fn start(events: std::sync::mpsc::Sender<Event>) -> std::io::Result<ExitWatch> {
        // SAFETY: eventfd with constant flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this descriptor; we own it.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<(i32, OwnedFd)>();
        let (w, st) = (Arc::clone(&wake), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut watched: Vec<(i32, OwnedFd)> = Vec::new();
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                watched.extend(rx.try_iter());
                let mut fds: Vec<libc::pollfd> = std::iter::once(w.as_raw_fd())
                    .chain(watched.iter().map(|(_, f)| f.as_raw_fd()))
                    .map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                // SAFETY: `fds` is a valid array of pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if fds[0].revents != 0 {
                    let mut v = [0u8; 8];
                    // SAFETY: reads 8 bytes into a live buffer from our non-blocking eventfd.
                    unsafe { libc::read(w.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
                }
                let mut i = 1;
                watched.retain(|(pid, _)| {
                    let gone = fds[i].revents != 0;
                    i += 1;
                    if gone {
                        let _ = events.send(Event::Exited(*pid));
                    }
                    !gone
                });
            }
        });
        Ok(ExitWatch { tx, wake, stop })
    }

    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Reports `pid`'s exit (`pfd` its pidfd) from now on.
    fn watch(&self, pid: i32, pfd: OwnedFd) {
        if self.tx.send((pid, pfd)).is_ok() {
            self.kick();
        }
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kick();
    }
}

/// A read or write of `len` bytes at the target's `buf` on remote handle `h` (at `off`, or
/// at the file offset), in window-sized chunks.
fn rw_on(
    session: &Session,
    pid: i32,
    h: u32,
    write: bool,
    buf: u64,
    len: usize,
    off: Option<u64>,
) -> i64 {
    let mem = ProcessMemory::new(pid, shim_core::sys::Real);
    let w = session.layout().window as usize;
    let mut done = 0usize;
    let mut tmp = vec![0u8; len.min(w)];
    while done < len || len == 0 {
        let chunk = (len - done).min(w);
        let at = off.map(|o| o + done as u64);
        let (op, mut args) = match (write, at) {
            (false, None) => (Opcode::Read, [h.into(), 0, 0, 0, 0]),
            (false, Some(o)) => (Opcode::PRead, [h.into(), o, 0, 0, 0]),
            (true, None) => (Opcode::Write, [h.into(), 0, 0, 0, 0]),
            (true, Some(o)) => (Opcode::PWrite, [h.into(), o, 0, 0, 0]),
        };
        let k = if write {
            if mem
                .read(UserPtr(buf + done as u64), &mut tmp[..chunk])
                .is_err()
            {
                return if done > 0 {
                    done as i64
                } else {
                    -(libc::EFAULT as i64)
                };
            }
            storage_call::call_on(session, op, &mut args, &[&tmp[..chunk]], None).0
        } else {
            let k = storage_call::call_on(session, op, &mut args, &[], Some(&mut tmp[..chunk])).0;
            if k > 0
                && mem
                    .write(UserPtr(buf + done as u64), &tmp[..k as usize])
                    .is_err()
            {
                return -(libc::EFAULT as i64);
            }
            k
        };
        if k < 0 {
            return if done > 0 { done as i64 } else { k };
        }
        done += k as usize;
        if (k as usize) < chunk || len == 0 {
            break;
        }
    }
    done as i64
}

/// One splice (or sendfile) between a routed file and a local pipe (or fd): see
/// [`Supervisor::splice`] and [`Supervisor::sendfile`].
struct SpliceJob {
    session: Arc<Session>,
    pid: i32,
    handle: u32,
    pipe: OwnedFd,
    from_file: bool,
    /// The explicit file offset (`*off`), if one was given.
    at: Option<u64>,
    /// Where the explicit offset lives in the target (0: none).
    file_off: u64,
    chunk: usize,
}

impl SpliceJob {
    fn call(&self, op: Opcode, args: [u64; 5], inputs: &[&[u8]], out: Option<&mut [u8]>) -> i64 {
        let mut args = args;
        storage_call::call_on(&self.session, op, &mut args, inputs, out).0
    }

    fn run(&self) -> i64 {
        let h = u64::from(self.handle);
        let window = self.session.layout().window as usize;
        let mut buf = vec![0u8; self.chunk.min(window)];
        let (n, moved_to) = if self.from_file {
            let at = match self.at {
                Some(o) => o,
                None => match self.call(
                    Opcode::LSeek,
                    [h, 0, libc::SEEK_CUR as u64, 0, 0],
                    &[],
                    None,
                ) {
                    x if x < 0 => return x,
                    x => x as u64,
                },
            };
            let n = self.call(Opcode::PRead, [h, at, 0, 0, 0], &[], Some(&mut buf));
            if n <= 0 {
                return n;
            }
            // SAFETY: writes `n` bytes of a live buffer to our copy of the target's pipe.
            let w = unsafe { libc::write(self.pipe.as_raw_fd(), buf.as_ptr().cast(), n as usize) };
            if w < 0 {
                return -i64::from(
                    std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO),
                );
            }
            if self.at.is_none() && w > 0 {
                self.call(
                    Opcode::LSeek,
                    [h, at + w as u64, libc::SEEK_SET as u64, 0, 0],
                    &[],
                    None,
                );
            }
            (w as i64, at + w as u64)
        } else {
            // SAFETY: reads into a live buffer from our copy of the target's pipe.
            let n =
                unsafe { libc::read(self.pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return if n < 0 {
                    -i64::from(
                        std::io::Error::last_os_error()
                            .raw_os_error()
                            .unwrap_or(libc::EIO),
                    )
                } else {
                    0
                };
            }
            let data = &buf[..n as usize];
            let w = match self.at {
                Some(o) => self.call(Opcode::PWrite, [h, o, 0, 0, 0], &[data], None),
                None => self.call(Opcode::Write, [h, 0, 0, 0, 0], &[data], None),
            };
            (w, self.at.unwrap_or(0) + w.max(0) as u64)
        };
        if n > 0 && self.file_off != 0 {
            let mem = ProcessMemory::new(self.pid, shim_core::sys::Real);
            if mem
                .write(UserPtr(self.file_off), &moved_to.to_ne_bytes())
                .is_err()
            {
                return -(libc::EFAULT as i64);
            }
        }
        n
    }
}

/// Installs `src` in the target as its answer to notification `id` (`SECCOMP_ADDFD_FLAG_SEND`:
/// the fd number becomes the call's result), at `newfd` if given. The fd number, or -errno.
fn add_fd(listener: RawFd, id: u64, newfd: Option<i32>, cloexec: bool, src: RawFd) -> i64 {
    install_fd(listener, id, newfd, cloexec, src, true)
}

/// Installs `src` in the target during notification `id`, at `newfd` if given (replacing
/// what was there, as dup2 does), answering the call with the fd number if `send`. The fd
/// number, or -errno.
fn install_fd(
    listener: RawFd,
    id: u64,
    newfd: Option<i32>,
    cloexec: bool,
    src: RawFd,
    send: bool,
) -> i64 {
    #[repr(C)]
    struct AddFd {
        id: u64,
        flags: u32,
        srcfd: u32,
        newfd: u32,
        newfd_flags: u32,
    }
    let a = AddFd {
        id,
        flags: if send { SECCOMP_ADDFD_FLAG_SEND } else { 0 }
            | if newfd.is_some() {
                SECCOMP_ADDFD_FLAG_SETFD
            } else {
                0
            },
        srcfd: src as u32,
        newfd: newfd.unwrap_or(0) as u32,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: `a` is a valid seccomp_notif_addfd.
    let r = unsafe { libc::ioctl(listener, NOTIF_ADDFD as _, &a) };
    if r < 0 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as i64)
    } else {
        r as i64
    }
}

/// True when the target's `fd` has status flag `flag` (`flags:` of `/proc/PID/fdinfo/FD`,
/// where O_CLOEXEC stands for the close-on-exec flag).
fn fd_has(pid: i32, fd: i32, flag: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|f| f & i64::from(flag) != 0)
}

/// Runs `work` on a thread of its own, which answers notification `id` with its result: for a
/// call that may wait (for another supervised process, often), so that the answering thread
/// goes on serving.
fn answer_later(
    listener: &OwnedFd,
    id: u64,
    work: impl FnOnce() -> i64 + Send + 'static,
) -> Answer {
    let Ok(l) = listener.try_clone() else {
        return Answer::Val(-(libc::ENOMEM as i64));
    };
    std::thread::spawn(move || send_answer(l.as_raw_fd(), id, Answer::Val(work())));
    Answer::Sent
}

/// Answers notification `id` (nothing to do for [`Answer::Sent`]).
fn send_answer(listener: RawFd, id: u64, answer: Answer) {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: 0,
        flags: 0,
    };
    match answer {
        Answer::Continue => resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE,
        Answer::Val(v) if (-4095..0).contains(&v) => resp.error = v as i32,
        Answer::Val(v) => resp.val = v,
        Answer::Sent => return,
    }
    // SAFETY: `resp` is a valid seccomp_notif_resp.
    unsafe { libc::ioctl(listener, NOTIF_SEND as _, &resp) };
}

/// True while notification `id` still waits for its answer (its thread was not killed).
fn notif_id_valid(listener: RawFd, id: u64) -> bool {
    // SAFETY: NOTIF_ID_VALID reads one u64 from a live variable.
    unsafe { libc::ioctl(listener, NOTIF_ID_VALID as _, &id) == 0 }
}

/// The target's umask, from /proc (the storage domain creates with the mode it is given).
fn proc_umask(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u64::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}
