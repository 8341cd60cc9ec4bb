/* Lock waits and signals: flock and fcntl(F_SETLKW) on a file another process holds locked.
 * A SIGALRM handler without SA_RESTART interrupts the wait (-1, EINTR); with SA_RESTART the
 * wait goes on and takes the lock once the holder lets go. The holder is a forked child that
 * keeps the lock for 1.5 s; the alarm comes after 0.3 s.
 *
 * usage: lock_intr TREE   (TREE holds lock/f: under the mount, or its native copy) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
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

static int lock(int fd, int kind, int exclusive) {
    if (kind == 0)
        return flock(fd, exclusive ? LOCK_EX : LOCK_UN);
    struct flock fl = {.l_type = exclusive ? F_WRLCK : F_UNLCK, .l_whence = SEEK_SET};
    return fcntl(fd, F_SETLKW, &fl);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: lock_intr TREE\n");
        return 2;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/lock/f", argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const char *kinds[] = {"flock", "F_SETLKW"};
    for (int kind = 0; kind < 2; kind++) {
        for (int restart = 0; restart < 2; restart++) {
            int ready[2];
            if (pipe(ready) != 0)
                return 1;
            pid_t holder = fork();
            if (holder == 0) {
                int fd = open(path, O_RDWR);
                if (fd < 0 || lock(fd, kind, 1) != 0)
                    _exit(1);
                if (write(ready[1], "x", 1) != 1)
                    _exit(1);
                usleep(1500 * 1000);
                _exit(0);
            }
            char c;
            if (read(ready[0], &c, 1) != 1)
                return 1;
            close(ready[0]);
            close(ready[1]);
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_alarm;
            sa.sa_flags = restart ? SA_RESTART : 0;
            sigaction(SIGALRM, &sa, NULL);
            alarms = 0;
            struct itimerval it = {.it_value = {0, 300 * 1000}};
            setitimer(ITIMER_REAL, &it, NULL);
            int fd = open(path, O_RDWR);
            double t0 = now();
            errno = 0;
            int r = lock(fd, kind, 1);
            int err = errno;
            double took = now() - t0;
            printf("%s %s: = %d (%s), alarm %d, returned %s\n", kinds[kind],
                   restart ? "SA_RESTART" : "plain", r, r ? strerrorname_np(err) : "ok",
                   (int)alarms,
                   took < 0.25  ? "too early"
                   : took < 1.2 ? "at the alarm"
                                : "once the holder let go");
            close(fd);
            int st;
            waitpid(holder, &st, 0);
        }
    }
    return 0;
}
