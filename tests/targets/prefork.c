/* A pre-forking server: binds a unix stream socket at "srv.sock" in the current directory,
 * listens, and forks 4 workers that take turns accepting (a System V semaphore is their
 * accept lock, as Apache's was; a second one counts the requests served). Each connection is
 * greeted "hello\n", then its line is answered "worker N: LINE". With the argument "client"
 * it also forks a client of its own, which asks "req I" for I = 1, 2, ... without end, checks
 * each answer, and appends "I ANSWER" to client.log ("bad: ..." there on a wrong one).
 * Prints "ready" once the workers run; on "served" prints "served N" (the counter); exits
 * (with the others) on EOF on stdin. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_un a = {.sun_family = AF_UNIX};

/* Reads up to a newline (kept), NUL-terminated; the length, or -1. */
static ssize_t line_of(int fd, char *buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t k = read(fd, buf + n, 1);
        if (k <= 0) return -1;
        if (buf[n++] == '\n') break;
    }
    buf[n] = 0;
    return (ssize_t)n;
}

static void client(void) {
    FILE *log = fopen("client.log", "a");
    if (!log) _exit(2);
    setvbuf(log, NULL, _IOLBF, 0);
    for (long i = 1;; i++) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        char got[256], want[256];
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
            fprintf(log, "bad: connect %ld\n", i);
            _exit(3);
        }
        if (line_of(s, got, sizeof got) < 0 || strcmp(got, "hello\n")) {
            fprintf(log, "bad: greeting %ld\n", i);
            _exit(3);
        }
        dprintf(s, "req %ld\n", i);
        snprintf(want, sizeof want, ": req %ld\n", i);
        if (line_of(s, got, sizeof got) < 0 || strncmp(got, "worker ", 7) || !strstr(got, want)) {
            fprintf(log, "bad: answer %ld: %s\n", i, got);
            _exit(3);
        }
        close(s);
        fprintf(log, "%ld %s", i, got);
        usleep(2000);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    strcpy(a.sun_path, "srv.sock");
    unlink(a.sun_path);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) {
        perror("listen");
        return 2;
    }
    int sem = semget(IPC_PRIVATE, 2, 0600);
    unsigned short init[2] = {1, 0};
    if (sem < 0 || semctl(sem, 0, SETALL, init)) return 2;
    for (int n = 1; n <= 4; n++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            struct sembuf lock = {0, -1, 0}, unlock = {0, 1, 0}, served = {1, 1, 0};
            for (;;) {
                if (semop(sem, &lock, 1)) continue;
                int c = accept(l, NULL, NULL);
                semop(sem, &unlock, 1);
                if (c < 0) continue;
                char buf[256];
                if (write(c, "hello\n", 6) == 6 && line_of(c, buf, sizeof buf) > 0) {
                    dprintf(c, "worker %d: %s", n, buf);
                    semop(sem, &served, 1);
                }
                close(c);
            }
        }
    }
    if (argc > 1 && !strcmp(argv[1], "client") && fork() == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        client();
    }
    printf("ready\n");
    char line[64];
    while (fgets(line, sizeof line, stdin))
        if (!strncmp(line, "served", 6)) printf("served %d\n", semctl(sem, 1, GETVAL));
    semctl(sem, 0, IPC_RMID);
    return 0;
}
