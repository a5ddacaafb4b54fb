/* Signal state survives a checkpoint: handlers with their flags and masks, an ignored signal,
 * the blocked mask and the alternate signal stack.
 *
 * Sets up: SIGUSR1 -> usr1 (SA_SIGINFO|SA_ONSTACK, sa_mask {SIGTERM}); SIGUSR2 -> usr2
 * (SA_RESTART|SA_NODEFER, empty mask); SIGPIPE ignored; SIGHUP blocked; a 64 KiB alternate
 * stack on a malloc'd buffer -- or, with the argument "noalt", no alternate stack at all, so
 * that SIGUSR1's SA_ONSTACK must run it on the ordinary stack -- or, with "mdwe", the
 * alternate stack and memory-deny-write-execute (PR_SET_MDWE; "ready nomdwe" if the kernel has
 * none), which check then verifies -- or, with "trap", also a SIGTRAP handler that counts (for signals sent while a
 * checkpoint holds the process) -- or, with "trapblock", SIGTRAP blocked (with a handler), or
 * with "trapign", SIGTRAP ignored. Prints "ready", then reads commands from stdin, one a line:
 *   check  verify everything, raise the signals, print "ok signals" or "FAIL: <what>" and exit
 *          (status 0 only for ok)
 *   pid    print "pid N" (getpid())
 *   count  print "traps N usr2 M": how many SIGTRAP and SIGUSR2 arrived
 *   queue  sigqueue SIGHUP (blocked: it stays pending) to itself with value 42; print "queued"
 *   take   take a pending SIGHUP with sigtimedwait; print "took code C value V", or "took none"
 *   quit   exit 0
 * (EOF exits 0 too.) Whenever SIGUSR1 arrives -- raised or sent from outside -- the handler
 * checks it runs on the alternate stack with the expected mask and prints one line
 * "got usr1: ok" or "got usr1: FAIL: <what>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000 /* the kernel's flag that glibc sets and reports back */
#endif

#define ALTSZ (64 * 1024)
#define NSIGS 64

struct ksigaction {
    uint64_t handler, flags, restorer, mask;
};

static char *altbuf;
static int noalt, mdwe, trapblock;
static struct ksigaction before[NSIGS + 1];
static volatile sig_atomic_t usr1_count, usr1_bad, usr2_count, usr2_bad, trap_count;

static void trap(int sig) {
    (void)sig;
    trap_count++;
}

static void put(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        s += w, n -= w;
    }
}

static void usr1(int sig, siginfo_t *si, void *uc) {
    char here;
    const char *bad = NULL;
    stack_t ss;
    sigset_t cur;
    int saved = errno;
    (void)uc;
    if (sig != SIGUSR1 || si->si_signo != SIGUSR1)
        bad = "si_signo is not SIGUSR1";
    else if (noalt && (sigaltstack(NULL, &ss) != 0 || ss.ss_flags != SS_DISABLE))
        bad = "an alternate stack is set up in the handler, though the process never made one";
    else if (!noalt && (&here < altbuf || &here >= altbuf + ALTSZ))
        bad = "handler does not run on the alternate stack";
    else if (!noalt && (sigaltstack(NULL, &ss) != 0 || !(ss.ss_flags & SS_ONSTACK)))
        bad = "sigaltstack does not report SS_ONSTACK in the handler";
    else if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
        bad = "sigprocmask failed in the handler";
    else if (!sigismember(&cur, SIGTERM))
        bad = "SIGTERM (sa_mask) is not blocked in the handler";
    else if (!sigismember(&cur, SIGUSR1))
        bad = "SIGUSR1 is not blocked in its own handler (no SA_NODEFER)";
    else if (!sigismember(&cur, SIGHUP))
        bad = "SIGHUP is not blocked in the handler";
    usr1_count++;
    if (bad) {
        usr1_bad = 1;
        put("got usr1: FAIL: ");
        put(bad);
        put("\n");
    } else {
        put("got usr1: ok\n");
    }
    errno = saved;
}

static void usr2(int sig) {
    sigset_t cur;
    int saved = errno;
    if (sig != SIGUSR2 || sigprocmask(SIG_BLOCK, NULL, &cur) != 0 || sigismember(&cur, SIGUSR2))
        usr2_bad = 1; /* SA_NODEFER: SIGUSR2 must not be blocked in its own handler */
    usr2_count++;
    errno = saved;
}

static int ksig(int sig, struct ksigaction *out) {
    return syscall(SYS_rt_sigaction, sig, NULL, out, sizeof out->mask);
}

static int only_member(const sigset_t *s, int want) {
    for (int i = 1; i <= NSIGS; i++)
        if ((sigismember(s, i) == 1) != (i == want))
            return 0;
    return 1;
}

static char why[512];
static int nbad;
#define FAILF(...)                                          \
    do {                                                    \
        if (!nbad++)                                        \
            snprintf(why, sizeof why, __VA_ARGS__);         \
    } while (0)

static void check(void) {
    struct sigaction sa;
    sigset_t set;
    stack_t ss;

    /* Everything the kernel holds, exactly as before the checkpoint. */
    for (int i = 1; i <= NSIGS; i++) {
        struct ksigaction k;
        if (i == SIGKILL || i == SIGSTOP)
            continue;
        if (ksig(i, &k) != 0) {
            FAILF("rt_sigaction(%d) query failed: %s", i, strerror(errno));
            continue;
        }
        if (memcmp(&k, &before[i], sizeof k))
            FAILF("signal %d action changed: handler %#llx flags %#llx restorer %#llx mask %#llx"
                  ", was %#llx %#llx %#llx %#llx",
                  i, (unsigned long long)k.handler, (unsigned long long)k.flags,
                  (unsigned long long)k.restorer, (unsigned long long)k.mask,
                  (unsigned long long)before[i].handler, (unsigned long long)before[i].flags,
                  (unsigned long long)before[i].restorer, (unsigned long long)before[i].mask);
    }

    /* And as installed. */
    if (sigaction(SIGUSR1, NULL, &sa) != 0)
        FAILF("sigaction(SIGUSR1) failed");
    else {
        if (sa.sa_sigaction != usr1)
            FAILF("SIGUSR1 handler is %p, expected %p", (void *)sa.sa_sigaction, (void *)usr1);
        if ((sa.sa_flags & ~SA_RESTORER) != (SA_SIGINFO | SA_ONSTACK))
            FAILF("SIGUSR1 flags are %#x, expected SA_SIGINFO|SA_ONSTACK", sa.sa_flags);
        if (!only_member(&sa.sa_mask, SIGTERM))
            FAILF("SIGUSR1 sa_mask is not exactly {SIGTERM}");
    }
    if (sigaction(SIGUSR2, NULL, &sa) != 0)
        FAILF("sigaction(SIGUSR2) failed");
    else {
        if (sa.sa_handler != usr2)
            FAILF("SIGUSR2 handler is %p, expected %p", (void *)sa.sa_handler, (void *)usr2);
        if ((sa.sa_flags & ~SA_RESTORER) != (SA_RESTART | SA_NODEFER))
            FAILF("SIGUSR2 flags are %#x, expected SA_RESTART|SA_NODEFER", sa.sa_flags);
        if (!only_member(&sa.sa_mask, 0))
            FAILF("SIGUSR2 sa_mask is not empty");
    }
    if (sigaction(SIGPIPE, NULL, &sa) != 0 || sa.sa_handler != SIG_IGN)
        FAILF("SIGPIPE is not ignored");
    if (sigaction(SIGINT, NULL, &sa) != 0 || sa.sa_handler != SIG_DFL)
        FAILF("SIGINT is not at its default");

    if (sigprocmask(SIG_BLOCK, NULL, &set) != 0)
        FAILF("sigprocmask failed");
    else if (trapblock ? !sigismember(&set, SIGTRAP) : !only_member(&set, SIGHUP))
        FAILF("blocked mask is not exactly {SIGHUP%s}", trapblock ? ", SIGTRAP" : "");
    else if (trapblock && (sigdelset(&set, SIGTRAP), !only_member(&set, SIGHUP)))
        FAILF("blocked mask is not exactly {SIGHUP, SIGTRAP}");

    if (sigaltstack(NULL, &ss) != 0)
        FAILF("sigaltstack query failed");
    else if (noalt && ss.ss_flags != SS_DISABLE)
        FAILF("sigaltstack is sp %p size %zu flags %#x, expected none (SS_DISABLE)", ss.ss_sp,
              ss.ss_size, ss.ss_flags);
    else if (!noalt && (ss.ss_sp != altbuf || ss.ss_size != ALTSZ || ss.ss_flags != 0))
        FAILF("sigaltstack is sp %p size %zu flags %#x, expected %p %d 0", ss.ss_sp, ss.ss_size,
              ss.ss_flags, (void *)altbuf, ALTSZ);

    /* Memory-deny-write-execute: still set, and in force. */
    if (mdwe) {
        int f = prctl(66 /* PR_GET_MDWE */, 0, 0, 0, 0);
        void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (f != 1)
            FAILF("PR_GET_MDWE says %d, expected 1 (REFUSE_EXEC_GAIN)", f);
        else if (p != MAP_FAILED)
            FAILF("a writable and executable mapping was allowed despite MDWE");
    }

    /* Behaviour. */
    int n1 = usr1_count, n2 = usr2_count;
    raise(SIGPIPE); /* ignored: nothing happens */
    raise(SIGUSR1);
    if (usr1_count != n1 + 1)
        FAILF("raise(SIGUSR1) did not run the handler");
    else if (usr1_bad)
        FAILF("SIGUSR1 handler found a problem (see its line)");
    raise(SIGUSR2);
    if (usr2_count != n2 + 1)
        FAILF("raise(SIGUSR2) did not run the handler");
    else if (usr2_bad)
        FAILF("SIGUSR2 was blocked in its own handler despite SA_NODEFER");
    raise(SIGHUP); /* blocked: stays pending */
    if (sigpending(&set) != 0 || !sigismember(&set, SIGHUP))
        FAILF("raised SIGHUP is not pending (not blocked?)");

    if (nbad) {
        printf("FAIL: %s (%d problems)\n", why, nbad);
        fflush(stdout);
        _exit(1);
    }
    printf("ok signals\n");
    fflush(stdout);
    _exit(0);
}

/* One line from fd 0 with raw reads (a signal may interrupt them: retry). 0 at EOF. */
static int get_line(char *buf, size_t size) {
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return n > 0;
        if (c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = c;
    }
    buf[n] = 0;
    return 1;
}

int main(int argc, char **argv) {
    struct sigaction sa;
    stack_t ss;
    sigset_t set;

    noalt = argc > 1 && !strcmp(argv[1], "noalt");
    altbuf = malloc(ALTSZ);
    ss.ss_sp = altbuf;
    ss.ss_size = ALTSZ;
    ss.ss_flags = 0;
    if (!altbuf || (!noalt && sigaltstack(&ss, NULL) != 0)) {
        perror("sigaltstack");
        return 2;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = usr1;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGTERM);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        return 2;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = usr2;
    sa.sa_flags = SA_RESTART | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR2, &sa, NULL) != 0)
        return 2;

    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        return 2;

    if (argc > 1 && !strcmp(argv[1], "trap")) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = trap;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGTRAP, &sa, NULL) != 0)
            return 2;
    }

    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    /* SIGTRAP blocked (with a handler) or ignored: a trap forced on the process (a debugger's
     * single step) would reset its handler and unblock it. */
    trapblock = argc > 1 && !strcmp(argv[1], "trapblock");
    if (trapblock) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = trap;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGTRAP, &sa, NULL) != 0)
            return 2;
        sigaddset(&set, SIGTRAP);
    }
    if (argc > 1 && !strcmp(argv[1], "trapign") && signal(SIGTRAP, SIG_IGN) == SIG_ERR)
        return 2;
    if (sigprocmask(SIG_SETMASK, &set, NULL) != 0)
        return 2;

    for (int i = 1; i <= NSIGS; i++)
        if (i != SIGKILL && i != SIGSTOP && ksig(i, &before[i]) != 0)
            return 2;

    mdwe = argc > 1 && !strcmp(argv[1], "mdwe");
    if (mdwe && prctl(65 /* PR_SET_MDWE */, 1 /* REFUSE_EXEC_GAIN */, 0, 0, 0) != 0) {
        mdwe = 0;
        printf("ready nomdwe\n");
    } else
        printf("ready\n");
    fflush(stdout);

    char line[128];
    while (get_line(line, sizeof line)) {
        if (!strcmp(line, "check"))
            check();
        else if (!strcmp(line, "queue")) {
            union sigval v = {.sival_int = 42};
            printf(sigqueue(getpid(), SIGHUP, v) == 0 ? "queued\n" : "FAIL: sigqueue\n");
            fflush(stdout);
        } else if (!strcmp(line, "take")) {
            sigset_t hup;
            siginfo_t si;
            struct timespec zero = {0, 0};
            sigemptyset(&hup);
            sigaddset(&hup, SIGHUP);
            if (sigtimedwait(&hup, &si, &zero) == SIGHUP)
                printf("took code %d value %d\n", si.si_code, si.si_value.sival_int);
            else
                printf("took none\n");
            fflush(stdout);
        } else if (!strcmp(line, "count")) {
            printf("traps %d usr2 %d\n", (int)trap_count, (int)usr2_count);
            fflush(stdout);
        } else if (!strcmp(line, "pid")) {
            printf("pid %d\n", (int)getpid());
            fflush(stdout);
        } else if (!strcmp(line, "quit"))
            return 0;
        else {
            printf("FAIL: unknown command %s\n", line);
            fflush(stdout);
        }
    }
    return 0;
}
