// A program driving another through a pseudo-terminal (as expect, script or a terminal
// emulator does): its child runs on the slave, as the leader of its own session with the
// slave as its controlling terminal, and this process holds the master. Bytes are left in
// flight both ways before it says "ready /dev/pts/N": the child has written a line this
// process has not read, and this process has typed a line the child has not read (the child
// reads it only on SIGUSR1). On "go" from stdin it signals the child and prints, "master: ..."
// a line, all that comes out of the master until the child ends, then "child ended STATUS".
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static void child(const char *slave) {
    setsid();
    int fd = open(slave, O_RDWR); // the session's controlling terminal
    if (fd < 0) _exit(10);
    dup2(fd, 0), dup2(fd, 1), dup2(fd, 2);
    if (fd > 2) close(fd);
    signal(SIGUSR1, on_usr1);
    printf("out-before\n");
    fflush(stdout);
    while (!go) usleep(20000);
    char line[256];
    if (!fgets(line, sizeof line, stdin)) _exit(11);
    line[strcspn(line, "\n")] = 0;
    char *me = ttyname(0);
    printf("got:%s (%s)\n", line, me ? me : "?");
    fflush(stdout);
    _exit(0);
}

int main(void) {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) || unlockpt(m)) return 1;
    char slave[64];
    snprintf(slave, sizeof slave, "%s", ptsname(m));
    pid_t pid = fork();
    if (pid == 0) child(slave);
    // Until the child has written its line, nothing is read from the master.
    int n = 0;
    while (ioctl(m, FIONREAD, &n) == 0 && n < (int)strlen("out-before\r\n")) usleep(10000);
    const char *typed = "typed-ahead\n";
    if (write(m, typed, strlen(typed)) != (ssize_t)strlen(typed)) return 1;
    usleep(100000);
    printf("ready %s\n", slave);
    fflush(stdout);
    char cmd[16];
    if (!fgets(cmd, sizeof cmd, stdin) || strcmp(cmd, "go\n")) return 2;
    kill(pid, SIGUSR1);
    char out[4096];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(m, out + len, sizeof out - 1 - len);
        if (r <= 0) break; // EIO: the child's end is closed
        len += r;
    }
    out[len] = 0;
    for (char *l = strtok(out, "\r\n"); l; l = strtok(NULL, "\r\n")) printf("master: %s\n", l);
    int status = -1;
    waitpid(pid, &status, 0);
    printf("child ended %d\n", status);
    return 0;
}
