/* A signal handler that siglongjmps out of a blocking call it interrupted (the timeout idiom
 * of old C code): 100 reads of an empty FIFO under the mount, each left by a SIGALRM
 * handler's siglongjmp after 10 ms, each followed by file calls that must still work (a
 * session has 64 channels: a call left behind must not keep its channel).
 *
 * usage: longjmp TREE   (a directory under the mount, or its native copy) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static sigjmp_buf jb;
static void on_alarm(int sig) {
    (void)sig;
    siglongjmp(jb, 1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: longjmp TREE\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char fifo[512], file[512];
    snprintf(fifo, sizeof fifo, "%s/lj-fifo", argv[1]);
    snprintf(file, sizeof file, "%s/lj-file", argv[1]);
    unlink(fifo);
    if (mkfifo(fifo, 0600) != 0) {
        printf("mkfifo: %s\n", strerror(errno));
        return 1;
    }
    int fd = open(fifo, O_RDWR);
    signal(SIGALRM, on_alarm);
    int jumps = 0;
    for (int i = 0; i < 100; i++) {
        if (sigsetjmp(jb, 1) == 0) {
            struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 10000}};
            setitimer(ITIMER_REAL, &it, NULL);
            char c;
            ssize_t r = read(fd, &c, 1);
            printf("read returned %zd\n", r);
        } else {
            jumps++;
        }
        int f = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0600);
        char line[32];
        int n = snprintf(line, sizeof line, "after jump %d\n", i);
        if (f < 0 || write(f, line, n) != n || close(f) != 0) {
            printf("file calls after jump %d: %s\n", i, strerror(errno));
            return 1;
        }
    }
    char back[64] = {0};
    int f = open(file, O_RDONLY);
    ssize_t n = read(f, back, sizeof back - 1);
    close(f);
    printf("jumps %d; the file reads back %zd bytes: %s", jumps, n, back);
    /* The FIFO still works as a FIFO. */
    ssize_t w = write(fd, "z", 1);
    char c = 0;
    ssize_t r = read(fd, &c, 1);
    printf("fifo after the jumps: write %zd, read %zd '%c'\n", w, r, c);
    close(fd);
    unlink(fifo);
    unlink(file);
    return 0;
}
