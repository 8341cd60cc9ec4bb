"""mkfifo and mknod in a tree: FIFOs, regular files, a character device (as root), their
types and modes, a FIFO carrying bytes between two processes, and the errors. usage:
mknod.py TREE"""
import errno
import os
import stat
import sys

t = sys.argv[1]
os.umask(0o022)


def show(name, f):
    try:
        r = f()
        print(name, "ok", "" if r is None else r)
    except OSError as e:
        print(name, errno.errorcode[e.errno])


def kind(p):
    m = os.lstat(p).st_mode
    return ("fifo" if stat.S_ISFIFO(m) else "reg" if stat.S_ISREG(m) else
            "chr" if stat.S_ISCHR(m) else "sock" if stat.S_ISSOCK(m) else "other", oct(m & 0o7777))


show("mkfifo", lambda: os.mkfifo(os.path.join(t, "f"), 0o666))
show("kind f", lambda: kind(os.path.join(t, "f")))
show("mkfifo again", lambda: os.mkfifo(os.path.join(t, "f")))
show("mknod reg", lambda: os.mknod(os.path.join(t, "r"), stat.S_IFREG | 0o640))
show("kind r", lambda: kind(os.path.join(t, "r")))
show("mknod default", lambda: os.mknod(os.path.join(t, "d0")))
show("kind d0", lambda: kind(os.path.join(t, "d0")))
show("mknod chr", lambda: os.mknod(os.path.join(t, "null"), stat.S_IFCHR | 0o600, os.makedev(1, 3)))
show("kind null", lambda: kind(os.path.join(t, "null")))
show("mknod sock", lambda: os.mknod(os.path.join(t, "s"), stat.S_IFSOCK | 0o600))
show("kind s", lambda: kind(os.path.join(t, "s")))
show("mknod in missing dir", lambda: os.mknod(os.path.join(t, "no", "x")))
show("mknod bad type", lambda: os.mknod(os.path.join(t, "bad"), 0o170000 | 0o600))
fifo = os.path.join(t, "f")
pid = os.fork()
if pid == 0:
    with open(fifo, "wb") as w:
        w.write(b"through the fifo\n")
    os._exit(0)
with open(fifo, "rb") as r:
    print("read:", r.read().decode().strip())
os.waitpid(pid, 0)
