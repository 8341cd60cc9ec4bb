# A close that returned has released what the file held: a lock taken through a read-only
# descriptor (flock, a record lock, an OFD lock) is free for another process the moment close
# returns, and a file closed right after being read can be removed, renamed and reopened at
# once. Each round: this process locks, closes, and at once asks a child (another process,
# with its own session when redirected) to take the same lock without waiting; natively it
# always gets it. usage: close_release.py DIR
import errno, fcntl, os, struct, sys
D = sys.argv[1]
p = os.path.join(D, "locked")
with open(p, "w") as f:
    f.write("x" * 100)
r, w = os.pipe()
r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w); os.close(r2)
    while True:
        kind = os.read(r, 1)
        if not kind:
            os._exit(0)
        fd = os.open(p, os.O_RDONLY)
        try:
            if kind == b"f":
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            elif kind == b"p":
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            res = b"+"
        except OSError as e:
            res = b"-"
        os.close(fd)
        os.write(w2, res)
os.close(r); os.close(w2)
failed = {"f": 0, "p": 0}
ROUNDS = 300
for i in range(ROUNDS):
    for kind in ("f", "p"):
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 10)
        if kind == "f":
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            # A write lock the child's read lock would meet (needs a writable fd).
            os.close(fd)
            fd = os.open(p, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        os.close(fd)
        os.write(w, kind.encode())
        if os.read(r2, 1) != b"+":
            failed[kind] += 1
os.close(w)
os.waitpid(pid, 0)
print("flock after close: refused", failed["f"], "of", ROUNDS)
print("record lock after close: refused", failed["p"], "of", ROUNDS)
# Closed right after a read: removed, recreated and read again at once.
bad = 0
for i in range(300):
    q = os.path.join(D, "f%d" % (i % 3))
    with open(q, "w") as f:
        f.write(str(i))
    fd = os.open(q, os.O_RDONLY)
    got = os.read(fd, 10)
    os.close(fd)
    os.unlink(q)
    if got != str(i).encode() or os.path.exists(q):
        bad += 1
print("read, close, unlink:", bad, "wrong of 300")
print("left:", sorted(os.listdir(D)))
