# Symlinks that leave the tree and come back, as Linux's path walk follows them: absolute
# targets outside the tree (in the program's own file system), relative ones that climb out
# with `..`, absolute targets into the tree, loops, creation through a dangling link, exec
# through a link. Run natively on a copy and redirected on the mount; the outputs must be
# identical. usage: links.py TREE OUT (TREE holds d/g; OUT, outside it, holds f)
import errno, os, stat, subprocess, sys
T, OUT = sys.argv[1], sys.argv[2]
def t(name, f):
    try:
        r = f(); print(name, "ok", r if r is not None else "")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
def show(p):
    return p.replace(OUT, "$OUT").replace(T, "$T")
def read(p):
    with open(p) as f:
        return f.read()
os.chdir(T)
t("symlink out", lambda: os.symlink(OUT, "lo"))
t("readlink out", lambda: show(os.readlink("lo")))
t("lstat out is a link", lambda: stat.S_ISLNK(os.lstat("lo").st_mode))
t("read out/f", lambda: read("lo/f"))
t("stat out/f", lambda: os.stat("lo/f").st_size)
t("listdir out", lambda: sorted(os.listdir("lo")))
t("realpath out/f", lambda: show(os.path.realpath("lo/f")))
t("write out/new", lambda: open("lo/new", "w").write("new"))
t("new is outside", lambda: read(os.path.join(OUT, "new")))
t("mkdir out/sub", lambda: os.mkdir("lo/sub"))
t("sub is outside", lambda: os.path.isdir(os.path.join(OUT, "sub")))
t("rename inside out", lambda: os.rename("lo/new", "lo/sub/new2"))
t("after rename", lambda: sorted(os.listdir(os.path.join(OUT, "sub"))))
t("chdir out", lambda: (os.chdir("lo"), show(os.getcwd()), read("f"), os.chdir(T))[1:3])
climb = "../" * 40 + OUT.lstrip("/")
t("symlink climbing", lambda: os.symlink(climb, "rel"))
t("readlink climbing", lambda: os.readlink("rel") == climb)
t("read climbing/f", lambda: read("rel/f"))
t("read d/../rel/f", lambda: read("d/../rel/f"))
t("read climbing/f/", lambda: read("rel/f/"))
t("stat climbing/f/.", lambda: os.stat("rel/f/."))
t("stat climbing/sub/", lambda: stat.S_ISDIR(os.stat("rel/sub/").st_mode))
t("rmdir climbing/sub/.", lambda: os.rmdir("rel/sub/."))
t("open climbing/sub/ for writing", lambda: os.open("rel/sub/", os.O_WRONLY))
t("symlink in", lambda: os.symlink(os.path.join(T, "d"), "li"))
t("read in/g", lambda: read("li/g"))
t("realpath in/g", lambda: show(os.path.realpath("li/g")))
t("chdir in", lambda: (os.chdir("li"), show(os.getcwd()), read("g"), os.chdir(T))[1:3])
t("rename through in", lambda: os.rename("li/g", "li/h"))
t("listdir d", lambda: sorted(os.listdir("d")))
t("rename back", lambda: os.rename(os.path.join(T, "li", "h"), "d/g"))
t("link in to in", lambda: os.symlink(os.path.join(T, "li", "g"), "lii"))
t("read two links", lambda: read("lii"))
t("loop", lambda: (os.symlink(os.path.join(T, "loop2"), "loop1"),
                   os.symlink(os.path.join(T, "loop1"), "loop2"), read("loop1")))
t("stat loop", lambda: os.stat("loop1"))
t("lstat loop", lambda: stat.S_ISLNK(os.lstat("loop1").st_mode))
t("dangling out", lambda: os.symlink(os.path.join(OUT, "created"), "dang"))
t("create through dangling", lambda: open("dang", "w").write("made"))
t("created outside", lambda: read(os.path.join(OUT, "created")))
t("O_EXCL through dangling", lambda: os.open("dang", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
t("access out/f", lambda: os.access("lo/f", os.R_OK))
t("chmod out/f", lambda: (os.chmod("lo/f", 0o600), oct(os.stat(os.path.join(OUT, "f")).st_mode & 0o777))[1])
t("utime out/f", lambda: (os.utime("lo/f", (1, 2)), os.stat(os.path.join(OUT, "f")).st_mtime)[1])
t("exec through a link", lambda: (os.symlink("/bin/true", "tr"),
                                  subprocess.run([os.path.join(T, "tr")]).returncode)[1])
t("exec through a dir link", lambda: (os.symlink("/bin", "bin"),
                                      subprocess.run([os.path.join(T, "bin", "true")]).returncode)[1])
t("unlink out link", lambda: os.unlink("lo"))
t("out survives", lambda: sorted(os.listdir(OUT)))
print(sorted(os.listdir(".")))
