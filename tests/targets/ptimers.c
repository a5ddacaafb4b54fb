/* POSIX timers target: timer 0 on CLOCK_MONOTONIC signals the process (SIGRTMIN, value
 * 0xabc) every 20 ms; timer 1 was deleted (its id stays free); timer 2 on CLOCK_REALTIME has
 * no signal and an hour to go; timer 3 on CLOCK_BOOTTIME signals a worker thread alone
 * (SIGEV_THREAD_ID, SIGRTMIN+1, value 7) every 30 ms; timer 4 is disarmed; timer 5 runs on the
 * process's CPU clock, no signal. Prints "ready PID", waits for a line on stdin, then checks
 * that each id is the timer it was, with its settings, and that both periodic ones fire,
 * each signal with its value at its thread. Prints "ok" or "FAIL: what". */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int count0, count3, bad;
static volatile pid_t worker_tid;
static int fails;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; } } while (0)

static void on0(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    if (si->si_value.sival_ptr == (void *)0xabc && si->si_code == SI_TIMER && si->si_timerid == 0) count0++;
    else bad |= 1;
}
static void on3(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    if (si->si_value.sival_int == 7 && (pid_t)syscall(SYS_gettid) == worker_tid) count3++;
    else bad |= 2;
}
static void *worker(void *a) {
    (void)a;
    worker_tid = (pid_t)syscall(SYS_gettid);
    for (;;) pause();
    return 0;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on0; sigaction(SIGRTMIN, &sa, 0);
    sa.sa_sigaction = on3; sigaction(SIGRTMIN + 1, &sa, 0);
    pthread_t w; pthread_create(&w, 0, worker, 0);
    while (!worker_tid) usleep(1000);
    /* main takes no SIGRTMIN+1 (it goes to the worker by tid anyway); the worker no SIGRTMIN */
    timer_t t[6];
    struct sigevent ev; memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL; ev.sigev_signo = SIGRTMIN; ev.sigev_value.sival_ptr = (void *)0xabc;
    timer_create(CLOCK_MONOTONIC, &ev, &t[0]);
    timer_create(CLOCK_MONOTONIC, &ev, &t[1]);
    timer_delete(t[1]);
    memset(&ev, 0, sizeof ev); ev.sigev_notify = SIGEV_NONE;
    timer_create(CLOCK_REALTIME, &ev, &t[2]);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID; ev.sigev_signo = SIGRTMIN + 1; ev.sigev_value.sival_int = 7;
    ev._sigev_un._tid = worker_tid;
    timer_create(CLOCK_BOOTTIME, &ev, &t[3]);
    memset(&ev, 0, sizeof ev); ev.sigev_notify = SIGEV_SIGNAL; ev.sigev_signo = SIGUSR2;
    timer_create(CLOCK_MONOTONIC, &ev, &t[4]);
    memset(&ev, 0, sizeof ev); ev.sigev_notify = SIGEV_NONE;
    timer_create(CLOCK_PROCESS_CPUTIME_ID, &ev, &t[5]);
    for (long i = 0; i < 6; i++)
        if (i != 1 && (long)t[i] != i) { printf("FAIL: timer %ld got id %ld\n", i, (long)t[i]); return 1; }
    struct itimerspec p20 = {{0, 20000000}, {0, 20000000}}, p30 = {{0, 30000000}, {0, 30000000}};
    struct itimerspec hour = {{0, 0}, {3600, 0}}, cpu = {{0, 0}, {1000, 0}};
    timer_settime(t[0], 0, &p20, 0);
    timer_settime(t[2], 0, &hour, 0);
    timer_settime(t[3], 0, &p30, 0);
    timer_settime(t[5], 0, &cpu, 0);
    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }
    struct itimerspec cur;
    CHECK(timer_gettime((timer_t)1, &cur) < 0 && errno == EINVAL, "timer 1 exists again");
    CHECK(timer_gettime(t[0], &cur) == 0 && cur.it_interval.tv_nsec == 20000000, "timer 0's interval");
    CHECK(timer_gettime(t[2], &cur) == 0 && cur.it_value.tv_sec > 3000 && cur.it_value.tv_sec < 3600 && !cur.it_interval.tv_sec,
          "timer 2: %ld s left", (long)cur.it_value.tv_sec);
    CHECK(timer_gettime(t[3], &cur) == 0 && cur.it_interval.tv_nsec == 30000000, "timer 3's interval");
    CHECK(timer_gettime(t[4], &cur) == 0 && !cur.it_value.tv_sec && !cur.it_value.tv_nsec, "timer 4 is armed");
    CHECK(timer_gettime(t[5], &cur) == 0 && cur.it_value.tv_sec > 900, "timer 5: %ld s of CPU left", (long)cur.it_value.tv_sec);
    int c0 = count0, c3 = count3;
    for (int i = 0; i < 40 && (count0 - c0 < 5 || count3 - c3 < 3); i++) usleep(50000);
    CHECK(count0 - c0 >= 5 && count3 - c3 >= 3, "the periodic timers: %d and %d signals", count0 - c0, count3 - c3);
    CHECK(!bad, "a timer's signal came with another value or to another thread (%d)", bad);
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
