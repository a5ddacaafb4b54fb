/* Interval timers target: ITIMER_REAL ticking every 20 ms (a SIGALRM handler counts the ticks),
 * ITIMER_VIRTUAL armed far ahead, ITIMER_PROF armed with a 7 s interval. Prints "ready PID",
 * waits for a line on stdin, then checks that every timer is armed as it was (intervals the
 * same, time left no more than before, but for a scheduler tick of rounding, and not far less) and that ticks keep coming; prints "ok"
 * or "FAIL: what". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks;
static void tick(int s) { (void)s; ticks++; }
static long us(struct timeval t) { return t.tv_sec * 1000000L + t.tv_usec; }

int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick; sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval real = {{0, 20000}, {0, 20000}}, virt = {{0, 0}, {100, 0}}, prof = {{7, 0}, {7, 0}};
    setitimer(ITIMER_REAL, &real, 0); setitimer(ITIMER_VIRTUAL, &virt, 0); setitimer(ITIMER_PROF, &prof, 0);
    while (ticks < 3) pause();
    struct itimerval v0, p0; getitimer(ITIMER_VIRTUAL, &v0); getitimer(ITIMER_PROF, &p0);
    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }
    int fails = 0;
    struct itimerval r1, v1, p1;
    getitimer(ITIMER_REAL, &r1); getitimer(ITIMER_VIRTUAL, &v1); getitimer(ITIMER_PROF, &p1);
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fails++; } } while (0)
    CHECK(us(r1.it_interval) == 20000 && us(r1.it_value) > 0 && us(r1.it_value) <= 20000,
          "ITIMER_REAL %ld every %ld", us(r1.it_value), us(r1.it_interval));
    /* CPU-time timers are kept in scheduler ticks: setting one back may round it up a tick. */
    const long tick_us = 10000;
    CHECK(us(v1.it_interval) == 0 && us(v1.it_value) <= us(v0.it_value) + tick_us && us(v1.it_value) > us(v0.it_value) - 1000000,
          "ITIMER_VIRTUAL %ld (was %ld)", us(v1.it_value), us(v0.it_value));
    CHECK(us(p1.it_interval) == 7000000 && us(p1.it_value) <= us(p0.it_value) + tick_us && us(p1.it_value) > us(p0.it_value) - 1000000,
          "ITIMER_PROF %ld every %ld (was %ld)", us(p1.it_value), us(p1.it_interval), us(p0.it_value));
    int t0 = ticks;
    while (ticks < t0 + 5) pause(); /* ticks keep coming: a lost ITIMER_REAL hangs here */
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
