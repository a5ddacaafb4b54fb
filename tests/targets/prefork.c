/* A pre-forking server: binds a unix stream socket at "srv.sock" in the current directory,
 * listens, and forks 4 workers that each accept connections on it and answer every line with
 * "worker N: LINE". Prints "ready" once the workers run; exits (with them) on EOF on stdin. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, "srv.sock");
    unlink(a.sun_path);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) {
        perror("listen");
        return 2;
    }
    for (int n = 1; n <= 4; n++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) {
                int c = accept(l, NULL, NULL);
                if (c < 0) continue;
                char buf[256];
                ssize_t k = read(c, buf, sizeof buf - 1);
                if (k > 0) {
                    buf[k] = 0;
                    dprintf(c, "worker %d: %s", n, buf);
                }
                close(c);
            }
        }
    }
    printf("ready\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
