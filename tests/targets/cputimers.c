/* POSIX timers on the CPU clocks of threads (pthread_getcpuclockid, as haproxy's watchdog has
 * one per thread): timer 0 on a spinning thread's clock signals the process (SIGRTMIN, value
 * 1) every 20 ms of that thread's CPU time; timer 1 on a sleeping thread's clock (SIGRTMIN,
 * value 2) has 5 ms of its CPU time left; timer 2 on the process's CPU clock, no signal, has
 * 1000 s. Prints "ready PID"; at a line on stdin it checks that each timer is armed as it
 * was, that timer 0 fires on (its thread spins) and that timer 1 never fired (its thread
 * sleeps): a timer bound to another thread's clock would do the one or the other. Prints
 * "ok" or "FAIL: what". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int count0, count1, bad;
static volatile int started;
static volatile unsigned long spins;
static int fails;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; } } while (0)

static void on(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    if (si->si_code != SI_TIMER) bad = 1;
    else if (si->si_value.sival_int == 1) count0++;
    else if (si->si_value.sival_int == 2) count1++;
    else bad = 2;
}
static void *spinner(void *a) {
    (void)a;
    started++;
    for (;;) spins++;
    return 0;
}
static void *sleeper(void *a) {
    (void)a;
    started++;
    for (;;) pause();
    return 0;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on;
    sigaction(SIGRTMIN, &sa, 0);
    pthread_t spin, sleep_;
    pthread_create(&spin, 0, spinner, 0);
    pthread_create(&sleep_, 0, sleeper, 0);
    while (started < 2) usleep(1000);
    clockid_t cs, cz;
    if (pthread_getcpuclockid(spin, &cs) || pthread_getcpuclockid(sleep_, &cz)) { printf("FAIL: clocks\n"); return 1; }
    timer_t t[3];
    struct sigevent ev; memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL; ev.sigev_signo = SIGRTMIN;
    ev.sigev_value.sival_int = 1;
    if (timer_create(cs, &ev, &t[0])) { printf("FAIL: timer 0\n"); return 1; }
    ev.sigev_value.sival_int = 2;
    if (timer_create(cz, &ev, &t[1])) { printf("FAIL: timer 1\n"); return 1; }
    memset(&ev, 0, sizeof ev); ev.sigev_notify = SIGEV_NONE;
    if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &ev, &t[2])) { printf("FAIL: timer 2\n"); return 1; }
    struct itimerspec p20 = {{0, 20000000}, {0, 20000000}}, five = {{0, 0}, {0, 5000000}}, cpu = {{0, 0}, {1000, 0}};
    timer_settime(t[0], 0, &p20, 0);
    timer_settime(t[1], 0, &five, 0);
    timer_settime(t[2], 0, &cpu, 0);
    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }
    struct itimerspec cur;
    CHECK(timer_gettime(t[0], &cur) == 0 && cur.it_interval.tv_nsec == 20000000, "timer 0's interval");
    CHECK(timer_gettime(t[1], &cur) == 0 && !cur.it_value.tv_sec && cur.it_value.tv_nsec > 0 && cur.it_value.tv_nsec <= 5000000,
          "timer 1: %ld ns left", (long)cur.it_value.tv_nsec);
    CHECK(timer_gettime(t[2], &cur) == 0 && cur.it_value.tv_sec > 900, "timer 2: %ld s of CPU left", (long)cur.it_value.tv_sec);
    int c0 = count0;
    for (int i = 0; i < 100 && count0 - c0 < 5; i++) usleep(20000);
    CHECK(count0 - c0 >= 5, "timer 0 on the spinning thread's clock fired %d times", count0 - c0);
    CHECK(count1 == 0, "timer 1 on the sleeping thread's clock fired");
    CHECK(!bad, "a signal came from elsewhere (%d)", bad);
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
