/* Programs for a shell pipeline of the test's own:
 *   pipeline producer        prints 1, 2, 3... one a line, a line every 2 ms
 *   pipeline filter          reads numbers, prints each doubled
 *   pipeline consumer FILE   reads numbers, appends each to FILE (flushed), and stops with
 *                            "bad" in FILE if one is not the previous plus 2
 *   pipeline zombie          forks a child that exits 3 at once, writes the child's pid to
 *                            zombie.pid, leaves it a zombie until the file "reap" appears,
 *                            then reaps it and writes "reaped STATUS" to zombie.out */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    char line[64];
    if (!strcmp(mode, "producer")) {
        struct timespec t = { 0, 2 * 1000 * 1000 };
        for (long i = 1;; i++) {
            printf("%ld\n", i);
            fflush(stdout);
            nanosleep(&t, NULL);
        }
    }
    if (!strcmp(mode, "filter")) {
        while (fgets(line, sizeof line, stdin)) {
            printf("%ld\n", 2 * atol(line));
            fflush(stdout);
        }
        return 0;
    }
    if (!strcmp(mode, "consumer") && argc > 2) {
        FILE *f = fopen(argv[2], "a");
        long last = 0;
        while (f && fgets(line, sizeof line, stdin)) {
            long v = atol(line);
            if (v != last + 2) {
                fprintf(f, "bad: %ld after %ld\n", v, last);
                fclose(f);
                return 1;
            }
            fprintf(f, "%ld\n", v);
            fflush(f);
            last = v;
        }
        return 0;
    }
    if (!strcmp(mode, "zombie")) {
        pid_t k = fork();
        if (k == 0) _exit(3);
        FILE *p = fopen("zombie.pid", "w");
        if (!p) return 2;
        fprintf(p, "%d\n", k);
        fclose(p);
        while (access("reap", F_OK)) usleep(20000);
        int st = 0;
        pid_t r = waitpid(k, &st, WNOHANG);
        FILE *o = fopen("zombie.out", "w");
        if (!o) return 2;
        fprintf(o, "reaped %d status %d\n", r == k, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        fclose(o);
        return 0;
    }
    fprintf(stderr, "usage: pipeline producer|filter|consumer FILE|zombie\n");
    return 2;
}
