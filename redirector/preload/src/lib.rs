//! `libvirtuos_preload.so`: the preload shim of virtuos.
//!
//! Loaded into an unmodified, dynamically linked program by `virtuos-redirect run` (via
//! `LD_PRELOAD`), it routes file system calls on paths under the storage mount prefix to the
//! storage domain and leaves everything else local:
//!
//! * [`dispatch`] decides and executes every routed system call;
//! * interposed libc functions (`read`, `write`, `openat`, `stat`, ...) call it directly — the
//!   fast path, no trap;
//! * a seccomp filter traps every routed system call that does not come from the shim's own
//!   trampoline (libc internals such as `fopen`'s `openat` or `opendir`'s `getdents64`, raw
//!   `syscall()`), and the SIGSYS handler hands it to the same dispatcher — the safety net;
//! * [`fdtable`] keeps remote files as real local placeholder fds, so numbering is Linux's;
//! * fork (pthread_atfork) and exec ([`exec`]) carry the session's open files over.

pub mod alloc;
pub mod config;
pub mod cwd;
pub mod diag;
pub mod dispatch;
pub mod exec;
pub mod exec_state;
pub mod fdtable;
pub mod lock;
pub mod net;
pub mod netpoll;
pub mod pass;
pub mod paths;
pub mod proc;
pub mod remote;
pub mod reserve;
pub mod signals;
pub mod stack;
pub mod statconv;
pub mod storage_call;
pub mod sys;

/// Every allocation of the shim's Rust code comes from its own lock-free allocator, never
/// from the program's `malloc` (see [`alloc`]).
#[global_allocator]
static ALLOC: alloc::ShimAlloc = alloc::ShimAlloc::new();

#[cfg(not(test))]
mod exports;

use std::sync::atomic::{AtomicU64, Ordering};

use abi::Opcode;

/// Tokens of pending fork snapshots (storage, network), between the atfork prepare and
/// child handlers.
#[cfg_attr(test, allow(dead_code))]
static FORK_TOKEN: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

#[cfg_attr(test, allow(dead_code))]
fn domains() -> [&'static remote::Domain; 2] {
    [&remote::STORAGE, &remote::NET]
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn before_fork() {
    crate::dispatch::shim_code(before_fork_sessions);
    // Last: every shim lock, so that the child inherits none held by another thread.
    lock::acquire_all_for_fork();
}

#[cfg_attr(test, allow(dead_code))]
fn before_fork_sessions() {
    for (i, d) in domains().into_iter().enumerate() {
        if !fdtable::any_of(d.net) && (d.net || cwd::get().is_none()) {
            continue;
        }
        let mut args = [0u64; 5];
        let (r, token) = d.call_aux(Opcode::PrepareClone, &mut args, &[], None);
        FORK_TOKEN[i].store(if r < 0 { 0 } else { token }, Ordering::Relaxed);
    }
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn after_fork_parent() {
    lock::release_all_after_fork();
    // The tokens stay for the interposed `fork` (`exports::fork`), which alone learns the
    // child's pid: [`fork_done`] binds them to it. A fork that glibc makes internally leaves
    // them to expire, as before, and the next fork replaces them.
}

/// After the interposed `fork` returned `pid` in the parent: tells each domain which child
/// its fork token was made for, so that a child that dies before adopting releases what the
/// token holds within a second (`BindClone`); a failed fork gives the tokens back at once.
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn fork_done(pid: libc::pid_t) {
    crate::dispatch::shim_code(|| fork_done_sessions(pid));
}

fn fork_done_sessions(pid: libc::pid_t) {
    for (i, d) in domains().into_iter().enumerate() {
        let token = FORK_TOKEN[i].swap(0, Ordering::Relaxed);
        if token == 0 {
            continue;
        }
        let (op, arg) = if pid > 0 {
            (Opcode::BindClone, pid as u64)
        } else {
            (Opcode::DropClone, 0)
        };
        let _ = d.call_aux(op, &mut [token, arg, 0, 0, 0], &[], None);
    }
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn after_fork_child() {
    crate::dispatch::shim_code(after_fork_child_sessions);
}

#[cfg_attr(test, allow(dead_code))]
fn after_fork_child_sessions() {
    lock::release_all_after_fork();
    // The child's memory is its own now.
    proc::set_owner();
    // The kernel copies a forking process's fd table before its memory: another thread of
    // the parent that created or replaced a remote fd in between leaves the child an entry
    // whose number is not (or no longer) a placeholder in its kernel table. Drop those.
    fdtable::for_each(|fd, _| {
        if !proc::is_placeholder(fd) {
            let _ = fdtable::clear(fd);
        }
    });
    // The child must not use the parent's rings: start its own sessions and adopt the
    // parent's open files and sockets, which it shares as a forked process shares them.
    remote::abandon();
    net::after_fork_child();
    for (i, d) in domains().into_iter().enumerate() {
        let token = FORK_TOKEN[i].swap(0, Ordering::Relaxed);
        if token != 0 {
            // Connects and adopts; without a token the child connects on first use.
            let mut args = [token, 0, 0, 0, 0];
            let (r, _) = d.call_aux(Opcode::Adopt, &mut args, &[], None);
            if r < 0 {
                crate::diag!(
                    "virtuos: child {} could not adopt its parent's remote {} (errno {})",
                    crate::diag::pid(),
                    if d.net { "sockets" } else { "files" },
                    -r
                );
            }
        }
    }
}

/// With `VIRTUOS_REPORT` set, prints this process's routed and trapped call counts at exit,
/// so a hot call on the slow (trapped) path is visible at once.
#[cfg_attr(test, allow(dead_code))]
extern "C" fn report_at_exit() {
    // Programs often close stderr in their own exit handlers, which run before this one:
    // write to the copy taken at start-up.
    diag::emit_to(
        REPORT_FD.load(Ordering::Relaxed),
        format_args!(
            "virtuos: pid {}: {} calls routed to the storage domain, {} to the network domain, {} calls trapped (slow path)",
            diag::pid(),
            remote::STORAGE.routed.load(Ordering::Relaxed),
            remote::NET.routed.load(Ordering::Relaxed),
            sys::TRAPPED.load(Ordering::Relaxed)
        ),
    );
}

/// A close-on-exec copy of stderr for the exit report, at a reserved number.
#[cfg_attr(test, allow(dead_code))]
static REPORT_FD: AtomicU64 = AtomicU64::new(2);

/// The shim moved one of its own descriptors (not a session's) from `old` to `new`.
pub(crate) fn renumber_own_fd(old: i32, new: i32) -> bool {
    exec::renumber(old, new)
        || REPORT_FD
            .compare_exchange(old as u64, new as u64, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}

/// Runs when the library is loaded: everything the shim needs is set up here, once, so that
/// nothing is initialised lazily on a path an interposed call or the trap can reach.
#[cfg(not(test))]
extern "C" fn virtuos_init() {
    let cfg = config::init();
    proc::set_owner();
    if cfg.storage_sock.is_none() && cfg.net_sock.is_none() {
        return;
    }
    dispatch::init_umask();
    exports::resolve_real();
    stack::init();
    if cfg.report {
        let fd = sys::sys(libc::SYS_fcntl, &[2, libc::F_DUPFD_CLOEXEC as u64, 3]);
        if fd >= 0 {
            let fd = reserve::place_raw(fd as i32, true);
            REPORT_FD.store(fd as u64, Ordering::Relaxed);
        }
        // SAFETY: registering a plain extern "C" function that lives as long as the process.
        unsafe { libc::atexit(report_at_exit) };
    }
    remote::open_socket_dirs();
    // Restores what an exec carried over (connecting to the domains if so).
    dispatch::shim_code(exec::restore);
    // SAFETY: the handlers are plain extern "C" functions valid for the process's life.
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        );
    }
    if let Err(e) = sys::install_sigsys_handler() {
        diag!(
            "virtuos: cannot install the SIGSYS handler (errno {}); running without the safety net",
            -e
        );
        return;
    }
    use shim_core::table::Class;
    let nrs = shim_core::table::numbers(if cfg.net_sock.is_some() {
        &[Class::Storage, Class::Process, Class::Signal, Class::Net]
    } else {
        &[Class::Storage, Class::Process, Class::Signal]
    });
    match sys::install_filter(&nrs) {
        Ok(()) => {}
        Err(e) if e == -(libc::ENOMEM as i64) => diag!(
            "virtuos: cannot install the seccomp filter: the filters of this exec chain's earlier images fill the kernel's limit; libc-internal calls will not be routed"
        ),
        Err(e) => diag!("virtuos: cannot install the seccomp filter (errno {}); libc-internal calls will not be routed", -e),
    }
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = virtuos_init;
