/* Threads target: argv[1] threads (default 4) besides main, each in its own state when
 * checkpointed: waiting on a condition variable (pthread_cond_wait: a futex wait), sleeping in
 * nanosleep loops, or spinning in user code with distinct contents in a vector register (zmm24
 * with AVX-512, ymm8 with AVX, xmm8 otherwise); each names itself, has its own signal mask,
 * alternate signal stack and thread-local counter. With argv[2] = MS, four more threads: two
 * playing mutex/condvar ping-pong (strict turns, counted), one blocked in read() on a pipe, and
 * one in a single nanosleep of MS milliseconds (with a remaining-time pointer). Prints
 * "ready PID", waits for a line on stdin, then wakes them all: each checks that its tid
 * (gettid, and glibc's own through pthread_kill), name, mask, stack, TLS, vector register and
 * progress are its own; the ping-pong must go on, the reader gets the byte main writes, and
 * main joins them all (which needs clear_child_tid; the sleeper joins when its sleep ends);
 * every thread has main's session keyring.
 * Prints "ok" or "FAIL: what". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXTRAS 4

#define MAX 512
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile int go, started, fails, usr1_seen[MAX];
static volatile long session; /* main's session keyring, once woken */
static __thread long mine = -1;
static pid_t tids[MAX];
static pthread_t th[MAX];
static volatile unsigned long spins[MAX];
/* Its own lock: the ping-pong players fail while holding mu. */
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;
#define FAIL(...) do { pthread_mutex_lock(&fail_mu); printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; pthread_mutex_unlock(&fail_mu); } while (0)
static int vec_bytes; /* 64, 32 or 16: the widest vector register the CPU has */

/* Spins until go, holding a pattern of its own in a vector register all along; returns
 * whether the register still holds it. The loop is one asm block: no compiler-generated code
 * can touch the register in between, only a checkpoint could. */
__attribute__((target("avx512f"))) static int spin512(const unsigned char *in, unsigned char *out, volatile unsigned long *n) {
    asm volatile("vmovdqu64 (%[in]), %%zmm24\n"
                 "1: incq (%[n])\n pause\n cmpl $0, (%[go])\n je 1b\n"
                 "vmovdqu64 %%zmm24, (%[out])\n"
                 :: [in] "r"(in), [out] "r"(out), [n] "r"(n), [go] "r"(&go) : "memory", "xmm24");
    return !memcmp(in, out, 64);
}
__attribute__((target("avx"))) static int spin256(const unsigned char *in, unsigned char *out, volatile unsigned long *n) {
    asm volatile("vmovdqu (%[in]), %%ymm8\n"
                 "1: incq (%[n])\n pause\n cmpl $0, (%[go])\n je 1b\n"
                 "vmovdqu %%ymm8, (%[out])\n"
                 :: [in] "r"(in), [out] "r"(out), [n] "r"(n), [go] "r"(&go) : "memory", "xmm8");
    return !memcmp(in, out, 32);
}
static int spin128(const unsigned char *in, unsigned char *out, volatile unsigned long *n) {
    asm volatile("movdqu (%[in]), %%xmm8\n"
                 "1: incq (%[n])\n pause\n cmpl $0, (%[go])\n je 1b\n"
                 "movdqu %%xmm8, (%[out])\n"
                 :: [in] "r"(in), [out] "r"(out), [n] "r"(n), [go] "r"(&go) : "memory", "xmm8");
    return !memcmp(in, out, 16);
}

/* The extras: ping-pong between two threads, a reader blocked on a pipe, a long sleeper. */
static pthread_cond_t pp_cv = PTHREAD_COND_INITIALIZER;
static int turn, last_by = -1, stop;
static unsigned long volleys;
static int rpipe[2];
static long sleep_ms;

static void *player(void *arg) {
    int me = (int)(long)arg;
    pthread_mutex_lock(&mu);
    started++;
    for (;;) {
        while (!stop && turn != me) pthread_cond_wait(&pp_cv, &mu);
        if (stop) break;
        if (last_by == me) FAIL("ping-pong: player %d played twice in a row", me);
        last_by = me;
        volleys++;
        turn = !me;
        pthread_cond_broadcast(&pp_cv);
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

static void *reader(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu); started++; pthread_mutex_unlock(&mu);
    char c = 0;
    ssize_t n = read(rpipe[0], &c, 1);
    if (n != 1 || c != 'x') FAIL("reader: read returned %zd, byte %d", n, c);
    return 0;
}

static void *sleeper(void *arg) {
    (void)arg;
    struct timespec t = {sleep_ms / 1000, sleep_ms % 1000 * 1000000L}, rem;
    pthread_mutex_lock(&mu); started++; pthread_mutex_unlock(&mu);
    /* One sleep, resumed after any interruption with what is left, as sleep(3) does. */
    while (nanosleep(&t, &rem) != 0) t = rem;
    return 0;
}

static void usr1(int s) { (void)s; if (mine >= 0 && mine < MAX) usr1_seen[mine] = 1; }


static void *worker(void *arg) {
    long i = (long)arg;
    mine = i * 1000;
    tids[i] = (pid_t)syscall(SYS_gettid);
    char name[16]; snprintf(name, sizeof name, "worker-%ld", i);
    pthread_setname_np(pthread_self(), name);
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGRTMIN + (int)(i % 8)); pthread_sigmask(SIG_BLOCK, &m, 0);
    stack_t ss = {.ss_sp = malloc(65536), .ss_size = 65536, .ss_flags = 0}; sigaltstack(&ss, 0);
    pthread_mutex_lock(&mu); started++; pthread_mutex_unlock(&mu);
    switch (i % 3) {
    case 0: /* a futex wait */
        pthread_mutex_lock(&mu);
        while (!go) pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        break;
    case 1: /* sleeping */
        while (!go) { struct timespec t = {0, 20 * 1000 * 1000}; nanosleep(&t, 0); }
        break;
    default: { /* spinning in user code, a pattern of its own in a vector register */
        unsigned char in[64], out[64];
        for (int k = 0; k < 64; k++) in[k] = (unsigned char)(i * 7 + k * 13 + 1);
        int same = vec_bytes == 64 ? spin512(in, out, &spins[i]) : vec_bytes == 32 ? spin256(in, out, &spins[i]) : spin128(in, out, &spins[i]);
        if (!same) FAIL("thread %ld: its %d-byte vector register lost its contents", i, vec_bytes);
    }
    }
    mine = i; /* from here the handler marks usr1_seen[i] */
    if (syscall(SYS_gettid) != tids[i]) FAIL("thread %ld: tid %ld, was %d", i, (long)syscall(SYS_gettid), tids[i]);
    char now[16] = ""; pthread_getname_np(pthread_self(), now, sizeof now);
    if (strcmp(now, name)) FAIL("thread %ld: name %s, was %s", i, now, name);
    sigset_t cur; pthread_sigmask(SIG_BLOCK, 0, &cur);
    for (int s = SIGRTMIN; s < SIGRTMIN + 8; s++)
        if (sigismember(&cur, s) != (s == SIGRTMIN + (int)(i % 8))) FAIL("thread %ld: mask for signal %d", i, s);
    /* One session keyring for the whole process, as before the checkpoint (a new one after a
     * restore: but the same in every thread). */
    long ses = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* KEY_SPEC_SESSION_KEYRING */, 0);
    if (ses != session) FAIL("thread %ld: session keyring %ld, the process's %ld", i, ses, session);
    stack_t now_ss; sigaltstack(0, &now_ss);
    if (now_ss.ss_sp != ss.ss_sp || now_ss.ss_size != ss.ss_size) FAIL("thread %ld: altstack %p+%zu, was %p+%zu", i, now_ss.ss_sp, now_ss.ss_size, ss.ss_sp, ss.ss_size);
    if (i % 3 == 2 && spins[i] == 0) FAIL("thread %ld never spun", i);
    /* wait for main's pthread_kill, which goes by glibc's own record of our tid */
    for (int k = 0; k < 500 && !usr1_seen[i]; k++) { struct timespec t = {0, 1000000}; nanosleep(&t, 0); }
    if (!usr1_seen[i]) FAIL("thread %ld: pthread_kill(SIGUSR1) never arrived", i);
    return (void *)(i + 100);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    if (n > MAX) n = MAX;
    int extras = argc > 2;
    sleep_ms = extras ? atol(argv[2]) : 0;
    __builtin_cpu_init();
    vec_bytes = __builtin_cpu_supports("avx512f") ? 64 : __builtin_cpu_supports("avx") ? 32 : 16;
    pthread_t ex[EXTRAS];
    if (extras && pipe(rpipe)) { perror("pipe"); return 1; }
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = usr1; sigaction(SIGUSR1, &sa, 0);
    for (long i = 0; i < n; i++) pthread_create(&th[i], 0, worker, (void *)i);
    if (extras) {
        pthread_create(&ex[0], 0, player, (void *)0);
        pthread_create(&ex[1], 0, player, (void *)1);
        pthread_create(&ex[2], 0, reader, 0);
        pthread_create(&ex[3], 0, sleeper, 0);
    }
    for (;;) { pthread_mutex_lock(&mu); int s = started; pthread_mutex_unlock(&mu); if (s == n + (extras ? EXTRAS : 0)) break; usleep(1000); }
    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }
    session = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* KEY_SPEC_SESSION_KEYRING */, 0);
    pthread_mutex_lock(&mu); go = 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
    for (long i = 0; i < n; i++) {
        for (int k = 0; k < 1000 && !usr1_seen[i]; k++) { pthread_kill(th[i], SIGUSR1); struct timespec t = {0, 1000000}; nanosleep(&t, 0); }
    }
    for (long i = 0; i < n; i++) {
        void *r; int e = pthread_join(th[i], &r);
        if (e || r != (void *)(i + 100)) FAIL("join thread %ld: %d %p", i, e, r);
    }
    if (extras) {
        /* It goes on: a volley within 2 s (on a busy node the players may wait for a CPU). */
        pthread_mutex_lock(&mu); unsigned long v0 = volleys, v1 = v0; pthread_mutex_unlock(&mu);
        for (int k = 0; k < 200 && v1 <= v0; k++) { usleep(10000); pthread_mutex_lock(&mu); v1 = volleys; pthread_mutex_unlock(&mu); }
        pthread_mutex_lock(&mu); stop = 1; pthread_cond_broadcast(&pp_cv); pthread_mutex_unlock(&mu);
        if (v1 <= v0) FAIL("ping-pong stopped at %lu volleys", v1);
        if (write(rpipe[1], "x", 1) != 1) FAIL("write to the reader's pipe");
        for (int k = 0; k < EXTRAS; k++)
            if (pthread_join(ex[k], 0)) FAIL("join extra thread %d", k);
    }
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
