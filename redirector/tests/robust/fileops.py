# File calls beyond read and write on routed files: copy_file_range (file offsets and explicit
# ones, the bytes that land), posix_fadvise, readahead (through ctypes), sync_file_range, and a
# read-only shared mmap, flock, sendfile. Run natively on a copy and redirected on the mount; the outputs must
# be identical. usage: fileops.py TREE
import ctypes, ctypes.util, errno, mmap, os, sys
T = sys.argv[1]
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
def t(name, f):
    try:
        r = f(); print(name, "ok", r if r is not None else "")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
os.chdir(T)
data = bytes(range(256)) * 1024  # 256 KiB
with open("src", "wb") as f:
    f.write(data)
a = os.open("src", os.O_RDONLY)
b = os.open("dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
t("copy_file_range 1000 at file offsets", lambda: os.copy_file_range(a, b, 1000))
t("offsets after", lambda: (os.lseek(a, 0, os.SEEK_CUR), os.lseek(b, 0, os.SEEK_CUR)))
t("copy_file_range explicit offsets", lambda: os.copy_file_range(a, b, 5000, 10000, 2000))
t("file offsets unchanged", lambda: (os.lseek(a, 0, os.SEEK_CUR), os.lseek(b, 0, os.SEEK_CUR)))
t("copy_file_range the rest", lambda: os.copy_file_range(a, b, 1 << 20, 1000, 1000))
t("copy_file_range at EOF", lambda: os.copy_file_range(a, b, 100, len(data) + 5, 0))
def cfr_flags(fi, fo, n, flags):
    r = libc.copy_file_range(fi, None, fo, None, ctypes.c_size_t(n), ctypes.c_uint(flags))
    if r < 0:
        raise OSError(ctypes.get_errno(), "copy_file_range")
    return r
t("copy_file_range bad flags", lambda: cfr_flags(a, b, 10, 1))
t("copy_file_range to O_RDONLY", lambda: os.copy_file_range(b, a, 10, 0, 0))
os.close(b)
with open("dst", "rb") as f:
    got = f.read()
print("dst size", len(got), "matches", got[:1000] == data[:1000], got[1000:1000 + (len(data) - 1000)] == data[1000:], got[2000:2000] == b"")
t("fadvise DONTNEED", lambda: os.posix_fadvise(a, 0, 0, os.POSIX_FADV_DONTNEED))
t("fadvise WILLNEED", lambda: os.posix_fadvise(a, 0, 4096, os.POSIX_FADV_WILLNEED))
t("fadvise bad advice", lambda: os.posix_fadvise(a, 0, 0, 99))
def readahead(fd, off, n):
    r = libc.readahead(fd, ctypes.c_int64(off), ctypes.c_size_t(n))
    if r < 0:
        raise OSError(ctypes.get_errno(), "readahead")
    return r
t("readahead", lambda: readahead(a, 0, 65536))
w = os.open("dst", os.O_RDWR)
def sfr(fd, off, n, flags):
    r = libc.sync_file_range(fd, ctypes.c_int64(off), ctypes.c_int64(n), ctypes.c_uint(flags))
    if r < 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")
    return r
t("sync_file_range", lambda: sfr(w, 0, 0, 2))
t("sync_file_range bad flags", lambda: sfr(w, 0, 0, 64))
def shared_ro():
    with mmap.mmap(a, 0, access=mmap.ACCESS_READ) as m:
        return (len(m), m[:4].hex(), m[-4:].hex(), m[300000 % len(m)])
t("mmap shared read-only", shared_ro)
def private():
    with mmap.mmap(w, 0, access=mmap.ACCESS_COPY) as m:
        m[0] = 7
        return m[0]
t("mmap private copy-on-write", private)
with open("dst", "rb") as f:
    print("file untouched by the private write", f.read(1) == b"\x00")
# flock: locks belong to open files (dup shares one, a second open is another) and wait.
import fcntl, threading, time
c = os.open("src", os.O_RDONLY)
t("flock SH", lambda: fcntl.flock(a, fcntl.LOCK_SH))
t("flock EX NB upgrade", lambda: fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB))
t("flock SH NB by another open file", lambda: fcntl.flock(c, fcntl.LOCK_SH | fcntl.LOCK_NB))
d = os.dup(a)
t("flock UN through a dup", lambda: fcntl.flock(d, fcntl.LOCK_UN))
os.close(d)
t("flock EX NB by the other open file", lambda: fcntl.flock(c, fcntl.LOCK_EX | fcntl.LOCK_NB))
def unlock_later():
    time.sleep(0.3)
    fcntl.flock(c, fcntl.LOCK_UN)
u = threading.Thread(target=unlock_later)
u.start()
t0 = time.monotonic()
t("flock EX waits for the holder", lambda: fcntl.flock(a, fcntl.LOCK_EX))
print("waited", time.monotonic() - t0 >= 0.25)
u.join()
t("flock bad operation", lambda: fcntl.flock(a, 0))
t("flock UN", lambda: fcntl.flock(a, fcntl.LOCK_UN))
os.close(c)
# sendfile from a routed file into a local one: offsets given and not, a negative one.
import tempfile
with tempfile.TemporaryFile(dir="/tmp") as out:
    o = out.fileno()
    t("sendfile negative offset", lambda: os.sendfile(o, a, -1, 10))
    t("sendfile at an offset", lambda: os.sendfile(o, a, 100, 10))
    t("sendfile at the file offset", lambda: (os.sendfile(o, a, None, 10), os.lseek(a, 0, os.SEEK_CUR)))
    t("sendfile wrote", lambda: os.pread(o, 100, 0) == data[100:110] + data[1000:1010])
os.lseek(a, 1000, os.SEEK_SET)
# splice between a routed file and a pipe, both ways, with and without offsets.
pr, pw = os.pipe()
t("splice file -> pipe at the file offset", lambda: os.splice(a, pw, 3000))
t("file offset after", lambda: os.lseek(a, 0, os.SEEK_CUR))
t("pipe got", lambda: os.read(pr, 4000) == data[1000:4000])
t("splice file -> pipe at an offset", lambda: os.splice(a, pw, 100, offset_src=10))
t("file offset untouched", lambda: os.lseek(a, 0, os.SEEK_CUR))
t("pipe got", lambda: os.read(pr, 200) == data[10:110])
os.write(pw, b"from the pipe")
t("splice pipe -> file at an offset", lambda: os.splice(pr, w, 13, offset_dst=5))
with open("dst", "rb") as f:
    print("file now", f.read(20))
t("splice file -> file", lambda: os.splice(a, w, 10))
t("splice pipe with an offset", lambda: os.splice(pr, w, 10, offset_src=0))
t("splice empty pipe nonblocking", lambda: os.splice(pr, w, 10, flags=os.SPLICE_F_NONBLOCK))
os.close(pr)
os.close(pw)
os.close(a)
os.close(w)
print(sorted(os.listdir(".")))
