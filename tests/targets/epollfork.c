/* epollfork [moved]: an epoll instance shared across a fork, as a server's child saving its
 * data holds its parent's. The parent makes an epoll set (and a dup of its fd) watching the
 * read ends of two pipes it holds both ends of, a (data 0xa) and b (0xb), then forks a child
 * that closes a's and b's read ends (their registrations stay: the parent still has those files) and
 * adds a pipe of its own, c (0xc), to the same instance. With "moved", the parent then moves
 * b's read end to another fd number: b's registration names an fd that none of them has
 * open at that number any more. Prints "ready PID" once the child runs, then for each line
 * on stdin:
 *   "check": the parent writes to a and b and has the child write to c; the instance, through
 *            either of the parent's fds, reports exactly a, b and c ready. Then the child makes
 *            a pipe d (0xd), adds it to the instance and writes to it: the parent sees it
 *            (one instance, not one each). The child checks that a's and b's read ends are still
 *            closed in it. Prints "ok", or "FAIL: what", and exits with its child.
 * The child dies with its parent. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <signal.h>
#include <unistd.h>

static int ep, a[2], b[2];

static int add(int fd, unsigned long data) {
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = data};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

/* The data of the ready registrations, as a bit per value 0xa..0xd (bit 0 for 0xa). */
static int ready(int fd) {
    struct epoll_event ev[16];
    int n = epoll_wait(fd, ev, 16, 2000), got = 0;
    for (int i = 0; i < n; i++) got |= 1 << (ev[i].data.u64 - 0xa);
    return n < 0 ? -1 : got;
}

static void child(int order, int done) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int c[2];
    if (pipe(c) || close(a[0]) || close(b[0]) || add(c[0], 0xc)) exit(2);
    if (write(done, "r", 1) != 1) exit(2);
    char o;
    while (read(order, &o, 1) == 1) {
        char reply = 'x';
        if (o == 'c') {
            if (write(c[1], "c", 1) != 1) reply = 'w';
            if (fcntl(a[0], F_GETFD) != -1 || errno != EBADF || fcntl(b[0], F_GETFD) != -1) reply = 'a';
        } else {
            int d[2];
            if (pipe(d) || add(d[0], 0xd) || write(d[1], "d", 1) != 1) reply = 'd';
        }
        if (write(done, &reply, 1) != 1) exit(2);
    }
    exit(0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int order[2], done[2];
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0 || pipe(a) || pipe(b) || pipe(order) || pipe(done)) return 2;
    int again = dup(ep);
    if (again < 0 || add(a[0], 0xa) || add(b[0], 0xb)) return 2;
    pid_t kid = fork();
    if (kid < 0) return 2;
    if (kid == 0) child(order[0], done[1]);
    char x;
    if (read(done[0], &x, 1) != 1) return 2;
    if (argc > 1 && !strcmp(argv[1], "moved")) {
        int to = dup(b[0]);
        if (to < 0 || close(b[0])) return 2;
        b[0] = to;
    }
    printf("ready %d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "check", 5)) continue;
        if (write(a[1], "a", 1) != 1 || write(b[1], "b", 1) != 1) return 2;
        if (write(order[1], "c", 1) != 1 || read(done[0], &x, 1) != 1) return 2;
        if (x != 'x') {
            printf("FAIL: the child said %c to the check (a: a's or b's end open in it, w: c not written)\n", x);
            return 1;
        }
        int got = ready(ep), through = ready(again);
        if (got != 7 || through != 7) {
            printf("FAIL: ready %#x, through the dup %#x, not a, b and c (0x7)\n", got, through);
            return 1;
        }
        if (write(order[1], "n", 1) != 1 || read(done[0], &x, 1) != 1 || x != 'x') {
            printf("FAIL: the child could not add d\n");
            return 1;
        }
        got = ready(ep);
        if (got != 15) {
            printf("FAIL: after the child added d, ready %#x, not a, b, c and d (0xf)\n", got);
            return 1;
        }
        printf("ok\n");
        return 0;
    }
    return 0;
}
