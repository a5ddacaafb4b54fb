/* Threads target: argv[1] threads (default 4) besides main, each in its own state when
 * checkpointed: waiting on a condition variable (pthread_cond_wait: a futex wait), sleeping in
 * nanosleep loops, or spinning in user code; each names itself, has its own signal mask,
 * alternate signal stack and thread-local counter. Prints "ready PID", waits for a line on
 * stdin, then wakes them all: each checks that its tid (gettid, and glibc's own through
 * pthread_kill), name, mask, stack, TLS and progress are its own, and main joins them
 * (which needs clear_child_tid). Prints "ok" or "FAIL: what". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX 512
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile int go, started, fails, usr1_seen[MAX];
static __thread long mine = -1;
static pid_t tids[MAX];
static pthread_t th[MAX];
static volatile unsigned long spins[MAX];

static void usr1(int s) { (void)s; if (mine >= 0 && mine < MAX) usr1_seen[mine] = 1; }

#define FAIL(...) do { pthread_mutex_lock(&mu); printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; pthread_mutex_unlock(&mu); } while (0)

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
    default: /* spinning in user code */
        while (!go) spins[i]++;
    }
    mine = i; /* from here the handler marks usr1_seen[i] */
    if (syscall(SYS_gettid) != tids[i]) FAIL("thread %ld: tid %ld, was %d", i, (long)syscall(SYS_gettid), tids[i]);
    char now[16] = ""; pthread_getname_np(pthread_self(), now, sizeof now);
    if (strcmp(now, name)) FAIL("thread %ld: name %s, was %s", i, now, name);
    sigset_t cur; pthread_sigmask(SIG_BLOCK, 0, &cur);
    for (int s = SIGRTMIN; s < SIGRTMIN + 8; s++)
        if (sigismember(&cur, s) != (s == SIGRTMIN + (int)(i % 8))) FAIL("thread %ld: mask for signal %d", i, s);
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
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = usr1; sigaction(SIGUSR1, &sa, 0);
    for (long i = 0; i < n; i++) pthread_create(&th[i], 0, worker, (void *)i);
    for (;;) { pthread_mutex_lock(&mu); int s = started; pthread_mutex_unlock(&mu); if (s == n) break; usleep(1000); }
    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }
    pthread_mutex_lock(&mu); go = 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
    for (long i = 0; i < n; i++) {
        for (int k = 0; k < 1000 && !usr1_seen[i]; k++) { pthread_kill(th[i], SIGUSR1); struct timespec t = {0, 1000000}; nanosleep(&t, 0); }
    }
    for (long i = 0; i < n; i++) {
        void *r; int e = pthread_join(th[i], &r);
        if (e || r != (void *)(i + 100)) FAIL("join thread %ld: %d %p", i, e, r);
    }
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
