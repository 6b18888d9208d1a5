"""QmpControl over a recorded QEMU: the registers of several vCPUs parsed from real
'info registers -a' text (QEMU 7.2, a 2-vCPU lab guest), and the control calls it makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmsentinel.access.qmp_control import QmpControl, parse_info_registers
from vmsentinel.errors import HypervisorError

RECORDED = (Path(__file__).parent / "info_registers_2cpu.txt").read_text()


class RecordedQmp:
    """Answers like a QMP connection to the recorded guest, and remembers what it was asked."""

    socket_path = "/run/test.qmp"

    def __init__(self, registers: str = RECORDED, nics: tuple[str, ...] = ("net0", "net1")) -> None:
        self.text = registers
        self.nic_names = list(nics)
        self.calls: list[tuple[Any, ...]] = []

    def hmp(self, command_line: str, timeout: float | None = None) -> str:
        self.calls.append(("hmp", command_line))
        return self.text if command_line == "info registers -a" else ""

    def stop(self) -> None:
        self.calls.append(("stop",))

    def cont(self) -> None:
        self.calls.append(("cont",))

    def status(self) -> str:
        return "paused"

    def dump_guest_memory(self, path: str) -> None:
        self.calls.append(("dump", path))

    def nics(self) -> list[str]:
        return self.nic_names

    def set_link(self, nic: str, up: bool) -> None:
        self.calls.append(("set_link", nic, up))

    def close(self) -> None:
        self.calls.append(("close",))


def test_every_vcpu_from_recorded_text() -> None:
    cpus = parse_info_registers(RECORDED)
    assert [c.cpu for c in cpus] == [0, 1]
    assert [hex(c.cr3) for c in cpus] == ["0x1d0a000", "0xea22000"]  # each vCPU its own, not vCPU 0's twice
    assert all(c.cr4 == 0x750EF0 and c.idtr_base == 0xFFFFFE0000000000 and c.source == "qmp" for c in cpus)
    assert cpus[1].page_table_root == 0xEA22000 and cpus[1].paging_levels == 4


def test_each_vcpu_keeps_its_own_idtr_and_paging_mode() -> None:
    second = RECORDED.index("CPU#1")
    text = RECORDED[:second] + RECORDED[second:].replace("IDT=     fffffe0000000000", "IDT=     ffffc90000123000")
    text = text[:second] + text[second:].replace("CR4=00750ef0", "CR4=00751ef0")  # LA57 on vCPU 1 only
    cpus = parse_info_registers(text)
    assert [c.idtr_base for c in cpus] == [0xFFFFFE0000000000, 0xFFFFC90000123000]
    assert [c.paging_levels for c in cpus] == [4, 5]


def test_vcpus_are_ordered_by_index_and_idtr_may_be_missing() -> None:
    one = RECORDED[: RECORDED.index("\nCPU#1")]
    text = one.replace("CPU#0", "CPU#3").replace("IDT=", "XDT=") + one
    cpus = parse_info_registers(text)
    assert [c.cpu for c in cpus] == [0, 3] and cpus[1].idtr_base is None and cpus[0].idtr_base is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [("Error: no such command", "no CPU#N section"), ("\nCPU#0\nRAX=0000000000000000\n", "no CR3 .* vCPU 0")],
)
def test_unexpected_text_is_a_hypervisor_error(text: str, message: str) -> None:
    with pytest.raises(HypervisorError, match=f"{message}.*QMP socket /run/test.qmp"):
        QmpControl(RecordedQmp(text)).registers()  # type: ignore[arg-type]


def test_registers_take_one_monitor_command() -> None:
    qmp = RecordedQmp()
    control = QmpControl(qmp)  # type: ignore[arg-type]
    assert len(control.registers()) == 2
    assert qmp.calls == [("hmp", "info registers -a")]  # 'cpu N' would not carry over to the next command


def test_control_calls(tmp_path: Path) -> None:
    qmp = RecordedQmp()
    control = QmpControl(qmp)  # type: ignore[arg-type]
    assert control.kind == "qmp" and control.describe() == "QMP socket /run/test.qmp"
    control.pause()
    control.resume()
    assert control.status() == "paused"
    assert control.set_links(False) == ["net0", "net1"]
    control.dump(Path("relative.core"))
    control.close()
    assert qmp.calls == [
        ("stop",),
        ("cont",),
        ("set_link", "net0", False),
        ("set_link", "net1", False),
        ("dump", str(Path("relative.core").resolve())),  # QEMU's working directory is not ours
        ("close",),
    ]


def test_a_32_bit_guest_is_told_apart_by_efer() -> None:
    """Out of long mode (EFER.LMA clear) the paging is two-level, or PAE when CR4.PAE is set: a 32-bit
    NT guest's registers do not read as 4-level paging."""
    one = RECORDED[: RECORDED.index("\nCPU#1")]
    assert parse_info_registers(one)[0].efer is not None
    no_long_mode = one.replace("EFER=0000000000000d01", "EFER=0000000000000000")
    assert parse_info_registers(no_long_mode)[0].paging_levels == 3  # CR4.PAE stays set
    assert parse_info_registers(no_long_mode.replace("CR4=00750ef0", "CR4=000006d0"))[0].paging_levels == 2
    assert parse_info_registers(one.replace("EFER=", "XFER="))[0].paging_levels == 4  # not said: long mode, as before
