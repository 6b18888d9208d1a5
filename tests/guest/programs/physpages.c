/* physpages MIB SEED [CPU]: fills MIB MiB of fresh memory with a pattern that names each page
 * (word j of page i is SEED ^ (i << 20) ^ j * 0x9E3779B97F4A7C15), locks it, and prints where each
 * page sits in guest-physical memory ("INDEX PFN", from /proc/self/pagemap), then "READY", then
 * sleeps until killed. With CPU, runs there first, so the pages come from that CPU's NUMA node.
 * The test reads the pages from outside and checks that each holds its own pattern. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: physpages MIB SEED [CPU]\n");
        return 2;
    }
    size_t pages = strtoull(argv[1], NULL, 0) << 8;
    uint64_t seed = strtoull(argv[2], NULL, 0);
    if (argc > 3) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[3]), &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) {
            perror("sched_setaffinity");
            return 1;
        }
    }
    uint64_t *buf = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(buf, pages * 4096, MADV_NOHUGEPAGE); /* khugepaged must not move the pages */
    for (size_t i = 0; i < pages; i++)
        for (size_t j = 0; j < 512; j++)
            buf[i * 512 + j] = seed ^ ((uint64_t)i << 20) ^ (j * 0x9E3779B97F4A7C15ull);
    mlock(buf, pages * 4096);
    int map = open("/proc/self/pagemap", O_RDONLY);
    if (map < 0) {
        perror("pagemap");
        return 1;
    }
    for (size_t i = 0; i < pages; i++) {
        uint64_t entry;
        off_t at = (off_t)(((uintptr_t)buf / 4096 + i) * 8);
        if (pread(map, &entry, 8, at) != 8) {
            perror("pread");
            return 1;
        }
        if (entry >> 63) /* present */
            printf("%zu %llu\n", i, (unsigned long long)(entry & ((1ull << 55) - 1)));
    }
    printf("READY\n");
    fflush(stdout);
    for (;;)
        pause();
}
