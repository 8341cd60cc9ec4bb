//! Real programs under `virtuos-redirect run` against a real `virtuos-storage`, compared with
//! the same programs run natively on a local copy of the same tree.
//!
//! Needs the workspace's binaries (`cargo test --workspace` builds them all).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtuos-redirect"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Storage {
    child: Child,
    sock: PathBuf,
    root: PathBuf,
    local: PathBuf,
    /// Redirected runs use the supervised mode (`run --supervised`) instead of the shim.
    supervised: bool,
}

impl Drop for Storage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.root.parent().unwrap());
    }
}

const MOUNT: &str = "/virtuos-test-mnt";

fn start(name: &str) -> Storage {
    let base = std::env::temp_dir().join(format!("virtuos-redir-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("export");
    let local = base.join("local");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&local).unwrap();
    let sock = base.join("storage.sock");
    let preload = bin_dir().join("libvirtuos_preload.so");
    assert!(
        preload.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        preload.display()
    );
    let storage = bin_dir().join("virtuos-storage");
    assert!(
        storage.exists(),
        "{} missing: run cargo test --workspace",
        storage.display()
    );
    let child = Command::new(storage)
        .arg("--root")
        .arg(&root)
        .arg("--listen")
        .arg(&sock)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "virtuos-storage did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Storage {
        child,
        sock,
        root,
        local,
        supervised: false,
    }
}

/// As [`start`], with redirected runs in the supervised mode.
fn start_supervised(name: &str) -> Storage {
    let mut s = start(&format!("{name}-sup"));
    s.supervised = true;
    s
}

impl Storage {
    /// Runs `script` with the shell command `shell` under redirection.
    fn redirected_with(&self, shell: &[&str], script: &str) -> Output {
        let out = self.redirected_unchecked(shell, script);
        // Nothing may have been written to the local file system at the mount path: that
        // would mean the program ran unredirected.
        assert!(
            !Path::new(MOUNT).exists(),
            "{MOUNT} exists locally: the program escaped redirection"
        );
        out
    }

    fn redirected_unchecked(&self, shell: &[&str], script: &str) -> Output {
        Command::new(bin_dir().join("virtuos-redirect"))
            .arg("run")
            .args(self.supervised.then_some("--supervised"))
            .arg("--storage")
            .arg(&self.sock)
            .args(["--mount", MOUNT, "--"])
            .args(shell)
            .args(["-c", script])
            .env("D", MOUNT)
            .env("VIRTUOS_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
            .output()
            .unwrap()
    }

    /// Runs `script` natively with `$D` = the local copy.
    fn native_with(&self, shell: &[&str], script: &str) -> Output {
        Command::new(shell[0])
            .args(&shell[1..])
            .args(["-c", script])
            .env("D", &self.local)
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `script` both ways; stdout (with the prefix replaced) and status must match.
fn same(s: &Storage, script: &str) -> String {
    same_with(s, &["sh"], script)
}

fn same_with(s: &Storage, shell: &[&str], script: &str) -> String {
    let r = s.redirected_with(shell, script);
    let n = s.native_with(shell, script);
    let rs = String::from_utf8_lossy(&r.stdout).replace(MOUNT, "$D");
    let ns = String::from_utf8_lossy(&n.stdout).replace(s.local.to_str().unwrap(), "$D");
    assert_eq!(
        r.status.code(),
        n.status.code(),
        "status differs for {script}\nredirected: {}\nnative: {}",
        text(&r),
        text(&n)
    );
    assert_eq!(
        rs,
        ns,
        "output differs for {script}\nredirected: {}\nnative: {}",
        text(&r),
        text(&n)
    );
    rs
}

/// Compares two trees: relative paths, types, sizes, modes and contents.
fn tree(root: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -printf '%p %y %s %m\\n' | sort && find . -type f -exec sha256sum {} + | sort")
        .arg("sh")
        .arg(root)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn coreutils_behave_as_on_a_local_tree() {
    coreutils_behave_as_on_a_local_tree_in(false);
}

#[test]
fn coreutils_behave_as_on_a_local_tree_supervised() {
    coreutils_behave_as_on_a_local_tree_in(true);
}

fn coreutils_behave_as_on_a_local_tree_in(supervised: bool) {
    let s = if supervised {
        start_supervised("coreutils")
    } else {
        start("coreutils")
    };
    let script = r#"
        set -e
        mkdir -p $D/a/b/c
        echo hello > $D/a/b/c/f.txt
        printf 'line1\nline2\n' >> $D/a/b/c/f.txt
        cat $D/a/b/c/f.txt
        cp -a $D/a $D/copy
        mv $D/copy/b/c/f.txt $D/copy/moved.txt
        ln -s moved.txt $D/copy/link
        readlink $D/copy/link
        cat $D/copy/link
        touch -d 2020-01-02 $D/copy/moved.txt
        chmod 640 $D/copy/moved.txt
        stat -c '%s %a %Y %F' $D/copy/moved.txt
        stat -c '%s %a %F' $D/copy/link $D/a
        ls -la $D/copy | awk '{print $1, $5, $NF}'
        find $D | sort
        du -s --apparent-size -b $D/a/b/c
        cd $D/a/b && pwd && ls && cat c/f.txt | wc -l && cd .. && ls b
        rm -r $D/copy/b
        find $D | sort
        head -c 300000 /dev/zero | tr '\0' 'x' > $D/big
        wc -c < $D/big
        cmp $D/big $D/big && echo same
    "#;
    same(&s, script);
    assert_eq!(tree(&s.root), tree(&s.local), "resulting trees differ");
}

#[test]
fn error_paths_match_linux() {
    error_paths_match_linux_in(false);
}

#[test]
fn error_paths_match_linux_supervised() {
    error_paths_match_linux_in(true);
}

fn error_paths_match_linux_in(supervised: bool) {
    let s = if supervised {
        start_supervised("errors")
    } else {
        start("errors")
    };
    let script = r#"
        cat $D/missing; echo "rc=$?"
        mkdir $D/d; : > $D/d/file
        ls $D/d/file/x; echo "rc=$?"
        rmdir $D/d; echo "rc=$?"
        mv $D/d/file /tmp/virtuos-exdev-$$; echo "rc=$?"
        ln $D/d/file /tmp/virtuos-exdev-$$; echo "rc=$?"
        exec 3<$D/d/file; exec 3<&-; cat <&3; echo "rc=$?"
        echo secret > $D/secret; chmod 600 $D/secret
        setpriv --reuid 65534 --regid 65534 --clear-groups cat $D/secret; echo "rc=$?"
        setpriv --reuid 65534 --regid 65534 --clear-groups sh -c "echo x > $D/d/file"; echo "rc=$?"
    "#;
    let out = same(&s, script);
    assert!(out.contains("rc=1"), "{out}");
}

#[test]
fn tar_round_trip_and_python_tree_walk() {
    tar_round_trip_and_python_tree_walk_in(false);
}

#[test]
fn tar_round_trip_and_python_tree_walk_supervised() {
    tar_round_trip_and_python_tree_walk_in(true);
}

fn tar_round_trip_and_python_tree_walk_in(supervised: bool) {
    let s = if supervised {
        start_supervised("tar")
    } else {
        start("tar")
    };
    let script = r#"
        set -e
        mkdir -p $D/src/sub
        for i in 1 2 3 4 5; do seq 1 $((i * 500)) > $D/src/sub/f$i; done
        ln -s sub/f1 $D/src/lnk
        tar -C $D --sort=name --mtime=2020-01-01 --owner=0 --group=0 --numeric-owner -cf $D/t.tar src
        mkdir $D/out
        tar -C $D/out -xf $D/t.tar
        diff -r $D/src $D/out/src && echo identical
        python3 - "$D" <<'PY'
import os, sys, hashlib
root = sys.argv[1]
for dirpath, dirs, files in sorted(os.walk(os.path.join(root, "out"))):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(dirpath, f)
        data = open(p, "rb").read()
        with open(p + ".up", "wb") as o:
            o.write(data.upper())
        print(os.path.relpath(p, root), len(data), hashlib.sha256(data).hexdigest()[:16])
PY
    "#;
    same(&s, script);
    assert_eq!(tree(&s.root), tree(&s.local));
}

#[test]
fn sqlite_transactions_and_integrity() {
    sqlite_transactions_and_integrity_in(false);
}

#[test]
fn sqlite_transactions_and_integrity_supervised() {
    sqlite_transactions_and_integrity_in(true);
}

fn sqlite_transactions_and_integrity_in(supervised: bool) {
    if Command::new("sqlite3").arg("--version").output().is_err() {
        panic!("sqlite3 is required (scripts/setup.sh installs it)");
    }
    let s = if supervised {
        start_supervised("sqlite")
    } else {
        start("sqlite")
    };
    let script = r#"
        set -e
        sqlite3 $D/db.sqlite 'create table t(id integer primary key, v text);'
        for b in 0 1 2 3 4 5 6 7 8 9; do
          ( echo 'begin;'; seq 1 1000 | sed "s/.*/insert into t(v) values('row-$b-&');/"; echo 'commit;' ) | sqlite3 $D/db.sqlite
        done
        sqlite3 $D/db.sqlite 'select count(*), sum(length(v)) from t; pragma integrity_check;'
    "#;
    let out = same(&s, script);
    assert!(out.contains("10000|"), "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn git_init_add_commit_log_status() {
    git_init_add_commit_log_status_in(false);
}

#[test]
fn git_init_add_commit_log_status_supervised() {
    git_init_add_commit_log_status_in(true);
}

fn git_init_add_commit_log_status_in(supervised: bool) {
    let s = if supervised {
        start_supervised("git")
    } else {
        start("git")
    };
    let script = r#"
        set -e
        export GIT_AUTHOR_DATE=2020-01-01T00:00:00Z GIT_COMMITTER_DATE=2020-01-01T00:00:00Z
        export HOME=/tmp GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
        mkdir $D/repo && cd $D/repo
        git init -q -b main .
        git config user.email t@example.com; git config user.name t
        echo one > a.txt; mkdir d; echo two > d/b.txt
        git add . && git commit -qm first
        echo three >> a.txt
        git status --short
        git commit -qam second
        git log --format='%H %s'
        git status --short
        git fsck --no-progress 2>&1 | grep -v '^dangling' || true
    "#;
    same(&s, script);
}

/// A statically linked program (busybox-static) runs through the supervised mode
/// (seccomp user notification handled by virtuos-redirect), with the same results.
#[test]
fn busybox_static_through_the_supervised_mode() {
    let busybox = Path::new("/usr/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is required (scripts/setup.sh installs it)"
    );
    let s = start("busybox");
    let script = r#"
        set -e
        mkdir -p $D/bb/x/y
        echo hello > $D/bb/x/f.txt
        cat $D/bb/x/f.txt
        cp $D/bb/x/f.txt $D/bb/x/y/g.txt
        mv $D/bb/x/y/g.txt $D/bb/h.txt
        ln -s h.txt $D/bb/link
        readlink $D/bb/link
        cat $D/bb/link
        find $D/bb | sort
        stat -c '%s %a %F' $D/bb/h.txt $D/bb/x
        cd $D/bb && pwd && ls && cd x && ls -1 . y
        wc -c $D/bb/h.txt
        rm -r $D/bb/x
        find $D | sort
        cat $D/missing || echo "rc=$?"
    "#;
    same_with(&s, &["/usr/bin/busybox", "sh"], script);
    assert_eq!(tree(&s.root), tree(&s.local));
}

/// Threads of one program use the storage domain at once; a private read-only mapping of a
/// remote file is emulated and a shared one fails with ENODEV, as on a file system without
/// mmap.
#[test]
fn threads_and_mmap() {
    threads_and_mmap_in(false);
}

#[test]
fn threads_and_mmap_supervised() {
    threads_and_mmap_in(true);
}

fn threads_and_mmap_in(supervised: bool) {
    let s = if supervised {
        start_supervised("threads")
    } else {
        start("threads")
    };
    let script = r#"
        python3 - "$D" <<'PY'
import mmap, os, sys, threading, errno
root = sys.argv[1]
def work(i):
    p = os.path.join(root, f"t{i}.txt")
    with open(p, "w") as f:
        for j in range(200):
            f.write(f"thread {i} line {j}\n")
    with open(p) as f:
        assert len(f.readlines()) == 200
ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
print(sorted(os.listdir(root)))
fd = os.open(os.path.join(root, "t3.txt"), os.O_RDONLY)
m = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
print(m[:20], len(m))
m = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
print("read-only shared mapping:", m[:6])
rw = os.open(os.path.join(root, "t3.txt"), os.O_RDWR)
try:
    mmap.mmap(rw, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    print("writable shared mapping allowed")
except OSError as e:
    print("writable shared mapping:", errno.errorcode[e.errno])
PY
    "#;
    let r = s.redirected_with(&["sh"], script);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", text(&r));
    assert!(out.contains("'t7.txt'"), "{out}");
    assert!(out.contains("b'thread 3 line 0\\nthre' 3490"), "{out}");
    assert!(out.contains("read-only shared mapping: b'thread'"), "{out}");
    assert!(out.contains("writable shared mapping: ENODEV"), "{out}");
}

/// A storage domain that dies under a running program: calls under the mount fail fast with
/// EIO, local calls keep working, nothing hangs; `run` refuses to start without the domain.
#[test]
fn dead_storage_domain_fails_fast_with_eio() {
    let mut s = start("dead");
    std::fs::write(s.root.join("f"), b"data\n").unwrap();
    let script = r#"
        cat $D/f
        read line   # wait until the test killed the server
        start=$(date +%s%N)
        cat $D/f; echo "rc=$?"
        ls $D > /dev/null; echo "rc=$?"
        echo local > /tmp/virtuos-dead-$$ && cat /tmp/virtuos-dead-$$ && rm /tmp/virtuos-dead-$$
        end=$(date +%s%N)
        echo "ms=$(( (end - start) / 1000000 ))"
    "#;
    let mut child = Command::new(bin_dir().join("virtuos-redirect"))
        .args(["run", "--storage"])
        .arg(&s.sock)
        .args(["--mount", MOUNT, "--", "sh", "-c", script])
        .env("D", MOUNT)
        .env("VIRTUOS_PRELOAD", bin_dir().join("libvirtuos_preload.so"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the redirected program hung");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.starts_with("data\n"), "{out}\n{err}");
    assert!(out.contains("rc=1\nrc=2\nlocal\n"), "{out}\n{err}");
    assert!(err.contains("Input/output error"), "{err}");
    let ms: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("ms="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms < 5000, "calls on a dead domain took {ms} ms");

    // With the domain gone, `run` says so before starting anything.
    let o = Command::new(bin_dir().join("virtuos-redirect"))
        .args(["run", "--storage"])
        .arg(&s.sock)
        .args(["--mount", MOUNT, "--", "true"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("storage domain at"), "{err}");
}

/// sendfile from a remote file to a local non-blocking socket with short writes: every byte
/// arrives once, in order, and the file position moves by what was sent.
#[test]
fn sendfile_with_short_writes_loses_nothing() {
    sendfile_with_short_writes_loses_nothing_in(false);
}

#[test]
fn sendfile_with_short_writes_loses_nothing_supervised() {
    sendfile_with_short_writes_loses_nothing_in(true);
}

fn sendfile_with_short_writes_loses_nothing_in(supervised: bool) {
    let s = if supervised {
        start_supervised("sendfile")
    } else {
        start("sendfile")
    };
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(s.root.join("big"), &data).unwrap();
    std::fs::write(s.local.join("big"), &data).unwrap();
    let script = r#"
        python3 - "$D/big" <<'PY'
import hashlib, os, socket, sys
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
a.setblocking(False)
f = os.open(sys.argv[1], os.O_RDONLY)
got = bytearray()
sent_total = 0
while True:
    try:
        n = os.sendfile(a.fileno(), f, None, 1 << 20)
    except BlockingIOError:
        n = -1
    if n == 0:
        break
    if n > 0:
        sent_total += n
    b.setblocking(False)
    try:
        while True:
            chunk = b.recv(1 << 16)
            if not chunk:
                break
            got += chunk
    except BlockingIOError:
        pass
a.close()
b.setblocking(True)
while True:
    chunk = b.recv(1 << 16)
    if not chunk:
        break
    got += chunk
print(len(got), sent_total, os.lseek(f, 0, os.SEEK_CUR), hashlib.sha256(got).hexdigest())
PY
    "#;
    let out = same(&s, script);
    assert!(out.starts_with("2000000 2000000 2000000 "), "{out}");
}
