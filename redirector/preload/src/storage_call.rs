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
    let rsp = match lease.call(req) {
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
