/* A hardened process: no_new_privs, then three seccomp filters (getppid fails with errno 42;
 * then, installed with SECCOMP_FILTER_FLAG_LOG, uname fails with errno 43; then getpriority
 * kills the process), and a second thread under them. Prints "ready"; on "check": the filters
 * hold in both threads, the status says so, a child that calls getpriority is killed by
 * SIGSYS, and one more filter installed with TSYNC reaches the thread (the threads share
 * their filters). Says "ok" or "bad: ...". */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static int install_ret(int nr, unsigned ret, unsigned flags) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, ret),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {sizeof f / sizeof f[0], f};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

static int install(int nr, int err, unsigned flags) {
    return install_ret(nr, SECCOMP_RET_ERRNO | err, flags);
}

static const char *filtered(void) {
    struct utsname u;
    errno = 0;
    if (syscall(SYS_getppid) != -1 || errno != 42) return "getppid is not filtered";
    errno = 0;
    if (uname(&u) != -1 || errno != 43) return "uname is not filtered";
    errno = 0;
    if (syscall(SYS_getpgid, 0) != -1 || errno != 44) return "getpgid is not filtered (TSYNC)";
    return NULL;
}

static int status_has(const char *path, const char *want) {
    char buf[8192];
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    return strstr(buf, want) != NULL;
}

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go, done;
static const char *thread_says;
static pid_t thread_tid;

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&m);
    thread_tid = gettid();
    pthread_cond_broadcast(&cv);
    while (!go) pthread_cond_wait(&cv, &m);
    thread_says = filtered();
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return 2;
    if (install(SYS_getppid, 42, 0) || install(SYS_uname, 43, SECCOMP_FILTER_FLAG_LOG) ||
        install_ret(SYS_getpriority, SECCOMP_RET_KILL_PROCESS, 0))
        return 2;
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL)) return 2;
    pthread_mutex_lock(&m);
    while (!thread_tid) pthread_cond_wait(&cv, &m);
    pthread_mutex_unlock(&m);
    printf("ready\n");
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", thread_tid);
    if (!status_has("/proc/self/status", "Seccomp:\t2") || !status_has("/proc/self/status", "Seccomp_filters:\t3") ||
        !status_has("/proc/self/status", "NoNewPrivs:\t1") || !status_has(path, "Seccomp_filters:\t3")) {
        printf("bad: the status does not show no_new_privs and 3 filters in both threads\n");
        return 1;
    }
    pid_t kid = fork();
    if (kid == 0) {
        syscall(SYS_getpriority, PRIO_PROCESS, 0);
        _exit(0);
    }
    int ws;
    if (waitpid(kid, &ws, 0) != kid || !WIFSIGNALED(ws) || WTERMSIG(ws) != SIGSYS) {
        printf("bad: a child calling getpriority was not killed by SIGSYS (status %#x)\n", ws);
        return 1;
    }
    if (install(SYS_getpgid, 44, SECCOMP_FILTER_FLAG_TSYNC)) {
        printf("bad: a filter with TSYNC cannot be added (errno %d): the threads do not share theirs\n", errno);
        return 1;
    }
    const char *why = filtered();
    pthread_mutex_lock(&m);
    go = 1;
    pthread_cond_broadcast(&cv);
    while (!done) pthread_cond_wait(&cv, &m);
    pthread_mutex_unlock(&m);
    if (why || thread_says) {
        printf("bad: %s\n", why ? why : thread_says);
        return 1;
    }
    printf("ok\n");
    return 0;
}
