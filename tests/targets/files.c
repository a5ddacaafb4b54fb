/* Open files, cwd and umask survive a checkpoint.
 *
 * Usage: files DIR          (DIR absolute; DIR/sub and DIR/sub/data.txt exist, data.txt holding
 *                            "0123456789abcdef")
 *        files socket       (holds a connected pair of named unix sockets: for ckpt's refusal)
 *
 * DIR mode: chdir(DIR/sub), umask(027); log.txt opened O_WRONLY|O_APPEND|O_CREAT and "line1\n"
 * written; data.txt opened O_RDWR at offset 5; DIR opened O_RDONLY|O_DIRECTORY|O_CLOEXEC;
 * /dev/null dup2'ed to fd 10 (the original closed); /dev/urandom at whatever fd; tmp.txt opened
 * O_RDWR|O_CLOEXEC, "temporary" written, unlinked and its offset set to 4; a memfd "crs-lone"
 * holding "memfd!" at offset 2 (each held by that one fd alone). Prints "ready",
 * then on the line "check" verifies all of it, appends "line2\n" to log.txt and prints one
 * verdict line, "ok files" or "FAIL: <what>"; exit status 0 only for ok.
 *
 * socket mode: listens on an abstract unix name, connects to it and accepts (a pair crs does not
 * restore: the accepted end has the listener's name), prints "ready A B" (the connected end and
 * the accepted one), and answers every line "ping" with "pong" until EOF (exit 0).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Messages are cut to fit on purpose. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

static int get_line(char *buf, size_t size) {
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return n > 0;
        if (c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = c;
    }
    buf[n] = 0;
    return 1;
}

static int socket_mode(void) {
    int p[2];
    char line[128];
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "crs-files-%d", getpid());
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + n;
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    p[0] = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || p[0] < 0 || bind(l, (struct sockaddr *)&a, len) || listen(l, 1) ||
        connect(p[0], (struct sockaddr *)&a, len) || (p[1] = accept(l, NULL, NULL)) < 0) {
        perror("socket");
        return 2;
    }
    close(l);
    printf("ready %d %d\n", p[0], p[1]);
    fflush(stdout);
    while (get_line(line, sizeof line)) {
        /* The sockets still work too. */
        char c = 0;
        if (write(p[1], "z", 1) != 1 || read(p[0], &c, 1) != 1 || c != 'z')
            printf("FAIL: own pipe broken\n");
        else if (!strcmp(line, "ping"))
            printf("pong\n");
        else
            printf("FAIL: unknown command %s\n", line);
        fflush(stdout);
    }
    return 0;
}

static char why[512];
static int nbad;
#define FAILF(...)                                          \
    do {                                                    \
        if (!nbad++)                                        \
            snprintf(why, sizeof why, __VA_ARGS__);         \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: files DIR | files socket\n");
        return 2;
    }
    if (!strcmp(argv[1], "socket"))
        return socket_mode();

    const char *dir = argv[1];
    char sub[PATH_MAX], real[PATH_MAX], want_cwd[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    if (!realpath(dir, real)) {
        perror(dir);
        return 2;
    }
    snprintf(want_cwd, sizeof want_cwd, "%s/sub", real);
    if (chdir(sub) != 0) {
        perror(sub);
        return 2;
    }
    umask(027);

    int log = open("log.txt", O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (log < 0 || write(log, "line1\n", 6) != 6) {
        perror("log.txt");
        return 2;
    }
    int data = open("data.txt", O_RDWR);
    if (data < 0 || lseek(data, 5, SEEK_SET) != 5) {
        perror("data.txt");
        return 2;
    }
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        perror(dir);
        return 2;
    }
    int n = open("/dev/null", O_RDWR);
    if (n < 0 || dup2(n, 10) != 10 || close(n) != 0) {
        perror("/dev/null");
        return 2;
    }
    int ur = open("/dev/urandom", O_RDONLY);
    if (ur < 0) {
        perror("/dev/urandom");
        return 2;
    }
    /* A file deleted while open and a memfd, each at one fd alone (no dup, no mapping). */
    int tmp = open("tmp.txt", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (tmp < 0 || write(tmp, "temporary", 9) != 9 || unlink("tmp.txt") || lseek(tmp, 4, SEEK_SET) != 4) {
        perror("tmp.txt");
        return 2;
    }
    int mfd = memfd_create("crs-lone", 0);
    if (mfd < 0 || write(mfd, "memfd!", 6) != 6 || lseek(mfd, 2, SEEK_SET) != 2) {
        perror("memfd_create");
        return 2;
    }
    struct stat log_st, data_st, dir_st;
    if (fstat(log, &log_st) || fstat(data, &data_st) || fstat(dirfd, &dir_st)) {
        perror("fstat");
        return 2;
    }

    printf("ready\n");
    fflush(stdout);

    char line[128];
    if (!get_line(line, sizeof line))
        return 0;
    if (strcmp(line, "check")) {
        printf("FAIL: unknown command %s\n", line);
        return 1;
    }

    struct stat s, p;
    int fl;
    char buf[PATH_MAX];

    /* data.txt: same file, O_RDWR, offset 5, contents from there. */
    off_t pos = lseek(data, 0, SEEK_CUR);
    if (pos != 5)
        FAILF("data.txt offset is %lld, expected 5", (long long)pos);
    if ((fl = fcntl(data, F_GETFL)) < 0 || (fl & O_ACCMODE) != O_RDWR || (fl & O_APPEND))
        FAILF("data.txt flags are %#x, expected O_RDWR without O_APPEND", fl);
    if (fstat(data, &s) || stat("data.txt", &p) || s.st_ino != p.st_ino || s.st_dev != p.st_dev)
        FAILF("data fd %d is not data.txt", data);
    memset(buf, 0, 6);
    ssize_t got = read(data, buf, 5);
    if (got != 5 || memcmp(buf, "56789", 5))
        FAILF("read from data.txt gave %zd bytes \"%.5s\", expected \"56789\"", got, buf);

    /* log.txt: O_WRONLY|O_APPEND, writes land at the end. */
    if ((fl = fcntl(log, F_GETFL)) < 0 || (fl & O_ACCMODE) != O_WRONLY || !(fl & O_APPEND))
        FAILF("log.txt flags are %#x, expected O_WRONLY|O_APPEND", fl);
    if ((fl = fcntl(log, F_GETFD)) < 0 || (fl & FD_CLOEXEC))
        FAILF("log.txt fd flags are %#x, expected no FD_CLOEXEC", fl);
    if (fstat(log, &s) || stat("log.txt", &p) || s.st_ino != p.st_ino || s.st_dev != p.st_dev)
        FAILF("log fd %d is not log.txt", log);
    if (write(log, "line2\n", 6) != 6)
        FAILF("write to log.txt failed: %s", strerror(errno));
    else if (fstat(log, &s) || lseek(log, 0, SEEK_CUR) != s.st_size)
        FAILF("log.txt offset %lld is not at its end (%lld) after an O_APPEND write",
              (long long)lseek(log, 0, SEEK_CUR), (long long)s.st_size);

    /* The directory fd: close-on-exec, a directory, the same one. */
    if ((fl = fcntl(dirfd, F_GETFD)) < 0 || !(fl & FD_CLOEXEC))
        FAILF("directory fd flags are %#x, expected FD_CLOEXEC", fl);
    if ((fl = fcntl(dirfd, F_GETFL)) < 0 || (fl & O_ACCMODE) != O_RDONLY || !(fl & O_DIRECTORY))
        FAILF("directory fd status flags are %#x, expected O_RDONLY|O_DIRECTORY", fl);
    if (fstat(dirfd, &s) || !S_ISDIR(s.st_mode) || s.st_ino != dir_st.st_ino ||
        s.st_dev != dir_st.st_dev)
        FAILF("fd %d is not the directory %s", dirfd, dir);

    /* fd 10 is /dev/null, usable. */
    if (fstat(10, &s) || !S_ISCHR(s.st_mode) || s.st_rdev != makedev(1, 3))
        FAILF("fd 10 is not /dev/null");
    else if (write(10, "gone", 4) != 4)
        FAILF("write to /dev/null on fd 10 failed: %s", strerror(errno));

    /* /dev/urandom at its fd, readable. */
    if (fstat(ur, &s) || !S_ISCHR(s.st_mode) || s.st_rdev != makedev(1, 9))
        FAILF("fd %d is not /dev/urandom", ur);
    else if (read(ur, buf, 8) != 8)
        FAILF("reading 8 bytes from /dev/urandom failed: %s", strerror(errno));

    /* The deleted file and the memfd: unlinked still, their bytes from their offsets. */
    char link[64];
    ssize_t k;
    snprintf(link, sizeof link, "/proc/self/fd/%d", tmp);
    k = readlink(link, buf, sizeof buf - 1);
    buf[k > 0 ? k : 0] = 0;
    if (fstat(tmp, &s) || s.st_nlink != 0 || !strstr(buf, "/sub/tmp.txt (deleted)"))
        FAILF("fd %d is not the deleted tmp.txt: %s", tmp, buf);
    else if ((k = read(tmp, buf, 16)) != 5 || memcmp(buf, "orary", 5))
        FAILF("the deleted tmp.txt read %zd bytes from its offset", k);
    snprintf(link, sizeof link, "/proc/self/fd/%d", mfd);
    k = readlink(link, buf, sizeof buf - 1);
    buf[k > 0 ? k : 0] = 0;
    if (strcmp(buf, "/memfd:crs-lone (deleted)"))
        FAILF("fd %d is not the memfd: %s", mfd, buf);
    else if ((k = read(mfd, buf, 16)) != 4 || memcmp(buf, "mfd!", 4))
        FAILF("the memfd read %zd bytes from its offset", k);

    /* cwd and umask. */
    if (!getcwd(buf, sizeof buf))
        FAILF("getcwd failed: %s", strerror(errno));
    else if (strcmp(buf, want_cwd))
        FAILF("cwd is %s, expected %s", buf, want_cwd);
    mode_t old = umask(0);
    umask(old);
    if (old != 027)
        FAILF("umask is %03o, expected 027", (unsigned)old);

    if (nbad) {
        printf("FAIL: %s (%d problems)\n", why, nbad);
        return 1;
    }
    printf("ok files\n");
    return 0;
}
