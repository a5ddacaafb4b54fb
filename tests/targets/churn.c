/* Fds that come and go: a thread that, without pause, makes an epoll set watching a new
 * eventfd (and, one round in 1024, an inotify instance watching the current directory: closing
 * one waits for the kernel's grace period), closes them, leaves their numbers free, then opens
 * /dev/null at them, each for some 30 us, as a busy server's connections come and go. The
 * main thread holds an epoll set of its own watching an eventfd (data 0xabcdef). Prints
 * "ready PID"; at each line on stdin, writes its eventfd, waits on its set and prints
 * "ok ROUNDS" (the thread's rounds so far, which grow) or "FAIL: what". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t rounds;

/* Some 30 us on the CPU: each state below lasts long enough for crs to meet it. */
static void spin(void) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000000L + b.tv_nsec - a.tv_nsec < 30000);
}

static void *churn(void *a) {
    (void)a;
    for (;;) {
        int ep = epoll_create1(0), ev = eventfd(0, 0), in = rounds % 1024 ? -1 : inotify_init1(0);
        struct epoll_event e = {.events = EPOLLIN, .data.u64 = rounds};
        epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
        if (in >= 0) inotify_add_watch(in, ".", IN_CREATE);
        spin();
        close(ev);
        close(ep);
        if (in >= 0) close(in);
        spin();
        int n[3];
        for (int i = 0; i < 3; i++) n[i] = open("/dev/null", O_RDONLY);
        spin();
        for (int i = 0; i < 3; i++) close(n[i]);
        rounds++;
    }
    return 0;
}

int main(void) {
    int ep = epoll_create1(0), ev = eventfd(0, 0);
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 0xabcdef};
    if (ep < 0 || ev < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e)) {
        printf("FAIL: setup\n");
        return 1;
    }
    pthread_t t;
    pthread_create(&t, 0, churn, 0);
    while (rounds < 100) usleep(1000);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        uint64_t one = 1, got;
        struct epoll_event out;
        int n = (write(ev, &one, 8) == 8) ? epoll_wait(ep, &out, 1, 1000) : -1;
        if (n != 1 || out.data.u64 != 0xabcdef || read(ev, &got, 8) != 8 || got != 1)
            printf("FAIL: the main epoll set (n %d)\n", n);
        else
            printf("ok %llu\n", (unsigned long long)rounds);
        fflush(stdout);
    }
    return 0;
}
