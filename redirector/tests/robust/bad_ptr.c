/* Bad pointers give EFAULT, as from the kernel: path arguments that are unmapped (a low
 * address, the last page, a string running into an unmapped page) for open, stat, mkdir,
 * unlink, rename, access, chdir and a bind of an AF_UNIX socket. usage: bad_ptr DIR */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void show(const char *what, int r) {
    printf("%s = %d (%s)\n", what, r, r < 0 ? strerrorname_np(errno) : "ok");
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    char *page = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(page + 4096, 4096, PROT_NONE);
    /* "<DIR>/x" with no terminator before the protected page. */
    size_t n = strlen(argv[1]) + 2;
    char *tail = page + 4096 - n;
    memcpy(tail, argv[1], n - 2);
    tail[n - 2] = '/';
    tail[n - 1] = 'x';
    const char *bad[3] = {(const char *)8, (const char *)-4096L, tail};
    const char *names[3] = {"low", "last-page", "unterminated"};
    struct stat st;
    for (int i = 0; i < 3; i++) {
        char w[64];
        snprintf(w, sizeof w, "open(%s)", names[i]);
        show(w, open(bad[i], O_RDONLY));
        snprintf(w, sizeof w, "stat(%s)", names[i]);
        show(w, stat(bad[i], &st));
        snprintf(w, sizeof w, "mkdir(%s)", names[i]);
        show(w, mkdir(bad[i], 0755));
        snprintf(w, sizeof w, "unlink(%s)", names[i]);
        show(w, unlink(bad[i]));
        snprintf(w, sizeof w, "access(%s)", names[i]);
        show(w, access(bad[i], F_OK));
        snprintf(w, sizeof w, "chdir(%s)", names[i]);
        show(w, chdir(bad[i]));
        snprintf(w, sizeof w, "rename(%s, ok)", names[i]);
        show(w, rename(bad[i], argv[1]));
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    show("bind(bad sockaddr)", bind(s, (struct sockaddr *)8, sizeof(struct sockaddr_un)));
    return 0;
}
