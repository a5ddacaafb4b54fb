/* Benchmark target: N MiB of anonymous memory, every page written, then idle; with a second
 * argument M, M MiB mapped of which only the first N are written (a sparse process). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    close_range(3, ~0U, 0); /* hold only stdio: fds inherited from the caller are not ours */
    size_t n = (size_t)atol(argc > 1 ? argv[1] : "64") << 20;
    size_t mapped = argc > 2 ? (size_t)atol(argv[2]) << 20 : n;
    unsigned char *p = mmap(0, mapped > n ? mapped : n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)(i >> 12) | 1;
    for (;;) pause();
}
