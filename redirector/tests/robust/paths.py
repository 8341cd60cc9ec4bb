# Path semantics owned by the file system: ., .., trailing slashes, a symlink followed by
# .., absolute symlinks into the tree. Run natively on a copy and redirected on the mount;
# the outputs must be identical. usage: paths.py TREE (with a/b, x/y/z, d and s -> x/y/z)
import os, sys, errno
T = sys.argv[1]
def t(name, f):
    try:
        r = f(); print(name, "ok", r if r is not None else "")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
os.chdir(T)
t("rmdir a/b/.", lambda: os.rmdir("a/b/."))
t("rmdir a/b/..", lambda: os.rmdir("a/b/.."))
t("rename a/. q", lambda: os.rename("a/.", "q"))
t("touch s/../m", lambda: open("s/../m", "w").close())
print("m in x/y:", os.path.exists("x/y/m"), "m in cwd:", os.path.exists("m"))
t("open newdir/ O_CREAT", lambda: os.close(os.open("newdir/", os.O_CREAT | os.O_WRONLY, 0o644)))
t("open a/ O_CREAT", lambda: os.close(os.open("a/", os.O_CREAT | os.O_WRONLY, 0o644)))
t("stat a/b/", lambda: os.stat("a/b/").st_nlink)
t("open file/", lambda: (open("f","w").close(), os.open("f/", os.O_RDONLY))[1])
t("symlink abs", lambda: os.symlink(os.path.join(T, "d"), "l"))
t("readlink", lambda: os.readlink("l").replace(T, "$T"))
t("listdir l/", lambda: os.listdir("l/"))
t("isdir l", lambda: os.path.isdir("l"))
t("realpath", lambda: os.path.realpath("l").replace(T, "$T"))
print(sorted(os.listdir(".")))
