/* 8 threads doing remote I/O in a loop (open/read/close of a remote file, send/recv on a TCP
 * connection to an echo server) while main forks children one after another; each child does
 * one remote open/read/close and _exits. The parent waits for each child with a 30 s limit (a hung child never ends; a loaded CI machine can take seconds): a
 * child still running then is reported, killed, and the run fails.
 * usage: fork_threads FILE ECHO_PORT CHILDREN THREADS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64

static const char *path;
static char expect[4096];
static ssize_t expect_len;
static int port;
static volatile int stop;

struct tstat {
    int id;
    long ops;
    char error[256];
} stats[MAX_THREADS];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *worker(void *arg) {
    struct tstat *t = arg;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((unsigned short)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        snprintf(t->error, sizeof t->error, "connect: %s", strerror(errno));
        return NULL;
    }
    char buf[4096], msg[32], got[32];
    while (!stop) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            snprintf(t->error, sizeof t->error, "op %ld: open: %s", t->ops, strerror(errno));
            break;
        }
        ssize_t n = read(fd, buf, sizeof buf);
        if (n != expect_len || memcmp(buf, expect, (size_t)n) != 0) {
            snprintf(t->error, sizeof t->error, "op %ld: read %zd bytes (%s), want %zd",
                     t->ops, n, n < 0 ? strerror(errno) : "contents", expect_len);
            close(fd);
            break;
        }
        if (close(fd) != 0) {
            snprintf(t->error, sizeof t->error, "op %ld: close: %s", t->ops, strerror(errno));
            break;
        }
        memset(msg, 'a' + t->id % 26, sizeof msg);
        snprintf(msg, sizeof msg - 1, "t%d op%ld ", t->id, t->ops);
        ssize_t w = send(s, msg, sizeof msg, MSG_NOSIGNAL);
        if (w != (ssize_t)sizeof msg) {
            snprintf(t->error, sizeof t->error, "op %ld: send %zd: %s", t->ops, w,
                     strerror(errno));
            break;
        }
        ssize_t r = recv(s, got, sizeof got, MSG_WAITALL);
        if (r != (ssize_t)sizeof got || memcmp(got, msg, sizeof got) != 0) {
            snprintf(t->error, sizeof t->error, "op %ld: recv %zd: %s", t->ops, r,
                     r < 0 ? strerror(errno) : "wrong bytes");
            break;
        }
        t->ops++;
    }
    close(s);
    return NULL;
}

/* Prints /proc/PID/NAME (where the hung child waits), one line per line of it. */
static void show_proc(pid_t pid, const char *name) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(buf, sizeof buf, f))
        printf("  %s: %s%s", name, buf, strchr(buf, '\n') ? "" : "\n");
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: fork_threads FILE ECHO_PORT CHILDREN THREADS\n");
        return 2;
    }
    path = argv[1];
    port = atoi(argv[2]);
    int children = atoi(argv[3]), threads = atoi(argv[4]);
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || (expect_len = read(fd, expect, sizeof expect)) <= 0) {
        printf("FAIL reading %s: %s\n", path, strerror(errno));
        return 1;
    }
    close(fd);
    pthread_t tid[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        stats[i].id = i;
        pthread_create(&tid[i], NULL, worker, &stats[i]);
    }
    usleep(100000);
    int ok = 0, failed = 0, hung = 0;
    double t0 = now();
    for (int i = 0; i < children && !hung; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            printf("fork %d failed: %s\n", i, strerror(errno));
            failed++;
            break;
        }
        if (pid == 0) {
            int f = open(path, O_RDONLY);
            if (f < 0)
                _exit(2);
            char b[4096];
            ssize_t n = read(f, b, sizeof b);
            if (n != expect_len || memcmp(b, expect, (size_t)n) != 0)
                _exit(3);
            if (close(f) != 0)
                _exit(4);
            _exit(0);
        }
        double deadline = now() + 30;
        int st = 0;
        for (;;) {
            pid_t r = waitpid(pid, &st, WNOHANG);
            if (r == pid)
                break;
            if (r < 0) {
                printf("waitpid %d: %s\n", pid, strerror(errno));
                st = -1;
                break;
            }
            if (now() > deadline) {
                printf("child %d (pid %d) hung for 30 s: killing it\n", i, pid);
                show_proc(pid, "wchan");
                show_proc(pid, "syscall");
                show_proc(pid, "stack");
                fflush(stdout);
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                hung++;
                break;
            }
            usleep(200);
        }
        if (hung)
            break;
        if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            ok++;
        } else {
            if (failed < 5) {
                if (st != -1 && WIFEXITED(st))
                    printf("child %d (pid %d) exited with %d\n", i, pid, WEXITSTATUS(st));
                else if (st != -1)
                    printf("child %d (pid %d) killed by signal %d\n", i, pid, WTERMSIG(st));
            }
            failed++;
        }
    }
    double forking = now() - t0;
    stop = 1;
    int threads_ok = 0;
    long ops = 0;
    for (int i = 0; i < threads; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 30;
        if (pthread_timedjoin_np(tid[i], NULL, &ts) != 0) {
            printf("thread %d stuck (%ld ops done)\n", i, stats[i].ops);
            fflush(stdout);
            _exit(1);
        }
        ops += stats[i].ops;
        if (stats[i].error[0])
            printf("thread %d: %s\n", i, stats[i].error);
        else if (stats[i].ops > 0)
            threads_ok++;
        else
            printf("thread %d did no I/O\n", i);
    }
    printf("children: %d forked one after another, %d ok, %d failed, %d hung\n", children, ok,
           failed, hung);
    printf("threads: %d of %d did remote I/O without errors\n", threads_ok, threads);
    fprintf(stderr, "forking took %.1f s; the threads did %ld operations\n", forking, ops);
    return ok == children && threads_ok == threads ? 0 : 1;
}
