/* Live migration target: keeps writing its memory at a steady rate, each page in a form it
 * can check, and measures how long it was stopped.
 * argv[1]: log file; argv[2]: MiB of memory; argv[3]: MB/s written (pages rewritten whole, at
 * random); argv[4] (optional) "seq": the pages in order instead, round and round (a
 * writer going through its memory, a scan); "churn": also drops pages (MADV_DONTNEED, every other one
 * then read so the zero page is mapped) and maps a side area afresh over itself (MAP_FIXED) now and then;
 * "grow": also allocates a block of 4000 bytes with malloc at each write (up to 16384 of them),
 * each filled in a form it can check, its heap grown (brk) by no more than each needs: it
 * keeps growing while it runs, at nearly every write;
 * "uffd": holds a userfaultfd of its own, its side area registered with it (missing pages);
 * "fork": forks a child once its memory is filled, which makes every page its own (written
 * again), then writes them the same way (another sequence of pages), logs "forked PID" and
 * answers SIGUSR1 as the parent does (and dies with the parent); "cow": the same, but the
 * child leaves its pages shared with the parent until it writes them; "shm": the same, but its
 * memory (and the record of each page's generation) is MAP_SHARED anonymous memory both
 * write, the parent the even pages, the child the odd ones, each checking its own;
 * "file" (argv[5]: a path): also writes FILE_PAGES pages to that file, each in a form it can
 * check, and maps the file privately, then keeps rewriting the first eighth of those pages as
 * it does its memory (copied on write: its own), the others left as the file has them;
 * "file-touch": the same, and sets the file's times to now every 10 ms (its content unchanged).
 * It also reserves 512 MiB it touches one page of.
 * On SIGUSR1 it checks every page against its own record and logs
 * "ok writes=N gap_us=G blocks=B" (G: the longest time between two turns of its loop since the last
 * check, CLOCK_MONOTONIC) or "BAD ...". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define SIDE_PAGES 64
#define FILE_PAGES 8192
#define FILE_GEN 0x5eed
#define ZERO 0xffffffffu

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

/* Page i of generation g: its index, its generation, then bytes that depend on both. */
static void fill(unsigned char *p, uint64_t i, uint32_t g) {
    memcpy(p, &i, 8);
    memcpy(p + 8, &g, 4);
    for (int k = 12; k < PAGE; k++) p[k] = (unsigned char)(i * 31 + g * 7 + k);
}

static int good(const unsigned char *p, uint64_t i, uint32_t g) {
    if (g == ZERO) {
        for (int k = 0; k < PAGE; k++)
            if (p[k]) return 0;
        return 1;
    }
    unsigned char want[PAGE];
    fill(want, i, g);
    return memcmp(p, want, PAGE) == 0;
}

int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    int log = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    size_t pages = ((size_t)atol(argc > 2 ? argv[2] : "64") << 20) / PAGE;
    double rate = atof(argc > 3 ? argv[3] : "10") * 1e6 / PAGE; /* pages per second */
    int churn = argc > 4 && strcmp(argv[4], "churn") == 0;
    int seq = argc > 4 && strcmp(argv[4], "seq") == 0;
    int grow = argc > 4 && strcmp(argv[4], "grow") == 0;
    /* The blocks grown: their addresses kept off the heap. */
    enum { BLOCKS = 16384, BLOCK = 4000 };
    unsigned char **blocks = mmap(0, BLOCKS * sizeof *blocks, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t nblocks = 0;
    if (blocks == MAP_FAILED) return 1;
    /* The heap grown by as little as each block needs: brk at nearly every write. */
    if (grow) mallopt(M_TOP_PAD, 0);
    int shm = argc > 4 && strcmp(argv[4], "shm") == 0;
    int kind = shm ? MAP_SHARED : MAP_PRIVATE;
    unsigned char *mem = mmap(0, pages * PAGE, PROT_READ | PROT_WRITE, kind | MAP_ANONYMOUS, -1, 0);
    unsigned char *side = mmap(0, SIDE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* Reserved and hardly touched, as allocators and runtimes reserve: not to be copied. */
    unsigned char *reserve = mmap(0, 512ul << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserve == MAP_FAILED) return 1;
    reserve[12345] = 1;
    uint32_t *gen = mmap(0, pages * sizeof *gen, PROT_READ | PROT_WRITE, kind | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || side == MAP_FAILED || gen == MAP_FAILED) return 1;
    for (size_t i = 0; i < pages; i++) fill(mem + i * PAGE, i, 0);
    uint32_t side_gen = 0;
    for (size_t i = 0; i < SIDE_PAGES; i++) fill(side + i * PAGE, i, side_gen);
    int touch = argc > 5 && strcmp(argv[4], "file-touch") == 0;
    unsigned char *fmem = 0;
    uint32_t *fgen = 0;
    if (argc > 5 && (touch || strcmp(argv[4], "file") == 0)) {
        int fd = open(argv[5], O_RDWR | O_CREAT | O_TRUNC, 0600);
        unsigned char page[PAGE];
        for (size_t i = 0; fd >= 0 && i < FILE_PAGES; i++) {
            fill(page, i, FILE_GEN);
            if (write(fd, page, PAGE) != PAGE) return 7;
        }
        fmem = mmap(0, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        fgen = mmap(0, FILE_PAGES * sizeof *fgen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (fd < 0 || fmem == MAP_FAILED || fgen == MAP_FAILED) return 7;
        close(fd);
        for (size_t i = 0; i < FILE_PAGES; i++) fgen[i] = FILE_GEN;
    }
    uint64_t touched = 0;
    if (argc > 4 && strcmp(argv[4], "uffd") == 0) {
        int u = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        struct uffdio_api api = {.api = UFFD_API};
        struct uffdio_register r = {.range = {(unsigned long)side, SIDE_PAGES * PAGE},
                                    .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (u < 0 || ioctl(u, UFFDIO_API, &api) || ioctl(u, UFFDIO_REGISTER, &r)) return 4;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    uint64_t seed = 88172645463325252ull, writes = 0, gap = 0;
    int cow = argc > 4 && strcmp(argv[4], "cow") == 0;
    size_t child = 0;
    if (cow || shm || (argc > 4 && strcmp(argv[4], "fork") == 0)) {
        pid_t k = fork();
        if (k < 0) return 5;
        if (k == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            child = 1;
            /* Its own copy of every page (written again, the same): nothing shared since the
             * fork, as workers that computed their own data. */
            if (!cow && !shm)
                for (size_t i = 0; i < pages; i++) fill(mem + i * PAGE, i, 0);
            seed = 1181783497276652981ull;
            dprintf(log, "forked %d\n", getpid());
        }
    }
    uint64_t start = now_ns(), last = start;
    if (seed == 88172645463325252ull) dprintf(log, "ready %d\n", getpid());
    for (;;) {
        uint64_t t = now_ns();
        if (t - last > gap) gap = t - last;
        last = t;
        if (asked) {
            asked = 0;
            size_t bad = pages;
            for (size_t i = 0; i < pages && bad == pages; i++)
                if ((!shm || i % 2 == child) && !good(mem + i * PAGE, i, gen[i])) bad = i;
            size_t block_bad = nblocks;
            for (size_t b = 0; b < nblocks && block_bad == nblocks; b++)
                for (size_t k = 0; k < BLOCK; k++)
                    if (blocks[b][k] != (unsigned char)(b * 13 + k)) {
                        block_bad = b;
                        break;
                    }
            size_t side_bad = SIDE_PAGES;
            for (size_t i = 0; i < SIDE_PAGES && side_bad == SIDE_PAGES; i++)
                if (!good(side + i * PAGE, i, side_gen == 0 || i % 2 == 0 ? side_gen : ZERO)) side_bad = i;
            size_t file_bad = FILE_PAGES;
            for (size_t i = 0; fmem && i < FILE_PAGES && file_bad == FILE_PAGES; i++)
                if (!good(fmem + i * PAGE, i, fgen[i])) file_bad = i;
            if (reserve[12345] != 1 || reserve[1 << 20])
                dprintf(log, "BAD reserve pid %d\n", getpid());
            else if (bad < pages)
                dprintf(log, "BAD page %zu (generation %u) pid %d\n", bad, gen[bad], getpid());
            else if (block_bad < nblocks)
                dprintf(log, "BAD block %zu of %zu pid %d\n", block_bad, nblocks, getpid());
            else if (fmem && file_bad < FILE_PAGES)
                dprintf(log, "BAD file page %zu (generation %u) pid %d\n", file_bad, fgen[file_bad], getpid());
            else if (side_bad < SIDE_PAGES)
                dprintf(log, "BAD side page %zu (generation %u) pid %d\n", side_bad, side_gen, getpid());
            else
                dprintf(log, "ok writes=%llu gap_us=%llu blocks=%zu pid %d\n", (unsigned long long)writes,
                        (unsigned long long)(gap / 1000), nblocks, getpid());
            gap = 0;
            last = now_ns();
            continue;
        }
        /* As many writes as the rate asks by now, then a short sleep. */
        uint64_t due = (uint64_t)((double)(t - start) * 1e-9 * rate);
        while (writes < due) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            size_t i = seq ? writes % pages : seed % pages;
            if (shm) i = ((i & ~(size_t)1) | child) % pages;
            gen[i] = gen[i] == ZERO ? 1 : gen[i] + 1;
            fill(mem + i * PAGE, i, gen[i]);
            writes++;
            if (fmem && writes % 4 == 0) {
                size_t j = (seed >> 24) % (FILE_PAGES / 8);
                fill(fmem + j * PAGE, j, ++fgen[j]);
            }
            if (grow && nblocks < BLOCKS) {
                unsigned char *b = malloc(BLOCK);
                if (!b) return 6;
                for (size_t k = 0; k < BLOCK; k++) b[k] = (unsigned char)(nblocks * 13 + k);
                blocks[nblocks++] = b;
            }
            if (churn && writes % 97 == 0) {
                size_t j = (seed >> 20) % pages;
                madvise(mem + j * PAGE, PAGE, MADV_DONTNEED);
                gen[j] = ZERO;
                /* Every other one read again: a read maps the zero page, which no write
                 * marks; the others stay dropped, no page there at all. */
                if (writes % 194 == 0 && *(volatile unsigned char *)(mem + j * PAGE + 100)) return 2;
            }
            if (churn && writes % 1009 == 0) {
                side = mmap(side, SIDE_PAGES * PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                if (side == MAP_FAILED) return 3;
                side_gen++;
                /* Every other page written again: the others read as zero. */
                for (size_t k = 0; k < SIDE_PAGES; k += 2) fill(side + k * PAGE, k, side_gen);
            }
        }
        if (touch && t - touched > 10000000ull) {
            utimensat(AT_FDCWD, argv[5], 0, 0);
            touched = t;
        }
        struct timespec s = {0, 200 * 1000};
        nanosleep(&s, 0);
    }
}
