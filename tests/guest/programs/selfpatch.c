/* Patches one byte of its own code in memory, as an inline hook in a library does, while a forked
 * copy of itself keeps the original: the two processes then map different bytes at the same offset
 * of the same file.
 *
 *   selfpatch PIDFILE
 *
 * The parent forks a child (which only waits), then makes the page holding the function target()
 * writable, changes its first byte, makes the page read-execute again, writes "PARENT CHILD" to
 * PIDFILE and waits. Killing the parent kills the child too (it dies with its parent). */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

__attribute__((noinline)) int target(int x) { return x * 3 + 1; }

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0)
        return 3;
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            return 0;
        for (;;)
            pause();
    }
    volatile unsigned char *code = (volatile unsigned char *)(uintptr_t)&target;
    uintptr_t page = (uintptr_t)code & ~(uintptr_t)4095;
    if (mprotect((void *)page, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
        return 4;
    code[0] = 0xcc; /* int3 where the function starts */
    if (mprotect((void *)page, 4096, PROT_READ | PROT_EXEC) != 0)
        return 5;
    FILE *f = fopen(argv[1], "w");
    if (f == NULL)
        return 6;
    fprintf(f, "%d %d\n", (int)parent, (int)child);
    fclose(f);
    for (;;)
        pause();
}
