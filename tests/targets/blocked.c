/* A process crs must refuse, for several reasons at once: a child holding a netlink socket (the pipe
 * they share is no reason: both are in the checkpoint), a read lease on a file and a POSIX
 * timer on its child's CPU clock. argv[1]: a directory for the locked file. Prints "ready";
 * on "check" it prints "ok" (it ran on, untouched) and exits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    int p[2]; /* made before the fork: the child holds its ends too */
    if (pipe(p)) return 1;
    pid_t kid = fork();
    if (kid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (socket(AF_NETLINK, SOCK_RAW, 0) < 0) _exit(1);
        pause();
        _exit(0);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/locked", argc > 1 ? argv[1] : ".");
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) return 1;
    close(fd);
    fd = open(path, O_RDONLY);
    if (fd < 0 || fcntl(fd, F_SETLEASE, F_RDLCK)) return 1;
    timer_t t;
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_NONE;
    clockid_t kids;
    if (clock_getcpuclockid(kid, &kids) || timer_create(kids, &ev, &t)) return 1;
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "check", 5)) continue;
        kill(kid, SIGKILL);
        waitpid(kid, 0, 0);
        printf("ok\n");
        fflush(stdout);
        return 0;
    }
    return 1;
}
