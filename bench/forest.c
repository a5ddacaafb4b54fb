/* A process tree for bench/trees.sh: `forest N MIB [cow]`: this process and N-1 children,
 * each with MIB MiB of anonymous memory it wrote itself; with "cow", only this process writes
 * its MIB MiB, before forking, and the children share them copy-on-write. Prints "ready PID"
 * once every child has written its memory, then waits for a line on stdin (the children wait
 * forever; each dies with its parent). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

static void *dirty(size_t mib, int seed) {
    size_t len = mib << 20;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) exit(2);
    for (size_t i = 0; i < len; i += 64) p[i] = (unsigned char)(i >> 6) + seed;
    return p;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    size_t mib = argc > 2 ? strtoul(argv[2], 0, 10) : 16;
    int cow = argc > 3 && !strcmp(argv[3], "cow");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (cow) dirty(mib, 0);
    int p[2];
    if (pipe(p)) return 2;
    for (int i = 1; i < n; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(p[0]);
            if (!cow) dirty(mib, i);
            close(p[1]);
            for (;;) pause();
        }
    }
    close(p[1]);
    if (!cow) dirty(mib, 0);
    char b;
    while (read(p[0], &b, 1) > 0) {} /* EOF: every child has written its memory */
    close(p[0]);
    printf("ready %d\n", getpid());
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
