/* Event objects target: a pipe the process holds both ends of, with 4 unread bytes; two
 * eventfds (one a semaphore) with counts; an epoll set watching all three (the pipe
 * edge-triggered) with 64-bit data; and a thread blocked in epoll_wait on a second epoll set
 * watching another inner pipe. Prints "ready PID", waits for a line on stdin, then checks that
 * all of it is as it was and that the blocked thread wakes when its pipe is written. Prints
 * "ok" or "FAIL: what". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int fails, ep2, q[2];
static volatile uint64_t woke;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; } } while (0)

static void *waiter(void *a) {
    (void)a;
    struct epoll_event ev;
    int n = epoll_wait(ep2, &ev, 1, -1);
    if (n == 1) woke = ev.data.u64;
    return 0;
}

int main(void) {
    int p[2]; pipe(p);
    write(p[1], "wake", 4);
    int e = eventfd(5, EFD_CLOEXEC), s = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 0x1111222233334444ULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    ev.events = EPOLLIN; ev.data.u64 = 7; epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev);
    ev.data.u64 = 8; epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    pipe(q);
    ep2 = epoll_create1(0);
    ev.events = EPOLLIN; ev.data.u64 = 99; epoll_ctl(ep2, EPOLL_CTL_ADD, q[0], &ev);
    pthread_t t; pthread_create(&t, 0, waiter, 0);
    usleep(20000); /* let it block in epoll_wait */
    printf("ready %d\n", getpid()); fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { printf("FAIL: stdin closed\n"); return 1; }

    struct epoll_event got[8];
    int n = epoll_wait(ep, got, 8, 0);
    uint64_t seen = 0;
    for (int i = 0; i < n; i++) {
        if (got[i].data.u64 == 0x1111222233334444ULL) seen |= 1;
        else if (got[i].data.u64 == 7) seen |= 2;
        else if (got[i].data.u64 == 8) seen |= 4;
    }
    CHECK(n == 3 && seen == 7, "epoll_wait: %d events, seen %#llx", n, (unsigned long long)seen);
    char b[8] = {0};
    CHECK(read(p[0], b, sizeof b) == 4 && !memcmp(b, "wake", 4), "the pipe's bytes: %.4s", b);
    uint64_t v = 0;
    CHECK(read(e, &v, 8) == 8 && v == 5, "eventfd count %llu", (unsigned long long)v);
    CHECK(read(s, &v, 8) == 8 && v == 1, "semaphore eventfd read %llu", (unsigned long long)v);
    CHECK(read(s, &v, 8) == 8 && read(s, &v, 8) == 8 && read(s, &v, 8) < 0, "semaphore eventfd held more than 3");
    CHECK(woke == 0, "the waiter woke early");
    write(q[1], "x", 1);
    pthread_join(t, 0);
    CHECK(woke == 99, "the waiter woke with %llu", (unsigned long long)woke);
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
