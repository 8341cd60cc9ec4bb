/* Every interposed entry point from a signal handler while main is inside every other one.
 *
 * Twenty kinds of call (open/read/close, pread, stat, fstat, lseek, access, dup, dup2, fcntl,
 * an O_APPEND write, mkdir/rmdir, rename/unlink, socket/close, send/recv, poll, getdents64,
 * fsync, readv, epoll_wait, and a local file) run in turn from a 10 kHz SIGALRM handler and,
 * out of phase, from main, each with its own files, fds and TCP connection, so every pair
 * (handler kind, interrupted main kind) occurs. Every result is checked. Only
 * async-signal-safe functions are called from the handler.
 *
 * usage: signal_all TREE LOCALDIR PORT SECONDS  (TREE: under the mount, or its native copy)
 * stdout: a deterministic summary; stderr: counts. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define KINDS 20
static const char *NAMES[KINDS] = {
    "open-read-close", "pread", "stat", "fstat", "lseek", "access", "dup", "dup2",
    "fcntl", "append", "mkdir-rmdir", "rename-unlink", "socket", "send-recv", "poll",
    "getdents64", "fsync", "readv", "epoll_wait", "local-file"};
static const char CONTENT[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-";

struct ctx {
    char r[512], w[512], d[512], a[512], b[512], dir[512], local[512];
    int keep, wkeep, sock, ep;
    long ok[KINDS], bad[KINDS], appended;
    int first_err[KINDS];
};

static struct ctx H, M;
static volatile sig_atomic_t stop;
static volatile long handler_runs;

static int same(const char *buf, size_t n, size_t off) {
    return memcmp(buf, CONTENT + off, n) == 0;
}

static int op(struct ctx *c, int k) {
    char buf[64];
    struct stat st;
    int fd, d;
    switch (k) {
    case 0:
        if ((fd = open(c->r, O_RDONLY | O_CLOEXEC)) < 0)
            return 0;
        d = read(fd, buf, 16) == 16 && same(buf, 16, 0);
        return close(fd) == 0 && d;
    case 1:
        return pread(c->keep, buf, 16, 8) == 16 && same(buf, 16, 8);
    case 2:
        return stat(c->r, &st) == 0 && st.st_size == 64;
    case 3:
        return fstat(c->keep, &st) == 0 && st.st_size == 64;
    case 4:
        return lseek(c->keep, 5, SEEK_SET) == 5;
    case 5:
        return access(c->r, R_OK) == 0;
    case 6:
        if ((d = dup(c->keep)) < 0)
            return 0;
        return pread(d, buf, 4, 0) == 4 && same(buf, 4, 0) && close(d) == 0;
    case 7:
        if ((d = dup(c->keep)) < 0)
            return 0;
        return dup2(c->keep, d) == d && pread(d, buf, 4, 4) == 4 && same(buf, 4, 4) &&
               close(d) == 0;
    case 8:
        return fcntl(c->keep, F_GETFD) == FD_CLOEXEC &&
               (fcntl(c->keep, F_GETFL) & O_ACCMODE) == O_RDONLY;
    case 9:
        if ((fd = open(c->w, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0)
            return 0;
        d = write(fd, "12345678", 8) == 8;
        if (d)
            c->appended += 8;
        return close(fd) == 0 && d;
    case 10:
        return mkdir(c->d, 0755) == 0 && rmdir(c->d) == 0;
    case 11:
        if ((fd = open(c->a, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
            return 0;
        close(fd);
        return rename(c->a, c->b) == 0 && unlink(c->b) == 0;
    case 12:
        if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            return 0;
        return close(fd) == 0;
    case 13: {
        if (send(c->sock, CONTENT, 8, MSG_NOSIGNAL) != 8)
            return 0;
        size_t got = 0;
        while (got < 8) {
            ssize_t n = recv(c->sock, buf + got, 8 - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            got += n;
        }
        return same(buf, 8, 0);
    }
    case 14: {
        struct pollfd p = {c->sock, POLLOUT, 0};
        return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
    }
    case 15: {
        char dents[1024];
        if ((fd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            return 0;
        d = syscall(SYS_getdents64, fd, dents, sizeof dents) > 0;
        return close(fd) == 0 && d;
    }
    case 16:
        return fsync(c->wkeep) == 0;
    case 17: {
        char x[8], y[8];
        struct iovec v[2] = {{x, 8}, {y, 8}};
        return lseek(c->keep, 16, SEEK_SET) == 16 && readv(c->keep, v, 2) == 16 &&
               same(x, 8, 16) && same(y, 8, 24);
    }
    case 18: {
        struct epoll_event ev;
        int n = epoll_wait(c->ep, &ev, 1, 0);
        return n == 1 && (ev.events & EPOLLOUT);
    }
    default:
        if ((fd = open(c->local, O_RDONLY | O_CLOEXEC)) < 0)
            return 0;
        d = read(fd, buf, 16) == 16 && same(buf, 16, 0);
        return close(fd) == 0 && d;
    }
}

static void run(struct ctx *c, int k) {
    int e = errno;
    if (op(c, k)) {
        c->ok[k]++;
    } else {
        if (c->bad[k]++ == 0)
            c->first_err[k] = errno;
    }
    errno = e;
}

static void on_alarm(int sig) {
    (void)sig;
    if (!stop)
        run(&H, (int)(handler_runs++ % KINDS));
}

static int connect_to(int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        exit(2);
    }
    return s;
}

static void setup(struct ctx *c, const char *who, const char *tree, const char *local, int port) {
    snprintf(c->dir, sizeof c->dir, "%s/sa-%s", tree, who);
    snprintf(c->r, sizeof c->r, "%s/r.dat", c->dir);
    snprintf(c->w, sizeof c->w, "%s/w.dat", c->dir);
    snprintf(c->d, sizeof c->d, "%s/sub", c->dir);
    snprintf(c->a, sizeof c->a, "%s/a", c->dir);
    snprintf(c->b, sizeof c->b, "%s/b", c->dir);
    snprintf(c->local, sizeof c->local, "%s/sa-%s-local.dat", local, who);
    if (mkdir(c->dir, 0755) != 0 && errno != EEXIST) {
        perror(c->dir);
        exit(2);
    }
    const char *files[2] = {c->r, c->local};
    for (int i = 0; i < 2; i++) {
        int fd = open(files[i], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, CONTENT, 64) != 64 || close(fd) != 0) {
            perror(files[i]);
            exit(2);
        }
    }
    unlink(c->w);
    c->keep = open(c->r, O_RDONLY | O_CLOEXEC);
    c->wkeep = open(c->w, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    c->sock = connect_to(port);
    c->ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT};
    if (c->keep < 0 || c->wkeep < 0 || c->ep < 0 ||
        epoll_ctl(c->ep, EPOLL_CTL_ADD, c->sock, &ev) != 0) {
        perror("setup");
        exit(2);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int report(const char *who, struct ctx *c) {
    int good = 1;
    for (int k = 0; k < KINDS; k++) {
        fprintf(stderr, "%s %s ok=%ld bad=%ld\n", who, NAMES[k], c->ok[k], c->bad[k]);
        if (c->bad[k]) {
            printf("%s: %s failed %ld times (first errno %d)\n", who, NAMES[k], c->bad[k],
                   c->first_err[k]);
            good = 0;
        } else if (c->ok[k] == 0) {
            printf("%s: %s never ran\n", who, NAMES[k]);
            good = 0;
        }
    }
    struct stat st;
    if (stat(c->w, &st) != 0 || st.st_size != c->appended) {
        printf("%s: appended %ld bytes, the file has %ld\n", who, c->appended,
               (long)(stat(c->w, &st) == 0 ? st.st_size : -1));
        good = 0;
    }
    if (good)
        printf("%s: all %d kinds of call ran without an error; every appended byte is there\n",
               who, KINDS);
    return good;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s TREE LOCALDIR PORT SECONDS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[3]);
    double secs = atof(argv[4]);
    setup(&H, "handler", argv[1], argv[2], port);
    setup(&M, "main", argv[1], argv[2], port);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 100}, {0, 100}};
    setitimer(ITIMER_REAL, &it, NULL);
    double start = now();
    long iters = 0;
    /* Main runs the kinds in the reverse order, so each handler kind interrupts each. */
    while (now() - start < secs) {
        run(&M, KINDS - 1 - (int)(iters % KINDS));
        iters++;
    }
    stop = 1;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    fprintf(stderr, "counts: seconds=%.1f handler_runs=%ld main_iterations=%ld\n",
            now() - start, handler_runs, iters);
    int good = report("handler", &H) & report("main", &M);
    return good ? 0 : 1;
}
