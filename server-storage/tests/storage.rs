//! The storage domain against the real kernel: data and directory operations, confinement to
//! the export root, the client's identity, per-session handles, clone/adopt, and `--device`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use abi::Errno;
use common::{e, is_root, serve, set_mode, Client, Scratch};
use virtuos_storage::{Storage, StorageError};

const RW_CREAT: i32 = libc::O_RDWR | libc::O_CREAT;

/// Scratch space with an export root inside it (`root/`) and a file outside (`secret`).
fn export(name: &str) -> (Scratch, std::path::PathBuf) {
    let sc = Scratch::new(name);
    let root = sc.path("root");
    std::fs::create_dir(&root).unwrap();
    set_mode(&root, 0o755);
    std::fs::write(sc.path("secret"), b"HOST SECRET").unwrap();
    (sc, root)
}

#[test]
fn data_ops_round_trip() {
    let (sc, root) = export("data");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 1);
    let c = Client::connect(&sock);

    let (h, mode) = c
        .open_full("f.txt", RW_CREAT | libc::O_EXCL, 0o640)
        .unwrap();
    assert_eq!(h, 0, "lowest free handle");
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(mode & 0o7777, 0o640, "mode applied as given (umask 0)");
    assert_eq!(
        c.open("f.txt", RW_CREAT | libc::O_EXCL, 0o640),
        Err(Errno::EEXIST)
    );
    assert_eq!(c.write(h, b"hello world").unwrap(), 11);
    assert_eq!(
        c.lseek(h, 0, libc::SEEK_CUR).unwrap(),
        11,
        "write advanced the position"
    );
    assert_eq!(c.lseek(h, 0, libc::SEEK_SET).unwrap(), 0);
    assert_eq!(c.read(h, 5).unwrap(), b"hello");
    assert_eq!(c.read(h, 3).unwrap(), b" wo");
    assert_eq!(c.pread(h, 6, 5).unwrap(), b"world");
    assert_eq!(
        c.read(h, 100).unwrap(),
        b"rld",
        "pread left the position alone"
    );
    assert_eq!(c.read(h, 100).unwrap(), b"", "end of file");
    assert_eq!(c.pwrite(h, 100, b"X").unwrap(), 1);
    let st = c.fstat(h).unwrap();
    assert!(st.is_reg());
    assert_eq!(st.size, 101);
    assert_eq!(st.mode & 0o7777, 0o640);
    assert_eq!(c.fsync(h, false), Ok(0));
    assert_eq!(c.fsync(h, true), Ok(0));
    assert_eq!(
        c.raw(abi::Opcode::FSync, [h, 7, 0, 0, 0], &[], 0)
            .0
            .into_result(),
        Err(Errno::EINVAL)
    );
    assert_eq!(c.fallocate(h, 0, 0, 8192), Ok(0));
    assert_eq!(c.fstat(h).unwrap().size, 8192);
    assert_eq!(c.ftruncate(h, 50), Ok(0));
    assert_eq!(c.fstat(h).unwrap().size, 50);
    assert_eq!(c.lseek(h, 0, libc::SEEK_END).unwrap(), 50);
    assert_eq!(
        c.lseek(h, 0, libc::SEEK_DATA).unwrap(),
        0,
        "SEEK_DATA on the pool"
    );
    assert_eq!(c.lseek(h, -1, libc::SEEK_SET), Err(Errno::EINVAL));
    assert_eq!(c.lseek(h, 0, 99), Err(Errno::EINVAL));
    // fcntl: F_GETFL reports the access mode; F_SETFL O_APPEND makes writes append.
    let fl = c.fcntl(h, libc::F_GETFL, 0).unwrap() as i32;
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR);
    assert_eq!(c.fcntl(h, libc::F_SETFL, i64::from(libc::O_APPEND)), Ok(0));
    assert_ne!(
        c.fcntl(h, libc::F_GETFL, 0).unwrap() as i32 & libc::O_APPEND,
        0
    );
    c.lseek(h, 0, libc::SEEK_SET).unwrap();
    c.write(h, b"tail").unwrap();
    assert_eq!(c.fstat(h).unwrap().size, 54);
    assert_eq!(
        c.fcntl(h, libc::F_GETOWN, 0),
        Err(Errno::EINVAL),
        "other commands"
    );
    assert_eq!(c.fchmod(h, 0o600), Ok(0));
    assert_eq!(c.fstat(h).unwrap().mode & 0o7777, 0o600);
    assert_eq!(c.utimens(Err(h), Some((1_000_000, 2_000_000)), 0), Ok(0));
    assert_eq!(c.fstat(h).unwrap().mtime, 2_000_000);
    assert_eq!(c.fstatfs_type(h).map(|t| t != 0), Ok(true));
    assert_eq!(c.close(h), Ok(0));
    assert_eq!(c.close(h), Err(Errno::EBADF));
    assert_eq!(c.read(h, 1), Err(Errno::EBADF));
    assert_eq!(c.fstat(h), Err(Errno::EBADF));

    // What the client sees is what is on disk.
    let host = std::fs::read(root.join("f.txt")).unwrap();
    assert_eq!(&host[..11], b"hello world");
    assert_eq!(&host[50..], b"tail");

    // A read larger than the window returns at most the window (fewer bytes, as Linux may).
    std::fs::write(root.join("big"), vec![7u8; 200 << 10]).unwrap();
    let h = c.open("big", libc::O_RDONLY, 0).unwrap();
    let window = c.s.layout().window as usize;
    let b = c.read(h, window).unwrap();
    assert_eq!(b.len(), window);
    assert!(b.iter().all(|&x| x == 7));
    assert_eq!(c.lseek(h, 0, libc::SEEK_CUR).unwrap(), window as u64);
    // A too-small window for a statx: EFAULT, as for a bad buffer.
    assert_eq!(
        c.raw(abi::Opcode::FStat, [h, 0, 0, 0, 0], &[], 100)
            .0
            .into_result(),
        Err(Errno::EFAULT)
    );
    // Wrong kinds of file.
    assert_eq!(c.write(h, b"x"), Err(Errno::EBADF), "opened read-only");
    let d = c.open("/", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    assert_eq!(c.read(d, 10), Err(Errno::EISDIR));
    assert_eq!(
        c.open("big", libc::O_RDONLY | libc::O_DIRECTORY, 0),
        Err(Errno::ENOTDIR)
    );
    // O_PATH handles are handles too, and fail data calls as Linux does.
    let p = c.open("big", libc::O_PATH, 0).unwrap();
    assert_eq!(c.fstat(p).unwrap().size, 200 << 10);
    assert_eq!(c.read(p, 1), Err(Errno::EBADF));
    rt.stop();
}

#[test]
fn directory_ops() {
    let (sc, root) = export("dirs");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 2);
    let c = Client::connect(&sock);

    assert_eq!(c.mkdir("d", 0o750), Ok(0));
    assert_eq!(c.mkdir("d", 0o750), Err(Errno::EEXIST));
    assert_eq!(
        c.mkdir("d/sub/", 0o700),
        Ok(0),
        "trailing slash is fine for mkdir"
    );
    assert_eq!(c.mkdir("nope/x", 0o700), Err(Errno::ENOENT));
    let st = c.stat("d").unwrap();
    assert!(st.is_dir());
    assert_eq!(st.mode & 0o7777, 0o750);
    for n in ["a", "b", "c"] {
        let h = c.open(&format!("d/{n}"), RW_CREAT, 0o644).unwrap();
        c.write(h, n.as_bytes()).unwrap();
        c.close(h).unwrap();
    }
    let dh = c.open("d", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    let mut names = c.getdents(dh).unwrap();
    names.sort();
    assert_eq!(names, [".", "..", "a", "b", "c", "sub"]);
    // Rewind (lseek on a directory) and list again.
    assert_eq!(c.lseek(dh, 0, libc::SEEK_SET), Ok(0));
    assert_eq!(c.getdents(dh).unwrap().len(), 6);
    c.close(dh).unwrap();

    assert_eq!(c.rename("d/a", "d/a2", 0), Ok(0));
    assert_eq!(c.stat("d/a"), Err(Errno::ENOENT));
    assert_eq!(
        c.rename("d/b", "d/a2", libc::RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    assert_eq!(c.rename("d/b", "d/c", libc::RENAME_EXCHANGE), Ok(0));
    assert_eq!(c.slurp("d/b").unwrap(), b"c");
    assert_eq!(c.rename("d/.", "e", 0), Err(Errno::EBUSY));
    assert_eq!(c.rename("d/a2", "/", 0), Err(Errno::EBUSY));
    assert_eq!(c.rename("d/a2/", "d/x", 0), Err(Errno::ENOTDIR));

    assert_eq!(c.link("d/a2", "d/hard", 0), Ok(0));
    assert_eq!(c.stat("d/hard").unwrap().nlink, 2);
    assert_eq!(c.stat("d/hard").unwrap().ino, c.stat("d/a2").unwrap().ino);
    assert_eq!(c.link("d/a2", "d/hard", 0), Err(Errno::EEXIST));
    assert_eq!(
        c.link("d/sub", "d/sublink", 0),
        Err(Errno::EPERM),
        "no links to dirs"
    );
    assert_eq!(c.link("d/sub/.", "d/sublink", 0), Err(Errno::EPERM));

    assert_eq!(c.symlink("a2", "d/sym"), Ok(0));
    assert_eq!(c.symlink("a2", "d/sym"), Err(Errno::EEXIST));
    assert_eq!(c.readlink("d/sym").unwrap(), "a2");
    assert_eq!(c.readlink("d/a2"), Err(Errno::EINVAL), "not a link");
    assert_eq!(c.readlink("d/none"), Err(Errno::ENOENT));
    assert!(c.lstat("d/sym").unwrap().is_lnk());
    assert!(c.stat("d/sym").unwrap().is_reg());
    assert_eq!(c.slurp("d/sym").unwrap(), b"a");
    // A hard link to the symlink itself (no follow) vs to its target (follow).
    assert_eq!(c.link("d/sym", "d/symhard", 0), Ok(0));
    assert!(c.lstat("d/symhard").unwrap().is_lnk());
    assert_eq!(
        c.link("d/sym", "d/symfollow", libc::AT_SYMLINK_FOLLOW),
        Ok(0)
    );
    assert_eq!(
        c.lstat("d/symfollow").unwrap().ino,
        c.stat("d/a2").unwrap().ino
    );

    assert_eq!(c.access("d/a2", libc::R_OK | libc::W_OK, 0), Ok(0));
    assert_eq!(c.access("d/none", libc::F_OK, 0), Err(Errno::ENOENT));
    assert_eq!(
        c.access("d/a2", libc::R_OK, 0x4000_0000),
        Err(Errno::EINVAL)
    );

    assert_eq!(c.chmod("d/a2", 0o604, 0), Ok(0));
    assert_eq!(c.stat("d/a2").unwrap().mode & 0o7777, 0o604);
    assert_eq!(c.chmod("d/sym", 0o600, 0), Ok(0), "follows");
    assert_eq!(c.stat("d/a2").unwrap().mode & 0o7777, 0o600);
    assert_eq!(
        c.chmod("d/sym", 0o600, libc::AT_SYMLINK_NOFOLLOW),
        Err(e(libc::EOPNOTSUPP))
    );
    assert_eq!(c.chown("d/a2", 1000, 1000, 0), Ok(0));
    let st = c.stat("d/a2").unwrap();
    assert_eq!((st.uid, st.gid), (1000, 1000));
    assert_eq!(
        c.chown("d/sym", 1001, u32::MAX, libc::AT_SYMLINK_NOFOLLOW),
        Ok(0)
    );
    assert_eq!(c.lstat("d/sym").unwrap().uid, 1001);
    assert_eq!(c.stat("d/sym").unwrap().uid, 1000, "target unchanged");
    assert_eq!(c.utimens(Ok("d/a2"), Some((5, 6)), 0), Ok(0));
    assert_eq!(c.stat("d/a2").unwrap().mtime, 6);
    assert_eq!(c.utimens(Ok("d/a2"), None, 0), Ok(0));
    assert!(c.stat("d/a2").unwrap().mtime > 1_600_000_000, "now");
    assert_eq!(c.truncate("d/a2", 1000), Ok(0));
    assert_eq!(c.stat("d/a2").unwrap().size, 1000);
    assert_eq!(c.truncate("d", 0), Err(Errno::EISDIR));

    // Errors Linux gives for paths.
    assert_eq!(c.stat("d/a2/x"), Err(Errno::ENOTDIR));
    assert_eq!(c.open("d/a2/", libc::O_RDONLY, 0), Err(Errno::ENOTDIR));
    assert_eq!(c.unlink("d"), Err(Errno::EISDIR));
    assert_eq!(c.unlink("d/a2/"), Err(Errno::ENOTDIR));
    assert_eq!(c.rmdir("d"), Err(e(libc::ENOTEMPTY)));
    assert_eq!(c.rmdir("d/."), Err(Errno::EINVAL));
    assert_eq!(c.rmdir("d/.."), Err(e(libc::ENOTEMPTY)));
    assert_eq!(c.rmdir("/"), Err(Errno::EBUSY));
    assert_eq!(c.unlink("."), Err(Errno::EISDIR));
    assert_eq!(c.mkdir("d/..", 0o700), Err(Errno::EEXIST));
    assert_eq!(c.mkdir("/", 0o700), Err(Errno::EEXIST));
    assert_eq!(c.rmdir("d/a2"), Err(Errno::ENOTDIR));
    assert_eq!(c.stat(""), Err(Errno::ENOENT));
    assert!(
        c.stat_flags("", libc::AT_EMPTY_PATH).unwrap().is_dir(),
        "the root"
    );
    assert_eq!(
        c.open(&"x".repeat(300), libc::O_RDONLY, 0),
        Err(e(libc::ENAMETOOLONG))
    );
    assert_eq!(
        c.open(&"a/".repeat(2100), libc::O_RDONLY, 0),
        Err(e(libc::ENAMETOOLONG))
    );

    for f in [
        "d/a2",
        "d/b",
        "d/c",
        "d/hard",
        "d/sym",
        "d/symhard",
        "d/symfollow",
    ] {
        assert_eq!(c.unlink(f), Ok(0), "{f}");
    }
    assert_eq!(c.rmdir("d/sub/"), Ok(0));
    assert_eq!(c.rmdir("d"), Ok(0));
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "root empty again"
    );
    rt.stop();
}

#[test]
fn nothing_escapes_the_root() {
    // A private mount namespace for this thread only, so a procfs can be mounted inside the
    // export root (magic links) without touching the host's mounts.
    std::thread::spawn(|| {
        let (sc, root) = export("confine");
        let with_proc = is_root()
            && nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
            && nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .is_ok()
            && {
                std::fs::create_dir(root.join("proc")).unwrap();
                nix::mount::mount(
                    Some("proc"),
                    &root.join("proc"),
                    Some("proc"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .is_ok()
            };
        if !with_proc {
            eprintln!("note: magic-link cases skipped (need root for a private procfs mount)");
        }
        let sock = sc.path("sock");
        let rt = serve(Storage::with_root(&root).unwrap(), &sock, 1);
        let c = Client::connect(&sock);
        let secret = sc.path("secret");

        // A path that leaves the root (`..` above it, an absolute symlink, a relative one
        // that climbs out) is never resolved outside: the call fails with ESCAPE, and
        // Resolve says where the path continues, for the client to walk itself.
        let esc = abi::ESCAPE;
        for (p, cont) in [
            ("../secret", "../secret"),
            ("../../secret", "../../secret"),
            ("/../secret", "../secret"),
            ("a/../../secret", "../secret"),
            ("../../etc/passwd", "../../etc/passwd"),
        ] {
            if p.starts_with("a/") {
                std::fs::create_dir_all(root.join("a")).unwrap();
            }
            assert_eq!(c.open(p, libc::O_RDONLY, 0), Err(esc), "{p}");
            assert_eq!(c.stat(p), Err(esc), "{p}");
            assert_eq!(c.resolve(p, false).as_deref(), Ok(cont), "{p}");
        }
        // A leading slash is the export root's: no in-root /etc/passwd, none found.
        assert_eq!(c.open("/etc/passwd", libc::O_RDONLY, 0), Err(Errno::ENOENT));
        std::fs::create_dir(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), b"in-root passwd").unwrap();
        assert_eq!(c.slurp("/etc/passwd").unwrap(), b"in-root passwd");
        assert_eq!(c.slurp("etc/../etc/passwd").unwrap(), b"in-root passwd");
        // Symlinks pointing outside: ESCAPE for every call that follows them, with the
        // continuation (the target, then the rest of the path).
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.join("rel")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("abs-secret")).unwrap();
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        let sec = secret.to_str().unwrap().to_owned();
        for (p, cont) in [
            ("abs", "/etc/passwd".to_owned()),
            ("rel", "../../../../secret".to_owned()),
            ("abs-secret", sec.clone()),
            ("slash/secret", "//secret".to_owned()),
            ("up/secret", "../secret".to_owned()),
            ("up/up/secret", "../up/secret".to_owned()),
            ("slash/../secret", "//../secret".to_owned()),
        ] {
            assert_eq!(c.open(p, libc::O_RDONLY, 0), Err(esc), "{p}");
            assert_eq!(c.stat(p), Err(esc), "{p}");
            assert_eq!(c.access(p, libc::F_OK, 0), Err(esc), "{p}");
            assert_eq!(c.truncate(p, 0), Err(esc), "{p}");
            assert_eq!(c.chmod(p, 0o777, 0), Err(esc), "{p}");
            assert_eq!(c.chown(p, 1, 1, 0), Err(esc), "{p}");
            assert_eq!(c.utimens(Ok(p), Some((1, 1)), 0), Err(esc), "{p}");
            assert_eq!(c.link(p, "l", libc::AT_SYMLINK_FOLLOW), Err(esc), "{p}");
            assert_eq!(c.rename(&format!("{p}/x"), "r", 0), Err(esc), "{p}");
            assert_eq!(c.mkdir(&format!("{p}/x"), 0o755), Err(esc), "{p}");
            assert_eq!(c.resolve(p, false), Ok(cont), "{p}");
        }
        // fs.protected_symlinks: in a sticky, world-writable directory a link owned by
        // another user (neither the follower nor the directory's owner) is not followed, as
        // the kernel refuses it natively (EACCES), even by root. Resolve reads the link
        // itself, so it must apply the same rule (a link swapped in after the call).
        // The sysctl is switched on for the case when it is off (Debian's default under
        // systemd is on) and put back after it.
        const SYSCTL: &str = "/proc/sys/fs/protected_symlinks";
        struct Restore(String);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write(SYSCTL, self.0.trim());
            }
        }
        let _restore = Restore(std::fs::read_to_string(SYSCTL).unwrap_or_default());
        if is_root() && std::fs::write(SYSCTL, "1").is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let sticky = root.join("sticky");
            std::fs::create_dir(&sticky).unwrap();
            std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
            std::os::unix::fs::symlink("/etc", sticky.join("theirs")).unwrap();
            std::os::unix::fs::lchown(sticky.join("theirs"), Some(65534), Some(65534)).unwrap();
            std::os::unix::fs::symlink("/etc", sticky.join("ours")).unwrap();
            // The kernel applies the rule to a trailing link only (with or without a
            // trailing slash): natively, `theirs` is refused and `theirs/passwd` is walked.
            let native = std::fs::metadata(sticky.join("theirs")).unwrap_err();
            assert_eq!(
                native.raw_os_error(),
                Some(libc::EACCES),
                "the kernel's own rule"
            );
            assert!(std::fs::metadata(sticky.join("theirs/passwd")).is_ok());
            std::os::unix::fs::symlink("theirs", sticky.join("ours-to-theirs")).unwrap();
            for p in ["sticky/theirs", "sticky/theirs/", "sticky/ours-to-theirs"] {
                assert_eq!(c.resolve(p, false), Err(Errno::EACCES), "{p}");
                assert_eq!(c.stat(p), Err(Errno::EACCES), "{p}");
            }
            assert_eq!(
                c.resolve("sticky/theirs/passwd", false).as_deref(),
                Ok("/etc/passwd"),
                "not the last component"
            );
            assert_eq!(c.resolve("sticky/ours", false).as_deref(), Ok("/etc"));
            // The same link in a directory that is not world-writable is followed.
            std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1755)).unwrap();
            assert_eq!(c.resolve("sticky/theirs", false).as_deref(), Ok("/etc"));
            std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
            std::fs::write(SYSCTL, "0").unwrap();
            assert_eq!(
                c.resolve("sticky/theirs", false).as_deref(),
                Ok("/etc"),
                "with the rule off"
            );
        } else {
            eprintln!("note: protected_symlinks case skipped (needs root to set the sysctl)");
        }
        // The entry form follows no last component: a link that is the last component of
        // a rename does not lead out.
        assert_eq!(c.resolve("abs", true), Err(Errno::EAGAIN));
        assert_eq!(c.resolve("up/secret", true).as_deref(), Ok("../secret"));
        // A path that stays inside has no continuation.
        assert_eq!(c.resolve("etc/passwd", false), Err(Errno::EAGAIN));
        // O_CREAT through an escaping symlink creates nothing, anywhere.
        assert_eq!(
            c.open("abs-secret", libc::O_WRONLY | libc::O_CREAT, 0o644),
            Err(esc)
        );
        std::os::unix::fs::symlink("/../created-via-link", root.join("abs-new")).unwrap();
        assert_eq!(
            c.open("abs-new", libc::O_WRONLY | libc::O_CREAT, 0o644),
            Err(esc)
        );
        assert!(
            !root.join("created-via-link").exists()
                && !sc.path("created-via-link").exists()
                && !std::path::Path::new("/created-via-link").exists()
        );
        assert_eq!(std::fs::read(&secret).unwrap(), b"HOST SECRET");
        // Symlink targets are stored verbatim; following one that leads out is ESCAPE.
        assert_eq!(c.symlink("/etc/shadow", "s"), Ok(0));
        assert_eq!(c.readlink("s").unwrap(), "/etc/shadow");
        assert_eq!(c.stat("s"), Err(esc));
        // Entry ops whose parent is above the root create nothing outside.
        assert_eq!(c.mkdir("../../evil", 0o755), Err(esc));
        assert!(!root.join("evil").exists());
        assert!(!sc.0.parent().unwrap().join("evil").exists());
        assert_eq!(c.mkdir("evil", 0o755), Ok(0));
        assert_eq!(c.rename("evil", "../../../evil2", 0), Err(esc));
        assert!(root.join("evil").is_dir());
        assert_eq!(c.link("etc/passwd", "../hl", 0), Err(esc));
        assert!(!sc.path("hl").exists());
        assert_eq!(c.link("../secret", "x", 0), Err(esc));
        // The last component of an entry op is never followed.
        assert_eq!(c.unlink("slash"), Ok(0), "removes the link, not the root");
        assert!(root.is_dir());
        assert_eq!(c.rmdir("up"), Err(Errno::ENOTDIR));
        assert_eq!(
            c.unlink("up/"),
            Err(Errno::ENOTDIR),
            "the link, not followed"
        );
        assert_eq!(c.rmdir("up/"), Err(Errno::ENOTDIR));
        // Bytes after a NUL are not part of the path.
        assert_eq!(
            c.slurp("etc/passwd\0/../../../secret").unwrap(),
            b"in-root passwd"
        );

        if with_proc {
            // Magic links (procfs) are refused, whether named directly or through a symlink.
            let pid = std::process::id();
            for p in [
                "proc/self/root/etc/passwd".to_string(),
                "proc/thread-self/root/etc/passwd".to_string(),
                format!("proc/{pid}/root/etc/passwd"),
                format!("proc/{pid}/cwd"),
                "proc/self/fd/0".to_string(),
            ] {
                assert_eq!(c.open(&p, libc::O_RDONLY, 0), Err(e(libc::ELOOP)), "{p}");
                assert_eq!(c.stat(&p), Err(e(libc::ELOOP)), "{p}");
                assert_eq!(c.access(&p, libc::F_OK, 0), Err(e(libc::ELOOP)), "{p}");
            }
            // A symlink to a magic link is an absolute one: the client's to follow, in its
            // own /proc.
            std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
            assert_eq!(c.open("magic", libc::O_RDONLY, 0), Err(abi::ESCAPE));
            assert_eq!(c.stat("magic"), Err(abi::ESCAPE));
            assert_eq!(
                c.link("magic", "m2", libc::AT_SYMLINK_FOLLOW),
                Err(abi::ESCAPE)
            );
            assert_eq!(
                c.resolve("magic", false).as_deref(),
                Ok("/proc/self/root/etc/passwd")
            );
            // A relative symlink to the in-root procfs meets its magic links: refused.
            std::os::unix::fs::symlink("proc/self/root/etc/passwd", root.join("magic2")).unwrap();
            assert_eq!(c.open("magic2", libc::O_RDONLY, 0), Err(e(libc::ELOOP)));
            // Without following, the symlink itself is fine to look at.
            assert!(c.lstat("magic").unwrap().is_lnk());
            nix::mount::umount2(&root.join("proc"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
        rt.stop();
    })
    .join()
    .unwrap();
}

#[test]
fn handles_belong_to_their_session() {
    let (sc, root) = export("handles");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 2);
    std::fs::write(root.join("a"), b"A-file").unwrap();
    std::fs::write(root.join("b"), b"B-file").unwrap();
    let a = Client::connect(&sock);
    let b = Client::connect(&sock);
    let ha = a.open("a", libc::O_RDONLY, 0).unwrap();
    let ha2 = a.open("a", libc::O_RDONLY, 0).unwrap();
    assert_eq!((ha, ha2), (0, 1));
    // B cannot name A's handles.
    assert_eq!(b.read(ha, 10), Err(Errno::EBADF));
    assert_eq!(b.fstat(ha2), Err(Errno::EBADF));
    assert_eq!(b.close(ha), Err(Errno::EBADF));
    assert_eq!(b.getdents(ha2), Err(Errno::EBADF));
    // B's own handle 0 is its own file.
    let hb = b.open("b", libc::O_RDONLY, 0).unwrap();
    assert_eq!(hb, 0);
    assert_eq!(b.read(hb, 10).unwrap(), b"B-file");
    assert_eq!(a.read(ha, 10).unwrap(), b"A-file", "A's handle untouched");
    // Handles are reused lowest-first after close.
    a.close(ha).unwrap();
    assert_eq!(a.open("b", libc::O_RDONLY, 0), Ok(0));
    assert_eq!(a.read(u64::MAX, 1), Err(Errno::EBADF));
    // A session's files close when it ends.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.session_count() > 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.stop();
}

/// Runs this test binary's `child_role` with `role`, as `uid`/`gid` if given.
fn child(
    role: &str,
    sock: &std::path::Path,
    extra: &[(&str, String)],
    as_user: Option<u32>,
) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("VIRTUOS_TEST_ROLE", role)
    .env("VIRTUOS_TEST_SOCK", sock);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    if let Some(id) = as_user {
        // std drops supplementary groups when root changes uid.
        cmd.uid(id).gid(id);
    }
    cmd.output().expect("spawn the child")
}

fn assert_child_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "child failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CHILD-OK"),
        "the child role did not run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The client halves of the multi-process tests; a no-op in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var("VIRTUOS_TEST_ROLE") else {
        return;
    };
    let sock = std::path::PathBuf::from(std::env::var("VIRTUOS_TEST_SOCK").unwrap());
    let c = Client::connect(&sock);
    match role.as_str() {
        "nobody" => {
            let (_, uid, gid) = c.whoami();
            assert_eq!((uid, gid), (65534, 65534));
            // io_uring (open) under the session's personality.
            assert_eq!(c.open("private", libc::O_RDONLY, 0), Err(Errno::EACCES));
            assert_eq!(c.open("private", libc::O_WRONLY, 0), Err(Errno::EACCES));
            assert_eq!(c.slurp("public").unwrap(), b"public data");
            assert_eq!(c.open("public", libc::O_WRONLY, 0), Err(Errno::EACCES));
            assert_eq!(
                c.open("new", RW_CREAT, 0o644),
                Err(Errno::EACCES),
                "root dir not writable"
            );
            // The pool, acting as the client.
            assert_eq!(c.stat("closed/inner"), Err(Errno::EACCES));
            assert_eq!(c.access("private", libc::R_OK, 0), Err(Errno::EACCES));
            assert_eq!(c.access("public", libc::R_OK, 0), Ok(0));
            assert_eq!(c.access("public", libc::W_OK, 0), Err(Errno::EACCES));
            assert_eq!(c.mkdir("newdir", 0o755), Err(Errno::EACCES));
            assert_eq!(c.unlink("private"), Err(Errno::EACCES));
            assert_eq!(c.chmod("private", 0o666, 0), Err(Errno::EPERM));
            assert_eq!(c.truncate("private", 0), Err(Errno::EACCES));
            assert_eq!(c.utimens(Ok("private"), Some((1, 1)), 0), Err(Errno::EPERM));
            assert_eq!(c.readlink("closed/inner"), Err(Errno::EACCES));
            // What it creates is its own.
            let h = c.open("pub/mine", RW_CREAT, 0o600).unwrap();
            c.write(h, b"mine").unwrap();
            let st = c.fstat(h).unwrap();
            assert_eq!((st.uid, st.gid), (65534, 65534));
            // No capabilities: it cannot give its file away.
            assert_eq!(c.fchown(h, 0, 0), Err(Errno::EPERM));
            assert_eq!(c.chown("pub/mine", 1000, u32::MAX, 0), Err(Errno::EPERM));
            c.close(h).unwrap();
            assert_eq!(c.mkdir("pub/dir", 0o700), Ok(0));
            assert_eq!(c.stat("pub/dir").unwrap().uid, 65534);
            assert_eq!(c.rename("pub/dir", "pub/dir2", 0), Ok(0));
            assert_eq!(c.symlink("mine", "pub/ln"), Ok(0));
            assert_eq!(c.lstat("pub/ln").unwrap().uid, 65534);
            // Its own files: the /proc/self/fd and AT_EMPTY_PATH paths work for it too.
            assert_eq!(c.truncate("pub/ln", 2), Ok(0));
            assert_eq!(c.chmod("pub/ln", 0o640, 0), Ok(0));
            assert_eq!(c.utimens(Ok("pub/ln"), Some((7, 8)), 0), Ok(0));
            assert_eq!(c.link("pub/ln", "pub/hard", libc::AT_SYMLINK_FOLLOW), Ok(0));
            let st = c.stat("pub/hard").unwrap();
            assert_eq!(
                (st.size, st.mode & 0o7777, st.mtime, st.nlink),
                (2, 0o640, 8, 2)
            );
            assert_eq!(c.access("pub/mine", libc::R_OK | libc::W_OK, 0), Ok(0));
            // protected_hardlinks: not to another user's file it cannot write.
            assert_eq!(c.link("public", "pub/stolen", 0), Err(Errno::EPERM));
        }
        "grouped" => {
            // Readable through the supplementary group only.
            assert_eq!(c.slurp("group-only").unwrap(), b"for group 4242");
            assert_eq!(c.stat("group-dir/f").map(|s| s.size), Ok(1));
        }
        "ungrouped" => {
            assert_eq!(c.open("group-only", libc::O_RDONLY, 0), Err(Errno::EACCES));
            assert_eq!(c.stat("group-dir/f"), Err(Errno::EACCES));
        }
        "self-served" => {
            let h = c.open("mine", RW_CREAT | libc::O_EXCL, 0o640).unwrap();
            assert_eq!(c.write(h, b"by nobody"), Ok(9));
            assert_eq!(c.pread(h, 3, 6).unwrap(), b"nobody");
            assert_eq!(c.fstat(h).unwrap().uid, 65534);
            c.close(h).unwrap();
            assert_eq!(c.mkdir("d", 0o700), Ok(0));
            assert_eq!(c.rename("d", "d2", 0), Ok(0));
            assert_eq!(c.stat("d2").unwrap().uid, 65534);
            assert_eq!(c.open("rootfile", libc::O_RDONLY, 0), Err(Errno::EACCES));
        }
        "fork-child" => {
            let token: u64 = std::env::var("VIRTUOS_TEST_TOKEN")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(c.adopt(token), Ok(1));
            let h: u64 = std::env::var("VIRTUOS_TEST_HANDLE")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                c.read(h, 2).unwrap(),
                b"67",
                "the parent's open file and offset"
            );
            assert_eq!(c.adopt(token), Err(Errno::ENOENT), "one-time");
        }
        other => panic!("unknown role {other}"),
    }
    println!("CHILD-OK");
}

#[test]
fn the_client_identity_decides() {
    if !is_root() {
        eprintln!("skipped: needs root to run clients as other users");
        return;
    }
    let (sc, root) = export("identity");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 2);
    let own = |p: &std::path::Path, uid: u32, gid: u32, mode: u32| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        set_mode(p, mode);
    };
    std::fs::write(root.join("private"), b"private data").unwrap();
    own(&root.join("private"), 1000, 1000, 0o600);
    std::fs::write(root.join("public"), b"public data").unwrap();
    own(&root.join("public"), 1000, 1000, 0o644);
    std::fs::create_dir(root.join("closed")).unwrap();
    std::fs::write(root.join("closed/inner"), b"x").unwrap();
    own(&root.join("closed"), 1000, 1000, 0o700);
    std::fs::create_dir(root.join("pub")).unwrap();
    set_mode(&root.join("pub"), 0o777);
    std::fs::write(root.join("group-only"), b"for group 4242").unwrap();
    own(&root.join("group-only"), 1000, 4242, 0o640);
    std::fs::create_dir(root.join("group-dir")).unwrap();
    std::fs::write(root.join("group-dir/f"), b"g").unwrap();
    own(&root.join("group-dir"), 1000, 4242, 0o750);

    let out = child("nobody", &sock, &[], Some(65534));
    assert_child_ok(&out);
    let mine = std::fs::metadata(root.join("pub/mine")).unwrap();
    assert_eq!(
        (mine.uid(), mine.gid(), mine.mode() & 0o7777),
        (65534, 65534, 0o640)
    );
    assert_eq!(
        std::fs::read(root.join("private")).unwrap(),
        b"private data"
    );

    // The server itself still acts as root for a root client afterwards (identities were
    // switched back on every thread).
    let c = Client::connect(&sock);
    assert_eq!(c.slurp("private").unwrap(), b"private data");
    assert_eq!(c.mkdir("rootdir", 0o755), Ok(0));
    assert_eq!(c.stat("rootdir").unwrap().uid, 0);

    // Supplementary groups, read from /proc/<pid>/status at session start.
    if Command::new("setpriv").arg("--version").output().is_ok() {
        let exe = std::env::current_exe().unwrap();
        for (role, groups) in [("grouped", "4242"), ("ungrouped", "4243")] {
            let out = Command::new("setpriv")
                .args([
                    "--reuid", "65534", "--regid", "65534", "--groups", groups, "--",
                ])
                .arg(&exe)
                .args([
                    "--exact",
                    "child_role",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("VIRTUOS_TEST_ROLE", role)
                .env("VIRTUOS_TEST_SOCK", &sock)
                .output()
                .unwrap();
            assert_child_ok(&out);
        }
    } else {
        eprintln!("note: supplementary-group cases skipped (no setpriv)");
    }
    rt.stop();
}

#[test]
fn an_unprivileged_server_serves_only_its_own_user() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to start a server as another user");
        return;
    }
    let (sc, root) = export("unpriv");
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    std::fs::write(root.join("rootfile"), b"root only").unwrap();
    set_mode(&root.join("rootfile"), 0o600);
    let run = sc.path("run");
    std::fs::create_dir(&run).unwrap();
    set_mode(&run, 0o777);
    let sock = run.join("sock");
    let bin = env!("CARGO_BIN_EXE_virtuos-storage");
    let as_nobody = [
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ];

    // --device needs root, and says so.
    let out = Command::new("setpriv")
        .args(as_nobody)
        .arg(bin)
        .args(["--device", "/dev/null", "--listen"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut server = Command::new("setpriv")
        .args(as_nobody)
        .arg(bin)
        .arg("--root")
        .arg(&root)
        .arg("--listen")
        .arg(&sock)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A root client: the server cannot act as root, so it refuses the session.
    let err = loop {
        match xen_transport::control::connect_session(&sock, &Default::default()) {
            Err(xen_transport::control::ConnectError::NoServer { .. }) => {
                assert!(Instant::now() < deadline, "server did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => break e,
            Ok(_) => panic!("an unprivileged server accepted a root client"),
        }
    };
    assert!(err.to_string().contains("refused"), "{err}");
    // Its own user is served.
    let out = child("self-served", &sock, &[], Some(65534));
    assert_child_ok(&out);
    assert_eq!(std::fs::metadata(root.join("mine")).unwrap().uid(), 65534);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn clone_and_adopt_share_open_files() {
    let (sc, root) = export("clone");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 2);
    std::fs::write(root.join("f"), b"0123456789").unwrap();
    let a = Client::connect(&sock);
    let h = a.open("f", libc::O_RDONLY, 0).unwrap();
    assert_eq!(a.read(h, 2).unwrap(), b"01");

    // exec: the same process adopts in a new session; the offset is shared.
    let token = a.prepare_clone(true).unwrap();
    let b = Client::connect(&sock);
    let other = b.open("f", libc::O_RDONLY, 0).unwrap();
    assert_eq!(other, 0);
    assert_eq!(
        b.adopt(token),
        Ok(1),
        "one handle adopted, B's own replaced"
    );
    assert_eq!(b.read(h, 2).unwrap(), b"23");
    assert_eq!(a.read(h, 2).unwrap(), b"45");
    assert_eq!(b.adopt(token), Err(Errno::ENOENT));

    // fork: only a child of the creator may redeem.
    let token = a.prepare_clone(false).unwrap();
    assert_eq!(
        b.adopt(token),
        Err(Errno::EPERM),
        "not a child of the creator"
    );
    let out = child(
        "fork-child",
        &sock,
        &[
            ("VIRTUOS_TEST_TOKEN", token.to_string()),
            ("VIRTUOS_TEST_HANDLE", h.to_string()),
        ],
        None,
    );
    assert_child_ok(&out);
    assert_eq!(
        a.read(h, 2).unwrap(),
        b"89",
        "the child advanced the shared offset"
    );
    assert_eq!(b.read(h, 2).unwrap(), b"");
    // Closing in one session leaves the file open in the other.
    assert_eq!(b.close(h), Ok(0));
    assert_eq!(a.pread(h, 0, 3).unwrap(), b"012");
    rt.stop();
}

#[test]
fn record_locks_conflict_between_clients_and_waiters_do_not_starve_the_pool() {
    let (sc, root) = export("locks");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 2);
    std::fs::write(root.join("db"), vec![0u8; 100]).unwrap();
    let a = Client::connect(&sock);
    let b = Client::connect(&sock);
    let ha = a.open("db", libc::O_RDWR, 0).unwrap();
    let hb = b.open("db", libc::O_RDWR, 0).unwrap();
    assert_eq!(
        a.lock(ha, libc::F_SETLK, libc::F_WRLCK, 0, 10).map(|_| ()),
        Ok(())
    );
    assert_eq!(
        b.lock(hb, libc::F_SETLK, libc::F_WRLCK, 5, 10),
        Err(Errno::EAGAIN),
        "conflict between two clients"
    );
    assert_eq!(
        b.lock(hb, libc::F_SETLK, libc::F_RDLCK, 10, 10).map(|_| ()),
        Ok(()),
        "no overlap"
    );
    let (t, pid) = b.lock(hb, libc::F_GETLK, libc::F_WRLCK, 0, 5).unwrap();
    assert_eq!((t, pid), (libc::F_WRLCK, -1), "held by A's open file");
    assert_eq!(
        a.lock(ha, libc::F_GETLK, libc::F_WRLCK, 0, 5).unwrap().0,
        libc::F_UNLCK,
        "A's own"
    );
    // More waiters than pool threads: each waits on a thread of its own.
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let c = Client::connect(&sock);
                let h = c.open("db", libc::O_RDWR, 0).unwrap();
                c.lock(h, libc::F_SETLKW, libc::F_WRLCK, 0, 1).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                c.lock(h, libc::F_SETLK, libc::F_UNLCK, 0, 1).unwrap();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    for _ in 0..20 {
        assert!(a.stat("db").unwrap().is_reg(), "the pool still serves");
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(waiters.iter().all(|w| !w.is_finished()), "waiting for A");
    assert_eq!(
        a.lock(ha, libc::F_SETLK, libc::F_UNLCK, 0, 10).map(|_| ()),
        Ok(())
    );
    for w in waiters {
        w.join().unwrap();
    }
    // Closing the last handle of an open file releases its locks.
    assert_eq!(
        a.lock(ha, libc::F_SETLK, libc::F_WRLCK, 50, 1).map(|_| ()),
        Ok(())
    );
    assert_eq!(
        b.lock(hb, libc::F_SETLK, libc::F_WRLCK, 50, 1),
        Err(Errno::EAGAIN)
    );
    a.close(ha).unwrap();
    assert_eq!(
        b.lock(hb, libc::F_SETLK, libc::F_WRLCK, 50, 1).map(|_| ()),
        Ok(())
    );
    assert_eq!(
        b.raw(
            abi::Opcode::Fcntl,
            [hb, libc::F_SETLK as u64, 0, 0, 0],
            &[],
            8
        )
        .0
        .into_result(),
        Err(Errno::EFAULT),
        "no room for a struct flock"
    );
    rt.stop();
}

#[test]
fn many_threads_many_files() {
    let (sc, root) = export("threads");
    let sock = sc.path("sock");
    let rt = serve(Storage::with_root(&root).unwrap(), &sock, 2);
    let c = std::sync::Arc::new(Client::connect(&sock));
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let name = format!("t{t}");
                let h = c.open(&name, RW_CREAT | libc::O_TRUNC, 0o644).unwrap();
                for i in 0..200u64 {
                    let rec = format!("{t}:{i:06}\n");
                    assert_eq!(
                        c.pwrite(h, i * rec.len() as u64, rec.as_bytes()),
                        Ok(rec.len() as u64)
                    );
                    assert_eq!(
                        c.pread(h, i * rec.len() as u64, rec.len()).unwrap(),
                        rec.as_bytes()
                    );
                    if i % 50 == 0 {
                        assert_eq!(c.stat(&name).map(|s| s.is_reg()), Ok(true));
                    }
                }
                c.close(h).unwrap();
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for t in 0..4 {
        let body = std::fs::read_to_string(root.join(format!("t{t}"))).unwrap();
        assert_eq!(body.lines().count(), 200);
        assert!(body
            .lines()
            .enumerate()
            .all(|(i, l)| l == format!("{t}:{i:06}")));
    }
    rt.stop();
}

#[test]
fn device_export_mounts_a_private_ext4_image() {
    if !is_root() {
        eprintln!("skipped: --device needs root");
        return;
    }
    let Ok(mkfs) = which("mkfs.ext4") else {
        eprintln!("skipped: mkfs.ext4 not installed (apt-get install e2fsprogs)");
        return;
    };
    let sc = Scratch::new("device");
    let img = sc.path("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let out = Command::new(&mkfs)
        .args(["-q", "-F"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown types are refused clearly, before anything is attached.
    match Storage::with_device(&img, Some("nosuchfs")) {
        Err(e @ StorageError::UnknownFsType { .. }) => {
            assert!(e.to_string().contains("ext4"), "{e}")
        }
        other => panic!("expected UnknownFsType, got {other:?}"),
    }
    // A wrong type that exists fails to mount, with the kernel's reason.
    let err = Storage::with_device(&img, Some("xfs")).unwrap_err();
    assert!(matches!(err, StorageError::Mount { .. }), "{err}");

    // Probed type.
    let storage = Storage::with_device(&img, None).unwrap();
    assert!(storage.export().contains("ext4"), "{}", storage.export());
    let loop_dev = storage
        .export()
        .split(" on ")
        .nth(1)
        .map(|s| s.trim_end_matches(')').to_string())
        .unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains("virtuos-storage-") && !mountinfo.contains(&loop_dev),
        "the mount is visible to this process:\n{mountinfo}"
    );
    let sock = sc.path("sock");
    let rt = serve(storage, &sock, 1);
    let c = Client::connect(&sock);
    let mut names = {
        let d = c.open("/", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        let n = c.getdents(d).unwrap();
        assert_eq!(c.fstatfs_type(d), Ok(0xEF53), "an ext4 super block");
        c.close(d).unwrap();
        n
    };
    names.sort();
    assert_eq!(names, [".", "..", "lost+found"]);
    assert_eq!(c.mkdir("dir", 0o755), Ok(0));
    let h = c.open("dir/hello.txt", RW_CREAT, 0o644).unwrap();
    assert_eq!(c.write(h, b"hello from the storage domain\n"), Ok(30));
    assert_eq!(c.fsync(h, false), Ok(0));
    assert_eq!(c.close(h), Ok(0));
    assert_eq!(c.symlink("dir/hello.txt", "ln"), Ok(0));
    assert_eq!(c.slurp("ln").unwrap(), b"hello from the storage domain\n");
    assert_eq!(
        c.open("../../../etc/passwd", libc::O_RDONLY, 0),
        Err(abi::ESCAPE)
    );
    drop(c);
    rt.stop();

    // The mount goes with the server, and so does the loop device.
    let backing = format!(
        "/sys/block/{}/loop/backing_file",
        loop_dev.trim_start_matches("/dev/")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&backing).exists() {
        assert!(Instant::now() < deadline, "{loop_dev} still attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The data is in the image.
    if let Ok(debugfs) = which("debugfs") {
        let out = Command::new(debugfs)
            .args(["-R", "cat /dir/hello.txt"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from the storage domain\n"
        );
    }
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

#[test]
fn binary_has_help_and_clear_errors() {
    let bin = env!("CARGO_BIN_EXE_virtuos-storage");
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--root",
        "--device",
        "--fstype",
        "--listen",
        "--cpus",
        "--threads",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = Command::new(bin)
        .args(["--listen", "/tmp/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--root"));
    let out = Command::new(bin)
        .args(["--root", "/nonexistent/dir", "--listen", "/tmp/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/dir") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    let (sc, root) = export("bin");
    let sock = sc.path("sock");
    std::fs::write(root.join("f"), b"served by the binary").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtuos-storage"))
        .arg("--root")
        .arg(&root)
        .arg("--listen")
        .arg(&sock)
        .args(["--threads", "2"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        if let Ok(s) = xen_transport::control::connect_session(&sock, &Default::default()) {
            break Client { s };
        }
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(c.slurp("f").unwrap(), b"served by the binary");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o666
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let err =
        c.s.call(abi::Request {
            opcode: abi::Opcode::Nop as u16,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EIO);
}
