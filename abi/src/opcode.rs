//! Operation numbers carried in [`crate::Request::opcode`].
//!
//! Numbers below 256 belong to the transport and service runtime and are answered by every
//! server; the storage and network domains add their own ranges as they implement them.

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $name:ident = $num:expr, )*) => {
        /// An operation a server can be asked to perform.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl Opcode {
            /// Every opcode this version knows.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// Decodes an opcode number; `None` for numbers this version does not know.
            pub const fn from_u16(n: u16) -> Option<Opcode> {
                match n {
                    $( $num => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            /// A short lower-case name for logs and telemetry.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Opcode::$name => stringify!($name), )*
                }
            }
        }
    };
}

opcodes! {
    /// Does nothing and returns `args[0] & i64::MAX` straight from the polling thread (ring
    /// round-trip probe; the echoed token lets tests prove nothing is lost or duplicated).
    Nop = 0,
    /// Executes an io_uring `NOP` and returns its completion (io_uring path probe).
    UringNop = 1,
    /// Reverses the payload in place in the data window and returns its length (data-area probe).
    Echo = 2,
    /// Returns the caller's credentials as the server sees them: `aux = [pid, uid, gid]`.
    WhoAmI = 3,
    /// Sleeps `args[0]` microseconds on the server's io_uring (a timeout), then returns 0:
    /// a stand-in for a slow device call, used to test shutdown and waiting.
    Delay = 4,

    // ---- session-wide (both domains), 128.. ----
    /// Snapshot this session's remote fd table for a child process or a new program image:
    /// returns a one-time token (`aux[0]`) that [`Opcode::Adopt`] redeems within 30 s.
    /// `args[0]`: 0 for fork (the child shares open files with the parent), 1 for exec, 2 for
    /// a pass over SCM_RIGHTS ([`Opcode::Import`]);
    /// `args[1]`: 0 to snapshot every handle, or the number of handles listed (native-endian
    /// u32 each) in the payload: only those are in the snapshot.
    PrepareClone = 128,
    /// Redeem a [`Opcode::PrepareClone`] token (`args[0]`): this session's fd table becomes a copy
    /// of the snapshot, with the same handle numbers sharing the same open files. Only a process
    /// whose parent (fork) or itself (exec) created the token may redeem it (a fork token also
    /// by a process of the creator's uid: a daemon's child whose parent has already exited).
    Adopt = 129,
    /// Give up a [`Opcode::PrepareClone`] token (`args[0]`) nobody will redeem (the exec it was
    /// made for failed), releasing what its snapshot holds now rather than at its expiry. Only
    /// its creator may; an unknown token is ENOENT.
    DropClone = 130,
    /// Redeem a pass token (a [`Opcode::PrepareClone`] of kind 2, made by a process that sends
    /// remote fds over an AF_UNIX socket with SCM_RIGHTS): the snapshot's handles are added to
    /// this session's table under new numbers. The window receives, per handle in the snapshot
    /// in ascending order, its number there and its number here (native-endian u32 pairs);
    /// result: the bytes written (8 per handle). Any process holding the token may redeem it, once (as any
    /// process may receive an fd).
    Import = 131,
    /// Tell the server which child a fork token (`args[0]`, a [`Opcode::PrepareClone`] of kind
    /// 0 this process made) was made for: the child's pid (`args[1]`). The server holds a pidfd
    /// of it, and a token whose child exited without redeeming it is dropped at the next purge
    /// (each second), with the files only its snapshot held, instead of at its expiry (a child
    /// killed before it adopted must not keep a listener bound for 30 s). Result 0; ENOENT for
    /// an unknown or already redeemed token, EPERM for another process's, EINVAL for a token of
    /// another kind, ESRCH when the pid names no process.
    BindClone = 132,

    // ---- storage domain, 256.. ----
    // Paths travel in the data window and are relative to the export root (the client strips
    // its mount prefix and resolves `.`/`..` against its routed cwd); the server resolves them
    // with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) under the session's credentials.
    // A path that meets a symlink with an absolute target, or a `..` above the export root,
    // leaves the export: such a call fails with [`crate::errno::ESCAPE`] and the client asks
    // [`Opcode::Resolve`] where the path continues (in its own file system, or again under
    // its mount).
    // Unless stated otherwise: the path is window[data_off .. data_off + args[4]], output is
    // written at window[data_off ..], and `data_len` bounds both. Handles are small integers in
    // the session's own table; the result is the syscall's result or -errno.
    /// openat: `args[0]` = open flags, `args[1]` = mode. Result: handle; `aux[0]` = st_mode.
    /// When `data_len` leaves room for a `struct statx` (256 bytes), the file's statx (as
    /// [`Opcode::FStat`] gives it) is written at window[data_off ..] and `aux[1]` = 1.
    OpenAt = 256,
    /// close: `args[0]` = handle.
    Close = 257,
    /// read at the file position: `args[0]` = handle; up to `data_len` bytes into the window.
    Read = 258,
    /// write at the file position: `args[0]` = handle; `data_len` bytes from the window.
    /// A write larger than the window travels as chunks that the server assembles and writes
    /// with one system call (so it is as atomic as Linux's, `O_APPEND` included): every chunk
    /// but the last has [`crate::WRITE_MORE`] in `args[2]`, and all carry the same nonzero token in
    /// `args[3]`; the chunks before the last answer with their length, the last with the
    /// result of the whole write.
    Write = 259,
    /// pread: `args[0]` = handle, `args[1]` = offset.
    PRead = 260,
    /// pwrite: `args[0]` = handle, `args[1]` = offset (the first chunk's, for an assembled
    /// write: see [`Opcode::Write`]).
    PWrite = 261,
    /// lseek: `args[0]` = handle, `args[1]` = offset (i64), `args[2]` = whence.
    LSeek = 262,
    /// fstat: `args[0]` = handle; a `struct statx` (256 bytes) into the window.
    FStat = 263,
    /// statx by path: `args[0]` = AT_* flags (AT_SYMLINK_NOFOLLOW), `args[1]` = mask;
    /// `struct statx` into the window.
    StatAt = 264,
    /// getdents64: `args[0]` = handle; `linux_dirent64` records into the window.
    GetDents64 = 265,
    /// mkdir: `args[1]` = mode.
    MkdirAt = 266,
    /// unlink / rmdir: `args[0]` = flags (AT_REMOVEDIR).
    UnlinkAt = 267,
    /// renameat2: old path = window[data_off .. +args[4]], new path follows it,
    /// `args[3]` bytes long; `args[0]` = RENAME_* flags.
    RenameAt = 268,
    /// link: paths as for RenameAt; `args[0]` = AT_SYMLINK_FOLLOW or 0.
    LinkAt = 269,
    /// symlink: target = window[data_off .. +args[4]] (stored verbatim), link path follows,
    /// `args[3]` bytes long.
    SymlinkAt = 270,
    /// readlink: the link's target into the window; result = its length.
    ReadLinkAt = 271,
    /// faccessat: `args[0]` = mode (R_OK...), `args[1]` = AT_* flags (AT_EACCESS, AT_SYMLINK_NOFOLLOW).
    AccessAt = 272,
    /// fsync (`args[1]` = 0) or fdatasync (`args[1]` = 1): `args[0]` = handle.
    FSync = 273,
    /// ftruncate: `args[0]` = handle, `args[1]` = length.
    FTruncate = 274,
    /// truncate by path: `args[1]` = length.
    TruncateAt = 275,
    /// chmod by handle: `args[0]` = handle, `args[1]` = mode.
    FChmod = 276,
    /// chmod by path: `args[1]` = mode, `args[0]` = AT_SYMLINK_NOFOLLOW or 0.
    ChmodAt = 277,
    /// chown by handle: `args[0]` = handle, `args[1]` = uid, `args[2]` = gid (u32::MAX: unchanged).
    FChown = 278,
    /// chown by path: `args[0]` = AT_* flags, `args[1]` = uid, `args[2]` = gid.
    ChownAt = 279,
    /// utimensat: `args[0]` = handle, or `u64::MAX` to name a path; `args[1]` = AT_* flags
    /// (AT_SYMLINK_NOFOLLOW); `args[2]` = 1 when times are given (else "now" for both). The two
    /// `struct timespec` (32 bytes, UTIME_NOW/UTIME_OMIT allowed) are at window[data_off ..],
    /// the path (if any) follows at data_off + 32, `args[4]` bytes long.
    UtimensAt = 280,
    /// fallocate: `args[0]` = handle, `args[1]` = mode, `args[2]` = offset, `args[3]` = len.
    Fallocate = 281,
    /// fstatfs: `args[0]` = handle; a `struct statfs` into the window.
    FStatFs = 282,
    /// fcntl on the open file: `args[0]` = handle, `args[1]` = cmd. F_GETFL/F_SETFL (`args[2]` =
    /// flags). Record locks F_GETLK/F_SETLK/F_SETLKW and their F_OFD_ forms: the
    /// `struct flock` (32 bytes) is at window[data_off ..] (`args[4]` = 32) and F_GETLK writes
    /// the answer back there. Because the server holds every client's files, locks are taken as
    /// open-file-description locks on the handle's file, so they conflict between clients as
    /// POSIX locks conflict between processes; F_GETLK reports `l_pid = -1`.
    Fcntl = 283,
    /// mknod: `args[1]` = mode (file type and permission bits), `args[2]` = device number.
    /// FIFOs, sockets and regular files for anyone; device nodes need CAP_MKNOD, checked by the
    /// kernel against the caller's credentials, which the server takes on for the call.
    MknodAt = 284,
    /// copy_file_range between two files of this session: `args[0]` = handle in, `args[1]` =
    /// its offset (`u64::MAX`: the file's own, which advances), `args[2]` = handle out,
    /// `args[3]` = its offset (likewise), `args[4]` = length. Result: bytes copied; `aux[0]`,
    /// `aux[1]` = the offsets in and out after the copy (those given explicitly).
    CopyRange = 285,
    /// Advice about a file's page cache: `args[0]` = handle, `args[1]` = 0 posix_fadvise
    /// (`args[4]` = advice), 1 readahead, 2 sync_file_range (`args[4]` = flags); `args[2]` =
    /// offset, `args[3]` = length.
    Advise = 286,
    /// The extended-attribute calls: `args[0]` = handle, or `u64::MAX` for the path in
    /// window[0 .. +args[4]]; `args[1]` = operation (0 get, 1 set, 2 list, 3 remove) | 0x100
    /// not following a final symlink (the `l*` calls) | setxattr flags << 16; `args[2]` = the
    /// value's length (set) or the room for the answer (get, list: 0 asks for the size); the
    /// name (`args[3]` bytes) follows the path, a value to set follows the name. Result: as
    /// the system call's; get and list write their answer at window[0 ..].
    Xattr = 287,
    /// flock on the open file: `args[0]` = handle, `args[1]` = operation (LOCK_SH, LOCK_EX
    /// or LOCK_UN, with LOCK_NB). The lock belongs to the server's open file for the handle,
    /// the open file description the client's process and its forks share, so it conflicts
    /// with other clients' and local programs' flock locks as between processes. A wait
    /// (without LOCK_NB) runs on a thread of its own.
    Flock = 288,
    /// Where a path that failed with [`crate::errno::ESCAPE`] continues: the server walks it
    /// component by component (not following the last one, then following it when that alone
    /// leaves the export; only the first walk when `args[0]` = 1, for a call acting on the
    /// entry itself, as rename and link do) up to the first symlink with an absolute target
    /// or `..` above the root. Result: the continuation's length, written at window[data_off ..]: the link's
    /// target with the rest of the path appended (absolute, in the client's name space), or
    /// `../` and the rest (relative to the client's mount point). `EAGAIN` when the path no
    /// longer leaves the export (it changed meanwhile: retry the call); `ELOOP` after 40
    /// links; the errors of a lookup on the way.
    Resolve = 289,

    // ---- network domain, 300.. ----
    // Handles name sockets in the session's own table; `Close`, `FStat` and `Fcntl`
    // (F_GETFL/F_SETFL) above apply to them too. Socket addresses travel as the kernel's
    // `struct sockaddr_*` bytes. A call on a blocking socket waits in the server (io_uring,
    // bounded by SO_RCVTIMEO/SO_SNDTIMEO); the client cancels it when a signal interrupts
    // its caller (result `-EINTR`). After every call the server republishes the socket's
    // readiness word (see `xen_transport::events`).
    /// socket: `args[0]` = domain, `args[1]` = type (with SOCK_NONBLOCK; SOCK_CLOEXEC is the
    /// client's business), `args[2]` = protocol. Result: handle.
    Socket = 300,
    /// bind: `args[0]` = handle; the address is window[data_off .. +args[4]]. Ports below
    /// the unprivileged start need a client with uid 0 or CAP_NET_BIND_SERVICE.
    Bind = 301,
    /// listen: `args[0]` = handle, `args[1]` = backlog. `aux[0]`: the socket's key in the
    /// supervisor's fd store (0: not kept; see [`Opcode::Reclaim`]). A bind of a datagram
    /// socket answers its key the same way.
    Listen = 302,
    /// accept4: `args[0]` = handle, `args[1]` = flags (SOCK_NONBLOCK), `args[2]` = room for
    /// the peer address (0: not wanted). Result: new handle; the peer address is written at
    /// window[data_off ..] and its full length is `aux[0]`.
    Accept = 303,
    /// connect: `args[0]` = handle; the address is window[data_off .. +args[4]].
    Connect = 304,
    /// send/sendto/sendmsg (flattened): `args[0]` = handle, `args[1]` = MSG_* flags; the
    /// bytes are window[data_off .. +args[4]]; a destination address, if any, follows them,
    /// `args[3]` bytes long, then `args[2]` bytes of control messages (`msg_control`, see
    /// [`crate::cmsg`]). Result: bytes sent.
    Send = 305,
    /// recv/recvfrom/recvmsg (flattened): `args[0]` = handle, `args[1]` = MSG_* flags,
    /// `args[2]` = bytes wanted, `args[3]` = room for the source address (0: not wanted),
    /// `args[4]` bit 0 = 1 to get the message flags (recvmsg), bits 32.. = room for control
    /// messages. The bytes land at window[data_off ..], the address after `args[2]` bytes,
    /// the control messages after the address room; result: bytes received; `aux[0]` = full
    /// address length, `aux[1]` = the message's MSG_* flags (MSG_CTRUNC when the control room
    /// was short, as the kernel sets it), `aux[2]` = control bytes written.
    Recv = 306,
    /// shutdown: `args[0]` = handle, `args[1]` = how.
    Shutdown = 307,
    /// getsockopt: `args[0]` = handle, `args[1]` = level, `args[2]` = name, `args[3]` = room;
    /// the value is written at window[data_off ..]; result: its length.
    GetSockOpt = 308,
    /// setsockopt: `args[0]` = handle, `args[1]` = level, `args[2]` = name; the value is
    /// window[data_off .. +args[4]], or, with `args[4]` = 0 and no payload, the 4-byte int in
    /// `args[3]` (so the client may post it without waiting).
    SetSockOpt = 309,
    /// getsockname: `args[0]` = handle, `args[3]` = room; the address is written at
    /// window[data_off ..]; result: its full length.
    GetSockName = 310,
    /// getpeername: as GetSockName.
    GetPeerName = 311,
    /// ioctl: `args[0]` = handle, `args[1]` = request: FIONBIO (`args[2]` = the int),
    /// FIONREAD/SIOCINQ, SIOCOUTQ (result: the int).
    Ioctl = 312,
    /// After the domain restarted: the kept socket whose key is `args[0]` (a listener, or a
    /// bound datagram socket) joins this session's table. Result: its new handle; ENOENT for
    /// an unknown key (the key, learnt only by processes that held the socket, is the
    /// capability).
    Reclaim = 313,
    /// The fd-store key of socket `args[0]` (`aux[0]`, 0 when not kept): for a program that
    /// inherited or received the socket.
    StoreKey = 314,
    /// A socket table of the domain's network namespace, as `/proc/net/<name>` shows it:
    /// `args[0]` = 0 `tcp`, 1 `tcp6`, 2 `udp`, 3 `udp6`; `args[1]` = offset. Result: bytes of
    /// the table from that offset written into the window (0 at its end), so that `ss` and
    /// `netstat` in a redirected program see the sockets it has there.
    NetTable = 315,
    /// The stream of socket `args[0]` has room again (the client emptied some of it after the
    /// server marked it full): receive into it. Posted; the result is 0.
    Refill = 316,
    /// The client copied bytes into the transmit stream of socket `args[0]`: send them.
    /// Posted; the result is 0 (a send error is kept in the stream for the client's next
    /// call).
    Flush = 317,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_u16(op as u16), Some(op));
        }
        assert_eq!(Opcode::from_u16(999), None);
    }
}
