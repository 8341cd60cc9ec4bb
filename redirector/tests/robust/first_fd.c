/* The fd numbers of a program's first socket and first open: Linux gives 3 and 4.
 * usage: first_fd socket-first|open-first FILE */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    if (strcmp(argv[1], "socket-first") == 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int f = open(argv[2], O_RDONLY);
        printf("socket=%d open=%d\n", s, f);
    } else {
        int f = open(argv[2], O_RDONLY);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        printf("open=%d socket=%d\n", f, s);
    }
    return 0;
}
