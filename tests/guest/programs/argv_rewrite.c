/* Rewrites its own command line in place when told to (SIGUSR1), as malware that disguises
 * itself does: the same process, the same mm and argument area, new bytes in it. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t told;

static void on_usr1(int sig) { (void)sig; told = 1; }

int main(int argc, char **argv) {
    signal(SIGUSR1, on_usr1);
    while (!told)
        pause();
    for (int i = 1; i < argc; i++) /* every argument becomes the same length of 'x' */
        memset(argv[i], 'x', strlen(argv[i]));
    for (;;)
        pause();
}
