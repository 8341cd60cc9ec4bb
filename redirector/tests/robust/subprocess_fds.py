"""A remote file and remote TCP sockets stay usable after many subprocess.run calls (which
fork/vfork and close every inherited fd above 2 in the child: close_fds=True).
usage: subprocess_fds.py DIR RUNS"""
import os
import socket
import subprocess
import sys

d, runs = sys.argv[1], int(sys.argv[2])
f = open(os.path.join(d, "sub.txt"), "rb")
head = f.read(6)
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(4)
client = socket.create_connection(listener.getsockname(), timeout=30)
server, _ = listener.accept()
server.settimeout(30)
out = open(os.path.join(d, "sub-out.txt"), "wb")
print(f"fds: file {f.fileno()} listener {listener.fileno()} client {client.fileno()} "
      f"server {server.fileno()} out {out.fileno()}", flush=True)
failed = 0
for _ in range(runs):
    if subprocess.run(["/bin/true"]).returncode != 0:
        failed += 1
print(f"subprocess.run(['/bin/true']) x {runs}: {failed} failed", flush=True)
print("file read afterwards:", (head + f.read()).decode().rstrip("\n").replace("\n", " | "))
print("file size by fstat:", os.fstat(f.fileno()).st_size)
client.sendall(b"ping")
print("client -> server:", server.recv(16).decode())
server.sendall(b"pong")
print("server -> client:", client.recv(16).decode())
out.write(b"written after the subprocesses\n")
out.close()
with open(os.path.join(d, "sub-out.txt"), "rb") as r:
    print("out file:", r.read().decode().rstrip("\n"))
c2 = socket.create_connection(listener.getsockname(), timeout=30)
s2, _ = listener.accept()
c2.sendall(b"again")
s2.settimeout(30)
print("new connection on the old listener:", s2.recv(16).decode())
for s in (c2, s2, client, server, listener):
    s.close()
f.close()
