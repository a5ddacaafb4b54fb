/* Connected unix socket pairs held inside the checkpoint, with messages queued: a stream, a
 * datagram and a seqpacket pair between this process and its child, and a datagram pair this
 * process holds both ends of. Before "ready", each end of each pair has messages queued that
 * nobody read. On "check": the child reads what was queued for it, checks every byte and
 * boundary, answers on each pair; this process reads what was queued for it and the answers,
 * and says "ok" or "bad: ...". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int expect(int fd, const char *want, const char *who) {
    char buf[256] = {0};
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, n)) {
        printf("bad: %s read %zd bytes \"%s\", not \"%s\"\n", who, n, n > 0 ? buf : "", want);
        return 1;
    }
    return 0;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int st[2], dg[2], sp[2], own[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, own))
        return 2;
    int go[2];
    if (pipe(go)) return 2;
    pid_t kid = fork();
    if (kid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(st[0]), close(dg[0]), close(sp[0]), close(own[0]), close(own[1]), close(go[1]);
        /* Queued for the parent: unread until after the restore. */
        send(st[1], "from the child", 14, 0);
        send(dg[1], "dgram one", 9, 0);
        send(dg[1], "dgram two", 9, 0);
        send(sp[1], "packet", 6, 0);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(3);
        int bad = expect(st[1], "stream to the child", "child on the stream") |
                  expect(dg[1], "to the child 1", "child on the datagram pair") |
                  expect(dg[1], "to the child 2", "child on the datagram pair") |
                  expect(sp[1], "seq to the child", "child on the seqpacket pair");
        send(st[1], "answer", 6, 0);
        _exit(bad);
    }
    close(st[1]), close(dg[1]), close(sp[1]), close(go[0]);
    send(st[0], "stream to the child", 19, 0);
    send(dg[0], "to the child 1", 14, 0);
    send(dg[0], "to the child 2", 14, 0);
    send(sp[0], "seq to the child", 16, 0);
    send(own[0], "to myself", 9, 0);
    send(own[1], "and back", 8, 0);
    /* The child has queued its messages once the stream has them. */
    char peek[32];
    while (recv(st[0], peek, sizeof peek, MSG_PEEK) < 14) usleep(1000);
    usleep(20000);
    printf("ready\n");
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    int bad = expect(st[0], "from the child", "parent on the stream") |
              expect(dg[0], "dgram one", "parent on the datagram pair") |
              expect(dg[0], "dgram two", "parent on the datagram pair") |
              expect(sp[0], "packet", "parent on the seqpacket pair") |
              expect(own[1], "to myself", "its own pair") | expect(own[0], "and back", "its own pair");
    if (write(go[1], "g", 1) != 1) return 2;
    bad |= expect(st[0], "answer", "parent, the child's answer");
    int s;
    if (waitpid(kid, &s, 0) != kid || !WIFEXITED(s) || WEXITSTATUS(s)) {
        printf("bad: the child ended with status %#x\n", s);
        bad = 1;
    }
    if (!bad) printf("ok\n");
    return bad;
}
