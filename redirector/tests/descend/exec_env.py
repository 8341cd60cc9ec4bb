"""A listener that survives an exec with a sanitised environment. `start PORT`: create an
inheritable listener, then execve this script as `after FD PORT` with the environment {X: 1}
only; `after`: take the socket by its number, describe it, accept one connection and echo a
line."""
import os
import socket
import sys

if sys.argv[1] == "start":
    port = int(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4)
    s.set_inheritable(True)
    os.execve(sys.executable,
              [sys.executable, os.path.abspath(__file__), "after", str(s.fileno()), str(port)],
              {"X": "1"})

fd, port = int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(fileno=fd)
host, p = s.getsockname()
print("env X=%s" % os.environ.get("X"))
print("family %s type %s" % (s.family.name, s.type.name))
print("name %s %s" % (host, "port ok" if p == port else "port %d, want %d" % (p, port)))
print("ready", flush=True)
c, _ = s.accept()
line = c.makefile("rb").readline()
c.sendall(b"echo: " + line)
c.close()
s.close()
print("done", flush=True)
