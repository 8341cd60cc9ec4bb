"""An inetd-style server: for each of N connections it forks; the child puts the connection
on its standard input and output, closes every other descriptor and execs a shell that
reads a line and answers; the parent closes its copy at once. Usage: inetd.py PORT N"""
import os
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
print("ready", flush=True)
kids = []
for i in range(n):
    c, _ = s.accept()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(c.fileno(), 0)
            os.dup2(c.fileno(), 1)
            os.closerange(3, 4096)
            os.execv("/bin/sh", ["sh", "-c", 'read line; echo "got $line"; cat /etc/hostname; echo "bye"'])
        finally:
            os._exit(127)
    c.close()
    kids.append(pid)
s.close()
bad = 0
for pid in kids:
    _, st = os.waitpid(pid, 0)
    if st != 0:
        print("child %d: wait status %d" % (pid, st), file=sys.stderr)
        bad += 1
print("served %d, %d failed" % (n, bad), flush=True)
