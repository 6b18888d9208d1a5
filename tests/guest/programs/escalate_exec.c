/* A user process that is handed root and execs at once, as an exploit's payload does.
 *
 *   escalate_exec UID PIDFILE GOFILE PROGRAM [ARG...]
 *
 * Drops to UID, then forks: the parent stays (a non-root process); the child writes its pid to
 * PIDFILE, waits for GOFILE to appear (the test gives the child root meanwhile) and then execs
 * PROGRAM at once, so that no sweep can fall between the escalation and the exec. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 5)
        return 2;
    uid_t uid = (uid_t)atoi(argv[1]);
    if (setgid(uid) != 0 || setuid(uid) != 0)
        return 3;
    pid_t child = fork();
    if (child < 0)
        return 4;
    if (child > 0) {
        for (;;)
            pause(); /* the non-root parent stays, as the exploit's shell would */
    }
    FILE *f = fopen(argv[2], "w");
    if (f == NULL)
        return 5;
    fprintf(f, "%d\n", getpid());
    fclose(f);
    while (access(argv[3], F_OK) != 0)
        usleep(2000);
    execv(argv[4], &argv[4]);
    return 6;
}
