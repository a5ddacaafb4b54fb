/* Memory target: sets up every kind of memory a process has, waits on stdin, then proves that
 * all of it (contents, addresses, protections, mm layout) is what it was. Prints "ok" or
 * "FAIL: what". argv[1]: a directory for its data file; argv[2] (optional): MiB of a sparse
 * mapping to touch 1 page in 256 of; argv[3] (optional), comma-separated: "exe" checks that
 * /proc/self/exe is unchanged, "thp" disables transparent huge pages (PR_SET_THP_DISABLE),
 * "rlim" lowers a few resource limits, "zero" reads 64 MiB it never writes but one byte, "files"
 * maps 100 files of its own (more than a restore opens at once), each privately and every third
 * one shared too, written through. Whatever THP setting and resource limits it starts
 * with must be the ones it ends with. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static int fails;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; } } while (0)

static unsigned char pat(unsigned long i, int salt) { return (unsigned char)(i * 131 + salt * 7 + (i >> 12)); }
static void fill(unsigned char *p, size_t n, int salt) { for (size_t i = 0; i < n; i++) p[i] = pat(i, salt); }
static int same(const unsigned char *p, size_t n, int salt) { for (size_t i = 0; i < n; i++) if (p[i] != pat(i, salt)) return 0; return 1; }

static char *slurp(const char *path, size_t *len) {
    static char buf[3][65536]; static int k;
    char *b = buf[k++ % 3];
    int fd = open(path, O_RDONLY); ssize_t n = fd >= 0 ? read(fd, b, sizeof buf[0]) : -1;
    if (fd >= 0) close(fd);
    *len = n < 0 ? 0 : (size_t)n;
    return b;
}

/* The /proc/self/maps lines of [heap], [vdso], [vvar*] (range, perms, name) concatenated. */
static void special_lines(char *out, size_t cap) {
    size_t n; char *m = slurp("/proc/self/maps", &n);
    m[n < 65535 ? n : 65535] = 0;
    out[0] = 0;
    for (char *l = strtok(m, "\n"); l; l = strtok(0, "\n")) {
        if (!strstr(l, "[heap]") && !strstr(l, "[vdso]") && !strstr(l, "[vvar")) continue;
        char range[64], perms[8], *name = strrchr(l, ' ');
        if (sscanf(l, "%63s %7s", range, perms) != 2 || !name) continue;
        snprintf(out + strlen(out), cap - strlen(out), "%s %s%s;", range, perms, name);
    }
}

int main(int argc, char **argv) {
    const long pg = 4096;
    char path[4096];
    snprintf(path, sizeof path, "%s/mapped.dat", argc > 1 ? argv[1] : ".");
    unsigned long sparse_mib = argc > 2 ? strtoul(argv[2], 0, 10) : 64;
    const char *opts = argc > 3 ? argv[3] : "";
    if (strstr(opts, "thp")) prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    int thp0 = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    if (strstr(opts, "rlim")) {
        struct rlimit nofile = {64, 4096}, core = {0, 1 << 20}, nproc = {1000, 2000};
        setrlimit(RLIMIT_NOFILE, &nofile);
        setrlimit(RLIMIT_CORE, &core);
        setrlimit(RLIMIT_NPROC, &nproc);
    }
    struct rlimit lim0[RLIM_NLIMITS];
    for (int r = 0; r < RLIM_NLIMITS; r++) getrlimit(r, &lim0[r]);

    /* heap (malloc: brk) and a big malloc (mmap) */
    unsigned char *heap = malloc(100000); fill(heap, 100000, 1);
    unsigned char *big = malloc(3 << 20); fill(big, 3 << 20, 2);
    /* brk moved by hand */
    unsigned char *brk0 = sbrk(0); unsigned char *b = sbrk(3 * pg); fill(b, 3 * pg, 3); void *brk1 = sbrk(0);
    /* stack */
    unsigned char stack[20000]; fill(stack, sizeof stack, 4);
    /* anonymous private, read-only after filling, PROT_NONE with data, and a guard */
    unsigned char *ro = mmap(0, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(ro, 4 * pg, 5); mprotect(ro, 4 * pg, PROT_READ);
    unsigned char *none = mmap(0, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(none, 2 * pg, 6); mprotect(none, 2 * pg, PROT_NONE);
    /* shared anonymous */
    unsigned char *shm = mmap(0, 5 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    fill(shm, 5 * pg, 7);
    /* file-backed private mapping with modified pages */
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    unsigned char fbuf[4 * 4096]; fill(fbuf, sizeof fbuf, 8);
    if (write(fd, fbuf, sizeof fbuf) != sizeof fbuf) { printf("FAIL: write\n"); return 1; }
    unsigned char *fmap = mmap(0, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    fmap[pg + 10] = 0xAB; fmap[3 * pg] = 0xCD; /* two pages modified, two untouched */
    /* sparse: a big mapping with one page in 256 touched */
    size_t slen = sparse_mib << 20;
    unsigned char *sparse = mmap(0, slen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    for (size_t off = 0; off < slen; off += 256 * pg) sparse[off] = (unsigned char)(off >> 20) | 1;
    /* "zero": 64 MiB only read (the shared zero page), but one page written */
    size_t zlen = strstr(opts, "zero") ? 64ul << 20 : pg;
    unsigned char *zread = mmap(0, zlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t off = 0; off < zlen; off += pg) CHECK(((volatile unsigned char *)zread)[off] == 0, "fresh page");
    zread[zlen / 2 + 7] = 0x77;
    /* "files": many files mapped, each at its own place in it (page i of file i differs) */
    enum { NFILES = 100 };
    unsigned char *fpriv[NFILES] = {0}, *fshared[NFILES] = {0};
    if (strstr(opts, "files")) {
        for (int i = 0; i < NFILES; i++) {
            char fp[4200]; snprintf(fp, sizeof fp, "%s/many%d.dat", argc > 1 ? argv[1] : ".", i);
            int f = open(fp, O_RDWR | O_CREAT | O_TRUNC, 0644);
            unsigned char page[2 * 4096]; fill(page, sizeof page, 20 + i);
            if (f < 0 || write(f, page, sizeof page) != sizeof page) { printf("FAIL: write %s\n", fp); return 1; }
            fpriv[i] = mmap(0, 2 * pg, PROT_READ, MAP_PRIVATE, f, 0);
            if (i % 3 == 0) {
                fshared[i] = mmap(0, pg, PROT_READ | PROT_WRITE, MAP_SHARED, f, pg);
                if (fshared[i] != MAP_FAILED) fshared[i][5] = (unsigned char)(0xE0 + i % 16);
            }
            close(f);
            CHECK(fpriv[i] != MAP_FAILED && fshared[i] != MAP_FAILED, "mmap %s", fp);
        }
    }
    volatile long counter = 41;

    size_t n1, n2;
    char cmd0[65536], env0[65536], exe0[4096];
    char *c = slurp("/proc/self/cmdline", &n1); memcpy(cmd0, c, n1);
    char *e = slurp("/proc/self/environ", &n2); memcpy(env0, e, n2);
    ssize_t xl = readlink("/proc/self/exe", exe0, sizeof exe0 - 1); exe0[xl < 0 ? 0 : xl] = 0;
    /* the maps lines of the special areas: where and what they are */
    char special0[4096]; special_lines(special0, sizeof special0);
    int cpu0 = sched_getcpu();

    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }

    char special1[4096]; special_lines(special1, sizeof special1);
    CHECK(strcmp(special0, special1) == 0, "heap/vdso/vvar moved: %s -> %s", special0, special1);
    counter++;
    CHECK(counter == 42, "counter %ld", counter);
    CHECK(same(heap, 100000, 1), "heap");
    CHECK(same(big, 3 << 20, 2), "big malloc");
    CHECK(same(b, 3 * pg, 3), "brk area");
    CHECK(sbrk(0) == brk1, "brk %p != %p (start %p)", sbrk(0), brk1, (void *)brk0);
    unsigned char *more = sbrk(pg); CHECK(more == brk1, "sbrk grows from the old break"); if (more != (void *)-1) more[0] = 1;
    CHECK(same(stack, sizeof stack, 4), "stack");
    CHECK(same(ro, 4 * pg, 5), "read-only mapping");
    mprotect(none, 2 * pg, PROT_READ);
    CHECK(same(none, 2 * pg, 6), "PROT_NONE mapping content");
    CHECK(same(shm, 5 * pg, 7), "shared anonymous");
    CHECK(fmap[pg + 10] == 0xAB && fmap[3 * pg] == 0xCD, "modified file pages");
    fmap[pg + 10] = fbuf[pg + 10]; fmap[3 * pg] = fbuf[3 * pg];
    CHECK(memcmp(fmap, fbuf, sizeof fbuf) == 0, "file mapping content");
    for (int i = 0; i < NFILES && fpriv[i]; i++) {
        unsigned char want[2 * 4096]; fill(want, sizeof want, 20 + i);
        if (fshared[i]) want[4096 + 5] = (unsigned char)(0xE0 + i % 16);
        if (memcmp(fpriv[i], want, sizeof want) != 0) { CHECK(0, "mapped file %d", i); break; }
        if (fshared[i] && memcmp(fshared[i], want + 4096, 4096) != 0) { CHECK(0, "shared mapped file %d", i); break; }
        if (fshared[i]) fshared[i][6] = 1; /* still writable */
    }
    for (size_t off = 0; off < slen; off += 256 * pg)
        if (sparse[off] != ((unsigned char)(off >> 20) | 1)) { CHECK(0, "sparse at %zu", off); break; }
    CHECK(sparse[pg] == 0, "untouched sparse page is zero");
    for (size_t off = 0; off < zlen; off++)
        if (zread[off] != (off == zlen / 2 + 7 ? 0x77 : 0)) { CHECK(0, "read-only page at %zu", off); break; }
    /* a child of the restored process still forks and shares MAP_SHARED memory */
    pid_t kid = fork();
    if (kid == 0) { shm[0] = 0x5A; _exit(0); }
    int st; waitpid(kid, &st, 0);
    CHECK(shm[0] == 0x5A, "MAP_SHARED stays shared with a child after restore");

    c = slurp("/proc/self/cmdline", &n1); CHECK(memcmp(c, cmd0, n1) == 0, "cmdline");
    e = slurp("/proc/self/environ", &n2); CHECK(memcmp(e, env0, n2) == 0, "environ");
    char exe1[4096]; xl = readlink("/proc/self/exe", exe1, sizeof exe1 - 1); exe1[xl < 0 ? 0 : xl] = 0;
    if (strstr(opts, "exe")) CHECK(strcmp(exe0, exe1) == 0, "exe %s != %s", exe1, exe0);
    int thp1 = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    CHECK(thp1 == thp0, "PR_GET_THP_DISABLE %d, was %d", thp1, thp0);
    for (int r = 0; r < RLIM_NLIMITS; r++) {
        struct rlimit l; getrlimit(r, &l);
        CHECK(l.rlim_cur == lim0[r].rlim_cur && l.rlim_max == lim0[r].rlim_max, "resource limit %d: %llu/%llu, was %llu/%llu",
              r, (unsigned long long)l.rlim_cur, (unsigned long long)l.rlim_max,
              (unsigned long long)lim0[r].rlim_cur, (unsigned long long)lim0[r].rlim_max);
    }
    CHECK(getenv("HOME") || 1, "libc works");
    int cpu1 = sched_getcpu(); CHECK(cpu1 >= 0 && cpu0 >= 0, "sched_getcpu (rseq) %d", cpu1);
    char *big2 = malloc(5 << 20); CHECK(big2 != 0, "malloc after restore"); memset(big2, 1, 5 << 20); free(big2);

    if (!fails) printf("ok uid=%d gid=%d\n", (int)getuid(), (int)getgid());
    fflush(stdout);
    return fails != 0;
}
