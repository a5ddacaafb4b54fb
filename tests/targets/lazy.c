/* Lazy restore target: memory whose pages a lazy restore brings in while the process already
 * runs, and everything the process may do to it meanwhile. argv[1]: MiB of the big area.
 * Prints "ready PID", waits for a line on stdin, then at once, before the pages can all be in:
 * forks a child that checks the big area (its exit status says), moves an area with mremap,
 * drops one with MADV_DONTNEED (it must read as zero, not as the image's), unmaps one and maps
 * fresh memory there (zero), has the kernel read one (write to a pipe) and write into one
 * (read from the pipe), and checks the big area from two threads at once. Prints "ok" or
 * "FAIL: what", then waits for a line and exits. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int fails;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; } } while (0)

static unsigned char pat(unsigned long i, int salt) { return (unsigned char)(i * 131 + salt * 7 + (i >> 12)); }
static void fill(unsigned char *p, size_t n, int salt) { for (size_t i = 0; i < n; i++) p[i] = pat(i, salt); }
/* The first byte that differs, or -1. */
static long differs(const unsigned char *p, size_t n, int salt) {
    for (size_t i = 0; i < n; i++) if (p[i] != pat(i, salt)) return (long)i;
    return -1;
}
static int zero(const unsigned char *p, size_t n) { for (size_t i = 0; i < n; i++) if (p[i]) return 0; return 1; }

static unsigned char *big;
static size_t big_len;

static void *half(void *arg) {
    long which = (long)arg;
    size_t h = big_len / 2;
    long at = differs(big + which * h, h, 1);
    return (void *)(at < 0 ? 0L : (long)(which * h + at + 1));
}

static void *anon(size_t n) {
    void *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    const size_t mib = 1 << 20, small = 8 * mib;
    big_len = (argc > 1 ? strtoul(argv[1], 0, 10) : 256) * mib;
    /* The small areas first: higher addresses, so that the background copy, which goes up
     * from the lowest, comes to them last. */
    unsigned char *moved = anon(small), *dropped = anon(small), *unmapped = anon(small), *out = anon(small),
                  *in = anon(small);
    big = anon(big_len);
    fill(moved, small, 2); fill(dropped, small, 3); fill(unmapped, small, 4); fill(out, small, 5);
    fill(in, small, 6); fill(big, big_len, 1);
    /* Some heap, too. */
    size_t heap_len = 4 * mib;
    unsigned char *heap = malloc(heap_len);
    fill(heap, heap_len, 7);
    int p[2];
    if (pipe(p)) { perror("pipe"); return 2; }
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 3;

    pid_t kid = fork();
    if (kid == 0) _exit(differs(big, big_len, 1) < 0 && differs(out, small, 5) < 0 ? 0 : 1);
    unsigned char *to = mmap(0, small, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *m = mremap(moved, small, small, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    CHECK(m == to, "mremap");
    CHECK(madvise(dropped, small, MADV_DONTNEED) == 0, "madvise");
    CHECK(munmap(unmapped, small) == 0, "munmap");
    unsigned char *again = mmap(unmapped, small, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(again == unmapped, "mmap again");
    /* The kernel reads `out` (write) and writes `in` (read): 64 KiB through the pipe. */
    size_t n = 65536;
    CHECK(write(p[1], out + small - n, n) == (ssize_t)n, "write from the area");
    CHECK(read(p[0], in + small - n, n) == (ssize_t)n, "read into the area");
    pthread_t t[2];
    for (long i = 0; i < 2; i++) pthread_create(&t[i], 0, half, (void *)i);
    long at;
    CHECK((at = differs(m, small, 2)) < 0, "moved area differs at %ld", at);
    CHECK(zero(dropped, small), "dropped area not zero");
    CHECK(zero(again, small), "remapped area not zero");
    CHECK(memcmp(in + small - n, out + small - n, n) == 0, "what came through the pipe differs");
    CHECK((at = differs(out, small, 5)) < 0, "area written from differs at %ld", at);
    CHECK((at = differs(in, small - n, 6)) < 0, "area read into differs at %ld", at);
    CHECK((at = differs(heap, heap_len, 7)) < 0, "heap differs at %ld", at);
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(t[i], &r);
        CHECK(r == 0, "big area differs at %ld (thread %d)", (long)r - 1, i);
    }
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child saw other memory (status %#x)", st);
    printf(fails ? "FAIL\n" : "ok\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 3;
    return fails != 0;
}
