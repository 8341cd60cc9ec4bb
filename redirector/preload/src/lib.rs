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

pub mod config;
pub mod cwd;
pub mod dispatch;
pub mod exec;
pub mod fdtable;
pub mod paths;
pub mod remote;
pub mod sys;

#[cfg(not(test))]
mod exports;

use std::sync::atomic::{AtomicU64, Ordering};

use abi::Opcode;

/// Token of a pending fork snapshot (between the atfork prepare and child handlers).
#[cfg_attr(test, allow(dead_code))]
static FORK_TOKEN: AtomicU64 = AtomicU64::new(0);

#[cfg_attr(test, allow(dead_code))]
extern "C" fn before_fork() {
    if !fdtable::any() && cwd::get().is_none() {
        return;
    }
    let mut args = [0u64; 5];
    let (r, token) = remote::call_aux(Opcode::PrepareClone, &mut args, &[], None);
    FORK_TOKEN.store(if r < 0 { 0 } else { token }, Ordering::Relaxed);
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn after_fork_parent() {
    FORK_TOKEN.store(0, Ordering::Relaxed);
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn after_fork_child() {
    // The child must not use the parent's rings: start its own session and adopt the
    // parent's open files, which it shares as a forked process shares them on Linux.
    remote::abandon();
    let token = FORK_TOKEN.swap(0, Ordering::Relaxed);
    if token != 0 {
        // Connects (lazily) and adopts; without a token the child connects on first use.
        let mut args = [token, 0, 0, 0, 0];
        let (r, _) = remote::call_aux(Opcode::Adopt, &mut args, &[], None);
        if r < 0 {
            eprintln!(
                "virtuos: child {} could not adopt its parent's remote files (errno {})",
                std::process::id(),
                -r
            );
        }
    }
}

/// Runs when the library is loaded.
#[cfg(not(test))]
extern "C" fn virtuos_init() {
    let cfg = config::get();
    if cfg.storage_sock.is_none() {
        return;
    }
    dispatch::init_umask();
    // Restores what an exec carried over (connecting to the storage domain if so).
    exec::restore();
    // SAFETY: the handlers are plain extern "C" functions valid for the process's life.
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        );
    }
    if let Err(e) = sys::install_sigsys_handler() {
        eprintln!(
            "virtuos: cannot install the SIGSYS handler (errno {}); running without the safety net",
            -e
        );
        return;
    }
    let nrs: Vec<u32> = dispatch::ROUTED.iter().map(|&n| n as u32).collect();
    if let Err(e) = sys::install_filter(&nrs) {
        eprintln!("virtuos: cannot install the seccomp filter (errno {}); libc-internal calls will not be routed", -e);
    }
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = virtuos_init;
