/* Attaches to a running process with ptrace, as an injector or a credential stealer does, and stays
 * attached (the tracee is left stopped):
 *
 *   ptracer PID
 *
 * Exits 3 if it cannot attach. Detaches when killed (the kernel does it). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    pid_t pid = (pid_t)atoi(argv[1]);
    if (ptrace(PTRACE_ATTACH, pid, NULL, NULL) != 0) {
        perror("PTRACE_ATTACH");
        return 3;
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return 4;
    printf("attached %d\n", (int)pid);
    fflush(stdout);
    for (;;)
        pause();
}
