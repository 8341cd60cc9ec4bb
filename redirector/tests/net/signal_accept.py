"""A blocking accept() interrupted by SIGALRM (handler raises): EINTR must reach Python; the
listening socket keeps working afterwards."""
import faulthandler
import signal
import socket
import sys
import threading
import time


class Alarm(Exception):
    pass


def on_alarm(signum, frame):
    raise Alarm()


faulthandler.dump_traceback_later(30, exit=True)  # an interruption that never comes
signal.signal(signal.SIGALRM, on_alarm)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(8)
start = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0.3)
try:
    s.accept()
    sys.exit("accept returned without a connection")
except Alarm:
    took = time.monotonic() - start
if not 0.25 <= took < 2.0:
    sys.exit(f"accept interrupted after {took:.3f} s")
print("accept interrupted by the handler's exception")

port = s.getsockname()[1]
sent = []


def connect():
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"hello after EINTR")
        sent.append(c.recv(100))


t = threading.Thread(target=connect)
t.start()
s.settimeout(10)
conn, _ = s.accept()
with conn:
    data = conn.recv(100)
    conn.sendall(data.upper())
t.join()
print("accepted after the interruption:", data.decode(), sent[0].decode())
