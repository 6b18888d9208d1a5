/* A test program for the lab: fill MIB mebibytes of its own memory (on NUMA node NODE when given),
 * one tagged line at the start of each page, lock it in RAM, and print where each page is in guest-
 * physical memory ("INDEX PFN" in hex, from /proc/self/pagemap), then "done TAG", then sleep. From
 * outside, the page at PFN must start with "VMSTPAGE TAG INDEX". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MPOL_BIND 2
#define PAGE 4096UL

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 16;
    int node = argc > 2 ? atoi(argv[2]) : -1;
    if (node >= 0) {
        unsigned long mask = 1UL << node;
        if (syscall(SYS_set_mempolicy, MPOL_BIND, &mask, 8 * sizeof(mask)) != 0) { perror("set_mempolicy"); return 1; }
    }
    size_t pages = mib << 8;
    char *buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    unsigned tag = (unsigned)getpid();
    for (size_t i = 0; i < pages; i++) snprintf(buf + i * PAGE, 64, "VMSTPAGE %08x %08zx", tag, i);
    if (mlock(buf, pages * PAGE) != 0) { perror("mlock"); return 1; }
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) { perror("pagemap"); return 1; }
    for (size_t i = 0; i < pages; i++) {
        uint64_t entry;
        if (pread(fd, &entry, sizeof(entry), ((uintptr_t)(buf + i * PAGE) / PAGE) * sizeof(entry)) != sizeof(entry)) return 1;
        if (entry >> 63 & 1) printf("%zx %llx\n", i, (unsigned long long)(entry & ((1ULL << 55) - 1)));
    }
    printf("done %08x\n", tag);
    fflush(stdout);
    for (;;) pause();
}
