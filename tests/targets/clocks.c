/* Says "ready MONO BOOT" (CLOCK_MONOTONIC and CLOCK_BOOTTIME, in ns), then on each "check"
 * says "clocks MONO BOOT" again; exits on EOF. */
#include <stdio.h>
#include <string.h>
#include <time.h>

static long long ns(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %lld %lld\n", ns(CLOCK_MONOTONIC), ns(CLOCK_BOOTTIME));
    char line[64];
    while (fgets(line, sizeof line, stdin))
        if (!strncmp(line, "check", 5)) printf("clocks %lld %lld\n", ns(CLOCK_MONOTONIC), ns(CLOCK_BOOTTIME));
    return 0;
}
