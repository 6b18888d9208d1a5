"""Responses through an in-memory hypervisor control: the order (dump before the pause, so the
image shows the attack live), the records' messages, and failures that stop nothing else."""

from __future__ import annotations

from pathlib import Path

from vmsentinel.access import CpuRegisters
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.errors import HypervisorError
from vmsentinel.respond.actions import respond

FINDING = Finding("syscall_hook", "syscall 0 is hooked", Severity.CRITICAL, ROOTKIT, "lab:web 1", {"slot": "x64:0"})


class FakeControl:
    """A hypervisor in memory: remembers what it was asked, fails what it is told to."""

    kind = "fake"

    def __init__(self, fail: tuple[str, ...] = (), nics: tuple[str, ...] = ("net0",)) -> None:
        self.fail = fail
        self.nics = list(nics)
        self.calls: list[str] = []
        self.state = "running"

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise HypervisorError(f"QMP {name} on /run/test.qmp: no answer within 10 s")

    def describe(self) -> str:
        return "fake"

    def registers(self) -> list[CpuRegisters]:
        return []

    def pause(self) -> None:
        self._call("pause")
        self.state = "paused"

    def resume(self) -> None:
        self._call("resume")
        self.state = "running"

    def status(self) -> str:
        return self.state

    def dump(self, path: Path) -> None:
        self._call("dump")
        assert path.is_absolute()
        path.write_bytes(b"core")

    def set_links(self, up: bool) -> list[str]:
        self._call("set_links")
        return self.nics

    def close(self) -> None:
        pass


def test_dump_cut_network_then_pause(tmp_path: Path) -> None:
    control = FakeControl(nics=("net0", "net1"))
    records = respond("lab:web 1", control, FINDING, ["pause", "alert", "cut_network", "dump"], tmp_path / "dumps")
    assert control.calls == ["dump", "set_links", "pause"]
    assert [(r.action, r.ok) for r in records] == [("alert", True), ("dump", True), ("cut_network", True), ("pause", True)]
    dump = tmp_path / "dumps" / f"lab_web_1-{FINDING.key}.core"
    assert records[1].detail == str(dump) and dump.read_bytes() == b"core"
    assert records[2].detail == "link down: net0, net1"
    assert records[3].detail == "VM status paused"
    assert all(r.target == "lab:web 1" and r.finding_key == FINDING.key for r in records)


def test_a_failed_response_stops_none_of_the_others(tmp_path: Path) -> None:
    control = FakeControl(fail=("dump",), nics=())
    records = respond("lab:x", control, FINDING, ["dump", "cut_network", "pause", "resume"], tmp_path)
    assert control.calls == ["dump", "set_links", "pause", "resume"]
    assert [(r.action, r.ok) for r in records] == [("dump", False), ("cut_network", False), ("pause", True), ("resume", True)]
    assert records[0].detail == "QMP dump on /run/test.qmp: no answer within 10 s"
    assert records[1].detail == "link down: no NIC"
    assert records[3].detail == "VM status running"


def test_without_a_control_only_the_alert_succeeds(tmp_path: Path) -> None:
    records = respond("guest.core", None, FINDING, ["dump", "alert"], tmp_path)
    assert [(r.action, r.ok, r.detail) for r in records] == [
        ("alert", True, "alert written"),
        ("dump", False, "no hypervisor control for this target (memory image?)"),
    ]
    assert not list(tmp_path.iterdir())
