"""Raw packet sockets as findings: with a filter attached (a backdoor waiting for its magic packet) high,
without one (a sniffer) medium, held by no process high; ordinary sockets and raw-less ones are not."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.finding import Severity
from vmsentinel.detect.registry import run_detectors
from vmsentinel.os.linux.views.sockets import Socket, SocketSweep


def sock(family: str, kind: str, protocol: str, pids: tuple[int, ...] = (7,), filter_: str | None = None) -> Socket:
    return Socket(family, kind, protocol, "7", None, None, None, None, None, 100, pids, (), 0xFFFF888000001000, 1, filter_)


def found(*sockets: Socket) -> list[tuple[Severity, str, str]]:
    snap = replace(snapshot([task(7, exe="/root/sniffer")]), sockets=SocketSweep(list(sockets)))
    return [
        (f.severity, f.attack.technique_id, f.title) for f in run_detectors("lab:a", snap, None, None, enabled=["packet_socket"])
    ]


def test_packet_and_raw_sockets() -> None:
    assert found(sock("inet", "stream", "tcp"), sock("unix", "stream", "unix"), sock("netlink", "raw", "route")) == []
    assert found(sock("packet", "raw", "all", filter_="cbpf:6")) == [
        (Severity.HIGH, "T1205.002", "process 7 (sleep) listens to raw packets through a cbpf:6 filter")
    ]
    # an installed program (a DHCP client) filtering its packet socket is medium; one run and deleted is not installed
    dhcp = replace(task(7), exe="/usr/sbin/dhclient")
    gone = replace(task(7), exe="/usr/sbin/dhclient (deleted)")
    for who, severity in ((dhcp, Severity.MEDIUM), (gone, Severity.HIGH)):
        snap = replace(snapshot([who]), sockets=SocketSweep([sock("packet", "raw", "ip", filter_="cbpf:12")]))
        assert [f.severity for f in run_detectors("lab:a", snap, None, None, enabled=["packet_socket"])] == [severity]
    assert found(sock("inet", "raw", "icmp")) == [
        (Severity.MEDIUM, "T1040", "process 7 (sleep) captures raw packets (inet icmp)")
    ]
    assert found(sock("packet", "dgram", "ip", pids=())) == [(Severity.HIGH, "T1040", "a packet socket that no process holds")]


def kernel_found(*sockets: Socket) -> list[str]:
    snap = replace(snapshot([task(7)]), sockets=SocketSweep(list(sockets)))
    return [f.title for f in run_detectors("lab:a", snap, None, None, enabled=["kernel_listener"])]


def test_listeners_no_process_holds() -> None:
    def inet(protocol: str, state: str, pids: tuple[int, ...]) -> Socket:
        return Socket("inet", "stream", protocol, state, "0.0.0.0", 31337, None, None, None, 0, pids, (), 1, 1)

    assert kernel_found(inet("tcp", "LISTEN", (7,)), inet("tcp", "ESTABLISHED", ()), sock("packet", "raw", "all", ())) == []
    assert kernel_found(inet("tcp", "LISTEN", ())) == ["tcp port 31337 on 0.0.0.0 is open, and no process holds it"]
    assert kernel_found(inet("udp", "CLOSE", ())) == ["udp port 31337 on 0.0.0.0 is open, and no process holds it"]
