"""SCM_RIGHTS over an AF_UNIX socket between two unrelated processes: the sender passes a
listening TCP socket, a connected TCP socket, a pipe's write end and a regular file; the
receiver (started with no fds of its own) accepts on the listener, writes to the connected
socket, the pipe and the file. Prints what each side observes, for a native/redirected diff."""
import array, os, socket, subprocess, sys, tempfile

def recv_fds(sock, n):
    fds = array.array("i")
    msg, anc, flags, addr = sock.recvmsg(16, socket.CMSG_SPACE(n * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds), flags

if sys.argv[1] == "receiver":
    path = sys.argv[2]
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.connect(path)
    msg, fds, flags = recv_fds(u, 8)
    print("receiver got", msg, len(fds), "fds, ctrunc", bool(flags & socket.MSG_CTRUNC), flush=True)
    lst = socket.socket(fileno=fds[0])
    conn = socket.socket(fileno=fds[1])
    print("receiver listener", lst.getsockname()[0], lst.type == socket.SOCK_STREAM, flush=True)
    u.sendall(b"ready")
    c, _ = lst.accept()
    c.sendall(b"accepted by receiver\n")
    c.close()
    conn.sendall(b"sent by receiver\n")
    conn.close()
    os.write(fds[2], b"piped by receiver\n")
    os.close(fds[2])
    os.write(fds[3], b"written by receiver\n")
    os.close(fds[3])
    lst.close()
    sys.exit(0)

tmp = tempfile.mkdtemp()
path = os.path.join(tmp, "u.sock")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(4)
peer_l = socket.socket()
peer_l.bind(("127.0.0.1", 0))
peer_l.listen(1)
conn = socket.create_connection(peer_l.getsockname())
peer, _ = peer_l.accept()
r, w = os.pipe()
# The file: in DIR if given (a directory under the storage mount makes it a remote file).
fdir = sys.argv[2] if len(sys.argv) > 2 else tmp
f = open(os.path.join(fdir, "file"), "wb+")
child = subprocess.Popen([sys.executable, __file__, "receiver", path])
u, _ = srv.accept()
u.sendmsg([b"fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                      array.array("i", [lst.fileno(), conn.fileno(), w, f.fileno()]))])
# Our copies go: the receiver's must keep everything open.
port = lst.getsockname()[1]
lst.close(); conn.close(); os.close(w)
print("sender", u.recv(5), flush=True)
c = socket.create_connection(("127.0.0.1", port))
print("sender via listener:", c.recv(100), flush=True)
print("sender via connection:", peer.recv(100), flush=True)
print("sender via pipe:", os.read(r, 100), flush=True)
print("child exit", child.wait(), flush=True)
f.seek(0)
print("sender file:", f.read(), flush=True)
# Nothing of ours is left behind: the listener closed with its last holder.
try:
    socket.create_connection(("127.0.0.1", port), timeout=2)
    print("listener still open")
except OSError as e:
    print("listener closed", e.errno == 111)
