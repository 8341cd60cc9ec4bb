"""SCM_RIGHTS in sendmmsg/recvmmsg (through libc, ctypes) over an AF_UNIX datagram socketpair
within one process: one sendmmsg carries two messages, the first passing a listening TCP
socket, the second a connected one; one recvmmsg takes both. The received listener accepts a
connection, the received connection sends to its peer. Prints what it observes, for a
native/redirected diff."""
import array, ctypes, ctypes.util, socket

from mmsg_types import iovec, libc, mmsghdr

def rights(fd):
    """A control buffer with one SCM_RIGHTS message passing `fd`."""
    space = socket.CMSG_SPACE(4)
    buf = ctypes.create_string_buffer(space)
    hdr = (socket.CMSG_LEN(4)).to_bytes(8, "little") + socket.SOL_SOCKET.to_bytes(4, "little") \
        + socket.SCM_RIGHTS.to_bytes(4, "little") + fd.to_bytes(4, "little")
    ctypes.memmove(buf, hdr, len(hdr))
    return buf, space

a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(4)
port = lst.getsockname()[1]
peer_l = socket.socket()
peer_l.bind(("127.0.0.1", 0))
peer_l.listen(1)
conn = socket.create_connection(peer_l.getsockname())
peer, _ = peer_l.accept()

keep = []
vec = (mmsghdr * 2)()
for i, (fd, word) in enumerate([(lst.fileno(), b"listener"), (conn.fileno(), b"connection")]):
    data = ctypes.create_string_buffer(word, len(word))
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), len(word))
    ctl, space = rights(fd)
    keep += [data, iov, ctl]
    vec[i].hdr.iov = ctypes.pointer(iov)
    vec[i].hdr.iovlen = 1
    vec[i].hdr.control = ctypes.cast(ctl, ctypes.c_void_p)
    vec[i].hdr.controllen = space
n = libc.sendmmsg(a.fileno(), vec, 2, 0)
print("sendmmsg", n, [vec[i].len for i in range(2)], flush=True)
# Our own copies go: what was received must keep working alone.
lst.close()
conn.close()

rvec = (mmsghdr * 4)()
rbufs, rctls = [], []
for i in range(4):
    d = ctypes.create_string_buffer(64)
    iov = iovec(ctypes.cast(d, ctypes.c_void_p), 64)
    c = ctypes.create_string_buffer(socket.CMSG_SPACE(16))
    rbufs.append(d); keep += [iov, c]; rctls.append(c)
    rvec[i].hdr.iov = ctypes.pointer(iov)
    rvec[i].hdr.iovlen = 1
    rvec[i].hdr.control = ctypes.cast(c, ctypes.c_void_p)
    rvec[i].hdr.controllen = socket.CMSG_SPACE(16)
MSG_DONTWAIT = 0x40
n = libc.recvmmsg(b.fileno(), rvec, 4, MSG_DONTWAIT, None)
got = []
for i in range(n):
    clen = rvec[i].hdr.controllen
    raw = rctls[i].raw[:clen]
    fds = array.array("i")
    at = 0
    while at + 16 <= len(raw):
        ln = int.from_bytes(raw[at:at + 8], "little")
        level = int.from_bytes(raw[at + 8:at + 12], "little")
        kind = int.from_bytes(raw[at + 12:at + 16], "little")
        if ln < 16:
            break
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[at + 16:at + ln])
        at += (ln + 7) & ~7
    got.append((rbufs[i].raw[: rvec[i].len], len(fds), int(rvec[i].hdr.flags & socket.MSG_CTRUNC)))
    if i == 0:
        rl = socket.socket(fileno=fds[0])
    else:
        rc = socket.socket(fileno=fds[0])
print("recvmmsg", n, got, flush=True)
print("received listener port matches", rl.getsockname()[1] == port, flush=True)
c = socket.create_connection(("127.0.0.1", port))
s, _ = rl.accept()
s.sendall(b"through the received listener\n")
print("client got", c.recv(100), flush=True)
rc.sendall(b"through the received connection\n")
print("peer got", peer.recv(100), flush=True)
for x in (s, c, rl, rc, peer, peer_l, a, b):
    x.close()
