"""Connector: vCPU 0's registers from a live control or from an ELF core's QEMU notes, the
address space they define, and closing."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.synthetic import write_elf_core

from vmsentinel.access import Connector, CpuRegisters, open_connector
from vmsentinel.arch.x86_64 import CR4_LA57
from vmsentinel.errors import HypervisorError, TargetError
from vmsentinel.memory import open_image


class Control:
    kind = "fake"

    def __init__(self, cpus: list[CpuRegisters]) -> None:
        self.cpus = cpus
        self.closed = False

    def describe(self) -> str:
        return "fake control"

    def registers(self) -> list[CpuRegisters]:
        return self.cpus

    def close(self) -> None:
        self.closed = True


def test_registers_from_elf_core_notes(tmp_path: Path) -> None:
    core = tmp_path / "guest.core"
    write_elf_core(str(core), [(0, bytes(0x3000))], cr3=0x2000 | 0x5, cr4=CR4_LA57, cpus=2)
    with open_connector(str(core)) as guest:
        regs = guest.registers()
        assert regs == CpuRegisters(0, 0x2005, CR4_LA57, None, "elf-core notes")
        assert regs.page_table_root == 0x2000 and regs.paging_levels == 5  # PCID bits dropped
        space = guest.address_space()
        assert space.levels == 5 and not guest.live


def test_no_registers_means_no_address_space(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(bytes(0x2000))
    with open_connector(str(raw)) as guest, pytest.raises(TargetError, match="no CPU registers known"):
        guest.address_space()


def test_live_registers_are_vcpu_0s_and_closing_closes_the_control(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(bytes(0x2000))
    cpus = [CpuRegisters(0, 0x1000, 0, 0xFFFFFE0000000000, "qmp"), CpuRegisters(1, 0x5000, 0, None, "qmp")]
    control = Control(cpus)
    guest = Connector("fake:x", open_image(raw), control)  # type: ignore[arg-type]
    assert guest.live and guest.registers() == cpus[0]
    assert guest.address_space().root == 0x1000
    guest.close()
    assert control.closed and guest.control is None and not guest.live


def test_a_control_without_vcpus_is_a_hypervisor_error(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(bytes(0x1000))
    guest = Connector("fake:x", open_image(raw), Control([]))  # type: ignore[arg-type]
    with guest, pytest.raises(HypervisorError, match="fake:x: fake control reports no vCPU"):
        guest.registers()
