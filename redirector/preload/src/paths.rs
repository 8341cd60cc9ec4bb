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

/// `rest` (a path relative to the export-relative, normalised directory `base`) as the file
/// system should see it, relative to the export root: `base` then `rest` exactly as written,
/// `.`, `..` and trailing slashes kept for the server to resolve with Linux's rules (`..`
/// through a symlink, `rmdir a/b/..`, `open("dir/", O_CREAT)`). None when `rest` leaves the
/// export lexically (the caller then decides on the folded path) or it is too long.
pub fn raw_below(base: &[u8], rest: &[u8]) -> Option<PathBuf> {
    let mut depth: isize = base
        .split(|&c| c == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .count() as isize;
    for comp in rest.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => depth += 1,
        }
    }
    let base = base.strip_suffix(b"/").unwrap_or(base);
    let mut out = PathBuf::default();
    out.push_bytes(base)?;
    let rest = &rest[rest.iter().position(|&c| c != b'/').unwrap_or(rest.len())..];
    if !rest.is_empty() || out.len == 0 {
        out.push_bytes(b"/")?;
    }
    out.push_bytes(rest)?;
    Some(out)
}

/// Absolute `raw` whose leading components spell `mount` (a normalised prefix; empty and `.`
/// components of `raw` are skipped while matching): the rest as [`raw_below`] keeps it.
pub fn raw_absolute(raw: &[u8], mount: &[u8]) -> Option<PathBuf> {
    if raw.first() != Some(&b'/') {
        return None;
    }
    let mut at = 0usize;
    for want in mount.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        loop {
            while raw.get(at) == Some(&b'/') {
                at += 1;
            }
            let end = raw[at..]
                .iter()
                .position(|&c| c == b'/')
                .map_or(raw.len(), |i| at + i);
            let comp = &raw[at..end];
            at = end;
            match comp {
                b"." => continue,
                c if c == want => break,
                _ => return None,
            }
        }
    }
    raw_below(b"/", &raw[at..])
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

/// The fd number N of a `/proc/self/fd/N` or `/dev/fd/N` path (the magic links through which
/// programs name an open file: glibc's `fchmodat(AT_SYMLINK_NOFOLLOW)` goes through one).
pub fn proc_fd_number(path: &[u8]) -> Option<i64> {
    let n = path
        .strip_prefix(b"/proc/self/fd/")
        .or_else(|| path.strip_prefix(b"/dev/fd/"))?;
    if n.is_empty() || n.len() > 9 || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(n.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
}

/// True when the lexical path `raw` starts inside `mount` (before `..` is folded).
pub fn enters(raw: &[u8], mount: &[u8]) -> bool {
    raw.starts_with(mount) && (raw.len() == mount.len() || raw[mount.len()] == b'/')
}

/// Where a path lives, decided on the folded path.
#[allow(clippy::large_enum_variant)] // on the stack by design: no allocation in signal handlers
pub enum Route {
    /// Not under the mount: the kernel's.
    Local,
    /// Local, but only after folding `..` out of the mount: use this path instead.
    LocalAt(PathBuf),
    /// In the storage domain: export-relative, starting with `/`.
    Remote(PathBuf),
}

/// Routes `path` as a program gave it: `base` is the absolute, normalised directory a
/// relative `path` starts from (the cwd or a directory fd's path; `None` for an absolute
/// path). The file system owns path semantics: a remote path is sent as the program wrote it
/// (below the mount, or below a routed base directory) whenever that can be said without
/// leaving the export, so the server resolves `.`, `..`, symlinks and trailing slashes
/// itself; the folded path only where it cannot. The preload shim and the supervised mode
/// both route with this.
pub fn route(base: Option<&[u8]>, path: &[u8], mount: &[u8]) -> Result<Route, PathError> {
    let (full, entered) = match base {
        None => (normalize(path)?, enters(path, mount)),
        Some(b) => (join(b, path)?, enters(b, mount)),
    };
    Ok(match strip_prefix(full.as_bytes(), mount) {
        Some(rel) => Route::Remote(
            match base {
                None => raw_absolute(path, mount),
                Some(b) => strip_prefix(b, mount).and_then(|br| raw_below(br.as_bytes(), path)),
            }
            .unwrap_or(rel),
        ),
        // `..` led out of the mount: the kernel cannot walk the remote part, so it gets the
        // folded path instead.
        None if entered => Route::LocalAt(keep_last(full, path)?),
        None => Route::Local,
    })
}

/// `folded` (a normalised path, the fold of `path`) with what folding took off `path`'s end
/// and the kernel still needs: a trailing `/` (the object must be a directory) or a final `.`
/// (rmdir and rename refuse it). A final `..` is a directory already.
fn keep_last(mut folded: PathBuf, path: &[u8]) -> Result<PathBuf, PathError> {
    let tail: &[u8] = if path.ends_with(b"/") || path.ends_with(b"/..") || path == b".." {
        b"/"
    } else if path.ends_with(b"/.") || path == b"." {
        b"/."
    } else {
        return Ok(folded);
    };
    let tail = if folded.as_bytes() == b"/" {
        &tail[1..]
    } else {
        tail
    };
    folded.push_bytes(tail).ok_or(PathError::TooLong)?;
    Ok(folded)
}

/// Routes `cont`, where the storage domain says a path that left the export continues
/// (`Opcode::Resolve`): an absolute path in the program's name space, or one relative to the
/// mount point (`../rest`). A continuation outside the mount is always `LocalAt` (absolute,
/// as the server gave it). The shim and the supervised mode both route continuations so.
pub fn route_continuation(cont: &[u8], mount: &[u8]) -> Result<Route, PathError> {
    let base = (cont.first() != Some(&b'/')).then_some(mount);
    Ok(match route(base, cont, mount)? {
        Route::Local => Route::LocalAt(PathBuf::from_bytes(cont).ok_or(PathError::TooLong)?),
        other => other,
    })
}

/// Most symlinks one local walk follows (Linux's MAXSYMLINKS).
const MAX_LOCAL_LINKS: usize = 40;

/// Where a local path that the kernel could not walk (ENOENT) continues into the mount
/// through the program's own symlinks: `/tmp/l/f` with `/tmp/l -> /vt/d` is `/d/f` in the
/// storage domain, which the kernel cannot see. `base` is the absolute, normalised directory a
/// relative `path` starts from (ignored for an absolute one); `readlink(path, buf)` reads a
/// local link (`Err(EINVAL)` for an existing non-link, any other error ends the walk). Every
/// link is followed, the last component's too: a call that does not follow its last link
/// never fails with ENOENT on one that exists, so the kernel's ENOENT says the call followed
/// it. The part after the link that entered the mount is kept as written, for the server to
/// resolve. None when no link leads into the mount (the kernel's ENOENT stands).
/// `follow_last` false leaves a final link unread (rename and link act on the link itself).
pub fn local_into_mount(
    base: &[u8],
    path: &[u8],
    mount: &[u8],
    follow_last: bool,
    mut readlink: impl FnMut(&[u8], &mut [u8]) -> Result<usize, i32>,
) -> Option<PathBuf> {
    // `resolved`: a normalised absolute path without links; `rest`: what is left to walk.
    let mut resolved = if path.first() == Some(&b'/') {
        PathBuf::from_bytes(b"/")?
    } else {
        normalize(base).ok()?
    };
    let mut rest = PathBuf::from_bytes(path)?;
    let mut at = 0usize;
    let mut links = 0usize;
    let mut target = [0u8; PATH_MAX];
    loop {
        let r = rest.as_bytes();
        while r.get(at) == Some(&b'/') {
            at += 1;
        }
        if at >= r.len() {
            return None;
        }
        let end = r[at..]
            .iter()
            .position(|&c| c == b'/')
            .map_or(r.len(), |i| at + i);
        let comp = &r[at..end];
        let after_at = end;
        at = end;
        match comp {
            b"." => continue,
            b".." => {
                let keep = resolved
                    .as_bytes()
                    .iter()
                    .rposition(|&c| c == b'/')
                    .unwrap_or(0);
                resolved.len = keep.max(1);
                continue;
            }
            _ => {}
        }
        let mut cand = resolved.clone();
        if cand.as_bytes() != b"/" {
            cand.push_bytes(b"/")?;
        }
        cand.push_bytes(comp)?;
        if let Some(rel) = strip_prefix(cand.as_bytes(), mount) {
            if links == 0 {
                return None; // the path itself was under the mount: routed already
            }
            let after = &rest.as_bytes()[after_at..];
            if after.is_empty() {
                return Some(rel);
            }
            if rel.as_bytes() == b"/" {
                return PathBuf::from_bytes(after);
            }
            let mut out = rel;
            out.push_bytes(after)?;
            return Some(out);
        }
        if !follow_last && after_at == rest.len {
            return None;
        }
        match readlink(cand.as_bytes(), &mut target) {
            Ok(n) if n > 0 && n <= target.len() => {
                links += 1;
                if links > MAX_LOCAL_LINKS {
                    return None;
                }
                let mut next = PathBuf::from_bytes(&target[..n])?;
                next.push_bytes(&rest.as_bytes()[after_at..])?;
                if target[0] == b'/' {
                    resolved = PathBuf::from_bytes(b"/")?;
                }
                rest = next;
                at = 0;
            }
            Err(libc::EINVAL) => resolved = cand,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rb(base: &str, rest: &str) -> Option<String> {
        raw_below(base.as_bytes(), rest.as_bytes())
            .map(|p| String::from_utf8(p.as_bytes().to_vec()).unwrap())
    }

    fn ra(raw: &str, mount: &str) -> Option<String> {
        raw_absolute(raw.as_bytes(), mount.as_bytes())
            .map(|p| String::from_utf8(p.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn raw_paths_keep_dots_and_trailing_slashes() {
        assert_eq!(ra("/vt/a/b/..", "/vt").as_deref(), Some("/a/b/.."));
        assert_eq!(ra("/vt//./a/.", "/vt").as_deref(), Some("/./a/."));
        assert_eq!(ra("/vt/newdir/", "/vt").as_deref(), Some("/newdir/"));
        assert_eq!(ra("/vt", "/vt").as_deref(), Some("/"));
        assert_eq!(ra("/vt/", "/vt").as_deref(), Some("/"));
        assert_eq!(ra("/mnt/x/s/../m", "/mnt/x").as_deref(), Some("/s/../m"));
        assert_eq!(ra("/vtx/a", "/vt"), None);
        assert_eq!(ra("/vt/../vt/a", "/vt"), None);
        assert_eq!(ra("/vt/a/../..", "/vt"), None);
        assert_eq!(rb("/x", "b/..").as_deref(), Some("/x/b/.."));
        assert_eq!(rb("/", "s/../m").as_deref(), Some("/s/../m"));
        assert_eq!(rb("/x", "../.."), None);
        assert_eq!(rb("/x", "..").as_deref(), Some("/x/.."));
    }

    /// A local tree of links and directories for [`local_into_mount`].
    fn walk(base: &str, path: &str, links: &[(&str, &str)], dirs: &[&str]) -> Option<String> {
        local_into_mount(base.as_bytes(), path.as_bytes(), b"/vt", true, |p, buf| {
            let p = std::str::from_utf8(p).unwrap();
            if let Some((_, t)) = links.iter().find(|(l, _)| *l == p) {
                buf[..t.len()].copy_from_slice(t.as_bytes());
                return Ok(t.len());
            }
            if dirs.contains(&p) {
                Err(libc::EINVAL)
            } else {
                Err(libc::ENOENT)
            }
        })
        .map(|p| String::from_utf8(p.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn local_links_lead_into_the_mount() {
        let dirs = ["/tmp", "/tmp/d", "/home"];
        let links = [
            ("/tmp/l", "/vt/d"),
            ("/tmp/rel", "../vt/e"),
            ("/tmp/chain", "l"),
            ("/tmp/root", "/"),
            ("/tmp/loop", "loop"),
            ("/tmp/out", "/home"),
            ("/tmp/d/up", "../../vt"),
        ];
        let w = |base, path| walk(base, path, &links, &dirs);
        assert_eq!(w("/", "/tmp/l/f").as_deref(), Some("/d/f"));
        assert_eq!(w("/", "/tmp/l").as_deref(), Some("/d"));
        // What follows the link is kept as written, trailing slash and dots included.
        assert_eq!(w("/", "/tmp/l/a/../b/").as_deref(), Some("/d/a/../b/"));
        assert_eq!(w("/tmp", "rel/x").as_deref(), Some("/e/x"));
        assert_eq!(w("/tmp", "chain/x").as_deref(), Some("/d/x"));
        assert_eq!(w("/", "/tmp/root/vt/z").as_deref(), Some("/z"));
        assert_eq!(w("/", "/tmp/d/up/q").as_deref(), Some("/q"));
        assert_eq!(w("/", "/tmp/d/up").as_deref(), Some("/"));
        assert_eq!(w("/tmp/d", "../l/./f").as_deref(), Some("/d/./f"));
        // No link into the mount: the kernel's ENOENT stands.
        assert_eq!(w("/", "/tmp/missing/f"), None);
        assert_eq!(w("/", "/tmp/out/x"), None);
        assert_eq!(w("/", "/tmp/d/x"), None);
        assert_eq!(w("/", "/tmp/loop/x"), None);
        assert_eq!(w("/", "/vt/x"), None);
        assert_eq!(w("/", "/tmp/d"), None);
        // rename and link act on a final link itself.
        let nofollow = |path: &str| {
            local_into_mount(b"/", path.as_bytes(), b"/vt", false, |p, buf| {
                match links.iter().find(|(l, _)| l.as_bytes() == p) {
                    Some((_, t)) => {
                        buf[..t.len()].copy_from_slice(t.as_bytes());
                        Ok(t.len())
                    }
                    None if dirs.iter().any(|d| d.as_bytes() == p) => Err(libc::EINVAL),
                    None => Err(libc::ENOENT),
                }
            })
            .map(|p| String::from_utf8(p.as_bytes().to_vec()).unwrap())
        };
        assert_eq!(nofollow("/tmp/l"), None);
        assert_eq!(nofollow("/tmp/l/f").as_deref(), Some("/d/f"));
        assert_eq!(nofollow("/tmp/l/").as_deref(), Some("/d/"));
    }

    fn route_str(base: Option<&str>, path: &str, mount: &str) -> String {
        match route(base.map(str::as_bytes), path.as_bytes(), mount.as_bytes()).unwrap() {
            Route::Local => "local".into(),
            Route::LocalAt(p) => format!("local {}", String::from_utf8_lossy(p.as_bytes())),
            Route::Remote(p) => format!("remote {}", String::from_utf8_lossy(p.as_bytes())),
        }
    }

    #[test]
    fn routes_send_the_path_as_written() {
        // Absolute, relative to a routed cwd, relative to a local cwd entering the mount.
        assert_eq!(route_str(None, "/vt/a/b/..", "/vt"), "remote /a/b/..");
        assert_eq!(route_str(Some("/vt/a"), "b/.", "/vt"), "remote /a/b/.");
        assert_eq!(route_str(Some("/vt"), "newdir/", "/vt"), "remote /newdir/");
        assert_eq!(route_str(Some("/home"), "../vt/x", "/vt"), "remote /x");
        // Leaving the mount lexically: the folded path, local.
        assert_eq!(
            route_str(Some("/vt/a"), "../../etc/passwd", "/vt"),
            "local /etc/passwd"
        );
        assert_eq!(route_str(None, "/vt/../etc", "/vt"), "local /etc");
        // ...keeping what the kernel still needs of its end: ENOTDIR for a file with a
        // trailing slash, EINVAL for rmdir of `.`.
        assert_eq!(
            route_str(None, "/vt/../etc/passwd/", "/vt"),
            "local /etc/passwd/"
        );
        assert_eq!(
            route_str(Some("/vt"), "../tmp/d/.", "/vt"),
            "local /tmp/d/."
        );
        // Through the mount and back in: folded, still remote.
        assert_eq!(route_str(None, "/vt/a/../../vt/b", "/vt"), "remote /b");
        assert_eq!(route_str(None, "/etc/passwd", "/vt"), "local");
        assert_eq!(route_str(Some("/home"), "x", "/vt"), "local");
    }

    #[test]
    fn proc_fd_paths_name_their_fd() {
        assert_eq!(proc_fd_number(b"/proc/self/fd/3"), Some(3));
        assert_eq!(proc_fd_number(b"/dev/fd/12"), Some(12));
        assert_eq!(proc_fd_number(b"/proc/self/fd/"), None);
        assert_eq!(proc_fd_number(b"/proc/self/fd/3/x"), None);
        assert_eq!(proc_fd_number(b"/proc/self/fdinfo/3"), None);
        assert_eq!(proc_fd_number(b"/dev/fd/1234567890"), None);
    }

    #[test]
    fn continuations_route_under_the_mount_or_locally() {
        let r = |c: &str| match route_continuation(c.as_bytes(), b"/vt").unwrap() {
            Route::Local => "local".to_owned(),
            Route::LocalAt(p) => format!("local {}", String::from_utf8_lossy(p.as_bytes())),
            Route::Remote(p) => format!("remote {}", String::from_utf8_lossy(p.as_bytes())),
        };
        assert_eq!(r("/vt/d/x"), "remote /d/x");
        assert_eq!(r("/etc/passwd"), "local /etc/passwd");
        assert_eq!(r("../tmp/x/"), "local /tmp/x/");
        assert_eq!(r("../tmp/x/."), "local /tmp/x/.");
        assert_eq!(r("../tmp/x/.."), "local /tmp/");
        assert_eq!(r("../tmp/x"), "local /tmp/x");
        assert_eq!(r("../"), "local /");
        assert_eq!(r("../."), "local /.");
        assert_eq!(r("../vt/d"), "remote /d");
    }

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
