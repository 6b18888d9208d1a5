"""Sockets of the guest, found through the processes that hold them: every
socket file in every process's file table, decoded from its ``struct sock``
(TCP/UDP over IPv4 and IPv6, Unix sockets with their paths, and every other
family by name: netlink, packet, vsock...), each with the processes and
descriptors that own it, its network namespace and the packet filter attached
to it (classic BPF, which the eBPF view does not list, or eBPF). Packet sockets
are also taken from each namespace's own list, so one that no process holds
(the kernel's, or one whose descriptor table was tampered with) is listed with
no owner.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.views.files import FileSweep

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
FAMILIES = {
    AF_UNIX: "unix",
    AF_INET: "inet",
    AF_INET6: "inet6",
    3: "ax25",
    4: "ipx",
    5: "appletalk",
    9: "x25",
    15: "key",
    AF_NETLINK: "netlink",
    AF_PACKET: "packet",
    21: "rds",
    26: "llc",
    29: "can",
    30: "tipc",
    31: "bluetooth",
    36: "ieee802154",
    38: "alg",
    40: "vsock",
    41: "kcm",
    42: "qipcrtr",
    43: "smc",
    44: "xdp",
    45: "mctp",
}
#: netlink protocols by number (sk_protocol of a netlink socket)
NETLINK = {0: "route", 2: "usersock", 4: "sock_diag", 6: "xfrm", 7: "selinux", 9: "audit", 12: "netfilter",
           15: "kobject_uevent", 16: "generic"}  # fmt: skip
#: Ethernet protocols of packet sockets (sk_protocol holds them in network byte order)
ETHERNET = {0x0003: "all", 0x0800: "ip", 0x0806: "arp", 0x86DD: "ipv6", 0x0000: "none"}
MAX_PACKET_SOCKETS = 4096
#: hash buckets read from one protocol table at most, and sockets taken from one bucket
MAX_BUCKETS = 1 << 16
MAX_PER_BUCKET = 1024
TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 136: "udplite", 132: "sctp"}
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}


@dataclass(frozen=True, slots=True)
class Socket:
    family: str = column("FAMILY")
    type: str = column("TYPE")
    protocol: str = column("PROTO")
    state: str = column("STATE")
    local_address: str | None = column("LOCAL")
    local_port: int | None = column("LPORT")
    remote_address: str | None = column("REMOTE")
    remote_port: int | None = column("RPORT")
    path: str | None = column("PATH")
    inode: int = column("INODE")
    pids: tuple[int, ...] = column("PIDS")
    fds: tuple[str, ...] = column("FDS", table=False)  # "pid:fd"
    sock: int = column("SOCK", hex=True, table=False)
    #: the network namespace's inode number (what /proc/PID/ns/net names)
    netns: int = column("NETNS", table=False, default=0)
    #: the packet filter attached (SO_ATTACH_FILTER): "cbpf:N" (classic, N instructions) or "ebpf:ID"
    filter: str | None = column("FILTER", default=None)


@dataclass
class SocketSweep:
    sockets: list[Socket] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class SocketReader:
    def __init__(self, reader: KernelReader) -> None:
        r = self.r = reader
        self.private_data = r.off("file", "private_data")
        self.sk = r.off("socket", "sk")
        c = r.off("sock", "__sk_common")
        self.family = c + r.off("sock_common", "skc_family")
        self.state = c + r.off("sock_common", "skc_state")
        self.num = c + r.off("sock_common", "skc_num")
        self.dport = c + r.off("sock_common", "skc_dport")
        self.saddr = c + r.off("sock_common", "skc_rcv_saddr")
        self.daddr = c + r.off("sock_common", "skc_daddr")
        self.v6_saddr = c + r.off("sock_common", "skc_v6_rcv_saddr")
        self.v6_daddr = c + r.off("sock_common", "skc_v6_daddr")
        self.sk_type = r.off("sock", "sk_type")
        self.sk_protocol = r.off("sock", "sk_protocol")
        self.net = c + r.off("sock_common", "skc_net") if r.has("sock_common", "skc_net") else None
        self.inum = r.off("net", "ns.inum") if r.has("net", "ns.inum") else None
        self.sk_filter = r.off("sock", "sk_filter") if r.has("sock", "sk_filter") else None
        self.packet_num = r.off("packet_sock", "num") if r.has("packet_sock", "num") else None
        self.unix_addr = r.off("unix_sock", "addr")
        self.unix_len = r.off("unix_address", "len")
        self.unix_name = r.off("unix_address", "name")
        self.span = max(
            self.family,
            self.state,
            self.num,
            self.dport,
            self.saddr,
            self.daddr,
            self.v6_saddr + 16,
            self.v6_daddr + 16,
            self.sk_type + 2,
            self.sk_protocol + 2,
        )

    def sockets(self, open_files: list[FileSweep], namespaces: list[int] | None = None) -> SocketSweep:
        """The sockets of ``open_files``, then those no process holds: the packet sockets of each namespace
        in ``namespaces`` (struct net addresses), and the listening TCP and bound UDP sockets of the
        kernel's protocol tables (a listener inside the kernel: a kernel service, or a module's backdoor)."""
        sweep = SocketSweep()
        owners: dict[int, list[tuple[int, int]]] = {}
        files: dict[int, int] = {}
        for fs in open_files:
            for f in fs.files:
                if f.fs == "sockfs":
                    owners.setdefault(f.inode, []).append((f.pid, f.fd))
                    files.setdefault(f.inode, f.file)
        for inode, file in sorted(files.items()):
            try:
                sweep.sockets.append(self._socket(inode, file, owners[inode]))
            except ReadError as exc:
                sweep.problems.append(f"socket inode {inode}: {exc}")
        held = {s.sock for s in sweep.sockets}
        unheld = [sk for net in namespaces or [] for sk in self._packet_list(net, sweep.problems)]
        if namespaces is not None:
            unheld += self._table_sockets(sweep.problems)
        for sk in unheld:
            if sk in held:
                continue
            held.add(sk)
            try:
                sweep.sockets.append(self._decode(sk, 0, (), ()))
            except ReadError as exc:
                sweep.problems.append(f"socket {sk:#x} no process holds: {exc}")
        return sweep

    def _nulls_chain(self, first_at: int, node_off: int, problems: list[str], what: str) -> list[int]:
        """The sockets on one hash chain (``hlist_nulls``: it ends on an odd "nulls" marker, not NULL)."""
        r = self.r
        out: list[int] = []
        node = r.u64(first_at)
        seen: set[int] = set()
        while node and not node & 1:
            if node in seen or not r.is_kernel_pointer(node) or len(out) >= MAX_PER_BUCKET:
                problems.append(f"{what}: chain loops, is broken or longer than {MAX_PER_BUCKET} at {node:#x}")
                break
            seen.add(node)
            out.append(node - node_off)
            node = r.u64(node)
        return out

    def _table_sockets(self, problems: list[str]) -> list[int]:
        """Sockets of the listening TCP hash (``tcp_hashinfo.lhash2``) and the UDP table (``udp_table``)."""
        r = self.r
        common = r.off("sock", "__sk_common")
        out: list[int] = []
        tables = []
        if r.has_symbol("tcp_hashinfo") and r.has("inet_hashinfo", "lhash2") and r.has("inet_listen_hashbucket", "nulls_head"):
            info = r.symbol("tcp_hashinfo")
            tables.append(
                ("tcp listening hash", info + r.off("inet_hashinfo", "lhash2"), info + r.off("inet_hashinfo", "lhash2_mask"),
                 r.size("inet_listen_hashbucket"), r.off("inet_listen_hashbucket", "nulls_head"),
                 common + r.off("sock_common", "skc_nulls_node"), True)
            )  # fmt: skip
        if r.has_symbol("udp_table") and r.has("udp_table", "hash"):
            table = r.symbol("udp_table")
            tables.append(
                ("udp table", table + r.off("udp_table", "hash"), table + r.off("udp_table", "mask"), r.size("udp_hslot"),
                 r.off("udp_hslot", "head"), common + r.off("sock_common", "skc_node"), False)
            )  # fmt: skip
        for what, buckets_at, mask_at, stride, head_off, node_off, nulls in tables:
            try:
                buckets, mask = r.pointer(buckets_at), r.u32(mask_at)
                if buckets is None:
                    continue
                count = min(mask + 1, MAX_BUCKETS)
                if mask + 1 > MAX_BUCKETS:
                    problems.append(f"{what}: {mask + 1} buckets claimed, read {MAX_BUCKETS}")
                raw = r.read(buckets, count * stride)
            except ReadError as exc:
                problems.append(f"{what}: {exc}")
                continue
            for i in range(count):
                first = struct.unpack_from("<Q", raw, i * stride + head_off)[0]
                if not first or (nulls and first & 1):
                    continue
                try:
                    if nulls:
                        out += self._nulls_chain(buckets + i * stride + head_off, node_off, problems, what)
                    else:
                        walk = r.hlist_walk(buckets + i * stride + head_off, "sock", "__sk_common", limit=MAX_PER_BUCKET)
                        problems.extend(f"{what}: {p}" for p in walk.problems)
                        out += [item + common - node_off for item in walk.items]
                except ReadError as exc:
                    problems.append(f"{what} bucket {i}: {exc}")
        return out

    def _packet_list(self, net: int, problems: list[str]) -> list[int]:
        """The packet sockets on a namespace's ``packet.sklist`` (linked through ``sk_node``)."""
        r = self.r
        if not (r.has("net", "packet") and r.has("netns_packet", "sklist")):
            return []
        node = r.off("sock", "__sk_common") + r.off("sock_common", "skc_node")
        head = net + r.off("net", "packet") + r.off("netns_packet", "sklist")
        try:
            walk = r.hlist_walk(head, "sock", "__sk_common", limit=MAX_PACKET_SOCKETS)
        except ReadError as exc:
            problems.append(f"packet sockets of netns {net:#x}: {exc}")
            return []
        problems.extend(walk.problems)
        base = r.off("sock", "__sk_common")
        return [item + base - node for item in walk.items]

    def _socket(self, inode: int, file: int, owners: list[tuple[int, int]]) -> Socket:
        r = self.r
        socket = r.u64(file + self.private_data)
        sk = r.u64(socket + self.sk)
        pids = tuple(sorted({p for p, _ in owners}))
        fds = tuple(f"{p}:{fd}" for p, fd in sorted(owners))
        if not r.is_kernel_pointer(sk):
            return Socket("?", "?", "?", "unconnected", None, None, None, None, None, inode, pids, fds, 0)
        return self._decode(sk, inode, pids, fds)

    def _netns(self, sk: int) -> int:
        if self.net is None or self.inum is None:
            return 0
        net = self.r.pointer(sk + self.net)
        return self.r.u32(net + self.inum) if net is not None else 0

    def _filter(self, sk: int) -> str | None:
        """The socket's packet filter: a classic BPF program (``orig_prog`` kept) or an eBPF one."""
        r = self.r
        if self.sk_filter is None:
            return None
        attached = r.pointer(sk + self.sk_filter)
        if attached is None:
            return None
        prog = r.pointer(attached + r.off("sk_filter", "prog"))
        if prog is None:
            return "?"
        if r.has("bpf_prog", "orig_prog") and r.pointer(prog + r.off("bpf_prog", "orig_prog")) is not None:
            orig = r.pointer(prog + r.off("bpf_prog", "orig_prog"))
            assert orig is not None
            return f"cbpf:{int.from_bytes(r.read(orig + r.off('sock_fprog_kern', 'len'), 2), 'little')}"
        aux = r.pointer(prog + r.off("bpf_prog", "aux"))
        return f"ebpf:{r.u32(aux + r.off('bpf_prog_aux', 'id'))}" if aux is not None else "ebpf"

    def _decode(self, sk: int, inode: int, pids: tuple[int, ...], fds: tuple[str, ...]) -> Socket:
        r = self.r
        raw = r.read(sk, self.span)
        family_nr = struct.unpack_from("<H", raw, self.family)[0]
        state_nr = raw[self.state]
        sk_type = struct.unpack_from("<H", raw, self.sk_type)[0]
        proto_nr = struct.unpack_from("<H", raw, self.sk_protocol)[0]
        family = FAMILIES.get(family_nr, str(family_nr))
        kind = TYPES.get(sk_type, str(sk_type))
        netns, attached = self._netns(sk), self._filter(sk)
        if family_nr == AF_UNIX:
            path = self._unix_path(sk)
            return Socket(family, kind, "unix", _unix_state(state_nr), None, None, None, None, path, inode, pids, fds, sk, netns)
        if family_nr not in (AF_INET, AF_INET6):
            if family_nr == AF_NETLINK:
                proto = NETLINK.get(proto_nr, str(proto_nr))
            elif family_nr == AF_PACKET:
                if self.packet_num is not None:  # the protocol bound lives in the packet_sock (network order)
                    proto_nr = int.from_bytes(r.read(sk + self.packet_num, 2), "little")
                ethertype = int.from_bytes(proto_nr.to_bytes(2, "little"), "big")
                proto = ETHERNET.get(ethertype, f"{ethertype:#06x}")
            else:
                proto = str(proto_nr)
            return Socket(family, kind, proto, str(state_nr), None, None, None, None, None, inode, pids, fds, sk, netns, attached)
        proto = PROTOCOLS.get(proto_nr, str(proto_nr))
        state = TCP_STATES.get(state_nr, str(state_nr))
        lport = struct.unpack_from("<H", raw, self.num)[0]
        rport = struct.unpack_from(">H", raw, self.dport)[0]
        if family_nr == AF_INET6:
            local = str(ipaddress.IPv6Address(raw[self.v6_saddr : self.v6_saddr + 16]))
            remote = str(ipaddress.IPv6Address(raw[self.v6_daddr : self.v6_daddr + 16]))
        else:
            local = str(ipaddress.IPv4Address(raw[self.saddr : self.saddr + 4]))
            remote = str(ipaddress.IPv4Address(raw[self.daddr : self.daddr + 4]))
        return Socket(family, kind, proto, state, local, lport, remote, rport, None, inode, pids, fds, sk, netns, attached)

    def _unix_path(self, sk: int) -> str | None:
        addr = self.r.u64(sk + self.unix_addr)
        if not addr or not self.r.is_kernel_pointer(addr):
            return None
        length = self.r.s32(addr + self.unix_len)
        if not 2 < length <= 110:
            return None
        path = self.r.read(addr + self.unix_name + 2, length - 2)
        if path[:1] == b"\0":
            return "@" + path[1:].decode(errors="replace")
        return path.split(b"\0", 1)[0].decode(errors="replace")


def _unix_state(state: int) -> str:
    # /proc/net/unix prints SS_* (1 unconnected, 3 connected); sk_state holds TCP_ESTABLISHED/TCP_LISTEN/TCP_CLOSE
    return {1: "ESTABLISHED", 10: "LISTEN", 7: "UNCONNECTED"}.get(state, str(state))
