/* asuser UID PROGRAM [ARG...]: runs PROGRAM as user and group UID, without supplementary groups
 * (the guest has no user database for su). */
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: asuser UID PROGRAM [ARG...]\n");
        return 2;
    }
    uid_t id = (uid_t)atoi(argv[1]);
    if (setgroups(0, 0) || setgid(id) || setuid(id)) {
        perror("asuser");
        return 125;
    }
    execv(argv[2], argv + 2);
    perror("asuser: execv");
    return 126;
}
