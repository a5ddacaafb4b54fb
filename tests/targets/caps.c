/* A root process that gave up some of its power, as a container's root or a unit with
 * CapabilityBoundingSet= does: CAP_SYS_ADMIN and CAP_NET_RAW out of its bounding set,
 * CAP_SYS_MODULE out of its permitted set, CAP_KILL out of its effective one,
 * CAP_NET_BIND_SERVICE inheritable and ambient, SECBIT_KEEP_CAPS set. Prints "ready"; on
 * "show" prints "caps INH PRM EFF BND AMB SECUREBITS" as /proc/self/status and prctl say;
 * exits on EOF. With "user": a user's service instead (a unit's User=nobody with
 * AmbientCapabilities=CAP_NET_BIND_SERVICE): uid and gid 65534, CAP_NET_BIND_SERVICE and
 * CAP_KILL permitted, the first effective, inheritable and ambient, SECBIT_KEEP_CAPS set. */
#define _GNU_SOURCE
#include <linux/capability.h>
#include <grp.h>
#include <linux/securebits.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void field(const char *status, const char *key, char *out) {
    const char *p = strstr(status, key);
    out[0] = 0;
    if (p) sscanf(p + strlen(key), " %31s", out);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (argc > 1 && !strcmp(argv[1], "user")) {
        if (prctl(PR_SET_KEEPCAPS, 1) || setgroups(0, NULL) || setresgid(65534, 65534, 65534) ||
            setresuid(65534, 65534, 65534))
            return 2;
        memset(d, 0, sizeof d);
        d[0].permitted = (1u << CAP_NET_BIND_SERVICE) | (1u << CAP_KILL);
        d[0].effective = d[0].inheritable = 1u << CAP_NET_BIND_SERVICE;
        if (syscall(SYS_capset, &h, d)) return 2;
    } else {
        if (prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN) || prctl(PR_CAPBSET_DROP, CAP_NET_RAW)) return 2;
        if (syscall(SYS_capget, &h, d)) return 2;
        d[0].permitted &= ~(1u << CAP_SYS_MODULE);
        d[0].effective &= ~((1u << CAP_SYS_MODULE) | (1u << CAP_KILL));
        d[0].inheritable = 1u << CAP_NET_BIND_SERVICE;
        d[1].inheritable = 0;
        if (syscall(SYS_capset, &h, d)) return 2;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)) return 2;
    // (The user's SECBIT_KEEP_CAPS is its PR_SET_KEEPCAPS, still set.)
    if (argc < 2 && prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS)) return 2;
    printf("ready\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "show", 4)) continue;
        char status[8192], v[5][32];
        FILE *f = fopen("/proc/self/status", "r");
        size_t n = f ? fread(status, 1, sizeof status - 1, f) : 0;
        if (f) fclose(f);
        status[n] = 0;
        const char *keys[5] = {"CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"};
        for (int i = 0; i < 5; i++) field(status, keys[i], v[i]);
        printf("caps %s %s %s %s %s %d\n", v[0], v[1], v[2], v[3], v[4], prctl(PR_GET_SECUREBITS));
    }
    return 0;
}
