//! Paths as clients send them, and how a path op splits them.
//!
//! Operations on a directory *entry* (mkdir, unlink, rename, link, symlink) open the parent
//! directory confined to the export root and act on `(parent, last component)`; the kernel
//! never follows the last component of these calls, so nothing can leave the root. A last
//! component of `.` or `..` (or a path that is the root itself) is answered here with the errno
//! Linux gives, without a system call: acting on `(root, "..")` would name the root's parent.

use std::ffi::{CStr, CString};

/// Linux's `PATH_MAX`, counting the terminating NUL.
pub const PATH_MAX: usize = 4096;

/// Turns the bytes a client sent into a C path: cut at the first NUL (as the kernel would read
/// a C string), `ENAMETOOLONG` if it does not fit `PATH_MAX`.
pub fn c_path(bytes: &[u8]) -> Result<CString, i32> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if end >= PATH_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(CString::new(&bytes[..end]).expect("no NUL before end"))
}

/// A client path as `RESOLVE_BENEATH` takes it, relative to the root: leading slashes
/// dropped (`.` for the root itself). A client path is always relative to the export root,
/// written with or without a leading slash.
pub fn below(path: &CStr) -> std::borrow::Cow<'_, CStr> {
    let p = path.to_bytes();
    match p.iter().position(|&b| b != b'/') {
        Some(0) => path.into(),
        Some(i) => CString::new(&p[i..]).expect("no NUL in a C string").into(),
        None if p.is_empty() => path.into(),
        None => std::borrow::Cow::Borrowed(c"."),
    }
}

/// The last component of a path, as path lookup classifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Last {
    /// An ordinary name, to pass to the `*at` call as is (a trailing slash kept, so the kernel
    /// applies its trailing-slash rules).
    Name(CString),
    /// `.`
    Dot,
    /// `..`
    DotDot,
    /// The path names the root itself (`/`, `//`).
    Root,
}

/// A path split for an entry operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// The parent directory, to open confined (`.` for the root).
    pub parent: CString,
    /// The last component.
    pub last: Last,
}

/// Splits `path` into its parent and last component; `ENOENT` for an empty path.
pub fn split(path: &CStr) -> Result<Split, i32> {
    let p = path.to_bytes();
    if p.is_empty() {
        return Err(libc::ENOENT);
    }
    let trimmed_len = p.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    if trimmed_len == 0 {
        return Ok(Split {
            parent: c".".into(),
            last: Last::Root,
        });
    }
    let trimmed = &p[..trimmed_len];
    let (parent, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..=i], &trimmed[i + 1..]),
        None => (&b"."[..], trimmed),
    };
    let last = match name {
        b"." => Last::Dot,
        b".." => Last::DotDot,
        _ => {
            // Keep one trailing slash: it means "must be a directory" to the kernel.
            let with_slash = if trimmed_len < p.len() {
                &p[trimmed_len - name.len()..=trimmed_len]
            } else {
                name
            };
            Last::Name(CString::new(with_slash).expect("no NUL in a C string"))
        }
    };
    Ok(Split {
        parent: CString::new(parent).expect("no NUL in a C string"),
        last,
    })
}

/// True when the path's last component is a plain name without a trailing slash, i.e. a call
/// that does not follow it acts on exactly that entry.
pub fn is_plain_last(path: &CStr) -> bool {
    matches!(split(path), Ok(Split { last: Last::Name(n), .. }) if !n.to_bytes().ends_with(b"/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &str) -> (String, Last) {
        let c = CString::new(p).unwrap();
        let sp = split(&c).unwrap();
        (sp.parent.to_str().unwrap().to_string(), sp.last)
    }

    fn name(n: &str) -> Last {
        Last::Name(CString::new(n).unwrap())
    }

    #[test]
    fn splits_like_path_lookup() {
        assert_eq!(split(c"").unwrap_err(), libc::ENOENT);
        assert_eq!(s("a"), (".".into(), name("a")));
        assert_eq!(s("/a"), ("/".into(), name("a")));
        assert_eq!(s("a/b/c"), ("a/b/".into(), name("c")));
        assert_eq!(s("a/b/c/"), ("a/b/".into(), name("c/")));
        assert_eq!(s("a/b//c//"), ("a/b//".into(), name("c/")));
        assert_eq!(s("d/"), (".".into(), name("d/")));
        assert_eq!(s("/"), (".".into(), Last::Root));
        assert_eq!(s("///"), (".".into(), Last::Root));
        assert_eq!(s("."), (".".into(), Last::Dot));
        assert_eq!(s("a/."), ("a/".into(), Last::Dot));
        assert_eq!(s("a/../"), ("a/".into(), Last::DotDot));
        assert_eq!(s("/.."), ("/".into(), Last::DotDot));
        assert_eq!(s("..."), (".".into(), name("...")));
        assert!(is_plain_last(c"a/b"));
        assert!(!is_plain_last(c"a/b/"));
        assert!(!is_plain_last(c"a/.."));
        assert!(!is_plain_last(c"/"));
    }

    #[test]
    fn paths_below_the_root_lose_their_leading_slashes() {
        let b = |p: &str| {
            below(&CString::new(p).unwrap())
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(b("/a/b/"), "a/b/");
        assert_eq!(b("///a"), "a");
        assert_eq!(b("/"), ".");
        assert_eq!(b("//"), ".");
        assert_eq!(b("a/.."), "a/..");
        assert_eq!(b(""), "");
    }

    #[test]
    fn c_paths_stop_at_nul_and_respect_path_max() {
        assert_eq!(c_path(b"a/b\0junk").unwrap().as_bytes(), b"a/b");
        assert_eq!(c_path(&[b'a'; 4095]).unwrap().as_bytes().len(), 4095);
        assert_eq!(c_path(&[b'a'; 4096]).unwrap_err(), libc::ENAMETOOLONG);
        assert_eq!(c_path(b"").unwrap().as_bytes(), b"");
    }
}
