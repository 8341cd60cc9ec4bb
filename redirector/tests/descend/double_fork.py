"""A classic daemon: bind a listener, fork, the parent exits at once; the child starts a
session and forks again, the first child exits at once; the grandchild, its standard
streams on /dev/null (errors to a log file), accepts 3 connections and answers each with its
pid. Usage: double_fork.py PORT LOG"""
import os
import socket
import sys

port, log = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
if os.fork() != 0:
    os._exit(0)
os.setsid()
if os.fork() != 0:
    os._exit(0)
null = os.open(os.devnull, os.O_RDWR)
err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(null, 0)
os.dup2(null, 1)
os.dup2(err, 2)
os.close(null)
os.close(err)
try:
    # Never linger if the test is gone.
    s.settimeout(30)
    me = ("%d\n" % os.getpid()).encode()
    for _ in range(3):
        c, _ = s.accept()
        c.sendall(me)
        c.close()
    s.close()
except BaseException as e:
    print("daemon %d: %r" % (os.getpid(), e), file=sys.stderr, flush=True)
    os._exit(1)
os._exit(0)
