"""A blocking accept() that SIGALRM interrupts with an SA_RESTART handler: the handler runs,
the accept restarts (no EINTR) and returns the connection that arrives later."""
import signal
import socket
import threading
import time

hits = []
signal.signal(signal.SIGALRM, lambda s, f: hits.append(time.monotonic()))
signal.siginterrupt(signal.SIGALRM, False)  # SA_RESTART
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4)
port = s.getsockname()[1]
signal.setitimer(signal.ITIMER_REAL, 0.2)


def late():
    time.sleep(0.8)
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"late")
    c.close()


threading.Thread(target=late).start()
conn, _ = s.accept()
print("handler ran", len(hits), "times; accept restarted and got", conn.recv(10))
