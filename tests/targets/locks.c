/* File locks that must be held again after a restore: an exclusive flock() on "a", a POSIX
 * read lock on bytes 10-19 and a write lock on 100-EOF of "b", an OFD write lock on bytes 0-9
 * of "c" (all in the current directory). Prints "ready"; on "check", a child of it (another
 * owner for POSIX locks, a new open file description for the others) tries a conflicting lock
 * on each and must be refused every time, and a compatible one, which must be granted; then it
 * prints "ok" or "bad: ...". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static int lk(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock f = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    return fcntl(fd, cmd, &f);
}

/* In a child: 0 if every conflicting lock is refused and the compatible one granted. */
static int probe(void) {
    int a = open("a", O_RDWR), b = open("b", O_RDWR), c = open("c", O_RDWR), bad = 0;
    if (flock(a, LOCK_SH | LOCK_NB) == 0) { printf("bad: flock on a granted\n"); bad = 1; }
    if (lk(b, F_SETLK, F_WRLCK, 15, 1) == 0) { printf("bad: write lock on b[15] granted\n"); bad = 1; }
    if (lk(b, F_SETLK, F_RDLCK, 12, 1) != 0) { printf("bad: read lock on b[12] refused\n"); bad = 1; }
    if (lk(b, F_SETLK, F_RDLCK, 5000, 1) == 0) { printf("bad: read lock on b[5000] granted\n"); bad = 1; }
    if (lk(b, F_SETLK, F_WRLCK, 50, 10) != 0) { printf("bad: write lock on b[50..59] refused\n"); bad = 1; }
    if (lk(c, F_OFD_SETLK, F_RDLCK, 3, 1) == 0) { printf("bad: OFD lock on c[3] granted\n"); bad = 1; }
    fflush(stdout);
    return bad;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int a = open("a", O_RDWR | O_CREAT, 0644), b = open("b", O_RDWR | O_CREAT, 0644),
        c = open("c", O_RDWR | O_CREAT, 0644);
    if (a < 0 || b < 0 || c < 0) return 2;
    if (flock(a, LOCK_EX | LOCK_NB) || lk(b, F_SETLK, F_RDLCK, 10, 10) || lk(b, F_SETLK, F_WRLCK, 100, 0) ||
        lk(c, F_OFD_SETLK, F_WRLCK, 0, 10)) {
        perror("lock");
        return 2;
    }
    printf("ready\n");
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    pid_t p = fork();
    if (p == 0) _exit(probe());
    int st;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st)) return 1;
    printf("ok\n");
    return 0;
}
