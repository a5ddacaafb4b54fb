/* tracer PROGRAM [ARG...]: runs PROGRAM traced, as a debugger would (PTRACE_TRACEME), passing
 * every signal on, until it ends: a process under a tracer, for the crd backend to checkpoint. */
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tracer PROGRAM [ARG...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execv(argv[1], argv + 1);
        perror("tracer: execv");
        _exit(126);
    }
    for (;;) {
        int st;
        if (waitpid(pid, &st, 0) < 0) return 1;
        if (WIFEXITED(st)) return WEXITSTATUS(st);
        if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
        int sig = WSTOPSIG(st);
        ptrace(PTRACE_CONT, pid, 0, sig == SIGTRAP ? 0 : sig);
    }
}
