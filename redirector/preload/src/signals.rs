//! The program's signal masks and actions, with SIGSYS kept out of every mask the kernel
//! applies and put back in every mask the program reads.
//!
//! A blocked SIGSYS makes the kernel kill the process at the next trap, so SIGSYS never enters
//! a mask that can be in effect while the program runs: its blocked mask (`rt_sigprocmask`),
//! a handler's mask (`rt_sigaction`'s `sa_mask`, applied while that handler runs) and a wait's
//! mask (`rt_sigsuspend`). What the program reads back (the old mask, the old action) holds
//! SIGSYS exactly where it asked for it, so a program that saves and compares masks sees
//! Linux's answers. A program's SIGSYS action itself is never installed (the shim's stays).
//!
//! Async-signal-safe: the per-thread belief is a const `Cell` (static TLS, no registration)
//! and the per-signal one an atomic; nothing allocates.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, syscall6, SIGSYS_BIT};

thread_local! {
    /// Whether this thread's program code believes SIGSYS blocked (the kernel's mask never
    /// holds it).
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Signals (bit `sig - 1`) whose action the program installed with SIGSYS in its `sa_mask`.
static IN_ACTION_MASK: AtomicU64 = AtomicU64::new(0);

/// The byte offset of `sa_mask` in the kernel's `struct sigaction` (handler, flags, restorer).
const SA_MASK_AT: usize = 24;
/// The kernel's `struct sigaction` with its 8-byte mask.
const KSIGACTION: usize = 32;

fn e(n: i32) -> i64 {
    -(n as i64)
}

/// Reads a mask word of the program's; None where it is unreadable.
fn read_word(p: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    sys::read_user(p, &mut b).then(|| u64::from_ne_bytes(b))
}

/// The belief after `how` with `set`, from `was` (None: an invalid `how`).
fn believed(how: i32, set: u64, was: bool) -> Option<bool> {
    let has = set & SIGSYS_BIT != 0;
    Some(match how {
        libc::SIG_BLOCK => was || has,
        libc::SIG_UNBLOCK => was && !has,
        libc::SIG_SETMASK => has,
        _ => return None,
    })
}

/// `old` as the program would read it: SIGSYS in it where the thread believes it blocked.
fn as_read(old: u64, blocked: bool) -> u64 {
    if blocked {
        old | SIGSYS_BIT
    } else {
        old & !SIGSYS_BIT
    }
}

/// `rt_sigprocmask(how, set, oldset, size)` from program code outside a trap: the kernel
/// applies `set` without SIGSYS; `oldset` reads as the program set it.
pub fn procmask(nr: i64, a: [u64; 6]) -> i64 {
    if a[3] != 8 {
        return syscall6(nr, a);
    }
    let (how, set, old) = (a[0] as i32, a[1], a[2]);
    let mut b = a;
    let stripped: u64;
    let mut word = None;
    if set != 0 {
        let Some(s) = read_word(set) else {
            return e(libc::EFAULT);
        };
        if believed(how, s, false).is_none() {
            return e(libc::EINVAL);
        }
        stripped = s & !SIGSYS_BIT;
        b[1] = &stripped as *const u64 as u64;
        word = Some(s);
    }
    let was = BLOCKED.with(|c| c.get());
    let r = syscall6(nr, b);
    if r == 0 {
        if old != 0 {
            if let Some(o) = read_word(old) {
                sys::put::<u64>(old, as_read(o, was));
            }
        }
        if let Some(s) = word {
            BLOCKED.with(|c| c.set(believed(how, s, was).unwrap_or(was)));
        }
    }
    r
}

/// `rt_sigprocmask` trapped inside the SIGSYS handler, applied to `mask`, the context's mask
/// word that sigreturn restores (the kernel's own mask is the handler's until then).
pub fn procmask_in_context(mask: &mut u64, a: [u64; 6]) -> i64 {
    let (how, set, old) = (a[0] as i32, a[1], a[2]);
    if a[3] != 8 {
        return e(libc::EINVAL);
    }
    let s = if set != 0 {
        match read_word(set) {
            Some(s) => Some(s),
            None => return e(libc::EFAULT),
        }
    } else {
        None
    };
    let was = BLOCKED.with(|c| c.get());
    let next = match s {
        Some(s) => match believed(how, s, was) {
            Some(b) => Some((s, b)),
            None => return e(libc::EINVAL),
        },
        None => None,
    };
    if old != 0 {
        let mut probe = [0u8; 8];
        if !sys::read_user(old, &mut probe) {
            return e(libc::EFAULT);
        }
        sys::put::<u64>(old, as_read(*mask, was));
    }
    if let Some((s, b)) = next {
        *mask = match how {
            libc::SIG_BLOCK => *mask | s,
            libc::SIG_UNBLOCK => *mask & !s,
            _ => s,
        } & !SIGSYS_BIT;
        BLOCKED.with(|c| c.set(b));
    }
    0
}

/// `rt_sigsuspend(mask, size)`: the wait's mask without SIGSYS (the handler it waits for runs
/// under it: `sigfillset(&m); sigdelset(&m, SIGCHLD); sigsuspend(&m)`).
pub fn sigsuspend(nr: i64, a: [u64; 6]) -> i64 {
    if a[1] != 8 {
        return syscall6(nr, a);
    }
    let Some(m) = read_word(a[0]) else {
        return e(libc::EFAULT);
    };
    let set = m & !SIGSYS_BIT;
    let mut b = a;
    b[0] = &set as *const u64 as u64;
    syscall6(nr, b)
}

/// `ppoll`, `pselect6`, `epoll_pwait` and `epoll_pwait2` waiting in the kernel (on local fds
/// only): the wait's mask without SIGSYS, as for `rt_sigsuspend`. A mask that cannot be read,
/// or has another size, goes to the kernel unchanged for its EFAULT or EINVAL.
pub fn wait(nr: i64, a: [u64; 6]) -> i64 {
    let (at, size_at) = match nr {
        libc::SYS_ppoll => (3, 4),
        libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => (4, 5),
        libc::SYS_pselect6 => {
            // The sixth argument points at { const sigset_t *mask; size_t size }.
            if a[5] == 0 {
                return syscall6(nr, a);
            }
            let mut d = [0u8; 16];
            if !sys::read_user(a[5], &mut d) {
                return syscall6(nr, a);
            }
            let (p, size) = (
                u64::from_ne_bytes(d[..8].try_into().expect("eight bytes")),
                u64::from_ne_bytes(d[8..].try_into().expect("eight bytes")),
            );
            let Some(m) = (p != 0 && size == 8).then(|| read_word(p)).flatten() else {
                return syscall6(nr, a);
            };
            let set = m & !SIGSYS_BIT;
            let data = [&set as *const u64 as u64, 8];
            let mut b = a;
            b[5] = data.as_ptr() as u64;
            return syscall6(nr, b);
        }
        _ => return syscall6(nr, a),
    };
    if a[at] == 0 || a[size_at] != 8 {
        return syscall6(nr, a);
    }
    let Some(m) = read_word(a[at]) else {
        return syscall6(nr, a);
    };
    let set = m & !SIGSYS_BIT;
    let mut b = a;
    b[at] = &set as *const u64 as u64;
    syscall6(nr, b)
}

/// `rt_sigaction(sig, act, oldact, size)` for a signal other than SIGSYS: the action goes in
/// with SIGSYS out of its mask (a daemon's handler installed with `sigfillset(&sa.sa_mask)`
/// that reaches a trapped call would otherwise be killed); the old action reads with SIGSYS
/// in its mask where the program put it there.
pub fn sigaction(nr: i64, a: [u64; 6]) -> i64 {
    let sig = a[0] as i32;
    if a[3] != 8 || !(1..=64).contains(&sig) || sig == libc::SIGSYS {
        return syscall6(nr, a);
    }
    let bit = 1u64 << (sig - 1);
    let mut act = [0u8; KSIGACTION];
    let mut b = a;
    let mut wants = None;
    if a[1] != 0 {
        if !sys::read_user(a[1], &mut act) {
            return e(libc::EFAULT);
        }
        let mask = u64::from_ne_bytes(act[SA_MASK_AT..].try_into().expect("eight bytes"));
        wants = Some(mask & SIGSYS_BIT != 0);
        act[SA_MASK_AT..].copy_from_slice(&(mask & !SIGSYS_BIT).to_ne_bytes());
        b[1] = act.as_ptr() as u64;
    }
    let had = IN_ACTION_MASK.load(Ordering::Relaxed) & bit != 0;
    let r = syscall6(nr, b);
    if r == 0 {
        if a[2] != 0 && had {
            let at = a[2] + SA_MASK_AT as u64;
            if let Some(m) = read_word(at) {
                sys::put::<u64>(at, m | SIGSYS_BIT);
            }
        }
        match wants {
            Some(true) => IN_ACTION_MASK.fetch_or(bit, Ordering::Relaxed),
            Some(false) => IN_ACTION_MASK.fetch_and(!bit, Ordering::Relaxed),
            None => 0,
        };
    }
    r
}

/// A signal handler ran while a call waited: does Linux interrupt the call (`EINTR`)? It does
/// unless the handler was installed with `SA_RESTART`. The shim cannot tell which signal
/// arrived, so it interrupts when any installed handler lacks `SA_RESTART`.
pub fn should_interrupt() -> bool {
    for sig in 1..=64u64 {
        if sig == libc::SIGSYS as u64 || sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64
        {
            continue;
        }
        let mut old = [0u64; 4]; // struct kernel_sigaction: handler, flags, restorer, mask
        let r = sys::sys(
            libc::SYS_rt_sigaction,
            &[sig, 0, old.as_mut_ptr() as u64, 8],
        );
        if r < 0 {
            continue;
        }
        let (handler, flags) = (old[0], old[1]);
        let installed = handler != libc::SIG_DFL as u64 && handler != libc::SIG_IGN as u64;
        if installed && flags & libc::SA_RESTART as u64 == 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belief_follows_each_how() {
        assert_eq!(believed(libc::SIG_BLOCK, SIGSYS_BIT, false), Some(true));
        assert_eq!(believed(libc::SIG_BLOCK, 1, true), Some(true));
        assert_eq!(
            believed(libc::SIG_UNBLOCK, SIGSYS_BIT | 1, true),
            Some(false)
        );
        assert_eq!(believed(libc::SIG_UNBLOCK, 1, true), Some(true));
        assert_eq!(believed(libc::SIG_SETMASK, 1, true), Some(false));
        assert_eq!(believed(libc::SIG_SETMASK, !0, false), Some(true));
        assert_eq!(believed(7, 0, false), None);
    }

    #[test]
    fn masks_read_as_the_program_set_them() {
        assert_eq!(as_read(0b101, true), 0b101 | SIGSYS_BIT);
        assert_eq!(as_read(0b101 | SIGSYS_BIT, false), 0b101);
    }

    #[test]
    fn a_context_mask_never_holds_sigsys_but_reads_back_as_set() {
        let mut ctx = 0u64;
        let all = !0u64;
        let mut old = 0u64;
        let a = |how: i32, set: &u64, old: &mut u64| {
            [
                how as u64,
                set as *const u64 as u64,
                old as *mut u64 as u64,
                8,
                0,
                0,
            ]
        };
        assert_eq!(
            procmask_in_context(&mut ctx, a(libc::SIG_BLOCK, &all, &mut old)),
            0
        );
        assert_eq!(ctx, !SIGSYS_BIT);
        assert_eq!(old, 0);
        let none = 0u64;
        assert_eq!(
            procmask_in_context(&mut ctx, a(libc::SIG_SETMASK, &none, &mut old)),
            0
        );
        assert_eq!(
            old, all,
            "the old mask reads with SIGSYS, as the program set it"
        );
        assert_eq!(ctx, 0);
        assert_eq!(
            procmask_in_context(&mut ctx, [libc::SIG_BLOCK as u64, 8, 0, 8, 0, 0]),
            e(libc::EFAULT)
        );
        assert_eq!(
            procmask_in_context(&mut ctx, a(9, &all, &mut old)),
            e(libc::EINVAL)
        );
        assert_eq!(ctx, 0, "a refused call changes nothing");
    }
}
