/* System V IPC between this process and its child: a semaphore set of 3 (values 3 0 7), a
 * message queue with 3 messages of types 5, 2 and 9, a
 * 1 MiB segment both attach (its second half read-only here), and a segment removed while
 * both have it attached (IPC_RMID). Keys are this process's own (0x43520000 + pid, + 1, + 2).
 * Prints "ready SEMID MSGID SHMID"; on "check": every value, message, byte, key, mode and
 * protection is as it was; the child posts the semaphore this process waits on and writes to
 * the shared segment, which this process sees. Says "ok" or "bad: ...". */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEG (1 << 20)
struct msg { long type; char text[32]; };

static int bad(const char *what) {
    printf("bad: %s (errno %d)\n", what, errno);
    return 1;
}

/* The protection /proc/self/maps shows at address a ("rw-s", "r--s"). */
static int prot_is(void *a, const char *want) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int ok = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && (unsigned long)a >= lo && (unsigned long)a < hi)
            ok = !strcmp(perms, want);
    }
    if (f) fclose(f);
    return ok;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    key_t key = 0x43520000 + (getpid() & 0xffff) * 4;
    int sem = semget(key, 3, IPC_CREAT | IPC_EXCL | 0640);
    int msq = msgget(key + 1, IPC_CREAT | IPC_EXCL | 0620);
    int shm = shmget(key + 2, SEG, IPC_CREAT | IPC_EXCL | 0600);
    int gone = shmget(IPC_PRIVATE, 8192, 0600);
    if (sem < 0 || msq < 0 || shm < 0 || gone < 0) return 2;
    unsigned short init[3] = {3, 0, 6};
    if (semctl(sem, 0, SETALL, init)) return 2;
    struct msg m5 = {5, "five"}, m2 = {2, "two"}, m9 = {9, "nine, the last"};
    if (msgsnd(msq, &m5, 5, 0) || msgsnd(msq, &m2, 4, 0) || msgsnd(msq, &m9, 15, 0)) return 2;
    unsigned char *seg = shmat(shm, NULL, 0);
    char *g = shmat(gone, NULL, 0);
    if (seg == (void *)-1 || g == (void *)-1) return 2;
    for (int i = 0; i < SEG; i++) seg[i] = (unsigned char)(i * 13 + 1);
    strcpy(g, "removed but attached");
    if (shmctl(gone, IPC_RMID, NULL)) return 2;
    int go[2];
    if (pipe(go)) return 2;
    pid_t kid = fork();
    if (kid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(go[1]);
        struct sembuf up = {2, 1, 0};
        if (semop(sem, &up, 1)) _exit(3); /* 6 -> 7 */
        char c;
        if (read(go[0], &c, 1) != 1) _exit(4);
        memcpy(seg + 100, "the child", 9);
        struct sembuf post = {1, 1, 0};
        if (semop(sem, &post, 1)) _exit(5);
        _exit(strcmp(g, "removed but attached") ? 6 : 0);
    }
    close(go[0]);
    if (mprotect(seg + SEG / 2, SEG / 2, PROT_READ)) return 2;
    struct sembuf seven = {2, -7, IPC_NOWAIT}, back = {2, 7, 0};
    while (semop(sem, &seven, 1)) usleep(1000); /* the child's +1 is in */
    if (semop(sem, &back, 1)) return 2;
    printf("ready %d %d %d\n", sem, msq, shm);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    unsigned short v[3];
    if (semctl(sem, 0, GETALL, v) || v[0] != 3 || v[1] != 0 || v[2] != 7) return bad("the semaphores' values changed");
    struct semid_ds sd;
    if (semctl(sem, 0, IPC_STAT, &sd) || sd.sem_perm.__key != key || (sd.sem_perm.mode & 0777) != 0640 || sd.sem_nsems != 3)
        return bad("the semaphore set's key, mode or size changed");
    struct msqid_ds qd;
    if (msgctl(msq, IPC_STAT, &qd) || qd.msg_perm.__key != key + 1 || (qd.msg_perm.mode & 0777) != 0620 || qd.msg_qnum != 3)
        return bad("the queue's key, mode or count changed");
    const char *want[3] = {"five", "two", "nine, the last"};
    long types[3] = {5, 2, 9};
    for (int i = 0; i < 3; i++) {
        struct msg r;
        memset(&r, 0, sizeof r);
        ssize_t n = msgrcv(msq, &r, sizeof r.text, 0, IPC_NOWAIT);
        if (n != (ssize_t)strlen(want[i]) + 1 || r.type != types[i] || strcmp(r.text, want[i])) return bad("a message changed");
    }
    for (int i = 0; i < SEG; i++)
        if (seg[i] != (unsigned char)(i * 13 + 1)) return bad("the segment's contents changed");
    if (!prot_is(seg, "rw-s") || !prot_is(seg + SEG / 2, "r--s")) return bad("the segment's protections changed");
    struct shmid_ds md;
    /* Attached by the child, and here in two pieces (the kernel counts each). */
    if (shmctl(shm, IPC_STAT, &md) || md.shm_perm.__key != key + 2 || md.shm_segsz != SEG || md.shm_nattch != 3)
        return bad("the segment's key, size or attachments changed");
    if (strcmp(g, "removed but attached")) return bad("the removed segment's contents changed");
    if (shmctl(gone, IPC_STAT, &md) == 0 && !(md.shm_perm.mode & SHM_DEST)) return bad("the removed segment is not removed");
    if (write(go[1], "g", 1) != 1) return bad("the child's pipe");
    struct sembuf wait1 = {1, -1, 0};
    if (semop(sem, &wait1, 1)) return bad("waiting on the child's post");
    if (memcmp(seg + 100, "the child", 9)) return bad("the child's write is not shared");
    int s;
    if (waitpid(kid, &s, 0) != kid || !WIFEXITED(s) || WEXITSTATUS(s)) {
        printf("bad: the child ended with status %#x\n", s);
        return 1;
    }
    semctl(sem, 0, IPC_RMID);
    msgctl(msq, IPC_RMID, NULL);
    shmctl(shm, IPC_RMID, NULL);
    printf("ok\n");
    return 0;
}
