"""Each CPU's interrupt descriptor table on a 32-bit NT kernel: the processors from
``KiProcessorBlock`` (one ``_KPRCB`` pointer per CPU, inside its ``_KPCR``, whose ``SelfPcr`` names
itself), each ``_KPCR.IDT``'s 256 gates resolved to the kernel function they enter (``nt!KiTrap0E``)
or the module they lie in. Task gates (the double fault's) enter through a TSS, not an address.

    entries, problems = read_idt(kernel_space, profile, kernel_base, modules)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.errors import BtfError, ProfileError, TranslationError
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.modules import NtModule, owner_of
from vmsentinel.os.windows.views.services import KernelSymbols

MAX_CPUS = 64
GATE_PRESENT, GATE_TYPE = 0x8000, 0x1F00
TASK_GATE = 0x0500


@dataclass(frozen=True)
class NtIdtEntry:
    cpu: int
    vector: int
    address: int
    selector: int
    kind: str  # interrupt, trap, task
    symbol: str | None
    owner: str
    #: for a device interrupt: the routine its interrupt object calls (the gate enters the object's
    #: own dispatch code, in pool memory, which calls it)
    service_routine: int | None = None


class InterruptObjects:
    """Whether an address is the dispatch code of a ``_KINTERRUPT`` (``Type`` says interrupt object,
    ``Size`` its size), and the service routine it calls."""

    def __init__(self, dispatch: int, service: int, size: int, kind: int) -> None:
        self.dispatch, self.service, self.size, self.kind = dispatch, service, size, kind

    @classmethod
    def of(cls, profile: NtProfile) -> InterruptObjects | None:
        t = profile.types
        try:
            kind = t.enum_values("_KOBJECTS").get("InterruptObject", 22)
        except BtfError:
            kind = 22  # KOBJECTS has kept InterruptObject at 22 since NT 4
        try:
            return cls(
                t.member_offset("_KINTERRUPT", "DispatchCode"),
                t.member_offset("_KINTERRUPT", "ServiceRoutine"),
                t.struct_size("_KINTERRUPT"),
                kind,
            )
        except BtfError:
            return None

    def routine(self, space: PagingAddressSpace32, address: int) -> int | None:
        start = address - self.dispatch
        try:
            head = space.read(start, 4)
            kind, size = struct.unpack("<hh", head)
            if kind != self.kind or size != self.size:
                return None
            return space.read_u32(start + self.service)
        except TranslationError:
            return None


def read_idt(
    kernel: PagingAddressSpace32,
    profile: NtProfile,
    kernel_base: int,
    modules: list[NtModule],
    symbols: KernelSymbols | None = None,
) -> tuple[list[NtIdtEntry], list[str]]:
    t = profile.types
    pcr_type = "_KPCR" if t.has_member("_KPCR", "PrcbData") else "_KIPCR"  # ReactOS keeps the full one internal
    try:
        prcb_in_pcr = t.member_offset(pcr_type, "PrcbData")
        self_at = t.member_offset(pcr_type, "SelfPcr")
        idt_at = t.member_offset(pcr_type, "IDT")
        block = kernel_base + profile.rva("KiProcessorBlock")
    except (BtfError, ProfileError) as exc:
        return [], [f"the profile lacks what the IDT needs: {exc}"]
    symbols = symbols or KernelSymbols(profile.symbols, kernel_base)
    interrupts = InterruptObjects.of(profile)
    out: list[NtIdtEntry] = []
    problems: list[str] = []
    for cpu in range(MAX_CPUS):
        try:
            prcb = kernel.read_u32(block + 4 * cpu)
            if not prcb:
                break
            pcr = prcb - prcb_in_pcr
            if kernel.read_u32(pcr + self_at) != pcr:
                problems.append(f"CPU {cpu}: the processor block at {pcr:#x} does not name itself (SelfPcr); skipped")
                continue
            idt = kernel.read_u32(pcr + idt_at)
            gates = kernel.read(idt, 256 * 8)
        except TranslationError as exc:
            problems.append(f"CPU {cpu}: {exc}")
            continue
        for vector in range(256):
            low, selector, access, high = struct.unpack_from("<HHHH", gates, vector * 8)
            if not access & GATE_PRESENT:
                continue
            kind = {0x0E00: "interrupt", 0x0F00: "trap", TASK_GATE: "task"}.get(
                access & GATE_TYPE, f"type {access >> 8 & 0x1F:#x}"
            )
            if kind == "task":
                out.append(NtIdtEntry(cpu, vector, 0, selector, kind, None, "task gate"))
                continue
            address = low | high << 16
            owner = owner_of(modules, address)
            if owner == "unknown" and interrupts is not None:
                routine = interrupts.routine(kernel, address)
                if routine is not None:  # a connected device interrupt: judged by whom its object calls
                    called = owner_of(modules, routine)
                    out.append(NtIdtEntry(cpu, vector, address, selector, kind, None, f"interrupt object -> {called}", routine))
                    continue
            out.append(
                NtIdtEntry(
                    cpu,
                    vector,
                    address,
                    selector,
                    kind,
                    symbols.label(address, owner, modules),
                    owner,
                )
            )
    return out, problems
