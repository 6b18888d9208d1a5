/* A test program for the lab: start N threads that sleep, then sleep. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static void *sleeper(void *arg) { (void)arg; for (;;) pause(); return NULL; }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    for (int i = 0; i < n && i < 64; i++) { pthread_t t; pthread_create(&t, NULL, sleeper, NULL); }
    for (;;) pause();
}
