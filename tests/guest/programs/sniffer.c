/* A test program for the lab: what a BPFDoor-style backdoor does to hear its magic packet without a
 * listening port: a raw packet socket on every interface with a classic BPF filter attached (which
 * the eBPF program list does not show), then wait. Also a netlink socket, as many daemons hold. */
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    /* accept UDP over IPv4 (ethertype 0x0800 and protocol 17), drop the rest */
    struct sock_filter code[] = {
        {0x28, 0, 0, 12},         /* ldh [12]           */
        {0x15, 0, 3, 0x0800},     /* jeq #0x800 else drop */
        {0x30, 0, 0, 23},         /* ldb [23]           */
        {0x15, 0, 1, 17},         /* jeq #17 else drop  */
        {0x06, 0, 0, 0x40000},    /* ret #262144        */
        {0x06, 0, 0, 0},          /* ret #0             */
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) {
        perror("packet socket");
        return 1;
    }
    int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    printf("ready %d %d\n", fd, nl);
    fflush(stdout);
    for (;;)
        pause();
}
