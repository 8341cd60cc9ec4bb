//! The exec hand-over's format: what a program that execs leaves for the new image (its
//! remote fds, the domains' exec tokens, the routed cwd) in a sealed memfd, and the token
//! that names it in the environment. Shared by the preload shim (which writes and reads it)
//! and the supervised mode (whose supervisor adopts what a redirected program hands to the
//! static program it execs); pure data, no system calls.

/// Longest path carried (Linux's PATH_MAX).
const PATH_MAX: usize = 4096;

/// The environment entry naming the state: `VIRTUOS_EXEC=<fd>:<token in hex>`.
pub const ENV_EXEC: &str = "VIRTUOS_EXEC";

/// The state's first word.
pub const MAGIC: u64 = 0x5649_5254_4558_4532; // "VIRTEXE2"

/// What an exec carries, decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The one-time token the environment entry repeats.
    pub token: [u8; 16],
    /// The process that wrote it (the exec keeps the pid).
    pub pid: i64,
    /// The exec tokens parked in each domain (storage, network; 0: none).
    pub tokens: [u64; 2],
    /// The routed cwd (empty: local).
    pub cwd: Vec<u8>,
    /// The remote files carried over.
    pub entries: Vec<Entry>,
}

/// One remote file carried over an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its fd number (a placeholder).
    pub fd: i32,
    /// Its handle in its domain's session.
    pub handle: u32,
    /// Opened as a directory.
    pub is_dir: bool,
    /// A socket of the network domain.
    pub net: bool,
    /// A listening socket.
    pub listening: bool,
    /// A FIFO or character device, whose reads and writes may wait
    /// (`crate::remote::may_block`).
    pub may_block: bool,
    /// A directory's path.
    pub dir: Vec<u8>,
}

impl State {
    /// The bytes of the memfd.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + self.cwd.len() + self.entries.len() * 16);
        w.extend_from_slice(&MAGIC.to_ne_bytes());
        w.extend_from_slice(&self.token);
        w.extend_from_slice(&self.pid.to_ne_bytes());
        w.extend_from_slice(&self.tokens[0].to_ne_bytes());
        w.extend_from_slice(&self.tokens[1].to_ne_bytes());
        w.extend_from_slice(&(self.cwd.len() as u32).to_ne_bytes());
        w.extend_from_slice(&self.cwd);
        for e in &self.entries {
            w.extend_from_slice(&e.fd.to_ne_bytes());
            w.extend_from_slice(&e.handle.to_ne_bytes());
            w.push(
                u8::from(e.is_dir)
                    | (u8::from(e.net) << 1)
                    | (u8::from(e.listening) << 2)
                    | (u8::from(e.may_block) << 3),
            );
            w.extend_from_slice(&(e.dir.len() as u32).to_ne_bytes());
            w.extend_from_slice(&e.dir);
        }
        w
    }

    /// Decodes a state; None for anything malformed (a clean start follows).
    pub fn decode(mut b: &[u8]) -> Option<State> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Some(h)
        }
        let u64_at = |b: &mut &[u8]| Some(u64::from_ne_bytes(take(b, 8)?.try_into().ok()?));
        let u32_at = |b: &mut &[u8]| Some(u32::from_ne_bytes(take(b, 4)?.try_into().ok()?));
        if u64_at(&mut b)? != MAGIC {
            return None;
        }
        let token: [u8; 16] = take(&mut b, 16)?.try_into().ok()?;
        let pid = u64_at(&mut b)? as i64;
        let tokens = [u64_at(&mut b)?, u64_at(&mut b)?];
        let clen = u32_at(&mut b)? as usize;
        if clen >= PATH_MAX {
            return None;
        }
        let cwd = take(&mut b, clen)?.to_vec();
        let mut entries = Vec::new();
        while !b.is_empty() {
            let fd = u32_at(&mut b)? as i32;
            let h = u32_at(&mut b)?;
            let flags = take(&mut b, 1)?[0];
            let plen = u32_at(&mut b)? as usize;
            if plen >= PATH_MAX {
                return None;
            }
            let dir = take(&mut b, plen)?.to_vec();
            entries.push(Entry {
                fd,
                handle: h,
                is_dir: flags & 1 != 0,
                net: flags & 2 != 0,
                listening: flags & 4 != 0,
                may_block: flags & 8 != 0,
                dir,
            });
        }
        Some(State {
            token,
            pid,
            tokens,
            cwd,
            entries,
        })
    }
}

/// `b` as lower-case hex, appended to `out`.
pub fn hex(b: &[u8], out: &mut Vec<u8>) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for &x in b {
        out.push(H[(x >> 4) as usize]);
        out.push(H[(x & 15) as usize]);
    }
}

/// A 16-byte token from its 32 hex digits.
pub fn unhex(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let v = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut t = [0u8; 16];
    for (i, x) in t.iter_mut().enumerate() {
        *x = (v(s[2 * i])? << 4) | v(s[2 * i + 1])?;
    }
    Some(t)
}
