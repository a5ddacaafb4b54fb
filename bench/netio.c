/* Limits for the migration benchmark, measured the way migration uses them:
 *   netio recv PORT            accept one connection, read to EOF, print "bytes seconds"
 *   netio send ADDR PORT BYTES write BYTES to ADDR:PORT in 1 MiB writes, print "bytes seconds"
 *   netio fill BYTES           map BYTES of fresh memory and write every byte (first touch)
 *   netio write PATH BYTES     write BYTES to a new file PATH in 1 MiB writes, close it, print
 *                              "bytes seconds" (the file is removed)
 * and, to time a command the way a user's tool would run it (from a small parent: timed from
 * bash, the fork of the shell itself would count, a millisecond on a slow VM):
 *   netio time FILE CMD ARGS.. run CMD (its stdin, stdout and stderr ours), write the
 *                              milliseconds from spawn to its exit into FILE; its exit status */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    static char buf[1 << 20];
    if (argc == 3 && !strcmp(argv[1], "recv")) {
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) { perror("bind"); return 1; }
        printf("listening\n"); fflush(stdout);
        int c = accept(l, 0, 0);
        double t0 = now(); long long n = 0; ssize_t r;
        while ((r = read(c, buf, sizeof buf)) > 0) n += r;
        printf("%lld %.6f\n", n, now() - t0);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "send")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (connect(s, (void *)&a, sizeof a)) { perror("connect"); return 1; }
        long long want = atoll(argv[4]), n = 0;
        memset(buf, 7, sizeof buf);
        double t0 = now();
        while (n < want) { ssize_t w = write(s, buf, want - n < (long long)sizeof buf ? want - n : sizeof buf); if (w <= 0) return 1; n += w; }
        shutdown(s, SHUT_WR);
        while (read(s, buf, sizeof buf) > 0) {}
        printf("%lld %.6f\n", n, now() - t0);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "fill")) {
        size_t n = atoll(argv[2]);
        double t0 = now();
        char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(p, 1, n);
        printf("%zu %.6f\n", n, now() - t0);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "write")) {
        long long want = atoll(argv[3]), n = 0;
        static char buf[1 << 20];
        memset(buf, 1, sizeof buf);
        double t0 = now();
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) { perror(argv[2]); return 1; }
        while (n < want) {
            ssize_t w = write(fd, buf, want - n < (long long)sizeof buf ? (size_t)(want - n) : sizeof buf);
            if (w <= 0) { perror("write"); return 1; }
            n += w;
        }
        close(fd);
        printf("%lld %.6f\n", n, now() - t0);
        unlink(argv[2]);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "time")) {
        pid_t pid;
        int st;
        double t0 = now();
        if (posix_spawn(&pid, argv[3], 0, 0, argv + 3, environ)) { perror(argv[3]); return 127; }
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 127; }
        double t = now() - t0;
        FILE *f = fopen(argv[2], "w");
        if (!f || fprintf(f, "%.3f\n", t * 1e3) < 0 || fclose(f)) { perror(argv[2]); return 127; }
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    fprintf(stderr, "usage: netio recv PORT | send ADDR PORT BYTES | fill BYTES | write PATH BYTES | time FILE CMD ARGS..\n");
    return 2;
}
