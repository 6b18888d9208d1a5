"""TARGET strings: which guest to look at, and how to reach its memory.

* a memory image path (raw, QEMU ELF core, LiME; the format comes from the content),
* ``qemu:RAM_PATH[,qmp=SOCKET][,machine=pc|q35]`` for a running QEMU with shared RAM,
* ``lab:NAME`` for a lab guest.

    with open_target("lab:web1") as target:
        target.memory.read(0, 16)
        target.cpu_registers()            # CR3/CR4 from QMP or the core's notes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from vmsentinel.arch.x86_64 import PagingAddressSpace, cr3_to_root, paging_levels_from_cr4
from vmsentinel.errors import HypervisorError, TargetError
from vmsentinel.memory import ElfCoreMemory, PhysicalMemory, open_image, open_qemu_ram
from vmsentinel.memory.qemu_ram import mtree_layout

if TYPE_CHECKING:  # QMP (and asyncio under it) is imported only for targets that have a QMP socket
    from vmsentinel.access.qmp import Qmp


@dataclass
class Registers:
    """The control registers the paging layer needs, and where they came from."""

    cr3: int
    cr4: int
    source: str

    @property
    def page_table_root(self) -> int:
        return cr3_to_root(self.cr3)

    @property
    def paging_levels(self) -> int:
        return paging_levels_from_cr4(self.cr4)


@dataclass
class Target:
    """An opened guest: its physical memory and, when known, its hypervisor."""

    spec: str
    memory: PhysicalMemory
    qmp_socket: str | None = None
    name: str = ""
    layout_source: str = "file"
    _qmp: Qmp | None = field(default=None, repr=False)

    def qmp(self) -> Qmp:
        if self.qmp_socket is None:
            raise TargetError(f"{self.spec} has no QMP socket (give qemu:PATH,qmp=SOCKET)")
        if self._qmp is None:
            from vmsentinel.access.qmp import Qmp

            self._qmp = Qmp(self.qmp_socket)
            self._qmp.connect()
        return self._qmp

    def cpu_registers(self) -> Registers | None:
        """CR3/CR4 of vCPU 0 from QMP (live) or the ELF core's QEMU notes; None if unknown."""
        if self.qmp_socket is not None:
            regs = self.qmp().registers()
            return Registers(regs["CR3"], regs.get("CR4", 0), "qmp")
        if isinstance(self.memory, ElfCoreMemory) and self.memory.cpus:
            cpu = self.memory.cpus[0]
            return Registers(cpu.cr3, cpu.cr4, "elf-core notes")
        return None

    def address_space(self, registers: Registers | None = None) -> PagingAddressSpace:
        """The address space of the current CR3 (live registers or the dump's)."""
        registers = registers or self.cpu_registers()
        if registers is None:
            raise TargetError(f"{self.spec}: no CPU registers known; the page-table root must be found from memory")
        return PagingAddressSpace(self.memory, registers.page_table_root, registers.paging_levels)

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        self.memory.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _parse_options(spec: str, items: list[str]) -> dict[str, str]:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("qmp", "machine"):
            raise TargetError(f"{spec}: unknown option {item!r} (know: qmp=SOCKET, machine=pc|q35)")
        opts[key] = value
    return opts


def qemu_ram_from_qmp(ram_path: str, qmp: Qmp) -> PhysicalMemory:
    """Map a QEMU RAM file with the layout QEMU reports for it."""
    region = None
    for memdev in qmp.command("query-memdev") or []:
        mid = memdev.get("id")
        if not mid:
            continue
        try:
            path = qmp.command("qom-get", path=f"/objects/{mid}", property="mem-path")
        except HypervisorError:
            continue
        if path and Path(str(path)).resolve() == Path(ram_path).resolve():
            region = str(mid)
    segments = mtree_layout(qmp.hmp("info mtree -f"), region)
    if not segments:
        raise TargetError(f"QEMU's 'info mtree -f' shows no RAM region for {ram_path}")
    return open_qemu_ram(ram_path, segments)


def open_target(spec: str) -> Target:
    """Open a TARGET string (see the module docstring)."""
    if spec.startswith("lab:"):
        from vmsentinel.lab.machine import load

        guest = load(spec[4:])
        if not guest.alive:
            raise TargetError(f"lab guest {guest.name!r} is not running; 'vmsentinel lab down {guest.name}' cleans up")
        return _open_qemu(spec, guest.ram_path, guest.qmp_socket, guest.machine, guest.name)
    if spec.startswith("qemu:"):
        path, *rest = spec[5:].split(",")
        opts = _parse_options(spec, rest)
        return _open_qemu(spec, path, opts.get("qmp"), opts.get("machine", "pc"), Path(path).stem)
    if spec.startswith("libvirt:"):
        raise TargetError("libvirt targets are not supported yet; use qemu:RAM_PATH,qmp=SOCKET")
    if not Path(spec).exists():
        raise TargetError(f"no such memory image or target: {spec!r} (give a path, qemu:RAM_PATH or lab:NAME)")
    return Target(spec, open_image(spec), name=Path(spec).stem, layout_source="file")


def _open_qemu(spec: str, ram_path: str, qmp_socket: str | None, machine: str, name: str) -> Target:
    if not Path(ram_path).exists():
        raise TargetError(f"{spec}: RAM file {ram_path} does not exist")
    if qmp_socket:
        from vmsentinel.access.qmp import Qmp

        qmp = Qmp(qmp_socket)
        qmp.connect()
        try:
            memory = qemu_ram_from_qmp(ram_path, qmp)
        except BaseException:
            qmp.close()
            raise
        return Target(spec, memory, qmp_socket, name, "qmp info mtree", _qmp=qmp)
    return Target(spec, open_qemu_ram(ram_path, machine=machine), None, name, f"{machine} machine rule")
