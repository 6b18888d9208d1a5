/* A user process dressed up as a kernel thread, as miners and backdoors do:
 *
 *   masquerade NAME
 *
 * sets its name (comm) to NAME with prctl(PR_SET_NAME) and rewrites its argv[0] in place to
 * "[NAME]" (its other arguments blanked), so that ps inside the guest shows it as the kernel
 * thread [NAME]. Then waits. */
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    char name[64];
    strncpy(name, argv[1], sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    if (prctl(PR_SET_NAME, name, 0, 0, 0) != 0)
        return 3;
    /* the argument area runs from argv[0] to the end of the last argument, contiguous */
    char *start = argv[0];
    char *end = argv[argc - 1] + strlen(argv[argc - 1]);
    size_t room = (size_t)(end - start);
    memset(start, 0, room);
    size_t want = strlen(name) + 2;
    if (want > room)
        want = room;
    start[0] = '[';
    memcpy(start + 1, name, want - 2);
    start[want - 1] = ']';
    for (;;)
        pause();
}
