//! What attaching needs from the machine, with errors that say how to fix it: root, a bpffs
//! (mounted here when missing), a cgroup2 hierarchy, the kernel's BTF, and the eBPF object.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where everything of ours is pinned.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Our directory in the bpffs: one subdirectory per attached cgroup id.
pub const PIN_ROOT: &str = "/sys/fs/bpf/virtuos";
/// Attach records (what was attached, what the kernel refused), one JSON file per cgroup id.
pub const STATE_DIR: &str = "/run/virtuos/bpf";
/// The kernel's BTF, needed for the BPF LSM variants.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Fails unless we run as root.
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo");
    }
    Ok(())
}

fn fs_magic(p: &Path) -> Option<i64> {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs into a zeroed struct with a valid C string path.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        Some(s.f_type as i64)
    }
}

/// Makes sure a bpffs is mounted at `/sys/fs/bpf`, mounting one when it is not.
pub fn ensure_bpffs() -> Result<()> {
    let p = Path::new(BPFFS);
    if fs_magic(p) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    if !p.is_dir() {
        bail!("{BPFFS} does not exist: the kernel has no bpffs mount point (is CONFIG_BPF_SYSCALL on?)");
    }
    let (src, dst) = (c"bpf", CString::new(BPFFS)?);
    // SAFETY: mount(2) with valid C strings and no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("bpffs is not mounted at {BPFFS} and mounting it failed ({e}): run `mount -t bpf bpf {BPFFS}`");
    }
    eprintln!("virtuos-redirect: mounted bpffs at {BPFFS}");
    Ok(())
}

/// The cgroup2 mount point (the first one in /proc/self/mountinfo).
pub fn cgroup2_root() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let mut halves = line.splitn(2, " - ");
        let (a, b) = (halves.next().unwrap_or(""), halves.next().unwrap_or(""));
        if b.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = a.split_whitespace().nth(4) {
                return Ok(PathBuf::from(unescape_mount(mp)));
            }
        }
    }
    bail!(
        "cgroup2 is not mounted: mount it with `mount -t cgroup2 none /sys/fs/cgroup` \
         (or at /sys/fs/cgroup/unified where /sys/fs/cgroup holds the v1 hierarchies)"
    )
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup2 directory, resolved.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Absolute path of the directory.
    pub path: PathBuf,
    /// Its id (the kernfs inode number, what `bpf_get_current_cgroup_id` returns).
    pub id: u64,
    /// Depth below the cgroup2 root (root = 0).
    pub level: u32,
    /// Whether this call created it.
    pub created: bool,
}

/// Resolves `--cgroup PATH`: an absolute path on the cgroup2 mount, or a path relative to it
/// (`virtuos/app` = `<cgroup2 root>/virtuos/app`). Creates it when `create`.
pub fn resolve_cgroup(arg: &Path, create: bool) -> Result<Cgroup> {
    let root = cgroup2_root()?;
    let rel: PathBuf = if arg.is_absolute() {
        match arg.strip_prefix(&root) {
            Ok(r) => r.to_path_buf(),
            Err(_) => bail!(
                "{}: not on the cgroup2 hierarchy, which is mounted at {} \
                 (give a path under it, or one relative to it)",
                arg.display(),
                root.display()
            ),
        }
    } else {
        arg.to_path_buf()
    };
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!("{}: use a plain path without `..`", arg.display());
    }
    let path = root.join(&rel);
    let mut created = false;
    if !path.exists() {
        if !create {
            bail!(
                "cgroup {} does not exist (pass --create to create it)",
                path.display()
            );
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        created = true;
    }
    if fs_magic(&path) != Some(CGROUP2_SUPER_MAGIC) {
        bail!("{}: not a cgroup2 directory", path.display());
    }
    let md = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
    Ok(Cgroup {
        id: md.ino(),
        level: rel.components().count() as u32,
        path,
        created,
    })
}

/// The eBPF object: `$VIRTUOS_BPF_OBJ`, else `virtuos-ebpf.o` next to the binary, else
/// `target/bpf/virtuos-ebpf.o` when the binary is in `target/<profile>/`.
pub fn object_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTUOS_BPF_OBJ") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("VIRTUOS_BPF_OBJ={}: no such file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating virtuos-redirect")?;
    let mut tried = Vec::new();
    let beside = exe.with_file_name("virtuos-ebpf.o");
    tried.push(beside.clone());
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(t) = exe.parent().and_then(Path::parent) {
        let p = t.join("bpf").join("virtuos-ebpf.o");
        tried.push(p.clone());
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "the eBPF object is not built (looked for {}): build it with `scripts/build-ebpf.sh` \
         (its toolchain comes with `scripts/setup.sh --deps`), or set VIRTUOS_BPF_OBJ",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The kernel encoding of a device number (`MAJOR << 20 | MINOR`, as in `super_block.s_dev`).
pub fn kernel_dev(st_dev: u64) -> u64 {
    let (maj, min) = (libc::major(st_dev) as u64, libc::minor(st_dev) as u64);
    (maj << 20) | min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
    }
}
