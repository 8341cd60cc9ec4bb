//! One call on a storage-domain session, as both front ends make it: the preload shim (in
//! the program) and the supervised mode (in `virtuos-redirect`, which includes this file).
//!
//! Inputs go back to back at the start of the lease's window; the first one's length is
//! `args[4]`, the second's `args[3]` (a third, such as an xattr value, carries its length in
//! an argument the caller sets). Up to `out.len()` result bytes come back: the whole of `out`
//! for a fixed-size result (statx, statfs, flock, the stat an open carries), else as many as
//! the result says. No allocation: safe in the shim's signal handler.

use abi::{Opcode, Request};
use xen_transport::Session;

/// Performs `op`; returns the result (or -errno) and the response's first auxiliary word.
pub fn call_on(
    s: &Session,
    op: Opcode,
    args: &mut [u64; 5],
    inputs: &[&[u8]],
    out: Option<&mut [u8]>,
) -> (i64, u64) {
    call_on_interruptible(s, op, args, inputs, out, None)
}

/// Whether a call may wait in the domain for as long as another holder keeps a lock
/// (`F_SETLKW` and `F_OFD_SETLKW`, `flock` without `LOCK_NB`): a signal handler that runs in
/// the meantime may interrupt it, as Linux's `EINTR`.
pub fn waits(op: Opcode, args: &[u64; 5]) -> bool {
    match op {
        Opcode::Fcntl => matches!(
            i32::try_from(args[1]),
            Ok(libc::F_SETLKW | libc::F_OFD_SETLKW)
        ),
        Opcode::Flock => {
            let how = args[1] as i32;
            how & libc::LOCK_NB == 0 && how != libc::LOCK_UN
        }
        _ => false,
    }
}

/// As [`call_on`]; with `on_signal`, a signal handler that ran while the call waited asks it
/// whether the call is interrupted, and if so the domain is asked to cancel it (the call then
/// returns `-EINTR`, or its own result if it finished first).
pub fn call_on_interruptible(
    s: &Session,
    op: Opcode,
    args: &mut [u64; 5],
    inputs: &[&[u8]],
    out: Option<&mut [u8]>,
    on_signal: Option<&mut dyn FnMut() -> bool>,
) -> (i64, u64) {
    let mut lease = s.lease();
    let mut at = 0usize;
    for (i, inp) in inputs.iter().enumerate() {
        if lease.write(at, inp).is_err() {
            return (-(libc::ENAMETOOLONG as i64), 0);
        }
        match i {
            0 => args[4] = inp.len() as u64,
            1 => args[3] = inp.len() as u64,
            _ => {}
        }
        at += inp.len();
    }
    let out_len = out.as_ref().map(|o| o.len()).unwrap_or(0);
    let data_len = at.max(out_len).min(lease.window() as usize);
    let req = Request {
        opcode: op as u16,
        data_off: 0,
        data_len: data_len as u32,
        args: *args,
        ..Request::default()
    };
    let sent = match on_signal {
        Some(f) => lease.call_interruptible(req, f),
        None => lease.call(req),
    };
    let rsp = match sent {
        Ok(r) => r,
        Err(e) => return (-i64::from(e.errno().get()), 0),
    };
    if let Some(out) = out {
        let fixed = matches!(
            op,
            Opcode::FStat | Opcode::StatAt | Opcode::FStatFs | Opcode::Fcntl
        ) || (op == Opcode::OpenAt && rsp.aux[1] == 1);
        let n = if fixed {
            out.len()
        } else if op == Opcode::OpenAt {
            0
        } else {
            rsp.result.max(0) as usize
        }
        .min(out.len())
        .min(data_len);
        if rsp.result >= 0 && n > 0 && lease.read(0, &mut out[..n]).is_err() {
            return (-(libc::EIO as i64), 0);
        }
    }
    (rsp.result, rsp.aux[0])
}

/// An extended-attribute call decoded for [`Opcode::Xattr`]: which operation (0 get, 1 set,
/// 2 list, 3 remove), whether it acts on a symlink itself, and the program's arguments.
pub struct Xattr {
    /// 0 get, 1 set, 2 list, 3 remove.
    pub op: u64,
    /// The `l*` form: acts on a symlink itself.
    pub nofollow: bool,
    /// The name's address (0 for list).
    pub name: u64,
    /// The value or list buffer.
    pub buf: u64,
    /// The buffer's size (the value's length for set).
    pub size: u64,
    /// setxattr's XATTR_CREATE/XATTR_REPLACE.
    pub flags: u64,
}

/// Largest value (and list) Linux handles.
pub const XATTR_MAX: u64 = 65536;

impl Xattr {
    /// The call `nr` with arguments `a` (every form: path, `l*` and `f*`), if it is one.
    pub fn decode(nr: i64, a: [u64; 6]) -> Option<Xattr> {
        let (op, nofollow) = match nr {
            libc::SYS_getxattr | libc::SYS_fgetxattr => (0u64, false),
            libc::SYS_lgetxattr => (0, true),
            libc::SYS_setxattr | libc::SYS_fsetxattr => (1, false),
            libc::SYS_lsetxattr => (1, true),
            libc::SYS_listxattr | libc::SYS_flistxattr => (2, false),
            libc::SYS_llistxattr => (2, true),
            libc::SYS_removexattr | libc::SYS_fremovexattr => (3, false),
            libc::SYS_lremovexattr => (3, true),
            _ => return None,
        };
        // Every variant: (object, name or list, value, size, flags).
        let (name, buf, size, flags) = match op {
            2 => (0, a[1], a[2], 0),
            _ => (a[1], a[2], a[3], a[4]),
        };
        Some(Xattr {
            op,
            nofollow,
            name,
            buf,
            size,
            flags,
        })
    }

    /// Room for the answer: the whole value for set, at most [`XATTR_MAX`] otherwise.
    pub fn room(&self) -> u64 {
        if self.op == 1 {
            self.size
        } else {
            self.size.min(XATTR_MAX)
        }
    }

    /// True when the answer is bytes for the program's buffer (get and list with a size).
    pub fn answers_bytes(&self) -> bool {
        matches!(self.op, 0 | 2) && self.size > 0
    }

    /// The request's arguments for object `handle` (`u64::MAX`: the path in the payload),
    /// which go with the payload path, name, value (in that order).
    pub fn args(&self, handle: u64) -> [u64; 5] {
        let word = self.op | if self.nofollow { 0x100 } else { 0 } | (self.flags & 0xffff) << 16;
        [handle, word, self.room(), 0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_calls_decode_to_one_request_layout() {
        let a = [7, 0x1000, 0x2000, 64, 1, 0];
        let get = Xattr::decode(libc::SYS_lgetxattr, a).unwrap();
        assert_eq!(
            (get.op, get.nofollow, get.name, get.buf),
            (0, true, 0x1000, 0x2000)
        );
        assert!(get.answers_bytes());
        assert_eq!(get.args(9), [9, 0x100 | (1 << 16), 64, 0, 0]);
        let list = Xattr::decode(libc::SYS_flistxattr, [3, 0x3000, 0, 0, 0, 0]).unwrap();
        assert_eq!((list.op, list.name, list.buf, list.size), (2, 0, 0x3000, 0));
        assert!(!list.answers_bytes(), "a size query answers a length only");
        let set = Xattr::decode(libc::SYS_setxattr, [0, 1, 2, XATTR_MAX + 5, 2, 0]).unwrap();
        assert_eq!(set.room(), XATTR_MAX + 5, "set sends its whole value");
        let rm = Xattr::decode(libc::SYS_fremovexattr, a).unwrap();
        assert_eq!((rm.op, rm.nofollow), (3, false));
        assert!(Xattr::decode(libc::SYS_read, a).is_none());
    }
}
