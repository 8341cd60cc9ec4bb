/* A daemon's start: close every fd above stderr (one by one, ignoring errors, or with
 * close_range), then open and read a file, write one, and talk over a TCP connection.
 * usage: close_all loop|close_range DIR.  Prints fd numbers and what it read. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
    printf("FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    if (strcmp(argv[1], "loop") == 0) {
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
    } else if (close_range(3, ~0U, 0) != 0) {
        die("close_range");
    }
    printf("closed every fd from 3 (%s)\n", argv[1]);
    fflush(stdout);
    char path[4096], buf[4096];
    snprintf(path, sizeof path, "%s/daemon.txt", argv[2]);
    int f = open(path, O_RDONLY);
    if (f < 0)
        die("open daemon.txt");
    printf("open daemon.txt: fd %d\n", f);
    ssize_t n = read(f, buf, sizeof buf - 1);
    if (n < 0)
        die("read");
    buf[n] = 0;
    printf("read %zd bytes: %s", n, buf);
    snprintf(path, sizeof path, "%s/daemon-%s.out", argv[2], argv[1]);
    int w = open(path, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (w < 0)
        die("open daemon.out");
    printf("open daemon.out: fd %d\n", w);
    if (write(w, "written by the daemon\n", 22) != 22 || pread(w, buf, 22, 0) != 22)
        die("write/pread");
    printf("read back: %.22s", buf);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&a, &alen))
        die("bind/listen");
    printf("listener: fd %d\n", l);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
        die("connect");
    printf("client: fd %d\n", c);
    int s = accept(l, NULL, NULL);
    if (s < 0)
        die("accept");
    printf("accepted: fd %d\n", s);
    char r[8] = {0};
    if (send(c, "ping", 4, 0) != 4 || recv(s, r, 4, MSG_WAITALL) != 4 || memcmp(r, "ping", 4))
        die("ping");
    if (send(s, "pong", 4, 0) != 4 || recv(c, r, 4, MSG_WAITALL) != 4 || memcmp(r, "pong", 4))
        die("pong");
    printf("socket: ping and pong exchanged\n");
    close(f);
    close(w);
    close(s);
    close(c);
    close(l);
    return 0;
}
