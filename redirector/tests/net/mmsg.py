"""sendmmsg/recvmmsg through libc (ctypes) on UDP: 5 datagrams in one sendmmsg, read back
with recvmmsg (MSG_WAITFORONE: 3 then the rest), their lengths and bytes, and the errors:
EAGAIN with MSG_DONTWAIT on an empty socket. Output compared native against redirected."""
import ctypes, ctypes.util, os, socket

from mmsg_types import iovec, libc, mmsghdr

MSG_DONTWAIT, MSG_WAITFORONE = 0x40, 0x10000
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.connect(rx.getsockname())

payloads = [bytes([65 + i]) * (10 * (i + 1)) for i in range(5)]
bufs = [ctypes.create_string_buffer(p, len(p)) for p in payloads]
iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(p)) for b, p in zip(bufs, payloads)]
vec = (mmsghdr * 5)()
for i in range(5):
    vec[i].hdr.iov = ctypes.pointer(iovs[i])
    vec[i].hdr.iovlen = 1
n = libc.sendmmsg(tx.fileno(), vec, 5, 0)
print("sendmmsg", n, [vec[i].len for i in range(5)])

rbufs = [ctypes.create_string_buffer(100) for _ in range(5)]
riovs = [iovec(ctypes.cast(b, ctypes.c_void_p), 100) for b in rbufs]
rvec = (mmsghdr * 3)()
for i in range(3):
    rvec[i].hdr.iov = ctypes.pointer(riovs[i])
    rvec[i].hdr.iovlen = 1
import time
time.sleep(0.2)
n = libc.recvmmsg(rx.fileno(), rvec, 3, MSG_WAITFORONE, None)
print("recvmmsg", n, [(rvec[i].len, rbufs[i].raw[: rvec[i].len]) for i in range(n)])
rvec2 = (mmsghdr * 4)()
for i in range(4):
    rvec2[i].hdr.iov = ctypes.pointer(riovs[i])
    rvec2[i].hdr.iovlen = 1
n = libc.recvmmsg(rx.fileno(), rvec2, 4, MSG_WAITFORONE, None)
print("recvmmsg rest", n, [(rvec2[i].len, rbufs[i].raw[: rvec2[i].len]) for i in range(n)])
n = libc.recvmmsg(rx.fileno(), rvec2, 4, MSG_DONTWAIT, None)
print("recvmmsg empty", n, os.strerror(ctypes.get_errno()) if n < 0 else "")
