"""Sockets of the guest, found through the processes that hold them: every
socket file in every process's file table, decoded from its ``struct sock``
(TCP/UDP over IPv4 and IPv6, and Unix sockets with their paths), each with the
processes and descriptors that own it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.views.declare import column
from vmsentinel.os.linux.views.files import FileSweep

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
FAMILIES = {AF_UNIX: "unix", AF_INET: "inet", AF_INET6: "inet6"}
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


@dataclass(frozen=True)
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

    def sockets(self, open_files: list[FileSweep]) -> SocketSweep:
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
        return sweep

    def _socket(self, inode: int, file: int, owners: list[tuple[int, int]]) -> Socket:
        r = self.r
        socket = r.u64(file + self.private_data)
        sk = r.u64(socket + self.sk)
        pids = tuple(sorted({p for p, _ in owners}))
        fds = tuple(f"{p}:{fd}" for p, fd in sorted(owners))
        if not r.is_kernel_pointer(sk):
            return Socket("?", "?", "?", "unconnected", None, None, None, None, None, inode, pids, fds, 0)
        raw = r.read(sk, self.span)
        family_nr = struct.unpack_from("<H", raw, self.family)[0]
        state_nr = raw[self.state]
        sk_type = struct.unpack_from("<H", raw, self.sk_type)[0]
        proto_nr = struct.unpack_from("<H", raw, self.sk_protocol)[0]
        family = FAMILIES.get(family_nr, str(family_nr))
        kind = TYPES.get(sk_type, str(sk_type))
        if family_nr == AF_UNIX:
            return Socket(
                family, kind, "unix", _unix_state(state_nr), None, None, None, None, self._unix_path(sk), inode, pids, fds, sk
            )
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
        return Socket(family, kind, proto, state, local, lport, remote, rport, None, inode, pids, fds, sk)

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
