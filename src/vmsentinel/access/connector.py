"""What every way of reaching a guest gives the rest of the sentinel: a
:class:`Connector` (the guest's physical memory, and a hypervisor control when
the guest is live) and the :class:`HypervisorControl` protocol that a control
(QMP, libvirt) implements.

    with open_connector("lab:web1") as guest:
        guest.memory.read(0, 16)
        guest.registers()                 # vCPU 0's CR3/CR4, live or from a core's notes
        if guest.live:
            guest.control.pause()

The access layer knows memory and CPUs, never an operating system's structures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from vmsentinel.arch.x86_64 import PagingAddressSpace, cr3_to_root, paging_levels_from_cr4
from vmsentinel.errors import HypervisorError, RegistersUnavailable, TargetError
from vmsentinel.memory import ElfCoreMemory, PhysicalMemory

if TYPE_CHECKING:
    from vmsentinel.access.dirty_log import SoftDirtyLog


#: EFER's long-mode-active bit, CR4's physical-address-extension bit
EFER_LMA, CR4_PAE = 1 << 10, 1 << 5


@dataclass(frozen=True)
class CpuRegisters:
    """The registers of one vCPU that the paging layer and the IDT check need, and their source."""

    cpu: int
    cr3: int
    cr4: int
    idtr_base: int | None
    source: str
    #: the extended feature register, where the source gives it: whether the CPU is in long mode
    efer: int | None = None

    @property
    def page_table_root(self) -> int:
        return cr3_to_root(self.cr3)

    @property
    def paging_levels(self) -> int:
        """4 or 5 in long mode; 3 (PAE) or 2 for a 32-bit guest, when EFER says it is not in long mode."""
        if self.efer is not None and not self.efer & EFER_LMA:
            return 3 if self.cr4 & CR4_PAE else 2
        return paging_levels_from_cr4(self.cr4)


class HypervisorControl(Protocol):
    """What the sentinel asks of a live guest's hypervisor, and only of it (never of the guest).

    The hypervisor can hang: every implementation bounds every call with a timeout and
    raises :class:`~vmsentinel.errors.HypervisorError` when it fails or does not answer.
    """

    #: a short name for the channel ("qmp", "libvirt"...)
    kind: str

    def describe(self) -> str:
        """Which channel this is, for messages ("QMP socket /run/vm.qmp")."""
        ...

    def registers(self) -> list[CpuRegisters]:
        """Every vCPU's registers (IDTR included), ordered by vCPU index; raises
        :class:`~vmsentinel.errors.RegistersUnavailable` when this control cannot read them."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def status(self) -> str:
        """The VM's run state as the hypervisor names it ("running", "paused"...)."""
        ...

    def dump(self, path: Path) -> None:
        """Write the guest's physical memory to ``path`` as an ELF core (forensic evidence)."""
        ...

    def set_links(self, up: bool) -> list[str]:
        """Bring every network card's link up or down; return the cards' names."""
        ...

    def close(self) -> None: ...


@dataclass
class Connector:
    """An opened guest: its physical memory and, when it is live, its hypervisor control."""

    spec: str
    memory: PhysicalMemory
    control: HypervisorControl | None = None
    name: str = ""
    #: how the guest-physical layout was learnt ("file", "qmp info mtree", "q35 machine rule"...)
    layout_source: str = "file"
    #: which guest pages were written since a clear, from the host (a QEMU process we know); else None
    dirty_log: SoftDirtyLog | None = None

    @property
    def live(self) -> bool:
        """A running guest with a hypervisor to ask (and to act through), not a memory image."""
        return self.control is not None

    def registers(self) -> CpuRegisters | None:
        """vCPU 0's registers from the hypervisor (live) or the ELF core's QEMU notes; None if unknown
        (an image without notes, or a control that reads no registers: libvirt without its monitor)."""
        if self.control is not None:
            try:
                cpus = self.control.registers()
            except RegistersUnavailable:
                return None
            if not cpus:
                raise HypervisorError(f"{self.spec}: {self.control.describe()} reports no vCPU")
            return cpus[0]
        if isinstance(self.memory, ElfCoreMemory) and self.memory.cpus:
            cpu = self.memory.cpus[0]
            return CpuRegisters(0, cpu.cr3, cpu.cr4, None, "elf-core notes")
        return None

    def address_space(self, registers: CpuRegisters | None = None) -> PagingAddressSpace:
        """The address space of the current CR3 (live registers or the dump's)."""
        registers = registers or self.registers()
        if registers is None:
            raise TargetError(f"{self.spec}: no CPU registers known; the page-table root must be found from memory")
        return PagingAddressSpace(self.memory, registers.page_table_root, registers.paging_levels)

    def close(self) -> None:
        try:
            if self.control is not None:
                self.control.close()
                self.control = None
        finally:
            self.memory.close()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
