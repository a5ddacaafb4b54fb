/* One signal at a time, as Go's runtime preempts its threads: the main thread sends SIGURG to
 * a worker thread with tgkill only once the worker's handler took the last one (a flag the
 * sender sets and the handler clears), over and over; the worker spins. A signal lost on the
 * way (taken from the worker's queue while a checkpoint froze it, and not put back) leaves the
 * flag set for good: no signal is sent again. Three more threads spin too, so that the worker
 * waits for a CPU, a signal queued to it meanwhile. Prints "ready TID" (the worker's), then reads
 * commands from stdin, one a line:
 *   progress  print "handled N": the signals the worker handled in the next 200 ms
 *   quit      exit 0 (EOF too)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int pending_flag;
static atomic_long handled;
static atomic_int worker_tid;

static void on_urg(int sig) {
    (void)sig;
    atomic_fetch_add(&handled, 1);
    atomic_store(&pending_flag, 0);
}

static void *spin(void *arg) {
    (void)arg;
    volatile unsigned long x = 0;
    for (;;)
        x++;
    return NULL;
}

static void *worker(void *arg) {
    atomic_store(&worker_tid, (int)syscall(SYS_gettid));
    return spin(arg);
}

static void *sender(void *arg) {
    (void)arg;
    pid_t pid = getpid();
    for (;;) {
        int zero = 0;
        if (atomic_compare_exchange_strong(&pending_flag, &zero, 1))
            syscall(SYS_tgkill, pid, atomic_load(&worker_tid), SIGURG);
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_urg;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGURG, &sa, NULL);
    /* Only the worker takes SIGURG. */
    sigset_t urg;
    sigemptyset(&urg);
    sigaddset(&urg, SIGURG);
    pthread_t w, s;
    pthread_create(&w, NULL, worker, NULL);
    while (atomic_load(&worker_tid) == 0)
        usleep(1000);
    pthread_sigmask(SIG_BLOCK, &urg, NULL);
    pthread_create(&s, NULL, sender, NULL);
    for (int i = 0; i < 3; i++) {
        pthread_t t;
        pthread_create(&t, NULL, spin, NULL);
    }
    printf("ready %d\n", atomic_load(&worker_tid));
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "progress", 8) == 0) {
            long a = atomic_load(&handled);
            usleep(200000);
            printf("handled %ld\n", atomic_load(&handled) - a);
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    return 0;
}
