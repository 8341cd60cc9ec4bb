/* FIFO waits and signals: a read of an empty FIFO and a write into a full one (and first the
 * same with O_NONBLOCK: EAGAIN at once). A SIGALRM
 * handler without SA_RESTART interrupts the wait (-1, EINTR); with SA_RESTART the wait goes on
 * until a forked child writes (or drains) after 1 s. The alarm comes after 0.3 s.
 *
 * usage: fifo_intr TREE   (a directory under the mount, or its native copy) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static void on_alarm(int sig) {
    (void)sig;
    alarms++;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Fills the FIFO open on `fd` (non-blocking for the fill) until it takes no more. */
static long fill(int fd) {
    static char block[4096];
    long total = 0;
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    for (;;) {
        ssize_t n = write(fd, block, sizeof block);
        if (n <= 0)
            break;
        total += n;
    }
    fcntl(fd, F_SETFL, fl);
    return total;
}

/* The program exec'd with the FIFO open at fd 3 (a shell's `cmd <fifo`): the same waits. */
static int inherited(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 300000}};
    setitimer(ITIMER_REAL, &it, NULL);
    double t0 = now();
    char c;
    ssize_t r = read(3, &c, 1);
    int err = errno;
    printf("inherited read: = %zd (%s), alarm %d, returned %s\n", r,
           r < 0 ? strerrorname_np(err) : "-", (int)alarms,
           now() - t0 < 0.8 ? "at the alarm" : "later");
    fcntl(3, F_SETFL, fcntl(3, F_GETFL) | O_NONBLOCK);
    r = read(3, &c, 1);
    printf("inherited nonblocking read: %zd %s\n", r, r < 0 ? strerrorname_np(errno) : "");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[2], "inherited") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        return inherited();
    }
    if (argc != 2) {
        fprintf(stderr, "usage: fifo_intr TREE\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    {
        /* O_NONBLOCK on a FIFO: EAGAIN at once for an empty read and a full write. */
        char path[512];
        snprintf(path, sizeof path, "%s/fifo-nb", argv[1]);
        unlink(path);
        mkfifo(path, 0600);
        int fd = open(path, O_RDWR | O_NONBLOCK);
        char c;
        ssize_t r = read(fd, &c, 1);
        printf("nonblocking read of an empty FIFO: %zd %s\n", r, r < 0 ? strerrorname_np(errno) : "");
        static char block[4096];
        long total = 0;
        ssize_t n;
        while ((n = write(fd, block, sizeof block)) > 0)
            total += n;
        printf("nonblocking writes into a FIFO: %ld bytes, then %s\n", total, strerrorname_np(errno));
        close(fd);
        unlink(path);
    }
    static const char *ops[] = {"read", "write"};
    for (int op = 0; op < 2; op++) {
        for (int restart = 0; restart < 2; restart++) {
            char path[512];
            snprintf(path, sizeof path, "%s/fifo-%s-%d", argv[1], ops[op], restart);
            unlink(path);
            if (mkfifo(path, 0600) != 0) {
                printf("mkfifo %s: %s\n", ops[op], strerror(errno));
                return 1;
            }
            /* O_RDWR: Linux opens a FIFO so without waiting for the other end. */
            int fd = open(path, O_RDWR);
            if (fd < 0) {
                printf("open %s: %s\n", ops[op], strerror(errno));
                return 1;
            }
            long filled = op == 1 ? fill(fd) : 0;
            pid_t child = -1;
            if (restart) {
                child = fork();
                if (child == 0) {
                    usleep(1000000);
                    int peer = open(path, op == 0 ? O_WRONLY : O_RDONLY);
                    static char buf[65536];
                    long moved = 0;
                    if (op == 0)
                        moved = write(peer, "x", 1);
                    else
                        while (moved < filled) {
                            ssize_t n = read(peer, buf, sizeof buf);
                            if (n <= 0)
                                break;
                            moved += n;
                        }
                    close(peer);
                    _exit(moved > 0 ? 0 : 1);
                }
            }
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_alarm;
            sa.sa_flags = restart ? SA_RESTART : 0;
            sigaction(SIGALRM, &sa, NULL);
            alarms = 0;
            struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 300000}};
            setitimer(ITIMER_REAL, &it, NULL);
            double t0 = now();
            char buf[4096];
            memset(buf, 'y', sizeof buf);
            ssize_t r = op == 0 ? read(fd, buf, 1) : write(fd, buf, sizeof buf);
            int err = errno;
            double dt = now() - t0;
            printf("%s %s: = %zd%s%s%s, alarm %d, returned %s\n", ops[op],
                   restart ? "restart" : "plain", r, r < 0 ? " (" : "",
                   r < 0 ? strerrorname_np(err) : "", r < 0 ? ")" : "", (int)alarms,
                   dt < 0.8 ? "at the alarm" : "when the other end moved");
            if (child > 0) {
                int st;
                waitpid(child, &st, 0);
                printf("%s %s: the other end %s\n", ops[op], restart ? "restart" : "plain",
                       WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "moved bytes" : "failed");
            }
            close(fd);
            unlink(path);
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/fifo-inherited", argv[1]);
    unlink(path);
    mkfifo(path, 0600);
    int fd = open(path, O_RDWR);
    unlink(path);
    dup2(fd, 3);
    if (fd != 3)
        close(fd);
    execl("/proc/self/exe", argv[0], argv[1], "inherited", (char *)NULL);
    printf("exec: %s\n", strerror(errno));
    return 1;
}
