/* Event objects target: a pipe the process holds both ends of, with 4 unread bytes and a
 * capacity of 16 KiB; two eventfds (one a semaphore) with counts; an epoll set watching all
 * three (the pipe edge-triggered) with 64-bit data; a thread blocked in epoll_wait on a
 * second epoll set watching another inner pipe; timerfds (a periodic one every 50 ms, a
 * one-shot that expired unread, an absolute one an hour ahead on the real-time clock); a
 * signalfd for SIGUSR2 and SIGHUP (blocked, a SIGUSR2 queued with a value); an inotify
 * instance watching the current directory (wd 1) and the file "watched" in it (wd 3: a watch
 * was removed in between); a FIFO "fifo" in it, opened for reading and for writing, with 5
 * unread bytes; and a third epoll set over the periodic timer, the signalfd and the inotify
 * instance. Prints "ready PID", waits for a line on stdin, then checks that all of it is as
 * it was, that the blocked thread wakes when its pipe is written, that the timers tick, the
 * signals come out of the signalfd and the watches report under their own wds. Prints "ok" or
 * "FAIL: what".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static int fails, ep2, q[2];

/* The highest fd open and how many are (the restore must leave none of its own behind). */
static void fds(int *count, int *highest) {
    *count = 0; *highest = -1;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0) { (*count)++; *highest = fd; }
}
static volatile uint64_t woke;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); fails++; } } while (0)

static void *waiter(void *a) {
    (void)a;
    struct epoll_event ev;
    int n = epoll_wait(ep2, &ev, 1, -1);
    if (n == 1) woke = ev.data.u64;
    return 0;
}

/* argv[1] "plainsem": the kernel cannot say an eventfd is a semaphore (6.1's fdinfo): the
 * semaphore eventfd is expected back as a plain one, holding its whole count. */
int main(int argc, char **argv) {
    int plainsem = argc > 1 && !strcmp(argv[1], "plainsem");
    int p[2]; pipe(p);
    write(p[1], "wake", 4);
    /* A capacity of its own, which comes back with its bytes (the pipe made after it has none). */
    fcntl(p[1], F_SETPIPE_SZ, 16384);
    int e = eventfd(42, EFD_CLOEXEC), s = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 0x1111222233334444ULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    ev.events = EPOLLIN; ev.data.u64 = 7; epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev);
    ev.data.u64 = 8; epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    pipe(q);
    ep2 = epoll_create1(0);
    ev.events = EPOLLIN; ev.data.u64 = 99; epoll_ctl(ep2, EPOLL_CTL_ADD, q[0], &ev);
    /* Timers: periodic, expired unread, absolute an hour ahead. */
    int tp = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {{0, 50000000}, {0, 50000000}};
    timerfd_settime(tp, 0, &its, 0);
    int to = timerfd_create(CLOCK_BOOTTIME, 0);
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    timerfd_settime(to, 0, &once, 0);
    int ta = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
    struct timespec now; clock_gettime(CLOCK_REALTIME, &now);
    time_t deadline = now.tv_sec + 3600;
    struct itimerspec at = {{0, 0}, {deadline, 0}};
    timerfd_settime(ta, TFD_TIMER_ABSTIME, &at, 0);
    /* Signals through a signalfd. */
    sigset_t sm; sigemptyset(&sm); sigaddset(&sm, SIGUSR2); sigaddset(&sm, SIGHUP);
    sigprocmask(SIG_BLOCK, &sm, 0);
    int sfd = signalfd(-1, &sm, SFD_NONBLOCK);
    union sigval sv = {.sival_int = 1234};
    sigqueue(getpid(), SIGUSR2, sv);
    /* A FIFO by path, both ends here, bytes unread. */
    unlink("fifo");
    mkfifo("fifo", 0600);
    int fr = open("fifo", O_RDONLY | O_NONBLOCK), fw = open("fifo", O_WRONLY);
    CHECK(fr >= 0 && fw >= 0 && write(fw, "fifo!", 5) == 5, "the FIFO");
    /* inotify: the directory as wd 1, "watched" as wd 3 (wd 2 came and went). */
    close(open("watched", O_WRONLY | O_CREAT | O_TRUNC, 0644));
    unlink("created");
    int in = inotify_init1(IN_NONBLOCK);
    int w1 = inotify_add_watch(in, ".", IN_CREATE);
    int w2 = inotify_add_watch(in, "watched", IN_ATTRIB);
    inotify_rm_watch(in, w2);
    char evb[4096];
    while (read(in, evb, sizeof evb) > 0) {} /* its IN_IGNORED */
    int w3 = inotify_add_watch(in, "watched", IN_MODIFY);
    CHECK(w1 == 1 && w3 == 3, "inotify wds %d %d before the checkpoint", w1, w3);
    int ep3 = epoll_create1(0);
    ev.events = EPOLLIN; ev.data.u64 = 20; epoll_ctl(ep3, EPOLL_CTL_ADD, tp, &ev);
    ev.data.u64 = 21; epoll_ctl(ep3, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.u64 = 22; epoll_ctl(ep3, EPOLL_CTL_ADD, in, &ev);
    pthread_t t; pthread_create(&t, 0, waiter, 0);
    usleep(20000); /* let it block in epoll_wait; the one-shot timer expires */
    int nfd0, top0; fds(&nfd0, &top0);
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
    int nfd1, top1; fds(&nfd1, &top1);
    CHECK(nfd1 == nfd0 && top1 == top0, "fds: %d up to %d, were %d up to %d", nfd1, top1, nfd0, top0);
    char b[8] = {0};
    CHECK(read(p[0], b, sizeof b) == 4 && !memcmp(b, "wake", 4), "the pipe's bytes: %.4s", b);
    CHECK(fcntl(p[0], F_GETPIPE_SZ) == 16384, "the pipe's capacity: %d", fcntl(p[0], F_GETPIPE_SZ));
    CHECK(fcntl(q[0], F_GETPIPE_SZ) == 65536, "the second pipe's capacity: %d", fcntl(q[0], F_GETPIPE_SZ));
    uint64_t v = 0;
    CHECK(read(e, &v, 8) == 8 && v == 42, "eventfd count %llu", (unsigned long long)v);
    if (plainsem) {
        CHECK(read(s, &v, 8) == 8 && v == 3, "the semaphore eventfd as a plain one read %llu", (unsigned long long)v);
    } else {
        CHECK(read(s, &v, 8) == 8 && v == 1, "semaphore eventfd read %llu", (unsigned long long)v);
        CHECK(read(s, &v, 8) == 8 && read(s, &v, 8) == 8 && read(s, &v, 8) < 0, "semaphore eventfd held more than 3");
    }
    CHECK(woke == 0, "the waiter woke early");

    /* The signalfd is ready at once (SIGUSR2 pending), the periodic timer within 50 ms. */
    uint64_t ready = 0;
    for (int k = 0; k < 100 && ready != 3; k++) {
        n = epoll_wait(ep3, got, 8, 100);
        for (int i = 0; i < n; i++) if (got[i].data.u64 == 20 || got[i].data.u64 == 21) ready |= 1u << (got[i].data.u64 - 20);
        if (ready != 3) usleep(10000); /* the signalfd stays ready: wait for the timer */
    }
    CHECK(ready == 3, "the third epoll set saw %#llx of the timer and signalfd", (unsigned long long)ready);
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2 && si.ssi_int == 1234,
          "signalfd: signal %u value %d", si.ssi_signo, si.ssi_int);
    CHECK(read(sfd, &si, sizeof si) < 0, "signalfd: a second signal");
    raise(SIGHUP);
    CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGHUP, "signalfd: signal %u, not SIGHUP", si.ssi_signo);
    struct pollfd pf = {.fd = to, .events = POLLIN};
    CHECK(poll(&pf, 1, 0) == 1 && read(to, &v, 8) == 8 && v == 1, "the expired one-shot timer: its unread expiry");
    struct itimerspec cur;
    timerfd_gettime(ta, &cur);
    clock_gettime(CLOCK_REALTIME, &now);
    CHECK(cur.it_value.tv_sec > 0 && labs(now.tv_sec + cur.it_value.tv_sec - deadline) <= 1,
          "the absolute timer's deadline moved by %ld s", (long)(now.tv_sec + cur.it_value.tv_sec - deadline));
    timerfd_gettime(tp, &cur);
    CHECK(cur.it_interval.tv_nsec == 50000000 && cur.it_interval.tv_sec == 0, "the periodic timer's interval");
    v = 0; read(tp, &v, 8);
    usleep(300000);
    uint64_t ticks = 0;
    CHECK(read(tp, &ticks, 8) == 8 && ticks >= 3 && ticks <= 8, "the periodic timer: %llu ticks in 300 ms", (unsigned long long)ticks);
    char fb[8] = {0};
    CHECK(read(fr, fb, sizeof fb) == 5 && !memcmp(fb, "fifo!", 5), "the FIFO's bytes: %.5s", fb);
    CHECK(write(fw, "x", 1) == 1 && read(fr, fb, 1) == 1 && fb[0] == 'x', "the FIFO's ends are not one pipe");
    int queued = -1;
    CHECK(ioctl(in, FIONREAD, &queued) == 0 && queued == 0, "inotify: %d bytes of events nobody caused", queued);
    int wf = open("watched", O_WRONLY); write(wf, "x", 1); close(wf);
    close(open("created", O_WRONLY | O_CREAT, 0644));
    usleep(10000);
    int seen_in = 0;
    ssize_t len = read(in, evb, sizeof evb);
    for (char *q2 = evb; len > 0 && q2 < evb + len; q2 += sizeof(struct inotify_event) + ((struct inotify_event *)q2)->len) {
        struct inotify_event *ie = (struct inotify_event *)q2;
        if (ie->wd == 3 && (ie->mask & IN_MODIFY)) seen_in |= 1;
        else if (ie->wd == 1 && (ie->mask & IN_CREATE) && ie->len && !strcmp(ie->name, "created")) seen_in |= 2;
        else seen_in |= 4;
    }
    CHECK(seen_in == 3, "inotify events: %#x (1: wd 3 modified, 2: wd 1 created, 4: others)", seen_in);
    write(q[1], "x", 1);
    pthread_join(t, 0);
    CHECK(woke == 99, "the waiter woke with %llu", (unsigned long long)woke);
    printf(fails ? "FAIL: %d\n" : "ok\n", fails);
    return fails != 0;
}
