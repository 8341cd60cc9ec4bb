//! Linux errno values as carried in responses.

use core::fmt;

/// Largest errno value a result may carry (Linux's `MAX_ERRNO`).
pub const MAX_ERRNO: u16 = 4095;

/// A Linux errno value in `1..=MAX_ERRNO`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(u16);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Errno = Errno(libc::$name as u16);
            )*
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    EMFILE,
    ENOSPC,
    ERANGE,
    ENOSYS,
    EPROTO,
    EMSGSIZE,
    ECONNRESET,
    ECONNREFUSED,
    ESHUTDOWN,
    ETIMEDOUT,
    ECANCELED,
    EOVERFLOW,
    ENOTSUP,
    ENOBUFS,
);

impl Errno {
    /// Builds an errno from its number; `None` outside `1..=MAX_ERRNO`.
    pub const fn new(n: i32) -> Option<Errno> {
        if n >= 1 && n <= MAX_ERRNO as i32 {
            Some(Errno(n as u16))
        } else {
            None
        }
    }

    /// The errno number.
    pub const fn get(self) -> i32 {
        self.0 as i32
    }

    /// The result word a failing call carries: `-errno`.
    pub const fn as_result(self) -> i64 {
        -(self.0 as i64)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.get()))
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.get())
    }
}

/// Not a Linux errno: the path of a storage call left the export (a symlink with an absolute
/// target, or `..` above the root) and continues where [`crate::Opcode::Resolve`] says. Never
/// returned to a program; a client that does not follow escapes reports it as `EXDEV`.
pub const ESCAPE: Errno = Errno(4001);

/// Splits a signed result the way libc does: values in `-MAX_ERRNO..0` are errors.
///
/// A result below `-MAX_ERRNO` is not a valid system call result; it is reported as `EIO`
/// so a corrupt peer cannot smuggle a bogus success value through.
pub fn split_result(result: i64) -> Result<u64, Errno> {
    if result >= 0 {
        Ok(result as u64)
    } else {
        let n = result.checked_neg().and_then(|n| i32::try_from(n).ok());
        Err(n.and_then(Errno::new).unwrap_or(Errno::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(Errno::new(0), None);
        assert_eq!(Errno::new(4096), None);
        assert_eq!(Errno::new(5), Some(Errno::EIO));
        assert_eq!(split_result(-4095), Err(Errno::new(4095).unwrap()));
        assert_eq!(split_result(i64::MIN), Err(Errno::EIO));
        assert_eq!(Errno::ENOENT.as_result(), -2);
    }
}
