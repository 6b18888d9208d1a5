"""Sockets beyond TCP, UDP and Unix, on real guests (6.1 and 6.12): a BPFDoor-style listener (a raw
packet socket with a classic BPF filter, no port) is listed with its protocol, its network namespace
(as the guest itself names it) and its filter, and ``check`` reports it; once it ends, nothing is."""

from __future__ import annotations

import json

import pytest

from tests.guest.conftest import Guest, guest_sh, kill_matching, vmsentinel

pytestmark = pytest.mark.guest


def test_a_packet_socket_with_a_classic_filter_is_seen_and_reported(guest: Guest) -> None:
    pid = int(guest_sh(guest, "/root/programs/sniffer >/tmp/sniffer.out 2>&1 & echo $!").strip())
    try:
        assert "ready" in guest_sh(guest, "sleep 0.5; cat /tmp/sniffer.out")
        netns = guest_sh(guest, f"readlink /proc/{pid}/ns/net").strip()  # net:[4026531840]
        sockets = [s for s in json.loads(vmsentinel("sockets", guest.target, "--json").stdout) if pid in s["pids"]]
        assert {(s["family"], s["type"], s["protocol"], s["filter"]) for s in sockets} == {
            ("packet", "raw", "all", "cbpf:6"),
            ("netlink", "raw", "route", None),
        }, sockets
        assert {f"net:[{s['netns']}]" for s in sockets} == {netns}
        proc = vmsentinel("check", guest.target, "--json", check=False)
        found = [f for f in json.loads(proc.stdout) if f["detector"] == "packet_socket"]
        assert [(f["evidence"]["pids"], f["evidence"]["filter"], f["severity"]) for f in found] == [([pid], "cbpf:6", "high")]
    finally:
        kill_matching(guest, "/root/programs/sniffer")
    after = json.loads(vmsentinel("check", guest.target, "--json", check=False).stdout)
    assert not [f for f in after if f["detector"] == "packet_socket"]
