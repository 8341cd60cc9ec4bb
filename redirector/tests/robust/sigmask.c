/* Signal masks that hold every signal, as daemons set them, around calls the shim routes.
 *
 * A blocked SIGSYS makes the kernel kill a process at its next trapped call, so each case
 * below is one a shim that let SIGSYS into a mask would not survive, and each prints what
 * Linux answers for the masks read back:
 *   - a handler installed with sigfillset(&sa.sa_mask) that opens, reads and closes a file;
 *   - the old action read back (its mask holds SIGSYS, as installed), and after a
 *     reinstallation with an empty mask (it does not);
 *   - every signal blocked with sigprocmask around file calls, and the old mask read back;
 *   - the same through pthread_sigmask in a second thread, whose mask is its own;
 *   - sigsuspend, ppoll, pselect and epoll_pwait with every signal but SIGUSR2 blocked, whose
 *     handler reads a file;
 *   - bad pointers: EFAULT, and EINVAL for a bad `how`, with nothing changed.
 *
 * usage: sigmask TREE   (TREE holds sigmask/r: under the mount, or its native copy) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <unistd.h>

static char path[512];
static volatile sig_atomic_t got;
static volatile long handler_bytes;

static long read_file(void) {
    char buf[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    long n = read(fd, buf, sizeof buf);
    if (n < 0)
        n = -errno;
    close(fd);
    return n;
}

/* The handler's calls trap (libc's syscall() is one of libc's own system-call sites), which
 * a blocked SIGSYS would turn into a kill; main's go through libc's interposed functions. */
static long read_file_trapped(void) {
    char buf[256];
    long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    long n = syscall(SYS_read, fd, buf, sizeof buf);
    if (n < 0)
        n = -errno;
    syscall(SYS_close, fd);
    return n;
}

static void on_signal(int sig) {
    (void)sig;
    handler_bytes = read_file_trapped();
    got++;
}

static int has(const sigset_t *s, int sig) { return sigismember(s, sig); }

static void *thread_main(void *arg) {
    (void)arg;
    sigset_t all, old, now;
    sigfillset(&all);
    int r = pthread_sigmask(SIG_SETMASK, &all, &old);
    long n = read_file();
    pthread_sigmask(SIG_SETMASK, NULL, &now);
    printf("thread: pthread_sigmask(all) = %d, read %ld, now SIGSYS %d SIGTERM %d, before SIGSYS %d\n",
           r, n, has(&now, SIGSYS), has(&now, SIGTERM), has(&old, SIGSYS));
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: sigmask TREE\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/sigmask/r", argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* A handler with a full mask. */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    printf("sigaction(full mask) = %d\n", sigaction(SIGUSR1, &sa, NULL));
    raise(SIGUSR1);
    printf("full-mask handler: ran %d, read %ld\n", (int)got, handler_bytes);
    sigaction(SIGUSR1, NULL, &old);
    printf("old action: handler ours %d, mask SIGSYS %d SIGTERM %d\n",
           old.sa_handler == on_signal, has(&old.sa_mask, SIGSYS), has(&old.sa_mask, SIGTERM));
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old);
    printf("replaced: old mask SIGSYS %d\n", has(&old.sa_mask, SIGSYS));
    sigaction(SIGUSR1, NULL, &old);
    printf("now: mask SIGSYS %d SIGTERM %d\n", has(&old.sa_mask, SIGSYS), has(&old.sa_mask, SIGTERM));

    /* Every signal blocked around file calls. */
    sigset_t all, before, now;
    sigfillset(&all);
    printf("sigprocmask(SIG_BLOCK, all) = %d\n", sigprocmask(SIG_BLOCK, &all, &before));
    printf("blocked: read %ld\n", read_file());
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("blocked: now SIGSYS %d SIGTERM %d SIGUSR1 %d; before SIGSYS %d\n", has(&now, SIGSYS),
           has(&now, SIGTERM), has(&now, SIGUSR1), has(&before, SIGSYS));
    sigset_t back;
    sigprocmask(SIG_SETMASK, &before, &back);
    printf("restored: old SIGSYS %d; ", has(&back, SIGSYS));
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("now SIGSYS %d SIGTERM %d\n", has(&now, SIGSYS), has(&now, SIGTERM));
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGSYS);
    sigprocmask(SIG_BLOCK, &one, NULL);
    sigprocmask(SIG_UNBLOCK, &one, &back);
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("block then unblock SIGSYS: old SIGSYS %d, now %d, read %ld\n", has(&back, SIGSYS),
           has(&now, SIGSYS), read_file());

    /* A second thread's mask. */
    pthread_t t;
    pthread_create(&t, NULL, thread_main, NULL);
    pthread_join(t, NULL);
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("main after thread: SIGSYS %d SIGTERM %d\n", has(&now, SIGSYS), has(&now, SIGTERM));

    /* sigsuspend with everything but SIGUSR2 blocked. */
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t usr2, wait;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, &before);
    got = 0;
    handler_bytes = 0;
    kill(getpid(), SIGUSR2);
    sigfillset(&wait);
    sigdelset(&wait, SIGUSR2);
    int r = sigsuspend(&wait);
    printf("sigsuspend = %d (%s): handler ran %d, read %ld\n", r, strerrorname_np(errno),
           (int)got, handler_bytes);
    /* The waits with a mask of their own, on local fds only. */
    struct timespec ts = {5, 0};
    int pfd[2];
    if (pipe(pfd) != 0)
        return 1;
    struct pollfd p = {pfd[0], POLLIN, 0};
    for (int kind = 0; kind < 3; kind++) {
        static const char *name[] = {"ppoll", "pselect", "epoll_pwait"};
        got = 0;
        handler_bytes = 0;
        kill(getpid(), SIGUSR2);
        errno = 0;
        if (kind == 0) {
            r = ppoll(&p, 1, &ts, &wait);
        } else if (kind == 1) {
            fd_set rd;
            FD_ZERO(&rd);
            FD_SET(pfd[0], &rd);
            r = pselect(pfd[0] + 1, &rd, NULL, NULL, &ts, &wait);
        } else {
            int ep = epoll_create1(EPOLL_CLOEXEC);
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = pfd[0]};
            epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &ev);
            r = epoll_pwait(ep, &ev, 1, 5000, &wait);
            close(ep);
        }
        printf("%s = %d (%s): handler ran %d, read %ld\n", name[kind], r, strerrorname_np(errno),
               (int)got, handler_bytes);
    }
    sigprocmask(SIG_SETMASK, &before, NULL);

    /* Bad arguments: the kernel's errors, nothing changed. */
    errno = 0;
    r = syscall(SYS_rt_sigprocmask, SIG_BLOCK, (void *)8, NULL, 8);
    printf("sigprocmask(bad set) = %d (%s)\n", r, strerrorname_np(errno));
    errno = 0;
    r = syscall(SYS_rt_sigprocmask, 42, &all, NULL, 8);
    printf("sigprocmask(bad how) = %d (%s)\n", r, strerrorname_np(errno));
    errno = 0;
    r = syscall(SYS_rt_sigaction, SIGUSR1, (void *)8, NULL, 8);
    printf("rt_sigaction(bad act) = %d (%s)\n", r, strerrorname_np(errno));
    errno = 0;
    r = syscall(SYS_rt_sigsuspend, (void *)8, 8);
    printf("rt_sigsuspend(bad mask) = %d (%s)\n", r, strerrorname_np(errno));
    sigprocmask(SIG_SETMASK, NULL, &now);
    printf("finally: SIGSYS %d SIGTERM %d, read %ld\n", has(&now, SIGSYS), has(&now, SIGTERM),
           read_file());
    return 0;
}
