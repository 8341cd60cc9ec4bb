"""UDP echo pair. `server`: binds 127.0.0.1:0, prints the port, echoes until b"quit".
`client PORT`: 100 datagrams of varied sizes (up to 60000 bytes), each echo checked."""
import hashlib
import socket
import sys

if sys.argv[1] == "server":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], flush=True)
    n = 0
    while True:
        data, peer = s.recvfrom(65536)
        if data == b"quit":
            break
        s.sendto(data, peer)
        n += 1
    print("server echoed", n)
else:
    port = int(sys.argv[2])
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(20)
    c.connect(("127.0.0.1", port))
    h = hashlib.sha256()
    total = 0
    for i in range(100):
        size = 60000 if i == 99 else (i * 7919) % 60000 + 1
        msg = bytes((i + k) % 251 for k in range(size))
        c.send(msg)
        back, peer = c.recvfrom(65536)
        if back != msg or peer[1] != port:
            sys.exit(f"datagram {i}: {len(back)} bytes back from {peer}, sent {size}")
        h.update(back)
        total += len(back)
    c.send(b"quit")
    print("client ok", total, h.hexdigest())
