//! Deciding where a path lives: under the storage mount prefix (remote) or not (local).
//!
//! Paths are normalised lexically (`.` and `..` folded, repeated slashes dropped) the way the
//! original VirtuOS libc did, then matched against the mount prefix on a component boundary.
//! A remote path is returned relative to the export root, always starting with `/`.
//! Everything works on fixed-size stack buffers: no allocation, so it is safe in the SIGSYS
//! handler.

/// Longest path handled (Linux's PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// A path in a fixed buffer.
#[derive(Clone)]
pub struct PathBuf {
    buf: [u8; PATH_MAX],
    len: usize,
}

impl Default for PathBuf {
    fn default() -> Self {
        PathBuf {
            buf: [0; PATH_MAX],
            len: 0,
        }
    }
}

impl std::fmt::Debug for PathBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PathBuf {
    /// The bytes of the path.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Builds from bytes; `None` if too long.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let mut p = PathBuf::default();
        p.push_bytes(b)?;
        Some(p)
    }

    fn push_bytes(&mut self, b: &[u8]) -> Option<()> {
        let end = self.len.checked_add(b.len())?;
        if end > PATH_MAX - 1 {
            return None;
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Some(())
    }
}

/// Why a path could not be handled.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum PathError {
    /// Longer than PATH_MAX.
    TooLong,
}

/// Folds `.` and `..` and slashes of an absolute path (`..` at the root stays at the root).
pub fn normalize(abs: &[u8]) -> Result<PathBuf, PathError> {
    let mut out = PathBuf::default();
    // Stack of component start offsets in `out` (u16: PATH_MAX fits, and the stack stays
    // small enough for signal handlers on small stacks).
    let mut starts = [0u16; PATH_MAX / 2];
    let mut depth = 0usize;
    for comp in abs.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if depth > 0 {
                    depth -= 1;
                    out.len = usize::from(starts[depth]);
                }
            }
            c => {
                starts[depth] = out.len as u16;
                depth += 1;
                out.push_bytes(b"/").ok_or(PathError::TooLong)?;
                out.push_bytes(c).ok_or(PathError::TooLong)?;
            }
        }
    }
    if out.len == 0 {
        out.push_bytes(b"/").ok_or(PathError::TooLong)?;
    }
    Ok(out)
}

/// Joins `base` (absolute) and `rel` and normalises; an absolute `rel` replaces `base`.
pub fn join(base: &[u8], rel: &[u8]) -> Result<PathBuf, PathError> {
    if rel.first() == Some(&b'/') {
        return normalize(rel);
    }
    let mut tmp = PathBuf::from_bytes(base).ok_or(PathError::TooLong)?;
    tmp.push_bytes(b"/").ok_or(PathError::TooLong)?;
    tmp.push_bytes(rel).ok_or(PathError::TooLong)?;
    normalize(tmp.as_bytes())
}

/// If normalised absolute `path` is `prefix` or below it, the part below (starting with `/`).
pub fn strip_prefix(path: &[u8], prefix: &[u8]) -> Option<PathBuf> {
    let prefix = if prefix.len() > 1 && prefix.ends_with(b"/") {
        &prefix[..prefix.len() - 1]
    } else {
        prefix
    };
    if prefix == b"/" {
        return PathBuf::from_bytes(path);
    }
    let rest = path.strip_prefix(prefix)?;
    match rest.first() {
        None => PathBuf::from_bytes(b"/"),
        Some(b'/') => PathBuf::from_bytes(rest),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> String {
        String::from_utf8(normalize(s.as_bytes()).unwrap().as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn normalizes_like_the_original() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("//a//b/"), "/a/b");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../.."), "/");
        assert_eq!(n("/a/b/../../.."), "/");
        let j = join(b"/mnt/s/dir", b"../x").unwrap();
        assert_eq!(j.as_bytes(), b"/mnt/s/x");
        assert_eq!(join(b"/x", b"/abs").unwrap().as_bytes(), b"/abs");
    }

    #[test]
    fn prefix_matches_on_component_boundaries() {
        let p = b"/mnt/store";
        assert_eq!(strip_prefix(b"/mnt/store", p).unwrap().as_bytes(), b"/");
        assert_eq!(
            strip_prefix(b"/mnt/store/a/b", p).unwrap().as_bytes(),
            b"/a/b"
        );
        assert!(strip_prefix(b"/mnt/storefront", p).is_none());
        assert!(strip_prefix(b"/mnt", p).is_none());
        assert_eq!(
            strip_prefix(b"/mnt/store/a", b"/mnt/store/")
                .unwrap()
                .as_bytes(),
            b"/a"
        );
    }

    proptest! {
        #[test]
        fn normalized_paths_are_canonical(parts in proptest::collection::vec("[a-c.]{0,3}", 0..12)) {
            let s = format!("/{}", parts.join("/"));
            let once = normalize(s.as_bytes()).unwrap();
            let b = once.as_bytes();
            prop_assert!(b.starts_with(b"/"));
            prop_assert!(!b.windows(2).any(|w| w == b"//"));
            prop_assert!(!b.split(|&c| c == b'/').any(|c| c == b"." || c == b".."));
            let twice = normalize(b).unwrap();
            prop_assert_eq!(twice.as_bytes(), b);
        }
    }
}
