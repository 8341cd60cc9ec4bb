"""16 forked children accept on one listening socket and reply with their pid; the parent
connects 64 times and checks that every connection was answered, by more than one child."""
import os
import signal
import socket
import sys
import time

CHILDREN, CONNECTIONS = 16, 64

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(128)
port = s.getsockname()[1]
pids = []
for _ in range(CHILDREN):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            c, _ = s.accept()
            c.sendall(str(os.getpid()).encode())
            c.close()
            time.sleep(0.02)  # give the other children a turn
    pids.append(pid)
s.close()

answers = []
for i in range(CONNECTIONS):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        data = b""
        while chunk := c.recv(64):
            data += chunk
    answers.append(int(data))
for pid in pids:
    os.kill(pid, signal.SIGTERM)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    if not os.WIFSIGNALED(status):
        sys.exit(f"child {pid} ended with status {status}")
unknown = set(answers) - set(pids)
if unknown:
    sys.exit(f"replies from unknown pids {unknown}")
if len(set(answers)) < 2:
    sys.exit(f"only {len(set(answers))} child answered")
print(f"ok {len(answers)} replies")
