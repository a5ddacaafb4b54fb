/* Migration target: holds state in memory, reports through a log file opened by path (its
 * stdio is /dev/null once restartd restores it), and checks itself on SIGUSR1.
 * argv[1]: log file, or "-" for standard output; argv[2]: MiB of dirty anonymous memory (default 4); argv[3]: threads
 * (default 0, at most 64), each counting in a 1 ms nanosleep loop: a check then also asks
 * that each counted on since the last one (" threads=N" in its line). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static volatile long progress[64];

static void *worker(void *arg) {
    long i = (long)arg;
    for (;;) {
        progress[i]++;
        struct timespec t = {0, 1000 * 1000};
        nanosleep(&t, 0);
    }
    return 0;
}
static void on_usr1(int s) { (void)s; asked = 1; }

int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    /* "-": the log is standard output (a process with no fd beyond 0-2, for /dev/crd). */
    int log = strcmp(argv[1], "-") ? open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644) : 1;
    size_t n = (size_t)atol(argc > 2 ? argv[2] : "4") << 20;
    unsigned char *mem = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i++) mem[i] = (unsigned char)(i * 7 + (i >> 12));
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    if (threads > 64) threads = 64;
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, 0, worker, (void *)i);
    }
    long checks = 0, last[64] = {0};
    /* Ready once every thread has run: a check right after would otherwise find one that the
     * scheduler had not run yet (a busy machine) stalled. */
    for (int i = 0; i < threads; i++)
        while (!progress[i]) {
            struct timespec t = {0, 1000 * 1000};
            nanosleep(&t, 0);
        }
    dprintf(log, "ready %d\n", getpid());
    for (;;) {
        /* Not pause(): restored inside it, the process re-issues it, and a SIGUSR1 that comes
         * before the re-issued call runs its handler and then waits for the next one (the
         * program's own lost-wakeup race, which a restore makes wider). A short sleep bounds it. */
        struct timespec nap = {0, 100 * 1000 * 1000};
        nanosleep(&nap, 0);
        if (!asked) continue;
        asked = 0;
        int bad = 0;
        for (size_t i = 0; i < n; i++)
            if (mem[i] != (unsigned char)(i * 7 + (i >> 12))) { bad = 1; break; }
        char ns[64] = "";
        ssize_t l = readlink("/proc/self/ns/net", ns, sizeof ns - 1);
        ns[l < 0 ? 0 : l] = 0;
        int stalled = 0;
        for (int i = 0; i < threads; i++) {
            if (progress[i] == last[i]) stalled++;
            last[i] = progress[i];
        }
        checks++;
        char th[32] = "";
        if (threads) snprintf(th, sizeof th, " threads=%d", threads);
        dprintf(log, "%s pid=%d check=%ld %s%s\n", bad ? "FAIL memory" : stalled ? "FAIL threads stalled" : "ok", getpid(), checks, ns, th);
    }
}
