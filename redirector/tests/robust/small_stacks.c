/* File calls under the mount from the smallest stacks a program may give them: a thread
 * with PTHREAD_STACK_MIN (16 KiB) and a signal handler on a 16 KiB sigaltstack. A system
 * call needs no user stack, so natively both work; the shim must not need the program's.
 * Each does open/read/close (through libc's functions and through syscall(), which traps),
 * stat of a path with `.` and `..`, fopen/fgets (libc-internal calls), a directory listing,
 * mkdir/rename/unlink/rmdir and a socket, and prints what it saw. Then 200 more threads
 * come and go: the address space must not grow with them (a shim stack per thread that
 * outlived its thread would add a MiB or more each).
 *
 * usage: small_stacks TREE   (TREE holds small/r: under the mount, or its native copy) */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char tree[512];
static char out[2][1024];

static void work(char *o, size_t cap, const char *who) {
    char p[600], q[600], buf[128];
    struct stat st;
    size_t at = 0;
#define SAY(...) at += (size_t)snprintf(o + at, at < cap ? cap - at : 0, __VA_ARGS__)
    snprintf(p, sizeof p, "%s/small/r", tree);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    long n = fd < 0 ? -errno : read(fd, buf, sizeof buf);
    if (fd >= 0)
        close(fd);
    SAY("%s: open/read %ld", who, n);
    long tfd = syscall(SYS_openat, AT_FDCWD, p, O_RDONLY | O_CLOEXEC);
    n = tfd < 0 ? -errno : syscall(SYS_read, tfd, buf, sizeof buf);
    if (tfd >= 0)
        syscall(SYS_close, tfd);
    SAY(", trapped open/read %ld", n);
    snprintf(q, sizeof q, "%s/small/./d/../r", tree);
    SAY(", stat %d", stat(q, &st) == 0 ? (int)st.st_size : -errno);
    FILE *f = fopen(p, "re");
    SAY(", fgets %s", f && fgets(buf, sizeof buf, f) ? "ok" : "failed");
    if (f)
        fclose(f);
    snprintf(q, sizeof q, "%s/small/d", tree);
    DIR *d = opendir(q);
    int entries = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        entries++;
    if (d)
        closedir(d);
    SAY(", entries %d", entries);
    snprintf(q, sizeof q, "%s/small/%s.dir", tree, who);
    int r = mkdir(q, 0755);
    char q2[620];
    snprintf(q2, sizeof q2, "%s.moved", q);
    r = r ? -errno : rename(q, q2) ? -errno : rmdir(q2) ? -errno : 0;
    SAY(", mkdir/rename/rmdir %d", r);
    snprintf(q, sizeof q, "%s/small/%s.file", tree, who);
    fd = open(q, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    r = fd < 0 ? -errno : (int)write(fd, "x", 1);
    if (fd >= 0)
        close(fd);
    SAY(", create/write %d unlink %d", r, unlink(q) ? -errno : 0);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    SAY(", socket %s", s >= 0 ? "ok" : "failed");
    if (s >= 0)
        close(s);
#undef SAY
}

static long vm_kib(void) {
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %ld", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static void on_signal(int sig) {
    (void)sig;
    work(out[0], sizeof out[0], "handler");
}

static void *thread_main(void *arg) {
    (void)arg;
    work(out[1], sizeof out[1], "thread");
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: small_stacks TREE\n");
        return 2;
    }
    snprintf(tree, sizeof tree, "%s", argv[1]);
    stack_t ss = {.ss_sp = malloc(16384), .ss_size = 16384, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        perror("sigaltstack");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    printf("%s\n", out[0]);
    pthread_attr_t at;
    pthread_attr_init(&at);
    if (pthread_attr_setstacksize(&at, PTHREAD_STACK_MIN) != 0)
        return 1;
    for (int i = 0; i < 3; i++) {
        pthread_t t;
        if (pthread_create(&t, &at, thread_main, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_join(t, NULL);
        printf("%d %s\n", i, out[1]);
    }
    long before = vm_kib();
    for (int i = 0; i < 200; i++) {
        pthread_t t;
        if (pthread_create(&t, &at, thread_main, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_join(t, NULL);
    }
    long grew = vm_kib() - before;
    printf("200 threads later: %s\n", out[1]);
    printf("address space grew by under 8 MiB: %s\n", grew < 8192 ? "yes" : "no");
    fprintf(stderr, "address space grew by %ld KiB\n", grew);
    return 0;
}
