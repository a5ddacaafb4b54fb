/* A process holding the fds crs cannot restore, each of which must be refused by name before
 * the process is touched: an io_uring instance, a pidfd, a userfaultfd, a perf event, a
 * fanotify instance (root only: -1 otherwise) and an inotify instance with an event not yet
 * read. argv[1]: a directory for the watched file.
 * Prints "ready FD..." (the fd numbers, in that order; -1 for one it could not make); on
 * "check" prints "ok" (it ran on, untouched) and exits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    const char *dir = argc > 1 ? argv[1] : ".";
    char a[4096];
    snprintf(a, sizeof a, "%s/touched", dir);
    struct io_uring_params up; memset(&up, 0, sizeof up);
    int ring = (int)syscall(SYS_io_uring_setup, 4, &up);
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    struct perf_event_attr pe; memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE; pe.size = sizeof pe; pe.config = PERF_COUNT_SW_TASK_CLOCK; pe.disabled = 1;
    int perf = (int)syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0);
    int fan = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);
    close(open(a, O_WRONLY | O_CREAT | O_TRUNC, 0644));
    int ev = inotify_init1(0);
    inotify_add_watch(ev, a, IN_ATTRIB);
    chmod(a, 0600); /* an event nobody reads */
    printf("ready %d %d %d %d %d %d\n", ring, pidfd, uffd, perf, fan, ev);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin))
        if (!strncmp(line, "check", 5)) { printf("ok\n"); fflush(stdout); return 0; }
    return 1;
}
