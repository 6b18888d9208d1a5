/* A CPU-bound and a memory-bound workload for the guest-overhead benchmark: each runs a fixed
 * amount of work and prints how long it took (CLOCK_MONOTONIC, in ms), so the same work can be
 * timed with and without the sentinel watching the guest.
 *
 *   workload cpu ROUNDS      integer mixing in registers (no memory traffic)
 *   workload mem MIB PASSES  dependent reads and writes across a MIB-sized buffer (cache misses)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t cpu(uint64_t rounds) {
    uint64_t x = 0x9E3779B97F4A7C15ull, y = 1;
    for (uint64_t i = 0; i < rounds; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        y = y * 6364136223846793005ull + x;
    }
    return x ^ y;
}

static uint64_t mem(size_t mib, unsigned passes) {
    size_t n = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *buf = malloc(n * sizeof(uint64_t));
    if (!buf) { perror("malloc"); exit(2); }
    for (size_t i = 0; i < n; i++) buf[i] = (i * 2654435761u) % n;  /* a scattered chain of indexes */
    uint64_t at = 0, sum = 0;
    for (unsigned p = 0; p < passes; p++)
        for (size_t i = 0; i < n; i++) { at = buf[at]; buf[i] += at; sum += at; }
    free(buf);
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: workload cpu ROUNDS | mem MIB PASSES\n"); return 2; }
    double start = now_ms();
    uint64_t r = strcmp(argv[1], "cpu") == 0 ? cpu(strtoull(argv[2], 0, 10))
                                              : mem(strtoull(argv[2], 0, 10), argc > 3 ? atoi(argv[3]) : 1);
    printf("%s %.3f %llu\n", argv[1], now_ms() - start, (unsigned long long)(r & 0xff));
    return 0;
}
