//! The keeper of a `run --enforce`: `run` execs into the program, so the cgroup it made must be
//! removed by someone else once the program is gone.
//!
//! Before it joins the cgroup, `run` forks twice: the grandchild (the keeper) is re-parented
//! away (never a child of the program, whose `wait` must not see it), starts its own session
//! (Ctrl-C at the terminal reaches the program, not the cleanup), forwards the eBPF log, and
//! waits on a pidfd of `run`'s process, which is the program's after the exec. When it exits,
//! the keeper detaches the programs, kills what is left in the cgroup and removes it, as `run`
//! did itself when it waited for a child. Its stderr is the program's, so a harness that reads
//! it to the end sees the cleanup done.

use anyhow::{bail, Context, Result};

use crate::bpf::EnforcedRun;

/// Starts the keeper of `e` and returns once it runs; the caller then joins the cgroup
/// ([`EnforcedRun::enter`]) and execs.
pub fn spawn(e: EnforcedRun) -> Result<EnforcedRun> {
    // SAFETY: pidfd_open on our own pid, no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open of this process");
    }
    let mut ready = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: this process is single-threaded here (no thread has been started: the log pump
    // starts in the keeper), so the child may run arbitrary code after fork.
    let mid = unsafe { libc::fork() };
    if mid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if mid == 0 {
        // SAFETY: as above; the intermediate child only forks again and exits.
        let keeper = unsafe { libc::fork() };
        if keeper != 0 {
            // SAFETY: ends the intermediate child without running the parent's destructors.
            unsafe { libc::_exit(if keeper < 0 { 1 } else { 0 }) };
        }
        keep(e, pidfd, ready);
    }
    // SAFETY: closing our copies of the fds the keeper uses.
    unsafe {
        libc::close(pidfd);
        libc::close(ready[1]);
    }
    let mut st = 0;
    // SAFETY: reaping our own intermediate child.
    unsafe { libc::waitpid(mid, &mut st, 0) };
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let n = unsafe { libc::read(ready[0], b.as_mut_ptr().cast(), 1) };
    // SAFETY: closing our read end.
    unsafe { libc::close(ready[0]) };
    if n != 1 {
        bail!("the process that removes the run's cgroup afterwards did not start");
    }
    Ok(e)
}

/// The keeper itself: never returns.
fn keep(mut e: EnforcedRun, pidfd: i32, ready: [i32; 2]) -> ! {
    // SAFETY: plain system calls on this process and on fds it owns.
    unsafe {
        libc::setsid();
        libc::close(ready[0]);
        // Not in the program's way: no stdin, and the cwd released.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
        libc::chdir(c"/".as_ptr());
    }
    e.start_log();
    // SAFETY: one byte from a local.
    unsafe {
        libc::write(ready[1], b"1".as_ptr().cast(), 1);
        libc::close(ready[1]);
    }
    loop {
        let mut p = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let cg = e.cgroup.clone();
    let code = match e.finish() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("virtuos-redirect: cleaning up {}: {err:#}", cg.display());
            1
        }
    };
    std::process::exit(code)
}
