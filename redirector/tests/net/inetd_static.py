"""inetd-style: accepts one connection, puts it on standard input and output, and execs a
static busybox sh that reads a line and answers it. argv: PORT."""
import os, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen()
print("ready", flush=True)
c, _ = l.accept()
os.dup2(c.fileno(), 0); os.dup2(c.fileno(), 1); c.close(); l.close()
os.execv("/usr/bin/busybox", ["busybox", "sh", "-c", 'read line; echo "static got $line"'])
