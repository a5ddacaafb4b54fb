/* Attributes target: sets every per-process property crs restores that is neither memory
 * content, files nor signals (scheduling, affinity, I/O priority, timer slack, OOM score,
 * login uid, child subreaper, membarrier, KSM, machine-check policy, TSC, speculation
 * controls, THP, resource limits, madvise/mlock flags, a shared file mapping that may become
 * writable), prints "ready PID", waits for a line on stdin, then reads every one of them back
 * and prints "ok" or one "FAIL: what" per difference. argv[1]: a directory for its file.
 * What the kernel or our privileges do not allow is left at its default, and so must stay. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif

struct attr { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio; uint64_t rt, dl, per; uint32_t umin, umax; };

#define NAREA 9
static const char *area_name[NAREA] = {"dontdump", "dontfork", "hugepage", "nohugepage", "wipeonfork", "mergeable", "locked", "lockonfault", "droppable"};
static char *area[NAREA];
static const long pg = 4096;

static long slurp_num(const char *path) {
    char b[64] = {0}; int fd = open(path, O_RDONLY);
    if (fd < 0) return -99999;
    ssize_t n = read(fd, b, sizeof b - 1); close(fd);
    return n > 0 ? strtol(b, 0, 10) : -99999;
}

/* The smaps header line (`what` 0: its name, the 6th field) or the VmFlags line (`what` 1)
 * of the mapping that starts at `a`; empty if there is none. */
static void mapping(char *a, int what, char *out, size_t cap) {
    static char buf[1 << 20];
    int fd = open("/proc/self/smaps", O_RDONLY); ssize_t n = 0, r;
    while (fd >= 0 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += r;
    if (fd >= 0) close(fd);
    buf[n] = 0;
    char key[32]; snprintf(key, sizeof key, "%lx-", (unsigned long)a);
    out[0] = 0;
    for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : 0) {
        if (strncmp(l, key, strlen(key)) != 0) continue;
        char *v = l;
        if (what) v = strstr(l, "VmFlags:");
        else for (int f = 0; f < 5 && v; f++) v = strchr(v, ' '), v = v ? v + strspn(v, " ") : 0;
        if (!v) return;
        char *e = strchr(v, '\n'); size_t len = e ? (size_t)(e - v) : strlen(v);
        snprintf(out, cap, "%.*s", (int)len, v);
        return;
    }
}

static char *named;

/* Everything, one "name=value" item after another. */
static void snap(char *s, size_t cap) {
    size_t n = 0;
#define ADD(...) n += snprintf(s + n, cap - n, __VA_ARGS__)
    struct attr a = {0};
    syscall(SYS_sched_getattr, 0, &a, sizeof a, 0);
    ADD("sched=%u/%llu/%d/%u/%u-%u;", a.policy, (unsigned long long)a.flags, a.nice, a.prio, a.umin, a.umax);
    ADD("nice=%d;", getpriority(PRIO_PROCESS, 0));
    cpu_set_t set; CPU_ZERO(&set); sched_getaffinity(0, sizeof set, &set);
    ADD("cpus=%d:%d;", CPU_COUNT(&set), CPU_ISSET(0, &set));
    ADD("ioprio=%ld;", syscall(SYS_ioprio_get, 1, 0));
    ADD("slack=%d;", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
    ADD("oom=%ld;", slurp_num("/proc/self/oom_score_adj"));
    ADD("loginuid=%ld;", slurp_num("/proc/self/loginuid"));
    char cf[32] = {0}; int cfd = open("/proc/self/coredump_filter", O_RDONLY);
    if (cfd >= 0) { read(cfd, cf, sizeof cf - 1); close(cfd); }
    ADD("coredump_filter=%.8s;", cf);
    int sub = -1; prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0);
    ADD("subreaper=%d;", sub);
    ADD("membarrier=%ld;", syscall(SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0));
    ADD("ksm=%d;", prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0));
    ADD("mce=%d;", prctl(PR_MCE_KILL_GET, 0, 0, 0, 0));
    int tsc = -1; prctl(PR_GET_TSC, &tsc, 0, 0, 0);
    ADD("tsc=%d;", tsc);
    for (int w = 0; w < 3; w++) ADD("spec%d=%d;", w, prctl(PR_GET_SPECULATION_CTRL, w, 0, 0, 0));
    ADD("thp=%d;", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
    for (int r = 0; r < RLIM_NLIMITS; r++) {
        struct rlimit l; getrlimit(r, &l);
        ADD("rlim%d=%llu/%llu;", r, (unsigned long long)l.rlim_cur, (unsigned long long)l.rlim_max);
    }
    for (int i = 0; i < NAREA; i++) {
        char f[512]; mapping(area[i], 1, f, sizeof f);
        ADD("%s=%s;", area_name[i], area[i] == MAP_FAILED ? "none" : f);
    }
    char nm[256]; mapping(named, 0, nm, sizeof nm);
    ADD("named=%s;", nm);
#undef ADD
}

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/attrs.dat", argc > 1 ? argv[1] : ".");
    int root = geteuid() == 0;

    struct attr a = {sizeof a, SCHED_BATCH, 1 /* SCHED_FLAG_RESET_ON_FORK */, 5, 0, 0, 0, 0, 0, 1024};
    if (syscall(SYS_sched_setattr, 0, &a, 0)) perror("sched_setattr");
    cpu_set_t one; CPU_ZERO(&one); CPU_SET(0, &one); sched_setaffinity(0, sizeof one, &one);
    syscall(SYS_ioprio_set, 1, 0, (2 << 13) | 6);
    prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY); if (fd >= 0) { write(fd, "321", 3); close(fd); }
    if (root) { fd = open("/proc/self/loginuid", O_WRONLY); if (fd >= 0) { write(fd, "4242", 4); close(fd); } }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
    if (root) prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0);
    prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0);
    prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0);
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    fd = open("/proc/self/coredump_filter", O_WRONLY); if (fd >= 0) { write(fd, "0x7b", 4); close(fd); }
    struct rlimit nofile = {64, 4096}, core = {0, 1 << 20}, nproc = {1000, 2000};
    setrlimit(RLIMIT_NOFILE, &nofile); setrlimit(RLIMIT_CORE, &core); setrlimit(RLIMIT_NPROC, &nproc);

    int adv[NAREA] = {MADV_DONTDUMP, MADV_DONTFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_WIPEONFORK, MADV_MERGEABLE, 0, 0, 0};
    for (int i = 0; i < NAREA; i++) {
        int flags = i == 8 ? MAP_DROPPABLE | MAP_ANONYMOUS : MAP_PRIVATE | MAP_ANONYMOUS;
        area[i] = mmap(0, 4 * pg, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (area[i] == MAP_FAILED) continue; /* MAP_DROPPABLE before Linux 6.11 */
        memset(area[i], 'a' + i, 4 * pg);
        if (adv[i]) madvise(area[i], 4 * pg, adv[i]);
    }
    named = mmap(0, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, named, 2 * pg, "crs-named");
    mlock(area[6], 4 * pg);
    mlock2(area[7], 4 * pg, MLOCK_ONFAULT);

    /* A shared mapping of a file opened for writing, mapped read-only for now. */
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 2 * pg)) { printf("FAIL: %s\n", path); return 1; }
    char *shared = mmap(0, 2 * pg, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);

    prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0); /* last: nothing here reads the TSC after it */
    static char s0[1 << 16], s1[1 << 16];
    snap(s0, sizeof s0);
    printf("ready %d\n", getpid());
    printf("state %s\n", s0);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }

    snap(s1, sizeof s1);
    int fails = 0;
    char *p0 = s0, *p1 = s1;
    while (*p0 || *p1) {
        char *e0 = strchr(p0, ';'), *e1 = strchr(p1, ';');
        size_t l0 = e0 ? (size_t)(e0 - p0) : strlen(p0), l1 = e1 ? (size_t)(e1 - p1) : strlen(p1);
        if (l0 != l1 || memcmp(p0, p1, l0)) { printf("FAIL: %.*s, was %.*s\n", (int)l1, p1, (int)l0, p0); fails++; }
        p0 += l0 + (e0 != 0); p1 += l1 + (e1 != 0);
    }
    for (int i = 0; i < NAREA; i++) {
        if (area[i] == MAP_FAILED || i == 8) continue; /* droppable pages may be gone */
        for (long k = 0; k < 4 * pg; k++)
            if (area[i][k] != 'a' + i) { printf("FAIL: %s content at %ld\n", area_name[i], k); fails++; break; }
    }
    if (mprotect(shared, 2 * pg, PROT_READ | PROT_WRITE)) { printf("FAIL: mprotect(PROT_WRITE) of the shared file mapping: %m\n"); fails++; }
    else shared[10] = 'x';
    /* A child sees zeros where the parent has MADV_WIPEONFORK. */
    pid_t kid = fork();
    if (kid == 0) _exit(area[4][0] == 0 ? 0 : 1);
    int st = 0; waitpid(kid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) { printf("FAIL: MADV_WIPEONFORK area not wiped in a child\n"); fails++; }
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
