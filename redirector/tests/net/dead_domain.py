"""Sockets of a network domain that dies under the program: once told (a line on stdin),
send and recv fail fast with ECONNRESET or EIO, while the listener looks idle (an accept
with a timeout times out, a non-blocking one says EAGAIN: nothing for a server to spin on);
local files keep working."""
import errno
import os
import socket
import sys
import time

lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lst.bind(("127.0.0.1", 0))
lst.listen(8)
cli = socket.create_connection(lst.getsockname(), timeout=10)
srv, _ = lst.accept()
cli.sendall(b"before")
assert srv.recv(100) == b"before"
print("ready", flush=True)
sys.stdin.readline()


def attempt(name, f):
    start = time.monotonic()
    try:
        f()
        print(f"{name}: succeeded")
    except TimeoutError:
        print(f"{name}: timeout ms={(time.monotonic() - start) * 1000:.0f}")
    except OSError as e:
        print(f"{name}: {errno.errorcode.get(e.errno, e.errno)} ms={(time.monotonic() - start) * 1000:.0f}")


lst.settimeout(0.5)
attempt("accept", lst.accept)
lst.setblocking(False)
attempt("accept nonblocking", lst.accept)
attempt("send", lambda: cli.send(b"after"))
attempt("recv", lambda: srv.recv(100))
path = f"/tmp/virtuos-net-dead-{os.getpid()}"
with open(path, "w") as f:
    f.write("local")
with open(path) as f:
    print("local file:", f.read())
os.unlink(path)
for s in (cli, srv, lst):
    s.close()
print("closed")
