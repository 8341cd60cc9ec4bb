# The extended-attribute calls on routed files, paths, symlinks and fds, with their errors.
# Run natively on a copy and redirected on the mount; the outputs must be identical.
# usage: xattrs.py TREE
import errno, os, sys
T = sys.argv[1]
def t(name, f):
    try:
        r = f(); print(name, "ok", r if r is not None else "")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
os.chdir(T)
open("f", "w").close()
os.symlink("f", "s")
os.mkdir("d")
t("set", lambda: os.setxattr("f", "user.a", b"alpha"))
t("get", lambda: os.getxattr("f", "user.a"))
t("set large", lambda: os.setxattr("f", "user.big", bytes(range(256)) * 8))
t("get large", lambda: len(os.getxattr("f", "user.big")))
t("list", lambda: sorted(os.listxattr("f")))
t("get via symlink", lambda: os.getxattr("s", "user.a"))
t("get on the symlink itself", lambda: os.getxattr("s", "user.a", follow_symlinks=False))
t("set on the symlink itself", lambda: os.setxattr("s", "user.x", b"1", follow_symlinks=False))
t("list of the symlink", lambda: os.listxattr("s", follow_symlinks=False))
t("create existing", lambda: os.setxattr("f", "user.a", b"x", os.XATTR_CREATE))
t("replace missing", lambda: os.setxattr("f", "user.none", b"x", os.XATTR_REPLACE))
t("replace", lambda: os.setxattr("f", "user.a", b"beta", os.XATTR_REPLACE))
t("get replaced", lambda: os.getxattr("f", "user.a"))
t("get missing", lambda: os.getxattr("f", "user.none"))
t("remove", lambda: os.removexattr("f", "user.big"))
t("remove missing", lambda: os.removexattr("f", "user.big"))
t("bad namespace", lambda: os.setxattr("f", "nope.a", b"1"))
t("on a directory", lambda: (os.setxattr("d", "user.d", b"dir"), os.getxattr("d", "user.d"))[1])
t("missing file", lambda: os.getxattr("nofile", "user.a"))
fd = os.open("f", os.O_RDWR)
t("fd get", lambda: os.getxattr(fd, "user.a"))
t("fd set", lambda: os.setxattr(fd, "user.fd", b"via fd"))
t("fd list", lambda: sorted(os.listxattr(fd)))
t("fd remove", lambda: os.removexattr(fd, "user.fd"))
os.close(fd)
t("final list", lambda: sorted(os.listxattr("f")))
import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
def raw_get(path, name, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    r = libc.getxattr(path.encode(), name.encode(), buf if size else None, ctypes.c_size_t(size))
    if r < 0:
        raise OSError(ctypes.get_errno(), "getxattr")
    return r
t("size query", lambda: raw_get("f", "user.a", 0))
t("too small", lambda: raw_get("f", "user.a", 2))
def raw_list(path, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    r = libc.listxattr(path.encode(), buf if size else None, ctypes.c_size_t(size))
    if r < 0:
        raise OSError(ctypes.get_errno(), "listxattr")
    return r
t("list size query", lambda: raw_list("f", 0))
t("list too small", lambda: raw_list("f", 3))
