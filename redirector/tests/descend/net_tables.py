"""Listens on a TCP port, then reports whether its own view of the socket tables shows the
listener: /proc/net/tcp (and /proc/self/net/tcp) and `ss -tln` (which, redirected, falls back
to /proc/net/tcp because the shim refuses NETLINK_SOCK_DIAG). Prints the port first and waits
for a line on stdin before it exits, so that the test can look from outside meanwhile."""
import socket
import subprocess
import sys

l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
port = l.getsockname()[1]
print("port", port, flush=True)
hexport = "%04X" % port
for path in ("/proc/net/tcp", "/proc/self/net/tcp"):
    rows = [r.split() for r in open(path).read().splitlines()[1:]]
    print(path, "lists it:", any(r[1].endswith(":" + hexport) and r[3] == "0A" for r in rows))
out = subprocess.run(["ss", "-Htln"], capture_output=True, text=True, check=True).stdout
print("ss -tln lists it:", any(f"127.0.0.1:{port} " in line + " " for line in out.splitlines()))
sys.stdout.flush()
sys.stdin.readline()
