//! A small storage client for tests: one method per opcode, over a real session.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use abi::{Errno, Opcode, Request, Response};
use service::{Runtime, RuntimeConfig};
use virtuos_storage::Storage;
use xen_transport::control::connect_session;
use xen_transport::{ClientConfig, Session};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "virtuos-storage-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        set_mode(&p, 0o755);
        Scratch(p)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts a storage server exporting `storage` on `sock`.
pub fn serve(storage: Storage, sock: &Path, threads: usize) -> Runtime {
    let _ = std::fs::remove_file(sock);
    let mut cfg = RuntimeConfig::new(sock);
    cfg.channels = 16;
    cfg.window = 64 << 10;
    cfg.threads = threads;
    let rt = Runtime::start(cfg, storage).expect("storage server starts");
    set_mode(sock, 0o666);
    rt
}

/// An errno `abi::Errno` has no constant for.
pub fn e(n: i32) -> Errno {
    Errno::new(n).unwrap()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A client session.
pub struct Client {
    pub s: Session,
}

/// The fields of a `struct statx` tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
}

impl Stat {
    pub fn parse(b: &[u8]) -> Stat {
        assert_eq!(b.len(), 256, "a whole struct statx");
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        Stat {
            nlink: u32_at(16),
            uid: u32_at(20),
            gid: u32_at(24),
            mode: u32::from(u16::from_ne_bytes([b[28], b[29]])),
            ino: u64_at(32),
            size: u64_at(40),
            mtime: u64_at(112) as i64,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub fn is_lnk(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

type R<T> = Result<T, Errno>;

impl Client {
    pub fn connect(sock: &Path) -> Client {
        Client {
            s: connect_session(sock, &ClientConfig::default()).expect("session"),
        }
    }

    /// One call: `input` at window offset 0, `out` bytes offered for results.
    pub fn raw(&self, op: Opcode, args: [u64; 5], input: &[u8], out: usize) -> (Response, Vec<u8>) {
        let mut l = self.s.lease();
        l.write(0, input).unwrap();
        let req = Request {
            opcode: op as u16,
            data_off: 0,
            data_len: input.len().max(out) as u32,
            args,
            ..Request::default()
        };
        let r = l.call(req).unwrap();
        let mut buf = vec![0u8; r.data_len as usize];
        l.read(0, &mut buf).unwrap();
        (r, buf)
    }

    fn path_op(
        &self,
        op: Opcode,
        mut args: [u64; 5],
        path: &str,
        out: usize,
    ) -> (Response, Vec<u8>) {
        args[4] = path.len() as u64;
        self.raw(op, args, path.as_bytes(), out)
    }

    fn two_path_op(&self, op: Opcode, a0: u64, first: &str, second: &str) -> R<u64> {
        let mut input = first.as_bytes().to_vec();
        input.extend_from_slice(second.as_bytes());
        let args = [a0, 0, 0, second.len() as u64, first.len() as u64];
        self.raw(op, args, &input, 0).0.into_result()
    }

    pub fn open(&self, path: &str, flags: i32, mode: u32) -> R<u64> {
        self.open_full(path, flags, mode).map(|(h, _)| h)
    }

    /// Open: (handle, st_mode).
    pub fn open_full(&self, path: &str, flags: i32, mode: u32) -> R<(u64, u32)> {
        let (r, _) = self.path_op(
            Opcode::OpenAt,
            [flags as u32 as u64, u64::from(mode), 0, 0, 0],
            path,
            0,
        );
        r.into_result().map(|h| (h, r.aux[0] as u32))
    }

    pub fn close(&self, h: u64) -> R<u64> {
        self.raw(Opcode::Close, [h, 0, 0, 0, 0], &[], 0)
            .0
            .into_result()
    }

    pub fn read(&self, h: u64, n: usize) -> R<Vec<u8>> {
        let (r, b) = self.raw(Opcode::Read, [h, 0, 0, 0, 0], &[], n);
        r.into_result().map(|n| {
            assert_eq!(n as usize, b.len());
            b
        })
    }

    pub fn write(&self, h: u64, data: &[u8]) -> R<u64> {
        self.raw(Opcode::Write, [h, 0, 0, 0, 0], data, 0)
            .0
            .into_result()
    }

    pub fn pread(&self, h: u64, off: u64, n: usize) -> R<Vec<u8>> {
        let (r, b) = self.raw(Opcode::PRead, [h, off, 0, 0, 0], &[], n);
        r.into_result().map(|_| b)
    }

    pub fn pwrite(&self, h: u64, off: u64, data: &[u8]) -> R<u64> {
        self.raw(Opcode::PWrite, [h, off, 0, 0, 0], data, 0)
            .0
            .into_result()
    }

    pub fn lseek(&self, h: u64, off: i64, whence: i32) -> R<u64> {
        self.raw(Opcode::LSeek, [h, off as u64, whence as u64, 0, 0], &[], 0)
            .0
            .into_result()
    }

    pub fn fstat(&self, h: u64) -> R<Stat> {
        let (r, b) = self.raw(Opcode::FStat, [h, 0, 0, 0, 0], &[], 256);
        r.into_result().map(|_| Stat::parse(&b))
    }

    pub fn stat_flags(&self, path: &str, flags: i32) -> R<Stat> {
        let mask = (libc::STATX_BASIC_STATS | libc::STATX_BTIME) as u64;
        let (r, b) = self.path_op(Opcode::StatAt, [flags as u64, mask, 0, 0, 0], path, 256);
        r.into_result().map(|_| Stat::parse(&b))
    }

    pub fn stat(&self, path: &str) -> R<Stat> {
        self.stat_flags(path, 0)
    }

    pub fn lstat(&self, path: &str) -> R<Stat> {
        self.stat_flags(path, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Every name of a directory (handle), by repeated getdents64.
    pub fn getdents(&self, h: u64) -> R<Vec<String>> {
        let mut names = Vec::new();
        loop {
            let (r, b) = self.raw(Opcode::GetDents64, [h, 0, 0, 0, 0], &[], 4096);
            let n = r.into_result()? as usize;
            if n == 0 {
                return Ok(names);
            }
            let mut off = 0;
            while off < n {
                let reclen = u16::from_ne_bytes([b[off + 16], b[off + 17]]) as usize;
                let name = &b[off + 19..off + reclen];
                let end = name.iter().position(|&c| c == 0).unwrap();
                names.push(String::from_utf8_lossy(&name[..end]).into_owned());
                off += reclen;
            }
        }
    }

    pub fn mkdir(&self, path: &str, mode: u32) -> R<u64> {
        self.path_op(Opcode::MkdirAt, [0, u64::from(mode), 0, 0, 0], path, 0)
            .0
            .into_result()
    }

    pub fn unlink(&self, path: &str) -> R<u64> {
        self.path_op(Opcode::UnlinkAt, [0; 5], path, 0)
            .0
            .into_result()
    }

    pub fn rmdir(&self, path: &str) -> R<u64> {
        self.path_op(
            Opcode::UnlinkAt,
            [libc::AT_REMOVEDIR as u64, 0, 0, 0, 0],
            path,
            0,
        )
        .0
        .into_result()
    }

    pub fn rename(&self, old: &str, new: &str, flags: u32) -> R<u64> {
        self.two_path_op(Opcode::RenameAt, u64::from(flags), old, new)
    }

    pub fn link(&self, old: &str, new: &str, flags: i32) -> R<u64> {
        self.two_path_op(Opcode::LinkAt, flags as u64, old, new)
    }

    pub fn symlink(&self, target: &str, new: &str) -> R<u64> {
        self.two_path_op(Opcode::SymlinkAt, 0, target, new)
    }

    pub fn readlink(&self, path: &str) -> R<String> {
        let (r, b) = self.path_op(Opcode::ReadLinkAt, [0; 5], path, 4096);
        r.into_result().map(|_| String::from_utf8(b).unwrap())
    }

    /// Where a path that failed with `ESCAPE` continues (`entry`: the last component is not
    /// followed).
    pub fn resolve(&self, path: &str, entry: bool) -> R<String> {
        let (r, b) = self.path_op(Opcode::Resolve, [u64::from(entry), 0, 0, 0, 0], path, 4096);
        r.into_result().map(|_| String::from_utf8(b).unwrap())
    }

    pub fn access(&self, path: &str, mode: i32, flags: i32) -> R<u64> {
        self.path_op(
            Opcode::AccessAt,
            [mode as u64, flags as u64, 0, 0, 0],
            path,
            0,
        )
        .0
        .into_result()
    }

    pub fn fsync(&self, h: u64, data_only: bool) -> R<u64> {
        self.raw(Opcode::FSync, [h, u64::from(data_only), 0, 0, 0], &[], 0)
            .0
            .into_result()
    }

    pub fn ftruncate(&self, h: u64, len: i64) -> R<u64> {
        self.raw(Opcode::FTruncate, [h, len as u64, 0, 0, 0], &[], 0)
            .0
            .into_result()
    }

    pub fn truncate(&self, path: &str, len: i64) -> R<u64> {
        self.path_op(Opcode::TruncateAt, [0, len as u64, 0, 0, 0], path, 0)
            .0
            .into_result()
    }

    pub fn fchmod(&self, h: u64, mode: u32) -> R<u64> {
        self.raw(Opcode::FChmod, [h, u64::from(mode), 0, 0, 0], &[], 0)
            .0
            .into_result()
    }

    pub fn chmod(&self, path: &str, mode: u32, flags: i32) -> R<u64> {
        self.path_op(
            Opcode::ChmodAt,
            [flags as u64, u64::from(mode), 0, 0, 0],
            path,
            0,
        )
        .0
        .into_result()
    }

    pub fn fchown(&self, h: u64, uid: u32, gid: u32) -> R<u64> {
        self.raw(
            Opcode::FChown,
            [h, u64::from(uid), u64::from(gid), 0, 0],
            &[],
            0,
        )
        .0
        .into_result()
    }

    pub fn chown(&self, path: &str, uid: u32, gid: u32, flags: i32) -> R<u64> {
        self.path_op(
            Opcode::ChownAt,
            [flags as u64, u64::from(uid), u64::from(gid), 0, 0],
            path,
            0,
        )
        .0
        .into_result()
    }

    /// utimensat by path (`Some(path)`) or handle, with (atime, mtime) seconds or "now".
    pub fn utimens(
        &self,
        target: Result<&str, u64>,
        times: Option<(i64, i64)>,
        flags: i32,
    ) -> R<u64> {
        let mut input = vec![0u8; 32];
        if let Some((a, m)) = times {
            input[0..8].copy_from_slice(&a.to_ne_bytes());
            input[16..24].copy_from_slice(&m.to_ne_bytes());
        }
        let (h, plen) = match target {
            Ok(p) => {
                input.extend_from_slice(p.as_bytes());
                (u64::MAX, p.len() as u64)
            }
            Err(h) => (h, 0),
        };
        let args = [h, flags as u64, u64::from(times.is_some()), 0, plen];
        self.raw(Opcode::UtimensAt, args, &input, 0).0.into_result()
    }

    pub fn fallocate(&self, h: u64, mode: i32, off: u64, len: u64) -> R<u64> {
        self.raw(Opcode::Fallocate, [h, mode as u64, off, len, 0], &[], 0)
            .0
            .into_result()
    }

    /// fstatfs: f_type.
    pub fn fstatfs_type(&self, h: u64) -> R<i64> {
        let (r, b) = self.raw(Opcode::FStatFs, [h, 0, 0, 0, 0], &[], 120);
        r.into_result()
            .map(|_| i64::from_ne_bytes(b[0..8].try_into().unwrap()))
    }

    pub fn fcntl(&self, h: u64, cmd: i32, arg: i64) -> R<u64> {
        self.raw(Opcode::Fcntl, [h, cmd as u64, arg as u64, 0, 0], &[], 0)
            .0
            .into_result()
    }

    /// A record-lock fcntl; returns the (possibly updated) l_type and l_pid.
    pub fn lock(&self, h: u64, cmd: i32, l_type: i32, start: i64, len: i64) -> R<(i32, i32)> {
        let mut fl = [0u8; 32];
        fl[0..2].copy_from_slice(&(l_type as i16).to_ne_bytes());
        fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
        fl[8..16].copy_from_slice(&start.to_ne_bytes());
        fl[16..24].copy_from_slice(&len.to_ne_bytes());
        let (r, b) = self.raw(Opcode::Fcntl, [h, cmd as u64, 0, 0, 32], &fl, 32);
        r.into_result().map(|_| {
            if b.len() == 32 {
                (
                    i32::from(i16::from_ne_bytes([b[0], b[1]])),
                    i32::from_ne_bytes(b[24..28].try_into().unwrap()),
                )
            } else {
                (l_type, 0)
            }
        })
    }

    pub fn prepare_clone(&self, exec: bool) -> R<u64> {
        let (r, _) = self.raw(Opcode::PrepareClone, [u64::from(exec), 0, 0, 0, 0], &[], 0);
        r.into_result().map(|_| r.aux[0])
    }

    pub fn adopt(&self, token: u64) -> R<u64> {
        let (r, _) = self.raw(Opcode::Adopt, [token, 0, 0, 0, 0], &[], 0);
        r.into_result().map(|_| r.aux[0])
    }

    pub fn whoami(&self) -> (i32, u32, u32) {
        let (r, _) = self.raw(Opcode::WhoAmI, [0; 5], &[], 0);
        (r.aux[0] as i32, r.aux[1] as u32, r.aux[2] as u32)
    }

    /// Reads a whole file by path.
    pub fn slurp(&self, path: &str) -> R<Vec<u8>> {
        let h = self.open(path, libc::O_RDONLY, 0)?;
        let mut out = Vec::new();
        loop {
            let b = self.read(h, 4096)?;
            if b.is_empty() {
                break;
            }
            out.extend_from_slice(&b);
        }
        self.close(h)?;
        Ok(out)
    }
}
