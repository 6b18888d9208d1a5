/* A test program for the lab: open one socket of each kind the views decode, then wait. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int inet_sock(int family, int type, const char *addr, int port, int listen_it) {
    int fd = socket(family, type, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (family == AF_INET) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, addr, &sa.sin_addr);
        bind(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        inet_pton(AF_INET6, addr, &sa.sin6_addr);
        bind(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (listen_it) listen(fd, 8);
    return fd;
}

static int unix_sock(int type, const char *path, int abstract) {
    int fd = socket(AF_UNIX, type, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    memcpy(sa.sun_path + (abstract ? 1 : 0), path, n);
    unlink(path);
    bind(fd, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 1 : 0));
    if (type == SOCK_STREAM) listen(fd, 8);
    return fd;
}

int main(void) {
    int l4 = inet_sock(AF_INET, SOCK_STREAM, "127.0.0.1", 7001, 1);
    inet_sock(AF_INET6, SOCK_STREAM, "::1", 7002, 1);
    inet_sock(AF_INET, SOCK_DGRAM, "0.0.0.0", 7003, 0);
    inet_sock(AF_INET6, SOCK_DGRAM, "::", 7004, 0);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(7001)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    connect(c, (struct sockaddr *)&to, sizeof to);
    accept(l4, NULL, NULL);
    unix_sock(SOCK_STREAM, "/tmp/vms-test.sock", 0);
    unix_sock(SOCK_DGRAM, "vms-abstract", 1);
    for (;;) pause();
}
