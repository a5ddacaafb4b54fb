/* A process that lives on where pages of its memory read as zeros (a lazy restore whose
 * server died): argv[1] log file, argv[2] MiB of pages each holding its own number, argv[3]
 * threads waiting in pause(). Writes "ready PID", then "pid PID tick" every 100 ms, touching
 * nothing of those pages; on SIGUSR1, "pid PID bad N": how many of them do not hold their
 * number (0 while its memory is whole). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static void *idle(void *a) {
    for (;;)
        pause();
    return a;
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    FILE *log = fopen(argv[1], "a");
    size_t pages = (size_t)atol(argv[2]) << 8;
    unsigned long *m = mmap(0, pages << 12, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!log || m == MAP_FAILED)
        return 1;
    for (size_t i = 0; i < pages; i++)
        m[i * 512] = i + 1;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, 0);
    for (int i = 0; i < atoi(argv[3]); i++) {
        pthread_t t;
        pthread_create(&t, 0, idle, 0);
    }
    pthread_sigmask(SIG_UNBLOCK, &usr1, 0);
    signal(SIGUSR1, on_usr1);
    fprintf(log, "ready %d\n", getpid());
    fflush(log);
    for (;;) {
        if (asked) {
            asked = 0;
            size_t bad = 0;
            for (size_t i = 0; i < pages; i++)
                bad += m[i * 512] != i + 1;
            fprintf(log, "pid %d bad %zu\n", getpid(), bad);
        } else {
            fprintf(log, "pid %d tick\n", getpid());
        }
        fflush(log);
        usleep(100 * 1000);
    }
}
