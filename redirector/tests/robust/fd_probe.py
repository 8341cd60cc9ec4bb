# The program's view of its fd table, probed as Python's own subprocess tests and daemons probe
# it: fstat and fcntl(F_GETFD) over every number below RLIMIT_NOFILE, again after lowering the
# limit, and from a child started with close_fds. The shim's own descriptors must never show.
# usage: fd_probe.py TREE
import fcntl, os, resource, subprocess, sys
T = sys.argv[1]
f = open(os.path.join(T, "probe.txt"), "w")
def visible(limit):
    by_stat, by_getfd = [], []
    for fd in range(limit):
        try:
            os.fstat(fd); by_stat.append(fd)
        except OSError:
            pass
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD); by_getfd.append(fd)
        except OSError:
            pass
    return by_stat, by_getfd
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
print("open, by fstat and by F_GETFD:", visible(soft))
child = ("import os, resource\n"
         "n = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
         "def ok(fd):\n"
         "    try:\n"
         "        os.fstat(fd); return True\n"
         "    except OSError:\n"
         "        return False\n"
         "print([fd for fd in range(n) if ok(fd)])\n")
out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, close_fds=True)
print("a close_fds child sees", out.stdout.strip(), out.returncode)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
print("below 256 after lowering the limit:", visible(256))
f.write("still writable\n")
f.close()
print(open(os.path.join(T, "probe.txt")).read().strip())
