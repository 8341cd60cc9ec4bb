/* dup2 of one open file onto every fd number 0..1023, reading one byte through each copy
 * with pread (stdin/stdout/stderr are saved first and put back), then closing the copy.
 * usage: dup2_all FILE [PROGRESS] (FILE: 4096 bytes, byte i = (i * 7 + 3) & 0xff).  Prints a
 * summary; with PROGRESS (a local file), writes each fd number there before trying it, so
 * that a hang can be located. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define SAVED_AT 1200
#define PROGRESS_AT 1300
static int failures;
static char report[8][160];

static void fail(int n, const char *what, int err) {
    if (failures < 8)
        snprintf(report[failures], sizeof report[0], "fd %d: %s: %s", n, what,
                 err ? strerror(err) : "wrong byte");
    failures++;
}

static int check(int fd, int n) {
    unsigned char c = 0;
    ssize_t r = pread(fd, &c, 1, n % 4096);
    if (r != 1) {
        fail(n, "pread", r < 0 ? errno : EIO);
        return 0;
    }
    if (c != (unsigned char)((n % 4096) * 7 + 3)) {
        fail(n, "pread", 0);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3)
        return 2;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 2048 && rl.rlim_max >= 2048) {
        rl.rlim_cur = 2048;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int progress = -1;
    if (argc == 3) {
        int p = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (p >= 0) {
            progress = fcntl(p, F_DUPFD_CLOEXEC, PROGRESS_AT);
            close(p);
        }
    }
    int src = open(argv[1], O_RDONLY);
    if (src < 0) {
        printf("FAIL open: %s\n", strerror(errno));
        return 1;
    }
    printf("opened: fd %d\n", src);
    fflush(stdout);
    int ok = 0;
    for (int n = 0; n < 1024; n++) {
        if (progress >= 0) {
            char line[16];
            int len = snprintf(line, sizeof line, "%d\n", n);
            if (write(progress, line, (size_t)len) != len)
                progress = -1;
        }
        if (n == src) {
            ok += check(src, n);
            continue;
        }
        int saved = -1;
        if (n <= 2 && (saved = fcntl(n, F_DUPFD_CLOEXEC, SAVED_AT)) < 0) {
            fail(n, "saving the std stream", errno);
            continue;
        }
        if (dup2(src, n) != n) {
            fail(n, "dup2", errno);
        } else {
            ok += check(n, n);
            if (saved < 0 && close(n) != 0)
                fail(n, "close", errno);
        }
        if (saved >= 0) {
            if (dup2(saved, n) != n)
                fail(n, "restoring the std stream", errno);
            close(saved);
        }
        /* The original must be unaffected by what happened to the copy. */
        if (!check(src, 4000))
            fail(n, "pread of the original after closing the copy", 0);
    }
    printf("dup2 onto 1024 fd numbers: %d read the right byte, %d failures\n", ok, failures);
    for (int i = 0; i < failures && i < 8; i++)
        printf("  %s\n", report[i]);
    int again = open(argv[1], O_RDONLY);
    printf("reopened: fd %d, ", again);
    printf("%s\n", again >= 0 && check(again, 10) ? "reads the right byte" : "unreadable");
    if (close(src) != 0 || fcntl(src, F_GETFD) != -1 || errno != EBADF)
        printf("closing the original: wrong\n");
    else
        printf("original closed\n");
    return failures ? 1 : 0;
}
