/* TCP and UDP sockets a restore makes again by itself: an IPv4 listener with options
 * (SO_REUSEADDR, TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE 77, SO_RCVBUF, backlog 7,
 * non-blocking), an IPv6 listener taking IPv4 too (IPV6_V6ONLY 0), a listener it never
 * accepts on, a TCP socket bound and not listening, one only made (TCP_NODELAY), a UDP socket
 * bound and a UDP socket connected to it.
 * Prints "ready P4 P6 PIDLE"; then each connection accepted on the first two gets "n=N", N a
 * count in memory. On stdin: "state" prints every socket's address and options on one line;
 * "udp" sends a datagram on the connected socket and says what the bound one got, from which
 * port; "hold" accepts a connection on the listener that serves no one else, and keeps it; "pump N" writes up to N
 * more bytes of a pattern (byte i of the stream is i % 251) on it, as many as fit without
 * blocking, and says how many; "read" reads what is there and prints it (with the count
 * recv gave: 0 at end of file, -1 when nothing is there); "shut" shuts the connection
 * down for writing; "check" says "ok" and exits.
 * With the argument "share", a child holds every socket too (and waits). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int opt(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    getsockopt(fd, level, name, &v, &len);
    return v;
}

static int set(int fd, int level, int name, int v) { return setsockopt(fd, level, name, &v, sizeof v); }

static int port(int fd) {
    struct sockaddr_in6 a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len)) return -1;
    return ntohs(a.sin6_port); /* sin_port and sin6_port are at the same place */
}

static int listener(int family, const char *addr, int backlog) {
    int fd = socket(family, SOCK_STREAM, 0);
    if (family == AF_INET) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, addr, &a.sin_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a)) return -1;
    } else {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6};
        inet_pton(AF_INET6, addr, &a.sin6_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a)) return -1;
    }
    return backlog < 0 || listen(fd, backlog) == 0 ? fd : -1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int l4 = socket(AF_INET, SOCK_STREAM, 0);
    set(l4, SOL_SOCKET, SO_REUSEADDR, 1);
    set(l4, IPPROTO_TCP, TCP_NODELAY, 1);
    set(l4, SOL_SOCKET, SO_KEEPALIVE, 1);
    set(l4, IPPROTO_TCP, TCP_KEEPIDLE, 77);
    set(l4, SOL_SOCKET, SO_RCVBUF, 65536);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(l4, (struct sockaddr *)&a4, sizeof a4) || listen(l4, 7)) return 2;
    fcntl(l4, F_SETFL, O_NONBLOCK);
    int l6 = socket(AF_INET6, SOCK_STREAM, 0);
    set(l6, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any};
    if (bind(l6, (struct sockaddr *)&a6, sizeof a6) || listen(l6, 16)) return 2;
    int idle = listener(AF_INET, "127.0.0.1", 3);
    int bound = listener(AF_INET6, "::1", -1);
    int fresh = socket(AF_INET, SOCK_STREAM, 0);
    set(fresh, IPPROTO_TCP, TCP_NODELAY, 1);
    int ub = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in au = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof au;
    if (idle < 0 || bound < 0 || bind(ub, (struct sockaddr *)&au, sizeof au) ||
        getsockname(ub, (struct sockaddr *)&au, &len))
        return 2;
    int uc = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(uc, (struct sockaddr *)&au, sizeof au)) return 2;
    if (argc > 1 && !strcmp(argv[1], "share") && fork() == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(0);
        for (;;) pause();
    }
    printf("ready %d %d %d\n", port(l4), port(l6), port(idle));
    int n = 0, conn = -1;
    unsigned long pumped = 0;
    char line[64];
    for (;;) {
        struct pollfd p[3] = {{0, POLLIN, 0}, {l4, POLLIN, 0}, {l6, POLLIN, 0}};
        if (poll(p, 3, -1) < 0) continue;
        for (int i = 1; i < 3; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            int c = accept(p[i].fd, NULL, NULL);
            if (c < 0) continue;
            dprintf(c, "n=%d\n", ++n);
            close(c);
        }
        if (!(p[0].revents & (POLLIN | POLLHUP))) continue;
        if (!fgets(line, sizeof line, stdin)) return 0;
        if (!strncmp(line, "state", 5)) {
            printf("state l4 %d reuse %d nodelay %d keepalive %d keepidle %d rcvbuf %d nonblock %d listen %d; "
                   "l6 %d v6only %d listen %d; idle %d listen %d; bound %d listen %d; fresh %d nodelay %d; "
                   "udp %d, connected from %d\n",
                   port(l4), opt(l4, SOL_SOCKET, SO_REUSEADDR), opt(l4, IPPROTO_TCP, TCP_NODELAY),
                   opt(l4, SOL_SOCKET, SO_KEEPALIVE), opt(l4, IPPROTO_TCP, TCP_KEEPIDLE),
                   opt(l4, SOL_SOCKET, SO_RCVBUF), !!(fcntl(l4, F_GETFL) & O_NONBLOCK),
                   opt(l4, SOL_SOCKET, SO_ACCEPTCONN), port(l6), opt(l6, IPPROTO_IPV6, IPV6_V6ONLY),
                   opt(l6, SOL_SOCKET, SO_ACCEPTCONN), port(idle), opt(idle, SOL_SOCKET, SO_ACCEPTCONN),
                   port(bound), opt(bound, SOL_SOCKET, SO_ACCEPTCONN), port(fresh),
                   opt(fresh, IPPROTO_TCP, TCP_NODELAY), port(ub), port(uc));
        } else if (!strncmp(line, "udp", 3)) {
            char buf[32] = {0};
            struct sockaddr_in from;
            socklen_t flen = sizeof from;
            send(uc, "ping", 4, 0);
            ssize_t got = recvfrom(ub, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &flen);
            printf("udp got %s from %d (%zd bytes)\n", buf, ntohs(from.sin_port), got);
        } else if (!strncmp(line, "hold", 4)) {
            conn = accept(idle, NULL, NULL);
            printf("holding %d\n", conn >= 0);
        } else if (!strncmp(line, "pump", 4)) {
            unsigned long want = strtoul(line + 5, NULL, 10), done = 0;
            char buf[65536];
            while (done < want) {
                size_t len = want - done < sizeof buf ? want - done : sizeof buf;
                for (size_t i = 0; i < len; i++) buf[i] = (pumped + i) % 251;
                ssize_t w = send(conn, buf, len, MSG_DONTWAIT);
                if (w <= 0) break;
                pumped += w, done += w;
            }
            printf("pumped %lu\n", done);
        } else if (!strncmp(line, "read", 4)) {
            char buf[256] = {0};
            ssize_t got = recv(conn, buf, sizeof buf - 1, MSG_DONTWAIT);
            buf[got > 0 ? got : 0] = 0;
            buf[strcspn(buf, "\n")] = 0;
            printf("read %zd %s\n", got, buf);
        } else if (!strncmp(line, "shut", 4)) {
            printf("shut %d\n", shutdown(conn, SHUT_WR));
        } else if (!strncmp(line, "check", 5)) {
            printf("ok\n");
            return 0;
        }
    }
}
