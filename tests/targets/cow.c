/* cow [MIB [split]]: memory a fork left shared copy-on-write. The parent writes MIB MiB
 * (default 256) of anonymous memory, a pattern, then forks 4 children that only read it. With
 * "split", the area past its middle (and 3 pages) is told MADV_NOHUGEPAGE: two mappings side by side, which
 * the kernel does not merge, and whose shared pages run on from one into the other. Prints "ready"
 * once they all run, then for each line on stdin:
 *   "ping":  says "pong" (it runs, and has changed nothing);
 *   "write": child 1 writes its own copy of the whole area (0x5a), told through a pipe;
 *   "check": every process reads its area and says "sum PID ok" (the pattern, or for child
 *            1 after "write" its own bytes) or "sum PID bad ...": the parent first, then
 *            the children in order, each in its turn; then "ok" and the parent exits.
 * Each child dies with its parent. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char *area;
static size_t len;

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + (i >> 12)); }

/* Checks the area: the pattern, or `fill` everywhere (fill >= 0). */
static int check(int fill) {
    for (size_t i = 0; i < len; i++) {
        unsigned char want = fill >= 0 ? (unsigned char)fill : pattern(i);
        if (area[i] != want) {
            printf("sum %d bad at %zu: %d, not %d\n", getpid(), i, area[i], want);
            return 0;
        }
    }
    printf("sum %d ok\n", getpid());
    return 1;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    len = mib << 20;
    setvbuf(stdout, NULL, _IOLBF, 0);
    area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return 2;
    if (argc > 2 && !strcmp(argv[2], "split") && madvise(area + len / 2 + 12288, len / 2 - 12288, MADV_NOHUGEPAGE)) return 2;
    for (size_t i = 0; i < len; i++) area[i] = pattern(i);
    /* Per child: a pipe it reads orders from ('w' write, 'c' check), and one it answers on. */
    int order[4][2], done[4][2];
    pid_t kids[4];
    for (int k = 0; k < 4; k++) {
        if (pipe(order[k]) || pipe(done[k])) return 2;
        kids[k] = fork();
        if (kids[k] < 0) return 2;
        if (kids[k] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            int wrote = 0;
            char c;
            while (read(order[k][0], &c, 1) == 1) {
                if (c == 'w') {
                    memset(area, 0x5a, len);
                    wrote = 1;
                } else {
                    check(wrote ? 0x5a : -1);
                }
                if (write(done[k][1], "x", 1) != 1) return 2;
            }
            return 0;
        }
    }
    /* Every child runs (and has read nothing of the area yet it could have changed). */
    printf("ready %d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4)) {
            printf("pong\n");
            continue;
        }
        char c = !strncmp(line, "write", 5) ? 'w' : 'c';
        if (c == 'c') check(-1);
        for (int k = 0; k < 4; k++) {
            if (c == 'w' && k > 0) break;
            char x;
            if (write(order[k][1], &c, 1) != 1 || read(done[k][0], &x, 1) != 1) {
                printf("bad: child %d is gone\n", kids[k]);
                return 1;
            }
        }
        if (c == 'w') printf("wrote\n");
        if (c == 'c') {
            printf("ok\n");
            return 0;
        }
    }
    return 0;
}
