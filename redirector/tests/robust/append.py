"""Two processes append 40 records of 600,000 bytes each to one file with O_APPEND, at the
same time. Linux writes each record with one system call, atomically for a regular file:
no record is torn. usage: append.py FILE"""
import os
import sys

path = sys.argv[1]
REC = 600_000
N = 40
open(path, "wb").close()
pids = []
for who in (b"a", b"b"):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        for i in range(N):
            rec = bytes([who[0] + (i % 20)]) * REC
            assert os.write(fd, rec) == REC
        os.close(fd)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    _, st = os.waitpid(pid, 0)
    assert st == 0, st
data = open(path, "rb").read()
torn = sum(1 for k in range(0, len(data), REC) if data[k:k + REC].count(data[k]) != REC)
print("size", len(data), "records", len(data) // REC, "torn", torn)
