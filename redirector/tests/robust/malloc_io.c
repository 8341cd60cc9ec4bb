/* Remote file and socket I/O from a program that brings its own allocator (jemalloc or
 * tcmalloc, linked in or preloaded): allocation churn, a file under DIR written, read back and
 * compared (with write(2) and with stdio), and a TCP connection to a listener of its own.
 * usage: malloc_io DIR TAG.  Prints a deterministic summary; exits 1 on the first failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FILE_BYTES (256 * 1024)
#define SOCK_BYTES (128 * 1024)

static void die(const char *what) {
    printf("FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

static unsigned char pat(size_t i) { return (unsigned char)(i * 131 + 7); }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: malloc_io DIR TAG\n");
        return 2;
    }
    const char *alloc = dlsym(RTLD_DEFAULT, "mallctl")     ? "jemalloc"
                        : dlsym(RTLD_DEFAULT, "tc_malloc") ? "tcmalloc"
                                                           : "libc";
    printf("allocator %s\n", alloc);

    /* Allocation churn through the program's allocator. */
    void *blocks[512];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 512; i++) {
            size_t n = 16 + (size_t)((i * 7919 + round * 31) % 40000);
            blocks[i] = malloc(n);
            if (!blocks[i])
                die("malloc");
            memset(blocks[i], i & 0xff, n);
        }
        for (int i = 0; i < 512; i += 2)
            blocks[i] = realloc(blocks[i], 100000);
        for (int i = 0; i < 512; i++)
            free(blocks[i]);
    }
    printf("allocation churn ok\n");

    char path[4096];
    snprintf(path, sizeof path, "%s/malloc-%s.dat", argv[1], argv[2]);
    unsigned char *buf = malloc(FILE_BYTES), *back = malloc(FILE_BYTES);
    if (!buf || !back)
        die("malloc");
    for (size_t i = 0; i < FILE_BYTES; i++)
        buf[i] = pat(i);
    int fd = open(path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0)
        die("open");
    for (size_t at = 0, chunk = 1000; at < FILE_BYTES; at += chunk, chunk = chunk * 3 % 9001 + 1) {
        size_t n = at + chunk > FILE_BYTES ? FILE_BYTES - at : chunk;
        if (write(fd, buf + at, n) != (ssize_t)n)
            die("write");
    }
    if (lseek(fd, 0, SEEK_SET) != 0)
        die("lseek");
    size_t got = 0;
    for (ssize_t n; got < FILE_BYTES && (n = read(fd, back + got, FILE_BYTES - got)) > 0;)
        got += (size_t)n;
    if (got != FILE_BYTES || memcmp(buf, back, FILE_BYTES) != 0) {
        printf("FAIL read back %zu bytes, want %d (or contents differ)\n", got, FILE_BYTES);
        return 1;
    }
    if (close(fd) != 0)
        die("close");
    printf("file %d bytes written and read back\n", FILE_BYTES);

    /* stdio allocates its buffers through the allocator. */
    snprintf(path, sizeof path, "%s/malloc-%s.txt", argv[1], argv[2]);
    FILE *f = fopen(path, "w+");
    if (!f)
        die("fopen");
    for (int i = 0; i < 1000; i++)
        fprintf(f, "line %d of the %s run\n", i, argv[2]);
    if (fflush(f) != 0 || fseek(f, 0, SEEK_SET) != 0)
        die("fflush/fseek");
    char line[256];
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        char want[256];
        snprintf(want, sizeof want, "line %d of the %s run\n", lines, argv[2]);
        if (strcmp(line, want) != 0) {
            printf("FAIL stdio line %d: %s", lines, line);
            return 1;
        }
        lines++;
    }
    if (fclose(f) != 0)
        die("fclose");
    printf("stdio %d lines written and read back\n", lines);

    /* A TCP connection to a listener of our own. */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&a, &alen))
        die("bind/listen");
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
        die("connect");
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        die("accept");
    unsigned char *out = malloc(16384), *in = malloc(16384);
    size_t moved = 0;
    while (moved < SOCK_BYTES) {
        for (size_t i = 0; i < 16384; i++)
            out[i] = pat(moved + i);
        if (send(c, out, 16384, 0) != 16384)
            die("send");
        size_t r = 0;
        while (r < 16384) {
            ssize_t n = recv(s, in + r, 16384 - r, 0);
            if (n <= 0)
                die("recv");
            r += (size_t)n;
        }
        if (memcmp(in, out, 16384) != 0) {
            printf("FAIL socket bytes differ at %zu\n", moved);
            return 1;
        }
        moved += 16384;
    }
    close(s);
    close(c);
    close(l);
    printf("socket %d bytes sent and received\n", SOCK_BYTES);
    free(buf);
    free(back);
    free(out);
    free(in);
    return 0;
}
