"""Receive semantics of an accepted TCP connection, printed so that a native run and a
redirected one (where the network domain receives ahead into a stream in shared memory)
can be compared line by line. Each case makes a fresh connection over loopback; the
accepted end is the one under test."""
import errno
import hashlib
import os
import select
import socket
import struct
import sys
import termios
import threading
import time
import fcntl

lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0))
lst.listen(8)
PORT = lst.getsockname()[1]


def pair():
    c = socket.create_connection(("127.0.0.1", PORT))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    a, _ = lst.accept()
    return c, a


def settle(sock, n=None):
    """Waits until `sock` is readable (and, with n, until n bytes are queued)."""
    select.select([sock], [], [], 5)
    if n is not None:
        for _ in range(500):
            if fionread(sock) >= n:
                break
            time.sleep(0.01)
    time.sleep(0.05)


def fionread(sock):
    b = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", b)[0]


def out(*a):
    print(*a, flush=True)


def err(f):
    try:
        r = f()
        return "ok %r" % (r,)
    except OSError as e:
        return "error %s" % errno.errorcode.get(e.errno, e.errno)


# 1. More than any buffer, in one burst from a thread, with the hash kept.
c, a = pair()
data = os.urandom(3 << 20)
t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
t.start()
h = hashlib.sha256()
n = 0
while True:
    d = a.recv(70000)
    if not d:
        break
    n += len(d)
    h.update(d)
t.join()
out("bulk", n, h.hexdigest() == hashlib.sha256(data).hexdigest())
c.close()
a.close()

# 2. MSG_PEEK, then a read of the same bytes; MSG_WAITALL of an exact length.
c, a = pair()
c.sendall(b"hello world")
settle(a, 11)
out("peek", a.recv(5, socket.MSG_PEEK), a.recv(5, socket.MSG_PEEK))
out("after peek", a.recv(100))
# 3. MSG_WAITALL gathers pieces that arrive apart.
def pieces():
    for p in (b"0123456789", b"abcdefghij", b"KLMNOPQRST"):
        time.sleep(0.05)
        c.sendall(p)
threading.Thread(target=pieces).start()
out("waitall", a.recv(30, socket.MSG_WAITALL))
# 4. Nothing queued: MSG_DONTWAIT and a non-blocking socket give EAGAIN.
out("dontwait", err(lambda: a.recv(10, socket.MSG_DONTWAIT)))
a.setblocking(False)
out("nonblocking", err(lambda: a.recv(10)))
a.setblocking(True)
# 5. FIONREAD counts what is queued.
c.sendall(b"x" * 1000)
settle(a, 1000)
out("fionread", fionread(a))
out("read part", len(a.recv(400)), fionread(a))
# 6. Readiness follows what is left: select, poll, level-triggered epoll.
out("select with data", select.select([a], [], [], 0)[0] == [a])
a.recv(600)
out("select drained", select.select([a], [], [], 0)[0] == [a])
p = select.poll()
p.register(a, select.POLLIN)
out("poll drained", p.poll(0))
c.sendall(b"more")
settle(a)
out("poll data", [(fd == a.fileno(), ev) for fd, ev in p.poll(1000)])
ep = select.epoll()
ep.register(a.fileno(), select.EPOLLIN)
out("epoll lt", [ev for _, ev in ep.poll(1)], [ev for _, ev in ep.poll(0)])
a.recv(100)
out("epoll lt drained", ep.poll(0))
ep.close()
# Edge-triggered: one event per arrival, none for what is left.
ep = select.epoll()
ep.register(a.fileno(), select.EPOLLIN | select.EPOLLET)
out("epoll et idle", ep.poll(0))
c.sendall(b"edge-one")
out("epoll et first", [ev for _, ev in ep.poll(2)])
a.recv(3)
out("epoll et left", ep.poll(0))
c.sendall(b"edge-two")
out("epoll et second", [ev for _, ev in ep.poll(2)])
out("epoll et bytes", a.recv(100))
ep.close()
# 7. A zero-length receive; the end of the file, twice.
out("zero", a.recv(0))
c.shutdown(socket.SHUT_WR)
out("eof", a.recv(10), a.recv(10))
out("eof readable", select.select([a], [], [], 0)[0] == [a])
c.close()
a.close()

# 8. Closed with unread data: the peer is reset.
c, a = pair()
c.sendall(b"never read")
settle(a, 10)
a.close()
time.sleep(0.1)
out("reset on close", err(lambda: c.recv(10)))
c.close()

# 9. The peer resets after sending: the bytes first, then ECONNRESET, then the end.
c, a = pair()
c.sendall(b"abc")
time.sleep(0.05)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
time.sleep(0.1)
out("peer reset", err(lambda: a.recv(10)), err(lambda: a.recv(10)), err(lambda: a.recv(10)))
a.close()

# 10. Bytes that arrived before a fork are the child's to read, once.
c, a = pair()
c.sendall(b"before-fork")
settle(a, 11)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    got = a.recv(100)
    os.write(w, got)
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
out("fork child read", os.read(r, 100))
os.close(r)
c.sendall(b"after-fork")
settle(a, 10)
out("fork parent read", a.recv(100))
c.close()
a.close()

# 11. A receive the stream cannot serve (control messages wanted) keeps the byte order.
c, a = pair()
c.sendall(b"0123456789")
settle(a, 10)
out("partial", a.recv(3))
msg, anc, flags, addr = a.recvmsg(100, 64)
out("recvmsg", msg, anc, flags)
c.sendall(b"tail")
settle(a, 4)
out("after recvmsg", a.recv(100))
c.close()
a.close()

# 12. SO_RCVTIMEO: EAGAIN after the timeout, then data as usual.
c, a = pair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
t0 = time.time()
res = err(lambda: a.recv(10))
out("rcvtimeo", res, 0.15 < time.time() - t0 < 2)
c.sendall(b"late")
out("rcvtimeo data", a.recv(10))
c.close()
a.close()

# 13. Scatter into several buffers; a blocking receive woken by a later send.
c, a = pair()
c.sendall(b"abcdefghij")
settle(a, 10)
b1, b2 = bytearray(4), bytearray(10)
n = a.recvmsg_into([b1, b2])[0]
out("scatter", n, bytes(b1), bytes(b2[: n - 4]))
threading.Timer(0.1, lambda: c.sendall(b"wake")).start()
out("blocking wake", a.recv(10))
# 14. Two threads reading one connection get every byte once between them.
total = 200000
got = []
def reader():
    n = 0
    while True:
        d = a.recv(1000)
        if not d:
            break
        n += len(d)
    got.append(n)
ts = [threading.Thread(target=reader) for _ in range(2)]
for t in ts:
    t.start()
c.sendall(b"y" * total)
c.shutdown(socket.SHUT_WR)
for t in ts:
    t.join()
out("two readers", sum(got))
c.close()
a.close()

# Sending through the transmit stream (non-blocking sockets).
def drain_peer(sock, into):
    h = hashlib.sha256()
    n = 0
    while True:
        d = sock.recv(65536)
        if not d:
            break
        n += len(d)
        h.update(d)
    into.append((n, h.hexdigest()))


def read_all(sock):
    buf = b""
    while True:
        d = sock.recv(100)
        if not d:
            return buf
        buf += d


def send_nb(sock, data):
    """Sends all of `data` on a non-blocking socket, waiting for writability on EAGAIN."""
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view[:100000])
            view = view[n:]
        except BlockingIOError:
            select.select([], [sock], [], 5)


# 15. A large send in partial writes; the peer gets every byte, in order.
c, a = pair()
a.setblocking(False)
out("writable at start", select.select([], [a], [], 0)[1] == [a])
got = []
t = threading.Thread(target=drain_peer, args=(c, got))
t.start()
data = os.urandom(5 << 20)
send_nb(a, data)
a.shutdown(socket.SHUT_WR)
t.join()
out("bulk send", got[0][0], got[0][1] == hashlib.sha256(data).hexdigest())
c.close()
a.close()

# 16. Closed at once after sending: nothing is lost.
c, a = pair()
a.setblocking(False)
got = []
t = threading.Thread(target=drain_peer, args=(c, got))
t.start()
data = os.urandom(300000)
send_nb(a, data)
a.close()
t.join()
out("close after send", got[0][0], got[0][1] == hashlib.sha256(data).hexdigest())
c.close()

# 17. Then a blocking send: after what went before, in order.
c, a = pair()
a.setblocking(False)
send_nb(a, b"first;")
a.setblocking(True)
a.sendall(b"second")
a.shutdown(socket.SHUT_WR)
out("order", read_all(c))
c.close()
a.close()

# 18. A fork after sending: the parent's bytes come before the child's.
c, a = pair()
a.setblocking(False)
send_nb(a, b"parent-before-fork;")
pid = os.fork()
if pid == 0:
    a.setblocking(True)
    a.sendall(b"child")
    os._exit(0)
os.waitpid(pid, 0)
a.shutdown(socket.SHUT_WR)
out("fork order", read_all(c))
c.close()
a.close()

# 19. Sending to a peer that reset the connection fails (ECONNRESET, then EPIPE).
c, a = pair()
a.setblocking(False)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
time.sleep(0.1)
out("send after reset", err(lambda: a.send(b"x", socket.MSG_NOSIGNAL)), err(lambda: a.send(b"x", socket.MSG_NOSIGNAL)))
a.close()
out("done")
