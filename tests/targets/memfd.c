/* Memfds, as Wayland clients, systemd and sandboxes use them: "crs-buf" (1 MiB, sealed against
 * shrinking and growing) open in this process and its child through one file description (its
 * offset shared) and mapped shared by both; "crs-sealed" sealed against writing and further
 * sealing, mapped read-only; "crs-sparse" (64 MiB, written at 32 MiB only) mapped shared with
 * its fd closed. On "check": every byte, seal, name, mode and the shared offset are as they
 * were; the child writes through its mapping and moves the shared offset, and this process sees
 * both; writes the seals forbid still fail. Says "ok" or "bad: ...".
 * With argument "future": one memfd, mapped shared and writable, then sealed
 * F_SEAL_FUTURE_WRITE (which crs refuses: that mapping could not be made again); on "check"
 * says "ok" if the mapping still holds what was written. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF (1 << 20)
#define SPARSE (64 << 20)
#define FAR (32 << 20)
static const char frozen[] = "contents sealed against writing";

static int bad(const char *what) {
    printf("bad: %s (errno %d)\n", what, errno);
    return 1;
}

static int named(int fd, const char *want) {
    char path[64], link[256] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (readlink(path, link, sizeof link - 1) < 0) return 0;
    return strcmp(link, want) == 0;
}

static int future(void) {
    int f = memfd_create("crs-future", MFD_ALLOW_SEALING);
    if (f < 0 || ftruncate(f, 4096)) return 2;
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    if (m == MAP_FAILED || fcntl(f, F_ADD_SEALS, F_SEAL_FUTURE_WRITE)) return 2;
    strcpy(m, "still writable");
    printf("ready\n");
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    strcat(m, " here");
    printf(strcmp(m, "still writable here") ? "bad: the mapping changed\n" : "ok\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && !strcmp(argv[1], "future")) return future();
    int a = memfd_create("crs-buf", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    int b = memfd_create("crs-sealed", MFD_ALLOW_SEALING);
    int c = memfd_create("crs-sparse", 0);
    if (a < 0 || b < 0 || c < 0) return 2;
    if (ftruncate(a, BUF) || ftruncate(c, SPARSE)) return 2;
    unsigned char *am = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
    if (am == MAP_FAILED) return 2;
    for (int i = 0; i < BUF; i++) am[i] = (unsigned char)(i * 7 + 3);
    if (fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)) return 2;
    if (write(b, frozen, sizeof frozen) != sizeof frozen) return 2;
    if (fcntl(b, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL)) return 2;
    const char *bm = mmap(NULL, 4096, PROT_READ, MAP_SHARED, b, 0);
    if (bm == MAP_FAILED) return 2;
    if (pwrite(c, "far", 3, FAR) != 3) return 2;
    char *cm = mmap(NULL, SPARSE, PROT_READ | PROT_WRITE, MAP_SHARED, c, 0);
    if (cm == MAP_FAILED) return 2;
    close(c);
    if (lseek(a, 12345, SEEK_SET) != 12345) return 2;
    int go[2];
    if (pipe(go)) return 2;
    pid_t kid = fork();
    if (kid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(go[1]);
        char x;
        if (read(go[0], &x, 1) != 1) _exit(3);
        memcpy(am + 4096, "the child was here", 18);
        if (lseek(a, 777, SEEK_SET) != 777) _exit(4);
        if (cm[FAR] != 'f') _exit(5);
        cm[FAR + 3] = '!';
        _exit(0);
    }
    close(go[0]);
    printf("ready\n");
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    for (int i = 0; i < BUF; i++)
        if (am[i] != (unsigned char)(i * 7 + 3)) return bad("crs-buf's contents changed");
    if (!named(a, "/memfd:crs-buf (deleted)") || !named(b, "/memfd:crs-sealed (deleted)"))
        return bad("a memfd's name changed");
    if (fcntl(a, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW)) return bad("crs-buf's seals changed");
    if (fcntl(b, F_GET_SEALS) != (F_SEAL_WRITE | F_SEAL_SEAL)) return bad("crs-sealed's seals changed");
    if (!(fcntl(a, F_GETFD) & FD_CLOEXEC) || (fcntl(b, F_GETFD) & FD_CLOEXEC)) return bad("close-on-exec changed");
    if (ftruncate(a, 2 * BUF) == 0 || errno != EPERM) return bad("crs-buf may grow");
    if (pwrite(b, "x", 1, 0) == 1 || errno != EPERM) return bad("crs-sealed may be written");
    if (fcntl(b, F_ADD_SEALS, F_SEAL_SHRINK) == 0) return bad("crs-sealed may be sealed again");
    if (memcmp(bm, frozen, sizeof frozen)) return bad("crs-sealed's mapping changed");
    struct stat st;
    if (fstat(b, &st) || st.st_size != sizeof frozen || (st.st_mode & 0777) != 0777)
        return bad("crs-sealed's size or mode changed");
    if (lseek(a, 0, SEEK_CUR) != 12345) return bad("crs-buf's offset changed");
    for (long i = 0; i < SPARSE; i += 4096)
        if (i != FAR && cm[i]) return bad("crs-sparse's hole has data");
    if (memcmp(cm + FAR, "far", 3)) return bad("crs-sparse's data changed");
    if (write(go[1], "g", 1) != 1) return bad("the child's pipe");
    int s;
    if (waitpid(kid, &s, 0) != kid || !WIFEXITED(s) || WEXITSTATUS(s)) {
        printf("bad: the child ended with status %#x\n", s);
        return 1;
    }
    char seen[18];
    if (memcmp(am + 4096, "the child was here", 18) || pread(a, seen, 18, 4096) != 18 ||
        memcmp(seen, "the child was here", 18))
        return bad("the child's write is not shared");
    if (lseek(a, 0, SEEK_CUR) != 777) return bad("the child's offset is not shared");
    if (cm[FAR + 3] != '!') return bad("crs-sparse is not shared");
    printf("ok\n");
    return 0;
}
