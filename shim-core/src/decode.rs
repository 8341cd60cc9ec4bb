//! The typed decoder: a routed system call's number and six raw arguments, decoded once into
//! a value that names what each argument is.
//!
//! Pointers stay addresses in the caller's memory ([`UserPtr`]): nothing here dereferences
//! them. A front end reads what they point at through its [`crate::mem::CallerMemory`] (its
//! own address space in the preload shim, `process_vm_readv` in the supervised mode), where
//! a bad address becomes EFAULT. Calls that several numbers spell (`open`, `creat`, `openat`)
//! decode to one variant with the implicit arguments filled in, as the kernel does.

/// An address in the caller's memory (never dereferenced by the decoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserPtr(pub u64);

impl UserPtr {
    /// True for the null pointer.
    pub fn is_null(self) -> bool {
        self.0 == 0
    }
}

/// A file descriptor argument (as the kernel reads it: the low 32 bits, signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fd(pub i32);

/// The cwd as a directory argument.
pub const AT_FDCWD: Fd = Fd(libc::AT_FDCWD);

/// Which extended-attribute call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrOp {
    /// getxattr and friends.
    Get,
    /// setxattr.
    Set,
    /// listxattr.
    List,
    /// removexattr.
    Remove,
}

/// A decoded system call (see the module documentation).
#[allow(missing_docs)] // the fields are the system calls' own arguments, named as in their man pages
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    // ---- path calls ----
    OpenAt {
        dirfd: Fd,
        path: UserPtr,
        flags: i32,
        mode: u32,
    },
    OpenAt2 {
        dirfd: Fd,
        path: UserPtr,
        how: UserPtr,
        size: u64,
    },
    Stat {
        dirfd: Fd,
        path: UserPtr,
        buf: UserPtr,
        flags: i32,
    },
    Statx {
        dirfd: Fd,
        path: UserPtr,
        flags: i32,
        mask: u32,
        buf: UserPtr,
    },
    Access {
        dirfd: Fd,
        path: UserPtr,
        mode: i32,
        flags: i32,
    },
    MkdirAt {
        dirfd: Fd,
        path: UserPtr,
        mode: u32,
    },
    MknodAt {
        dirfd: Fd,
        path: UserPtr,
        mode: u32,
        dev: u64,
    },
    UnlinkAt {
        dirfd: Fd,
        path: UserPtr,
        flags: i32,
    },
    RenameAt {
        olddir: Fd,
        old: UserPtr,
        newdir: Fd,
        new: UserPtr,
        flags: u32,
    },
    LinkAt {
        olddir: Fd,
        old: UserPtr,
        newdir: Fd,
        new: UserPtr,
        flags: i32,
    },
    SymlinkAt {
        target: UserPtr,
        newdir: Fd,
        new: UserPtr,
    },
    ReadlinkAt {
        dirfd: Fd,
        path: UserPtr,
        buf: UserPtr,
        size: u64,
    },
    Truncate {
        path: UserPtr,
        len: i64,
    },
    ChmodAt {
        dirfd: Fd,
        path: UserPtr,
        mode: u32,
        flags: i32,
    },
    ChownAt {
        dirfd: Fd,
        path: UserPtr,
        uid: u32,
        gid: u32,
        flags: i32,
    },
    /// `path` is null for `futimens`-style calls on `dirfd` itself.
    UtimensAt {
        dirfd: Fd,
        path: UserPtr,
        times: UserPtr,
        flags: i32,
    },
    /// utime (`timeval: false`, a `utimbuf`), utimes and futimesat (`struct timeval[2]`).
    Utimes {
        dirfd: Fd,
        path: UserPtr,
        times: UserPtr,
        timeval: bool,
    },
    StatFs {
        path: UserPtr,
        buf: UserPtr,
    },
    Xattr {
        op: XattrOp,
        path: UserPtr,
        follow: bool,
        name: UserPtr,
        value: UserPtr,
        size: u64,
        flags: i32,
    },
    Chdir {
        path: UserPtr,
    },
    Execve {
        dirfd: Fd,
        path: UserPtr,
        argv: UserPtr,
        envp: UserPtr,
        flags: i32,
    },

    // ---- fd calls ----
    Close {
        fd: Fd,
    },
    CloseRange {
        first: u32,
        last: u32,
        flags: u32,
    },
    /// read/write/pread64/pwrite64 (`off` for the positioned ones).
    Rw {
        fd: Fd,
        buf: UserPtr,
        len: u64,
        off: Option<i64>,
        write: bool,
    },
    /// readv/writev/preadv/pwritev/preadv2/pwritev2 (`off` -1 in the v2 forms means "the
    /// file position", as the kernel reads it).
    Vectored {
        fd: Fd,
        iov: UserPtr,
        cnt: u64,
        off: Option<i64>,
        write: bool,
        flags: i32,
    },
    Lseek {
        fd: Fd,
        off: i64,
        whence: i32,
    },
    Fstat {
        fd: Fd,
        buf: UserPtr,
    },
    Getdents {
        fd: Fd,
        buf: UserPtr,
        len: u64,
        legacy: bool,
    },
    Fsync {
        fd: Fd,
        data_only: bool,
    },
    Ftruncate {
        fd: Fd,
        len: i64,
    },
    Fchmod {
        fd: Fd,
        mode: u32,
    },
    Fchown {
        fd: Fd,
        uid: u32,
        gid: u32,
    },
    Fallocate {
        fd: Fd,
        mode: i32,
        off: i64,
        len: i64,
    },
    Fstatfs {
        fd: Fd,
        buf: UserPtr,
    },
    Fadvise {
        fd: Fd,
        off: i64,
        len: i64,
        advice: i32,
    },
    Readahead {
        fd: Fd,
        off: i64,
        len: u64,
    },
    SyncFileRange {
        fd: Fd,
        off: i64,
        len: i64,
        flags: u32,
    },
    Flock {
        fd: Fd,
        op: i32,
    },
    Ioctl {
        fd: Fd,
        req: u64,
        arg: u64,
    },
    FXattr {
        op: XattrOp,
        fd: Fd,
        name: UserPtr,
        value: UserPtr,
        size: u64,
        flags: i32,
    },
    CopyFileRange {
        fd_in: Fd,
        off_in: UserPtr,
        fd_out: Fd,
        off_out: UserPtr,
        len: u64,
        flags: u32,
    },
    Sendfile {
        out: Fd,
        fd_in: Fd,
        off: UserPtr,
        count: u64,
    },
    Splice {
        fd_in: Fd,
        off_in: UserPtr,
        fd_out: Fd,
        off_out: UserPtr,
        len: u64,
        flags: u32,
    },
    Tee {
        fd_in: Fd,
        fd_out: Fd,
        len: u64,
        flags: u32,
    },
    Vmsplice {
        fd: Fd,
        iov: UserPtr,
        cnt: u64,
        flags: u32,
    },
    Fcntl {
        fd: Fd,
        cmd: i32,
        arg: u64,
    },
    /// dup (`to` None), dup2 (`flags` None) and dup3.
    Dup {
        fd: Fd,
        to: Option<Fd>,
        flags: Option<i32>,
    },
    Mmap {
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: Fd,
        off: i64,
    },
    Fchdir {
        fd: Fd,
    },
    Getcwd {
        buf: UserPtr,
        size: u64,
    },

    // ---- sockets and readiness ----
    Socket {
        domain: i32,
        ty: i32,
        proto: i32,
    },
    Bind {
        fd: Fd,
        addr: UserPtr,
        len: u32,
    },
    Listen {
        fd: Fd,
        backlog: i32,
    },
    Accept {
        fd: Fd,
        addr: UserPtr,
        len: UserPtr,
        flags: i32,
    },
    Connect {
        fd: Fd,
        addr: UserPtr,
        len: u32,
    },
    SendTo {
        fd: Fd,
        buf: UserPtr,
        len: u64,
        flags: i32,
        addr: UserPtr,
        alen: u32,
    },
    RecvFrom {
        fd: Fd,
        buf: UserPtr,
        len: u64,
        flags: i32,
        addr: UserPtr,
        alen: UserPtr,
    },
    SendMsg {
        fd: Fd,
        msg: UserPtr,
        flags: i32,
    },
    RecvMsg {
        fd: Fd,
        msg: UserPtr,
        flags: i32,
    },
    /// sendmmsg: `vlen` `struct mmsghdr` at `vec`.
    SendMmsg {
        fd: Fd,
        vec: UserPtr,
        vlen: u32,
        flags: i32,
    },
    /// recvmmsg: `vlen` `struct mmsghdr` at `vec`, an optional timeout.
    RecvMmsg {
        fd: Fd,
        vec: UserPtr,
        vlen: u32,
        flags: i32,
        timeout: UserPtr,
    },
    Shutdown {
        fd: Fd,
        how: i32,
    },
    GetSockOpt {
        fd: Fd,
        level: i32,
        name: i32,
        val: UserPtr,
        len: UserPtr,
    },
    SetSockOpt {
        fd: Fd,
        level: i32,
        name: i32,
        val: UserPtr,
        len: u32,
    },
    SockName {
        fd: Fd,
        addr: UserPtr,
        len: UserPtr,
        peer: bool,
    },
    /// poll (`ts` null, `timeout_ms` given) and ppoll.
    Poll {
        fds: UserPtr,
        n: u64,
        timeout_ms: i32,
        ts: UserPtr,
        mask: UserPtr,
    },
    /// select and pselect6 (`sig`: pselect6's sixth argument).
    Select {
        n: i32,
        r: UserPtr,
        w: UserPtr,
        x: UserPtr,
        timeout: UserPtr,
        sig: Option<UserPtr>,
    },
    EpollCtl {
        epfd: Fd,
        op: i32,
        fd: Fd,
        ev: UserPtr,
    },
    /// epoll_wait, epoll_pwait and epoll_pwait2 (`ts` for the last).
    EpollWait {
        epfd: Fd,
        ev: UserPtr,
        max: i32,
        timeout_ms: i32,
        mask: UserPtr,
        ts: UserPtr,
    },

    // ---- process ----
    Prlimit {
        pid: i32,
        resource: u32,
        new: UserPtr,
        old: UserPtr,
    },
    Umask {
        mask: u32,
    },
    SigProcMask {
        how: i32,
        set: UserPtr,
        old: UserPtr,
        size: u64,
    },
    SigAction {
        sig: i32,
        act: UserPtr,
        old: UserPtr,
        size: u64,
    },
    SigSuspend {
        mask: UserPtr,
        size: u64,
    },

    /// Anything not routed.
    Other {
        nr: i64,
        args: [u64; 6],
    },
}

fn fd(v: u64) -> Fd {
    Fd(v as i32)
}
fn p(v: u64) -> UserPtr {
    UserPtr(v)
}

/// Decodes system call `nr` with arguments `a`.
pub fn decode(nr: i64, a: [u64; 6]) -> Syscall {
    use Syscall::*;
    let i = |v: u64| v as i32;
    let u = |v: u64| v as u32;
    match nr {
        libc::SYS_open => OpenAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            flags: i(a[1]),
            mode: u(a[2]),
        },
        libc::SYS_creat => OpenAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            flags: libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            mode: u(a[1]),
        },
        libc::SYS_openat => OpenAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            flags: i(a[2]),
            mode: u(a[3]),
        },
        libc::SYS_openat2 => OpenAt2 {
            dirfd: fd(a[0]),
            path: p(a[1]),
            how: p(a[2]),
            size: a[3],
        },
        libc::SYS_stat => Stat {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            buf: p(a[1]),
            flags: 0,
        },
        libc::SYS_lstat => Stat {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            buf: p(a[1]),
            flags: libc::AT_SYMLINK_NOFOLLOW,
        },
        libc::SYS_newfstatat => Stat {
            dirfd: fd(a[0]),
            path: p(a[1]),
            buf: p(a[2]),
            flags: i(a[3]),
        },
        libc::SYS_statx => Statx {
            dirfd: fd(a[0]),
            path: p(a[1]),
            flags: i(a[2]),
            mask: u(a[3]),
            buf: p(a[4]),
        },
        libc::SYS_access => Access {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            mode: i(a[1]),
            flags: 0,
        },
        libc::SYS_faccessat => Access {
            dirfd: fd(a[0]),
            path: p(a[1]),
            mode: i(a[2]),
            flags: 0,
        },
        libc::SYS_faccessat2 => Access {
            dirfd: fd(a[0]),
            path: p(a[1]),
            mode: i(a[2]),
            flags: i(a[3]),
        },
        libc::SYS_mkdir => MkdirAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            mode: u(a[1]),
        },
        libc::SYS_mkdirat => MkdirAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            mode: u(a[2]),
        },
        libc::SYS_mknod => MknodAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            mode: u(a[1]),
            dev: a[2],
        },
        libc::SYS_mknodat => MknodAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            mode: u(a[2]),
            dev: a[3],
        },
        libc::SYS_rmdir => UnlinkAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            flags: libc::AT_REMOVEDIR,
        },
        libc::SYS_unlink => UnlinkAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            flags: 0,
        },
        libc::SYS_unlinkat => UnlinkAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            flags: i(a[2]),
        },
        libc::SYS_rename => RenameAt {
            olddir: AT_FDCWD,
            old: p(a[0]),
            newdir: AT_FDCWD,
            new: p(a[1]),
            flags: 0,
        },
        libc::SYS_renameat => RenameAt {
            olddir: fd(a[0]),
            old: p(a[1]),
            newdir: fd(a[2]),
            new: p(a[3]),
            flags: 0,
        },
        libc::SYS_renameat2 => RenameAt {
            olddir: fd(a[0]),
            old: p(a[1]),
            newdir: fd(a[2]),
            new: p(a[3]),
            flags: u(a[4]),
        },
        libc::SYS_link => LinkAt {
            olddir: AT_FDCWD,
            old: p(a[0]),
            newdir: AT_FDCWD,
            new: p(a[1]),
            flags: 0,
        },
        libc::SYS_linkat => LinkAt {
            olddir: fd(a[0]),
            old: p(a[1]),
            newdir: fd(a[2]),
            new: p(a[3]),
            flags: i(a[4]),
        },
        libc::SYS_symlink => SymlinkAt {
            target: p(a[0]),
            newdir: AT_FDCWD,
            new: p(a[1]),
        },
        libc::SYS_symlinkat => SymlinkAt {
            target: p(a[0]),
            newdir: fd(a[1]),
            new: p(a[2]),
        },
        libc::SYS_readlink => ReadlinkAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            buf: p(a[1]),
            size: a[2],
        },
        libc::SYS_readlinkat => ReadlinkAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            buf: p(a[2]),
            size: a[3],
        },
        libc::SYS_truncate => Truncate {
            path: p(a[0]),
            len: a[1] as i64,
        },
        libc::SYS_chmod => ChmodAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            mode: u(a[1]),
            flags: 0,
        },
        libc::SYS_fchmodat => ChmodAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            mode: u(a[2]),
            flags: 0,
        },
        libc::SYS_fchmodat2 => ChmodAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            mode: u(a[2]),
            flags: i(a[3]),
        },
        libc::SYS_chown => ChownAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            uid: u(a[1]),
            gid: u(a[2]),
            flags: 0,
        },
        libc::SYS_lchown => ChownAt {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            uid: u(a[1]),
            gid: u(a[2]),
            flags: libc::AT_SYMLINK_NOFOLLOW,
        },
        libc::SYS_fchownat => ChownAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            uid: u(a[2]),
            gid: u(a[3]),
            flags: i(a[4]),
        },
        libc::SYS_utimensat => UtimensAt {
            dirfd: fd(a[0]),
            path: p(a[1]),
            times: p(a[2]),
            flags: i(a[3]),
        },
        libc::SYS_utime => Utimes {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            times: p(a[1]),
            timeval: false,
        },
        libc::SYS_utimes => Utimes {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            times: p(a[1]),
            timeval: true,
        },
        libc::SYS_futimesat => Utimes {
            dirfd: fd(a[0]),
            path: p(a[1]),
            times: p(a[2]),
            timeval: true,
        },
        libc::SYS_statfs => StatFs {
            path: p(a[0]),
            buf: p(a[1]),
        },
        libc::SYS_getxattr | libc::SYS_lgetxattr => Xattr {
            op: XattrOp::Get,
            path: p(a[0]),
            follow: nr == libc::SYS_getxattr,
            name: p(a[1]),
            value: p(a[2]),
            size: a[3],
            flags: 0,
        },
        libc::SYS_setxattr | libc::SYS_lsetxattr => Xattr {
            op: XattrOp::Set,
            path: p(a[0]),
            follow: nr == libc::SYS_setxattr,
            name: p(a[1]),
            value: p(a[2]),
            size: a[3],
            flags: i(a[4]),
        },
        libc::SYS_listxattr | libc::SYS_llistxattr => Xattr {
            op: XattrOp::List,
            path: p(a[0]),
            follow: nr == libc::SYS_listxattr,
            name: UserPtr(0),
            value: p(a[1]),
            size: a[2],
            flags: 0,
        },
        libc::SYS_removexattr | libc::SYS_lremovexattr => Xattr {
            op: XattrOp::Remove,
            path: p(a[0]),
            follow: nr == libc::SYS_removexattr,
            name: p(a[1]),
            value: UserPtr(0),
            size: 0,
            flags: 0,
        },
        libc::SYS_chdir => Chdir { path: p(a[0]) },
        libc::SYS_execve => Execve {
            dirfd: AT_FDCWD,
            path: p(a[0]),
            argv: p(a[1]),
            envp: p(a[2]),
            flags: 0,
        },
        libc::SYS_execveat => Execve {
            dirfd: fd(a[0]),
            path: p(a[1]),
            argv: p(a[2]),
            envp: p(a[3]),
            flags: i(a[4]),
        },

        libc::SYS_close => Close { fd: fd(a[0]) },
        libc::SYS_close_range => CloseRange {
            first: u(a[0]),
            last: u(a[1]),
            flags: u(a[2]),
        },
        libc::SYS_read => Rw {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            off: None,
            write: false,
        },
        libc::SYS_write => Rw {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            off: None,
            write: true,
        },
        libc::SYS_pread64 => Rw {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            off: Some(a[3] as i64),
            write: false,
        },
        libc::SYS_pwrite64 => Rw {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            off: Some(a[3] as i64),
            write: true,
        },
        libc::SYS_readv | libc::SYS_writev => Vectored {
            fd: fd(a[0]),
            iov: p(a[1]),
            cnt: a[2],
            off: None,
            write: nr == libc::SYS_writev,
            flags: 0,
        },
        libc::SYS_preadv | libc::SYS_pwritev => Vectored {
            fd: fd(a[0]),
            iov: p(a[1]),
            cnt: a[2],
            off: Some(a[3] as i64),
            write: nr == libc::SYS_pwritev,
            flags: 0,
        },
        libc::SYS_preadv2 | libc::SYS_pwritev2 => Vectored {
            fd: fd(a[0]),
            iov: p(a[1]),
            cnt: a[2],
            off: Some(a[3] as i64),
            write: nr == libc::SYS_pwritev2,
            flags: i(a[5]),
        },
        libc::SYS_lseek => Lseek {
            fd: fd(a[0]),
            off: a[1] as i64,
            whence: i(a[2]),
        },
        libc::SYS_fstat => Fstat {
            fd: fd(a[0]),
            buf: p(a[1]),
        },
        libc::SYS_getdents64 => Getdents {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            legacy: false,
        },
        libc::SYS_getdents => Getdents {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            legacy: true,
        },
        libc::SYS_fsync => Fsync {
            fd: fd(a[0]),
            data_only: false,
        },
        libc::SYS_fdatasync => Fsync {
            fd: fd(a[0]),
            data_only: true,
        },
        libc::SYS_ftruncate => Ftruncate {
            fd: fd(a[0]),
            len: a[1] as i64,
        },
        libc::SYS_fchmod => Fchmod {
            fd: fd(a[0]),
            mode: u(a[1]),
        },
        libc::SYS_fchown => Fchown {
            fd: fd(a[0]),
            uid: u(a[1]),
            gid: u(a[2]),
        },
        libc::SYS_fallocate => Fallocate {
            fd: fd(a[0]),
            mode: i(a[1]),
            off: a[2] as i64,
            len: a[3] as i64,
        },
        libc::SYS_fstatfs => Fstatfs {
            fd: fd(a[0]),
            buf: p(a[1]),
        },
        libc::SYS_fadvise64 => Fadvise {
            fd: fd(a[0]),
            off: a[1] as i64,
            len: a[2] as i64,
            advice: i(a[3]),
        },
        libc::SYS_readahead => Readahead {
            fd: fd(a[0]),
            off: a[1] as i64,
            len: a[2],
        },
        libc::SYS_sync_file_range => SyncFileRange {
            fd: fd(a[0]),
            off: a[1] as i64,
            len: a[2] as i64,
            flags: u(a[3]),
        },
        libc::SYS_flock => Flock {
            fd: fd(a[0]),
            op: i(a[1]),
        },
        libc::SYS_ioctl => Ioctl {
            fd: fd(a[0]),
            req: a[1],
            arg: a[2],
        },
        libc::SYS_fgetxattr => FXattr {
            op: XattrOp::Get,
            fd: fd(a[0]),
            name: p(a[1]),
            value: p(a[2]),
            size: a[3],
            flags: 0,
        },
        libc::SYS_fsetxattr => FXattr {
            op: XattrOp::Set,
            fd: fd(a[0]),
            name: p(a[1]),
            value: p(a[2]),
            size: a[3],
            flags: i(a[4]),
        },
        libc::SYS_flistxattr => FXattr {
            op: XattrOp::List,
            fd: fd(a[0]),
            name: UserPtr(0),
            value: p(a[1]),
            size: a[2],
            flags: 0,
        },
        libc::SYS_fremovexattr => FXattr {
            op: XattrOp::Remove,
            fd: fd(a[0]),
            name: p(a[1]),
            value: UserPtr(0),
            size: 0,
            flags: 0,
        },
        libc::SYS_copy_file_range => CopyFileRange {
            fd_in: fd(a[0]),
            off_in: p(a[1]),
            fd_out: fd(a[2]),
            off_out: p(a[3]),
            len: a[4],
            flags: u(a[5]),
        },
        libc::SYS_sendfile => Sendfile {
            out: fd(a[0]),
            fd_in: fd(a[1]),
            off: p(a[2]),
            count: a[3],
        },
        libc::SYS_splice => Splice {
            fd_in: fd(a[0]),
            off_in: p(a[1]),
            fd_out: fd(a[2]),
            off_out: p(a[3]),
            len: a[4],
            flags: u(a[5]),
        },
        libc::SYS_tee => Tee {
            fd_in: fd(a[0]),
            fd_out: fd(a[1]),
            len: a[2],
            flags: u(a[3]),
        },
        libc::SYS_vmsplice => Vmsplice {
            fd: fd(a[0]),
            iov: p(a[1]),
            cnt: a[2],
            flags: u(a[3]),
        },
        libc::SYS_fcntl => Fcntl {
            fd: fd(a[0]),
            cmd: i(a[1]),
            arg: a[2],
        },
        libc::SYS_dup => Dup {
            fd: fd(a[0]),
            to: None,
            flags: None,
        },
        libc::SYS_dup2 => Dup {
            fd: fd(a[0]),
            to: Some(fd(a[1])),
            flags: None,
        },
        libc::SYS_dup3 => Dup {
            fd: fd(a[0]),
            to: Some(fd(a[1])),
            flags: Some(i(a[2])),
        },
        libc::SYS_mmap => Mmap {
            addr: a[0],
            len: a[1],
            prot: i(a[2]),
            flags: i(a[3]),
            fd: fd(a[4]),
            off: a[5] as i64,
        },
        libc::SYS_fchdir => Fchdir { fd: fd(a[0]) },
        libc::SYS_getcwd => Getcwd {
            buf: p(a[0]),
            size: a[1],
        },

        libc::SYS_socket => Socket {
            domain: i(a[0]),
            ty: i(a[1]),
            proto: i(a[2]),
        },
        libc::SYS_bind => Bind {
            fd: fd(a[0]),
            addr: p(a[1]),
            len: u(a[2]),
        },
        libc::SYS_listen => Listen {
            fd: fd(a[0]),
            backlog: i(a[1]),
        },
        libc::SYS_accept => Accept {
            fd: fd(a[0]),
            addr: p(a[1]),
            len: p(a[2]),
            flags: 0,
        },
        libc::SYS_accept4 => Accept {
            fd: fd(a[0]),
            addr: p(a[1]),
            len: p(a[2]),
            flags: i(a[3]),
        },
        libc::SYS_connect => Connect {
            fd: fd(a[0]),
            addr: p(a[1]),
            len: u(a[2]),
        },
        libc::SYS_sendto => SendTo {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            flags: i(a[3]),
            addr: p(a[4]),
            alen: u(a[5]),
        },
        libc::SYS_recvfrom => RecvFrom {
            fd: fd(a[0]),
            buf: p(a[1]),
            len: a[2],
            flags: i(a[3]),
            addr: p(a[4]),
            alen: p(a[5]),
        },
        libc::SYS_sendmsg => SendMsg {
            fd: fd(a[0]),
            msg: p(a[1]),
            flags: i(a[2]),
        },
        libc::SYS_recvmsg => RecvMsg {
            fd: fd(a[0]),
            msg: p(a[1]),
            flags: i(a[2]),
        },
        libc::SYS_sendmmsg => SendMmsg {
            fd: fd(a[0]),
            vec: p(a[1]),
            vlen: u(a[2]),
            flags: i(a[3]),
        },
        libc::SYS_recvmmsg => RecvMmsg {
            fd: fd(a[0]),
            vec: p(a[1]),
            vlen: u(a[2]),
            flags: i(a[3]),
            timeout: p(a[4]),
        },
        libc::SYS_shutdown => Shutdown {
            fd: fd(a[0]),
            how: i(a[1]),
        },
        libc::SYS_getsockopt => GetSockOpt {
            fd: fd(a[0]),
            level: i(a[1]),
            name: i(a[2]),
            val: p(a[3]),
            len: p(a[4]),
        },
        libc::SYS_setsockopt => SetSockOpt {
            fd: fd(a[0]),
            level: i(a[1]),
            name: i(a[2]),
            val: p(a[3]),
            len: u(a[4]),
        },
        libc::SYS_getsockname => SockName {
            fd: fd(a[0]),
            addr: p(a[1]),
            len: p(a[2]),
            peer: false,
        },
        libc::SYS_getpeername => SockName {
            fd: fd(a[0]),
            addr: p(a[1]),
            len: p(a[2]),
            peer: true,
        },
        libc::SYS_poll => Poll {
            fds: p(a[0]),
            n: a[1],
            timeout_ms: i(a[2]),
            ts: UserPtr(0),
            mask: UserPtr(0),
        },
        libc::SYS_ppoll => Poll {
            fds: p(a[0]),
            n: a[1],
            timeout_ms: -1,
            ts: p(a[2]),
            mask: p(a[3]),
        },
        libc::SYS_select => Select {
            n: i(a[0]),
            r: p(a[1]),
            w: p(a[2]),
            x: p(a[3]),
            timeout: p(a[4]),
            sig: None,
        },
        libc::SYS_pselect6 => Select {
            n: i(a[0]),
            r: p(a[1]),
            w: p(a[2]),
            x: p(a[3]),
            timeout: p(a[4]),
            sig: Some(p(a[5])),
        },
        libc::SYS_epoll_ctl => EpollCtl {
            epfd: fd(a[0]),
            op: i(a[1]),
            fd: fd(a[2]),
            ev: p(a[3]),
        },
        libc::SYS_epoll_wait => EpollWait {
            epfd: fd(a[0]),
            ev: p(a[1]),
            max: i(a[2]),
            timeout_ms: i(a[3]),
            mask: UserPtr(0),
            ts: UserPtr(0),
        },
        libc::SYS_epoll_pwait => EpollWait {
            epfd: fd(a[0]),
            ev: p(a[1]),
            max: i(a[2]),
            timeout_ms: i(a[3]),
            mask: p(a[4]),
            ts: UserPtr(0),
        },
        libc::SYS_epoll_pwait2 => EpollWait {
            epfd: fd(a[0]),
            ev: p(a[1]),
            max: i(a[2]),
            timeout_ms: -1,
            mask: p(a[4]),
            ts: p(a[3]),
        },

        libc::SYS_prlimit64 => Prlimit {
            pid: i(a[0]),
            resource: u(a[1]),
            new: p(a[2]),
            old: p(a[3]),
        },
        libc::SYS_setrlimit => Prlimit {
            pid: 0,
            resource: u(a[0]),
            new: p(a[1]),
            old: UserPtr(0),
        },
        libc::SYS_umask => Umask { mask: u(a[0]) },
        libc::SYS_rt_sigprocmask => SigProcMask {
            how: i(a[0]),
            set: p(a[1]),
            old: p(a[2]),
            size: a[3],
        },
        libc::SYS_rt_sigaction => SigAction {
            sig: i(a[0]),
            act: p(a[1]),
            old: p(a[2]),
            size: a[3],
        },
        libc::SYS_rt_sigsuspend => SigSuspend {
            mask: p(a[0]),
            size: a[1],
        },
        _ => Other { nr, args: a },
    }
}

impl Syscall {
    /// The path arguments, each with the directory it is relative to: what decides whether a
    /// call goes to the storage domain. (A symlink's target is data, not a path looked up.)
    pub fn paths(&self) -> [Option<(Fd, UserPtr)>; 2] {
        use Syscall::*;
        match *self {
            OpenAt { dirfd, path, .. }
            | OpenAt2 { dirfd, path, .. }
            | Stat { dirfd, path, .. }
            | Statx { dirfd, path, .. }
            | Access { dirfd, path, .. }
            | MkdirAt { dirfd, path, .. }
            | MknodAt { dirfd, path, .. }
            | UnlinkAt { dirfd, path, .. }
            | ReadlinkAt { dirfd, path, .. }
            | ChmodAt { dirfd, path, .. }
            | ChownAt { dirfd, path, .. }
            | Utimes { dirfd, path, .. }
            | Execve { dirfd, path, .. } => [Some((dirfd, path)), None],
            UtimensAt { dirfd, path, .. } => [(!path.is_null()).then_some((dirfd, path)), None],
            RenameAt {
                olddir,
                old,
                newdir,
                new,
                ..
            }
            | LinkAt {
                olddir,
                old,
                newdir,
                new,
                ..
            } => [Some((olddir, old)), Some((newdir, new))],
            SymlinkAt { newdir, new, .. } => [Some((newdir, new)), None],
            Truncate { path, .. } | StatFs { path, .. } | Xattr { path, .. } | Chdir { path } => {
                [Some((AT_FDCWD, path)), None]
            }
            _ => [None, None],
        }
    }

    /// The file descriptors the call acts on (not counting a path's directory fd).
    pub fn fds(&self) -> [Option<Fd>; 2] {
        use Syscall::*;
        match *self {
            Close { fd }
            | Rw { fd, .. }
            | Vectored { fd, .. }
            | Lseek { fd, .. }
            | Fstat { fd, .. }
            | Getdents { fd, .. }
            | Fsync { fd, .. }
            | Ftruncate { fd, .. }
            | Fchmod { fd, .. }
            | Fchown { fd, .. }
            | Fallocate { fd, .. }
            | Fstatfs { fd, .. }
            | Fadvise { fd, .. }
            | Readahead { fd, .. }
            | SyncFileRange { fd, .. }
            | Flock { fd, .. }
            | Ioctl { fd, .. }
            | FXattr { fd, .. }
            | Vmsplice { fd, .. }
            | Fcntl { fd, .. }
            | Mmap { fd, .. }
            | Fchdir { fd }
            | Bind { fd, .. }
            | Listen { fd, .. }
            | Accept { fd, .. }
            | Connect { fd, .. }
            | SendTo { fd, .. }
            | RecvFrom { fd, .. }
            | SendMsg { fd, .. }
            | SendMmsg { fd, .. }
            | RecvMmsg { fd, .. }
            | RecvMsg { fd, .. }
            | Shutdown { fd, .. }
            | GetSockOpt { fd, .. }
            | SetSockOpt { fd, .. }
            | SockName { fd, .. } => [Some(fd), None],
            Dup { fd, to, .. } => [Some(fd), to],
            CopyFileRange { fd_in, fd_out, .. }
            | Splice { fd_in, fd_out, .. }
            | Tee { fd_in, fd_out, .. } => [Some(fd_in), Some(fd_out)],
            Sendfile { out, fd_in, .. } => [Some(fd_in), Some(out)],
            EpollCtl { epfd, fd, .. } => [Some(epfd), Some(fd)],
            _ => [None, None],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn implicit_arguments_are_filled_in() {
        assert_eq!(
            decode(libc::SYS_creat, [7, 0o644, 0, 0, 0, 0]),
            Syscall::OpenAt {
                dirfd: AT_FDCWD,
                path: UserPtr(7),
                flags: libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                mode: 0o644
            }
        );
        assert_eq!(
            decode(libc::SYS_rmdir, [9, 0, 0, 0, 0, 0]).paths()[0],
            Some((AT_FDCWD, UserPtr(9)))
        );
        let r = decode(libc::SYS_renameat2, [3, 10, 4, 20, 1, 0]);
        assert_eq!(
            r.paths(),
            [Some((Fd(3), UserPtr(10))), Some((Fd(4), UserPtr(20)))]
        );
        assert_eq!(
            decode(libc::SYS_utimensat, [5, 0, 0, 0, 0, 0]).paths(),
            [None, None]
        );
        assert_eq!(
            decode(libc::SYS_dup2, [3, 9, 0, 0, 0, 0]).fds(),
            [Some(Fd(3)), Some(Fd(9))]
        );
        assert!(matches!(
            decode(libc::SYS_getpid, [0; 6]),
            Syscall::Other { .. }
        ));
    }

    proptest! {
        /// Any input decodes without panicking; a pointer the decoder reports as a path came
        /// from the arguments, and a decoded fd is one of the arguments' low 32 bits.
        #[test]
        fn decoding_is_total_and_faithful(nr in 0i64..600, args in proptest::array::uniform6(any::<u64>())) {
            let d = decode(nr, args);
            for (dirfd, path) in d.paths().into_iter().flatten() {
                prop_assert!(args.contains(&path.0));
                prop_assert!(dirfd == AT_FDCWD || args.iter().any(|&a| a as i32 == dirfd.0));
            }
            for f in d.fds().into_iter().flatten() {
                prop_assert!(args.iter().any(|&a| a as i32 == f.0));
            }
            if crate::table::lookup(nr).is_none() {
                prop_assert_eq!(d, Syscall::Other { nr, args });
            }
        }
    }
}
