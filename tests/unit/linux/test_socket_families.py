"""The socket view beyond TCP, UDP and Unix, on a synthetic kernel: a packet socket with its Ethernet
protocol, network namespace and classic BPF filter; an eBPF filter by program id; a netlink socket by
protocol; a packet socket that no process holds, found on its namespace's list; and a list that loops
or points out of RAM gives problems, not crashes."""

from __future__ import annotations

from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import sockets_btf

from vmsentinel.os.linux.views.files import FileSweep, OpenFile
from vmsentinel.os.linux.views.sockets import SocketReader

D = DIRECT_MAP
SKLIST = 0x100 + 0x28  # net.packet.sklist
NODE = 0x38  # sock_common.skc_node


class Kernel:
    def __init__(self) -> None:
        self.mem, self.reader = synthetic_kernel_reader(sockets_btf(), symbols={"x": D})
        self.next_free = 0x10000
        self.net = self.alloc(0x200)
        self.put(self.net + 0x20 + 16, 0xF0000098, 4)  # ns.inum

    def alloc(self, size: int = 0x100) -> int:
        addr = D + self.next_free
        self.next_free += (size + 0xFF) & ~0xFF
        return addr

    def put(self, vaddr: int, value: int, size: int = 8) -> None:
        self.mem.write(vaddr - D, value.to_bytes(size, "little"))

    def sock(self, family: int, sk_type: int, protocol: int = 0, packet_num: int = 0, on_list: bool = False) -> int:
        sk = self.alloc(0x400)
        self.put(sk + 16, family, 2)
        self.put(sk + 0x100, sk_type, 2)
        self.put(sk + 0x102, protocol, 2)
        self.put(sk + 0x30, self.net)
        self.put(sk + 0x310, packet_num, 2)
        if on_list:  # pushed on the namespace's packet socket list
            self.put(sk + NODE, self.reader.u64(self.net + SKLIST))
            self.put(self.net + SKLIST, sk + NODE)
        return sk

    def filter(self, sk: int, classic_len: int | None = None, ebpf_id: int = 0) -> None:
        attached, prog, aux = self.alloc(0x20), self.alloc(0x40), self.alloc(0x40)
        self.put(sk + 0x108, attached)
        self.put(attached + 0x10, prog)
        self.put(prog + 0x20, aux)
        self.put(aux, ebpf_id, 4)
        if classic_len is not None:
            orig = self.alloc(0x10)
            self.put(orig, classic_len, 2)
            self.put(prog + 0x28, orig)

    def held(self, sk: int, pid: int, fd: int, inode: int) -> FileSweep:
        file, socket = self.alloc(0x100), self.alloc(0x30)
        self.put(file + 0xC8, socket)
        self.put(socket + 0x18, sk)
        return FileSweep([OpenFile(pid, fd, f"socket:[{inode}]", "sockfs", inode, file)])


def test_packet_netlink_and_their_filters() -> None:
    k = Kernel()
    sniffer = k.sock(17, 3, packet_num=0x0300, on_list=True)  # AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)
    k.filter(sniffer, classic_len=6)
    netlink = k.sock(16, 3, protocol=0)
    ebpf = k.sock(2, 2, protocol=17)
    k.filter(ebpf, ebpf_id=42)
    files = [k.held(sniffer, 300, 3, 1001), k.held(netlink, 300, 4, 1002), k.held(ebpf, 301, 3, 1003)]
    sweep = SocketReader(k.reader).sockets(files, [k.net])
    assert not sweep.problems
    got = [(s.family, s.type, s.protocol, s.pids, s.netns, s.filter) for s in sweep.sockets]
    assert got == [
        ("packet", "raw", "all", (300,), 0xF0000098, "cbpf:6"),
        ("netlink", "raw", "route", (300,), 0xF0000098, None),
        ("inet", "dgram", "udp", (301,), 0xF0000098, "ebpf:42"),
    ]


def test_a_packet_socket_no_process_holds_is_found_on_its_namespaces_list() -> None:
    k = Kernel()
    held = k.sock(17, 3, packet_num=0x0008, on_list=True)  # htons(ETH_P_IP)
    hidden = k.sock(17, 2, packet_num=0x0300, on_list=True)
    sweep = SocketReader(k.reader).sockets([k.held(held, 300, 3, 1001)], [k.net])
    assert [(s.protocol, s.pids, s.sock) for s in sweep.sockets] == [("ip", (300,), held), ("all", (), hidden)]


def test_a_looping_or_broken_packet_list_is_a_problem() -> None:
    k = Kernel()
    first = k.sock(17, 3, on_list=True)
    second = k.sock(17, 3, on_list=True)
    k.put(first + NODE, second + NODE)  # the list's tail points back at its head
    sweep = SocketReader(k.reader).sockets([], [k.net])
    assert len(sweep.sockets) == 2 and any("looping" in p for p in sweep.problems)
    k.put(k.net + SKLIST, D + 0x5000000)  # the list's head outside RAM
    broken = SocketReader(k.reader).sockets([], [k.net])
    assert broken.sockets == [] and broken.problems
