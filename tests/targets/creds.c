/* Credentials target: says who it is and what it can reach with what it holds. argv[1], if
 * given, is opened as fd 3 before "ready". On "check" it prints one line and exits:
 *   ok uid=U gid=G key=none|FOUND fd3=FIRST-WORD
 * key: whether a "user" key named crs-test-secret is reachable from its session keyring;
 * fd3: the first word read from fd 3 (for /proc/kallsyms, an address: zeros unless the file
 * was opened with CAP_SYSLOG). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    if (argc > 1) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror(argv[1]); return 1; }
        if (fd != 3) { dup2(fd, 3); close(fd); }
    }
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "check", 5)) continue;
        long k = syscall(SYS_keyctl, 10 /* KEYCTL_SEARCH */, -3 /* session */, "user", "crs-test-secret", 0);
        char word[64] = "-";
        if (argc > 1) {
            char buf[256];
            ssize_t n = read(3, buf, sizeof buf - 1);
            if (n > 0) { buf[n] = 0; sscanf(buf, "%63s", word); }
        }
        printf("ok uid=%d gid=%d key=%s fd3=%s\n", getuid(), getgid(), k >= 0 ? "FOUND" : "none", word);
        fflush(stdout);
        return 0;
    }
    return 1;
}
