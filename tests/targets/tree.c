/* A process tree that checks its own relations after a restore.
 *
 * main forks: a zombie that exited 7, a zombie killed by SIGTERM, a worker, a session leader
 * (setsid) with a grandchild in its session, and a group leader (setpgid) with a grandchild in
 * its group. Every live member remembers its pid, parent, group and session, and fills 1 MiB
 * with a pattern of its own; it counts in a loop of short sleeps. Prints "ready" once the
 * zombies are zombies and every member has gone round its loop once. On the line "check" on stdin, main signals each child (SIGUSR1), which
 * signals its own child, reaps it, checks itself and exits 0 if all is as it was (1 otherwise,
 * after a line saying what differs); main reaps them and the two zombies (status 7, SIGTERM)
 * and says "ok" or "bad: ...".
 * All share one open file description, "log" in the current directory, at fd 3 (main has it
 * at fd 4 too, dup'ed): each writes a line there when it starts and when it ends, and main
 * checks at the end that none overwrote another's (one offset for all). Every line has the
 * same length: a copy restored beside the original (same file, same offset) writes its lines
 * where the original writes its own, and whole lines replace whole lines. And a file it
 * unlinked while open, at fd 5 in every member, still reads back. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

/* A member's ids; its group and session by their relation to it and its parent (the tree's
 * root is restored into rstrt's group and session, so absolute values would differ). */
struct ids { pid_t pid, ppid; int group, session; };
static struct ids mine;
static int root;
static int *shared;
static unsigned char *mem;
static const size_t MEM = 1 << 20;

static struct ids now(void) {
    pid_t pid = getpid(), ppid = getppid(), g = getpgrp(), s = getsid(0);
    struct ids i = { pid, root ? 0 : ppid, 0, 0 };
    if (root) return i;
    i.group = g == pid ? 1 : g == ppid ? 2 : g == getpgid(ppid) ? 3 : 4;
    i.session = s == pid ? 1 : s == getsid(ppid) ? 2 : 4;
    return i;
}

static void remember(void) {
    mine = now();
    mem = malloc(MEM);
    for (size_t i = 0; i < MEM; i++) mem[i] = (unsigned char)(i * 7 + mine.pid);
}

/* 0 if this process is as it was; else says what differs. */
static int self_check(const char *name, long counted) {
    struct ids n = now();
    if (memcmp(&n, &mine, sizeof n)) {
        printf("bad %s: pid %d ppid %d group %d session %d, was %d %d %d %d\n", name, n.pid, n.ppid, n.group,
               n.session, mine.pid, mine.ppid, mine.group, mine.session);
        return 1;
    }
    for (size_t i = 0; i < MEM; i++)
        if (mem[i] != (unsigned char)(i * 7 + mine.pid)) {
            printf("bad %s: memory differs at %zu\n", name, i);
            return 1;
        }
    if (counted <= 0) {
        printf("bad %s: it did not run\n", name);
        return 1;
    }
    return 0;
}

/* Counts until asked; then asks `child` (if any), reaps it, checks itself; exits. */
static void member(const char *name, pid_t child) {
    long counted = 0;
    struct timespec t = { 0, 5 * 1000 * 1000 };
    /* Once round the loop before it says it started (main says "ready" only then). */
    nanosleep(&t, NULL);
    counted++;
    dprintf(3, "start %-20s\n", name);
    while (!asked) {
        nanosleep(&t, NULL);
        counted++;
    }
    int bad = 0;
    if (child > 0) {
        int st;
        kill(child, SIGUSR1);
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("bad %s: its child %d ended with status %#x\n", name, child, st);
            bad = 1;
        }
    }
    bad |= self_check(name, counted);
    if (shared) __sync_fetch_and_add(shared, 1);
    dprintf(3, "done %-21s\n", name);
    fflush(stdout);
    _exit(bad);
}

static pid_t spawn(const char *name, int how) {
    pid_t p = fork();
    if (p) return p;
    root = 0;
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that fails leaves no orphan behind */
    if (how == 1) setsid();
    if (how == 2) setpgid(0, 0);
    remember();
    pid_t child = 0;
    if (how) {
        child = fork();
        if (child == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            remember();
            member("grandchild", 0);
        }
    }
    member(name, child);
    return 0;
}

static int is_zombie(pid_t p) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", p);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *e = strrchr(buf, ')');
    return e && e[1] == ' ' && e[2] == 'Z';
}

/* How many members (main too) said they started, in "log". */
static int started(void) {
    char line[64];
    int n = 0;
    FILE *f = fopen("log", "r");
    while (f && fgets(line, sizeof line, f)) n += !strncmp(line, "start ", 6);
    if (f) fclose(f);
    return n;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* "shared": a page every member shares (MAP_SHARED anonymous, made before the forks),
     * where each child adds 1 once it has checked itself: main must see all 5. */
    if (argc > 1 && !strcmp(argv[1], "shared")) {
        shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (shared == MAP_FAILED) return 2;
    }
    signal(SIGUSR1, on_usr1);
    root = 1;
    remember();
    int log = open("log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log < 0 || dup2(log, 3) != 3 || dup2(3, 4) != 4) return 2;
    if (log != 3) close(log);
    dprintf(3, "start %-20s\n", "main");
    /* A file unlinked while open, at fd 5, which every member inherits. */
    int tmp = open("tmp", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (tmp < 0 || write(tmp, "unlinked but here", 17) != 17 || unlink("tmp") || dup2(tmp, 5) != 5) return 2;
    if (tmp != 5) close(tmp);
    pid_t z7 = fork();
    if (z7 == 0) _exit(7);
    pid_t zt = fork();
    if (zt == 0) {
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(0);
    }
    pid_t kids[3] = { spawn("worker", 0), spawn("session", 1), spawn("group", 2) };
    while (!is_zombie(z7) || !is_zombie(zt) || started() < 6) usleep(1000);
    printf("ready %d %d %d %d %d\n", kids[0], kids[1], kids[2], z7, zt);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    int bad = 0, st;
    for (int i = 0; i < 3; i++) {
        kill(kids[i], SIGUSR1);
        if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("bad: child %d ended with status %#x\n", kids[i], st);
            bad = 1;
        }
    }
    if (waitpid(z7, &st, WNOHANG) != z7 || !WIFEXITED(st) || WEXITSTATUS(st) != 7) {
        printf("bad: zombie %d reaped with status %#x\n", z7, st);
        bad = 1;
    }
    if (waitpid(zt, &st, WNOHANG) != zt || !WIFSIGNALED(st) || WTERMSIG(st) != SIGTERM) {
        printf("bad: zombie %d reaped with status %#x\n", zt, st);
        bad = 1;
    }
    bad |= self_check("main", 1);
    if (shared && *shared != 5) {
        printf("bad: the shared page counts %d children, not 5\n", *shared);
        bad = 1;
    }
    char got[32] = {0};
    struct stat sb;
    if (pread(5, got, sizeof got - 1, 0) != 17 || strcmp(got, "unlinked but here") || fstat(5, &sb) || sb.st_nlink) {
        printf("bad: the unlinked file at fd 5 reads %s\n", got);
        bad = 1;
    }
    dprintf(3, "done %-21s\n", "main");
    dprintf(4, "done %-21s\n", "main at fd 4");
    /* 6 members started and ended, main twice at the end: 13 whole lines, none overwritten. */
    FILE *f = fopen("log", "r");
    int lines = 0, whole = 1;
    while (f && fgets(line, sizeof line, f)) {
        lines++;
        whole &= (!strncmp(line, "start ", 6) || !strncmp(line, "done ", 5)) && strchr(line, '\n');
    }
    if (lines != 13 || !whole) {
        printf("bad: the shared log has %d lines%s\n", lines, whole ? "" : ", some overwritten");
        bad = 1;
    }
    if (!bad) printf("ok\n");
    return bad;
}
