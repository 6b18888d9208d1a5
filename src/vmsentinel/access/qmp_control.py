"""A QEMU's QMP socket as a :class:`HypervisorControl`: every vCPU's registers
from the monitor's ``info registers -a``, pause and resume, memory dumps, NIC
links. Every call goes through :class:`Qmp`, which has a timeout::

    control = QmpControl(Qmp("/run/vm.qmp"))
    [r.idtr_base for r in control.registers()]     # one per vCPU
    control.set_links(False)                        # ['net0']

All vCPUs come from one monitor command: ``cpu N`` does not carry over from one
``human-monitor-command`` to the next (each runs in a fresh monitor on vCPU 0).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.access.connector import CpuRegisters
from vmsentinel.errors import HypervisorError

if TYPE_CHECKING:  # qemu.qmp (and asyncio under it) loads with the first live target, not with this module
    from vmsentinel.access.qmp import Qmp

#: the line that opens each vCPU's part of 'info registers -a'
_CPU = re.compile(r"^CPU#(\d+)\s*$", re.MULTILINE)
#: ``NAME=hexvalue`` pairs (RAX=..., CR3=...); segment lines put spaces after '='
_REG = re.compile(r"\b([A-Z][A-Z0-9]{1,3})=([0-9a-fA-F]{8,16})\b")
#: ``IDT=     base limit``
_IDT = re.compile(r"\bIDT=\s*([0-9a-fA-F]+)")


def parse_info_registers(text: str, where: str = "QMP") -> list[CpuRegisters]:
    """Every vCPU's registers from the text of QEMU's ``info registers -a`` (x86), by vCPU index."""
    heads = list(_CPU.finditer(text))
    if not heads:
        raise HypervisorError(f"no CPU#N section in 'info registers -a' from {where}")
    cpus = []
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        cpu = int(head.group(1))
        part = text[head.end() : after.start() if after else len(text)]
        regs = {name: int(value, 16) for name, value in _REG.findall(part)}
        if "CR3" not in regs:
            raise HypervisorError(f"no CR3 in 'info registers' of vCPU {cpu} from {where}")
        idt = _IDT.search(part)
        idtr = int(idt.group(1), 16) if idt else None
        cpus.append(CpuRegisters(cpu, regs["CR3"], regs.get("CR4", 0), idtr, "qmp", regs.get("EFER")))
    return sorted(cpus, key=lambda r: r.cpu)


class QmpControl:
    """Hypervisor control over one QMP connection (QEMU serves one QMP client at a time, so the
    connector's connection is the one every caller shares)."""

    kind = "qmp"

    def __init__(self, qmp: Qmp) -> None:
        self.qmp = qmp

    def describe(self) -> str:
        return f"QMP socket {self.qmp.socket_path}"

    def registers(self) -> list[CpuRegisters]:
        return parse_info_registers(self.qmp.hmp("info registers -a"), self.describe())

    def pause(self) -> None:
        self.qmp.stop()

    def resume(self) -> None:
        self.qmp.cont()

    def status(self) -> str:
        return self.qmp.status()

    def dump(self, path: Path) -> None:
        self.qmp.dump_guest_memory(str(path.resolve()))  # QEMU's working directory is not ours

    def set_links(self, up: bool) -> list[str]:
        nics = self.qmp.nics()
        for nic in nics:
            self.qmp.set_link(nic, up)
        return nics

    def close(self) -> None:
        self.qmp.close()
