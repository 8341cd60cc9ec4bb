//! Acting as a client: per-thread file-system credentials.
//!
//! Linux keeps credentials per thread. A service domain acts with its client's identity by
//! switching the *calling thread's* fsuid, fsgid and supplementary groups, and, for a non-root
//! client, by clearing its effective capabilities, so the kernel checks permissions exactly as
//! it would for the client. Only raw system calls are used: glibc's `setgroups` (like its
//! `setuid`) broadcasts the change to every thread of the process, which would change the
//! identity of every other worker mid-call.
//!
//! Two users: the blocking pool switches a thread for the length of one call ([`assume`], cached
//! so consecutive calls of the same user switch nothing), and a worker switches briefly to
//! register an io_uring personality ([`with_identity`]), which captures the thread's credentials
//! for later submissions.
//!
//! This module holds the runtime's raw credential system calls; every `unsafe` block is here.

use std::cell::RefCell;
use std::io;

/// Who a service thread acts as: the client's kernel-reported uid and gid and the supplementary
/// groups its process had when the session started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// File-system user id.
    pub uid: u32,
    /// File-system group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// For a root client, its effective capabilities when the session started (`CapEff`): a
    /// root program that dropped some (`capset`: CAP_DAC_OVERRIDE, say) is served without
    /// them. None: all of the server's (a non-root client gets none anyway).
    pub caps: Option<u64>,
}

impl Identity {
    /// The identity of process `pid` with the given uid/gid: its supplementary groups are read
    /// from `/proc/<pid>/status`.
    pub fn of_process(pid: i32, uid: u32, gid: u32) -> io::Result<Identity> {
        Ok(Identity {
            uid,
            gid,
            groups: read_groups(pid)?,
            caps: None,
        })
    }
}

/// Reads the supplementary groups of `pid` (`Groups:` in `/proc/<pid>/status`).
pub fn read_groups(pid: i32) -> io::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_groups(&status).ok_or_else(|| bad_status(pid))
}

fn bad_status(pid: i32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}/status has no readable Groups:/Uid:/Gid: lines"),
    )
}

/// Reads the supplementary groups of `pid`, checking that the process still has effective
/// ids `uid`/`gid` (the kernel's `SO_PEERCRED` at connect): if the client exited and its pid
/// went to another process since, that process's groups must not be taken for the client's.
pub fn read_groups_checked(pid: i32, uid: u32, gid: u32) -> io::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let effective = |key: &str| -> Option<u32> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (Some(euid), Some(egid)) = (effective("Uid:"), effective("Gid:")) else {
        return Err(bad_status(pid));
    };
    if (euid, egid) != (uid, gid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "process {pid} now runs as {euid}:{egid}, not {uid}:{gid} as when it connected"
            ),
        ));
    }
    parse_groups(&status).ok_or_else(|| bad_status(pid))
}

fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Reads the parent pid of `pid` (`/proc/<pid>/stat`, the field after the command name).
/// The effective capability set of process `pid` (`CapEff` in its status), None when it
/// cannot be read.
pub fn cap_eff(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// A pidfd of process `pid` (`pidfd_open`), or None when it names no process.
pub fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: on success the kernel just installed this descriptor for us; nothing else owns it.
    (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` is still running (a pidfd becomes readable when its
/// process exits, zombie or not).
pub fn pidfd_running(pidfd: &std::os::fd::OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(pidfd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 0 }
}

/// The parent of process `pid`.
pub fn read_ppid(pid: i32) -> io::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_ppid(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat is not parseable"),
        )
    })
}

fn parse_ppid(stat: &str) -> Option<i32> {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    fields.next()?; // state
    fields.next()?.parse().ok()
}

const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The thread's own credentials before any switch.
#[derive(Clone, Debug)]
struct Original {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
    caps: [CapData; 2],
}

#[derive(Default)]
struct ThreadCreds {
    original: Option<Original>,
    /// The identity currently assumed; `None`: the thread's own.
    current: Option<Identity>,
    /// The supplementary groups were changed.
    groups_changed: bool,
    /// The capability sets were changed.
    caps_changed: bool,
}

thread_local! {
    static STATE: RefCell<ThreadCreds> = RefCell::default();
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn set_fsuid(uid: u32) -> io::Result<()> {
    // SAFETY: setfsuid takes a plain integer and changes only this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid as libc::c_long) };
    // setfsuid never reports failure; an invalid id (-1) changes nothing and returns the
    // current fsuid, which tells whether the switch took.
    // SAFETY: as above; -1 is never a valid uid, so this call only reads.
    let now = unsafe { libc::syscall(libc::SYS_setfsuid, -1 as libc::c_long) } as u32;
    if now == uid {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

fn set_fsgid(gid: u32) -> io::Result<()> {
    // SAFETY: setfsgid takes a plain integer and changes only this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid as libc::c_long) };
    // SAFETY: as above; -1 is never a valid gid, so this call only reads.
    let now = unsafe { libc::syscall(libc::SYS_setfsgid, -1 as libc::c_long) } as u32;
    if now == gid {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// This thread's fsuid (the identity its file system calls are checked as).
pub fn current_fsuid() -> u32 {
    // SAFETY: -1 is never a valid uid: the call changes nothing and returns the current fsuid.
    unsafe { libc::syscall(libc::SYS_setfsuid, -1 as libc::c_long) as u32 }
}

fn current_fsgid() -> u32 {
    // SAFETY: -1 is never a valid gid: the call changes nothing and returns the current fsgid.
    unsafe { libc::syscall(libc::SYS_setfsgid, -1 as libc::c_long) as u32 }
}

fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`, which outlives the call; the raw
    // system call changes only this thread (glibc's wrapper would change every thread).
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::c_long,
            groups.as_ptr(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

fn get_groups() -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 65536];
    // SAFETY: the buffer holds `len` gid_t values (the kernel's maximum, NGROUPS_MAX).
    let n = unsafe {
        libc::syscall(
            libc::SYS_getgroups,
            groups.len() as libc::c_long,
            groups.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(last_error());
    }
    groups.truncate(n as usize);
    Ok(groups)
}

fn get_caps() -> io::Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version-3 capget writes two CapData records; both pointers are valid.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r == 0 {
        Ok(data)
    } else {
        Err(last_error())
    }
}

fn set_caps(data: &[CapData; 2]) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: version-3 capset reads two CapData records; pid 0 means this thread only.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

impl Original {
    fn capture() -> io::Result<Original> {
        Ok(Original {
            fsuid: current_fsuid(),
            fsgid: current_fsgid(),
            groups: get_groups()?,
            caps: get_caps()?,
        })
    }
}

impl ThreadCreds {
    fn original(&mut self) -> io::Result<Original> {
        if self.original.is_none() {
            self.original = Some(Original::capture()?);
        }
        Ok(self.original.clone().expect("just set"))
    }

    /// Back to the thread's own credentials.
    fn restore(&mut self) -> io::Result<()> {
        if self.current.take().is_none() {
            return Ok(());
        }
        let orig = self.original()?;
        // Capabilities first: the effective set may have been cleared, and the rest needs
        // CAP_SETUID/CAP_SETGID back. Setting fsuid/fsgid to their own value is always allowed.
        let mut r = Ok(());
        if self.caps_changed {
            r = set_caps(&orig.caps);
        }
        r = r
            .and_then(|_| set_fsuid(orig.fsuid))
            .and_then(|_| set_fsgid(orig.fsgid));
        if self.groups_changed {
            r = r.and_then(|_| set_groups(&orig.groups));
        }
        if let Err(e) = &r {
            // A thread that cannot get its own identity back must not serve anyone else.
            tracing::error!(%e, "cannot restore a service thread's credentials; aborting");
            std::process::abort();
        }
        self.caps_changed = false;
        self.groups_changed = false;
        r
    }

    fn assume(&mut self, id: &Identity) -> io::Result<()> {
        if self.current.as_ref() == Some(id) {
            return Ok(());
        }
        self.restore()?;
        let orig = self.original()?;
        // From here on a failure leaves the thread partly switched: mark it switched so
        // `restore` undoes whatever took.
        self.current = Some(id.clone());
        let r = (|| {
            if id.groups != orig.groups {
                set_groups(&id.groups)?;
                self.groups_changed = true;
            }
            set_fsgid(id.gid)?;
            set_fsuid(id.uid)?;
            if id.uid == 0 {
                // A root client without some capabilities: only those it has.
                if let Some(keep) = id.caps {
                    let mut caps = orig.caps;
                    caps[0].effective &= keep as u32;
                    caps[1].effective &= (keep >> 32) as u32;
                    if caps != orig.caps {
                        set_caps(&caps)?;
                        self.caps_changed = true;
                    }
                }
            } else {
                // Leaving fsuid 0 already drops the file-system capabilities; a non-root client
                // gets none of the others either (CAP_SYS_RESOURCE would let it use the blocks
                // a file system reserves for root, for instance).
                let mut caps = orig.caps;
                for c in &mut caps {
                    c.effective = 0;
                }
                if caps != orig.caps {
                    set_caps(&caps)?;
                    self.caps_changed = true;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = self.restore();
        }
        r
    }
}

/// Makes the calling thread act as `id` until the next [`assume`] or [`restore`]. Cheap when
/// the thread already acts as `id`.
pub fn assume(id: &Identity) -> io::Result<()> {
    STATE.with(|s| s.borrow_mut().assume(id))
}

/// Gives the calling thread its own credentials back.
pub fn restore() -> io::Result<()> {
    STATE.with(|s| s.borrow_mut().restore())
}

/// Runs `f` acting as `id`, then restores the thread's own credentials.
pub fn with_identity<T>(id: &Identity, f: impl FnOnce() -> T) -> io::Result<T> {
    assume(id)?;
    let out = f();
    restore()?;
    Ok(out)
}

/// Checks that this thread can act as `id` (and back): a server without CAP_SETUID/CAP_SETGID
/// can act only as its own user with its own groups.
pub fn check(id: &Identity) -> io::Result<()> {
    with_identity(id, || ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_ppid() {
        assert_eq!(
            parse_groups("Name:\tx\nGroups:\t4 24 27 \nNgid:\t0\n"),
            Some(vec![4, 24, 27])
        );
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Name: x\n"), None);
        assert_eq!(parse_ppid("123 (a b) c)) S 77 123 123 0"), Some(77));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        assert_eq!(
            read_ppid(me).unwrap(),
            nix::unistd::getppid().as_raw(),
            "ppid from /proc"
        );
        read_groups(me).unwrap();
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        assert_eq!(
            read_groups_checked(me, uid, gid).unwrap(),
            read_groups(me).unwrap()
        );
        assert_eq!(
            read_groups_checked(me, uid + 1, gid).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn switching_is_per_thread_and_reversible() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to switch identities");
            return;
        }
        // Run in fresh threads so the test harness's thread keeps its identity whatever
        // happens. A thread started before the switch must not see it (a thread started by a
        // switched thread inherits its credentials, as clone(2) copies them).
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let other_thread = {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                assert_eq!(current_fsuid(), 0);
                assert_ne!(get_caps().unwrap()[0].effective, 0);
                barrier.wait();
            })
        };
        std::thread::spawn(move || {
            let nobody = Identity {
                caps: None,
                uid: 65534,
                gid: 65534,
                groups: vec![4242],
            };
            assume(&nobody).unwrap();
            assert_eq!(current_fsuid(), 65534);
            assert_eq!(current_fsgid(), 65534);
            assert_eq!(get_groups().unwrap(), vec![4242]);
            assert_eq!(get_caps().unwrap()[0].effective, 0);
            // Another thread is unaffected.
            barrier.wait();
            barrier.wait();
            restore().unwrap();
            assert_eq!(current_fsuid(), 0);
            assert_ne!(get_caps().unwrap()[0].effective, 0);
            // Switching between two identities directly.
            assume(&nobody).unwrap();
            let other = Identity {
                caps: None,
                uid: 1000,
                gid: 1000,
                groups: vec![],
            };
            assume(&other).unwrap();
            assert_eq!((current_fsuid(), current_fsgid()), (1000, 1000));
            restore().unwrap();
            assert_eq!(current_fsuid(), 0);
        })
        .join()
        .unwrap();
        other_thread.join().unwrap();
    }
}
