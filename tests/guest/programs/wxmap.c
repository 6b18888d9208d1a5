/* Maps a file writable and executable (private), as loaders of injected code do, then waits:
 *
 *   wxmap FILE
 *
 * FILE is created (one page of 'ret' instructions) if it does not exist. */
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    int fd = open(argv[1], O_RDWR | O_CREAT, 0700);
    if (fd < 0)
        return 3;
    unsigned char page[4096];
    memset(page, 0xc3, sizeof(page)); /* ret */
    if (write(fd, page, sizeof(page)) != (ssize_t)sizeof(page))
        return 4;
    void *p = mmap(NULL, sizeof(page), PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        return 5;
    close(fd);
    for (;;)
        pause();
}
