"""A child killed at once after fork, before it could adopt its parent's sockets, must not
keep them: the parent binds a listener, forks a child that only sleeps, SIGKILLs it, closes
its own listener, and reports how long until the port can be bound again (by a process that is
not redirected, told the port on stdout). 10 rounds. Usage: fork_killed.py"""
import os, signal, socket, sys, time

for i in range(10):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    port = s.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    s.close()
    print(port, flush=True)
    # The checker answers when the port is free again.
    line = sys.stdin.readline()
    if not line:
        sys.exit(1)
print("done", flush=True)
