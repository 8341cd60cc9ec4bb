//! The shim's messages to the program's stderr: formatted into a stack buffer and written
//! with one raw `write`, so they neither allocate nor take std's stderr lock (safe in a signal
//! handler, inside the program's allocator and in a `vfork` child).

use std::fmt::Write;

/// A fixed buffer that `write!` fills, truncating what does not fit.
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Line {
    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Writes `args` and a newline to fd `fd`.
pub fn emit_to(fd: u64, args: std::fmt::Arguments<'_>) {
    let mut l = Line::default();
    let _ = l.write_fmt(args);
    if l.len == l.buf.len() {
        l.len -= 1;
    }
    l.buf[l.len] = b'\n';
    l.len += 1;
    crate::sys::sys(libc::SYS_write, &[fd, l.buf.as_ptr() as u64, l.len as u64]);
}

/// This process's pid, from the kernel (not cached).
pub fn pid() -> i64 {
    crate::sys::sys(libc::SYS_getpid, &[])
}

/// `eprintln!` without allocation or locks: one raw write to fd 2.
#[macro_export]
macro_rules! diag {
    ($($t:tt)*) => {
        $crate::diag::emit_to(2, format_args!($($t)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_truncate_instead_of_allocating() {
        let mut l = Line::default();
        for _ in 0..100 {
            write!(l, "0123456789").unwrap();
        }
        assert_eq!(l.as_bytes().len(), 512);
    }
}
