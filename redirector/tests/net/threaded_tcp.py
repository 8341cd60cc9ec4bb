"""A threaded TCP server and 64 client threads, 200 checked request/response pairs each."""
import faulthandler
import hashlib
import socket
import socketserver
import sys
import threading
import zlib

CLIENTS, MESSAGES = 64, 200
faulthandler.dump_traceback_later(150, exit=True)  # a hang shows where the threads wait


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            digest = hashlib.sha256(line.rstrip(b"\n")).hexdigest()
            self.wfile.write(digest.encode() + b" " + line)


socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer.request_queue_size = 128
server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]

results = [None] * CLIENTS


def client(i):
    crc, nbytes = 0, 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rwb")
        for j in range(MESSAGES):
            payload = f"{i}:{j}:".encode() + bytes(b"a"[0] + (i + j + k) % 26 for k in range((i * 31 + j * 17) % 3000))
            f.write(payload + b"\n")
            f.flush()
            reply = f.readline()
            digest, _, echo = reply.rstrip(b"\n").partition(b" ")
            if echo != payload or digest.decode() != hashlib.sha256(payload).hexdigest():
                raise SystemExit(f"client {i} message {j}: bad reply {reply[:80]!r}")
            crc = zlib.crc32(reply, crc)
            nbytes += len(reply)
    results[i] = (crc, nbytes)


threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
server.shutdown()
if any(r is None for r in results):
    sys.exit(f"{results.count(None)} clients failed")
total = sum(r[1] for r in results)
combined = zlib.crc32(b"".join(r[0].to_bytes(4, "big") for r in results))
print(f"ok {CLIENTS} connections {CLIENTS * MESSAGES} messages {total} bytes crc {combined:08x}")
