"""The system service table: ``KeServiceDescriptorTable``'s first descriptor (``Base``, ``Limit``)
names the kernel's own service functions, one 32-bit entry per system call number: a pointer on
32-bit NT; on x64 an offset from the table (``table + (entry >> 4)``, arithmetic shift: the low 4 bits
count the arguments passed on the stack). Each entry is resolved to the kernel symbol it points at
(``nt!NtClose``) or to the module it lies in; an entry outside the kernel is the classic
service-table hook.

    entries, problems = service_table(kernel_space, profile, kernel_base, modules)
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.errors import ProfileError, TranslationError
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.modules import NtModule, owner_of

#: more entries than any NT kernel's table has (Windows 11: ~480)
MAX_SERVICES = 4096
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ServiceEntry:
    number: int
    address: int
    symbol: str | None  # nt!NAME when the entry is a kernel function's start
    owner: str  # the module it lies in ("ntoskrnl.exe"), or "unknown"


class KernelSymbols:
    """Kernel symbols by address (the profile's RVAs moved to where the kernel is). Sorting them costs
    milliseconds: a guest makes one and every view of a sweep shares it."""

    def __init__(self, rvas: dict[str, int], kernel_base: int) -> None:
        pairs = sorted((kernel_base + rva, name) for name, rva in rvas.items())
        self.addresses = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def exact(self, address: int) -> str | None:
        at = bisect_right(self.addresses, address) - 1
        return self.names[at] if at >= 0 and self.addresses[at] == address else None

    def describe(self, address: int) -> str | None:
        """``nt!NAME+0xOFF``: the nearest kernel symbol at or below ``address`` (None below the first)."""
        at = bisect_right(self.addresses, address) - 1
        return f"nt!{self.names[at]}+{address - self.addresses[at]:#x}" if at >= 0 else None

    def label(self, address: int, owner: str, modules: list[NtModule]) -> str | None:
        """``nt!NAME`` for the start of a function of the kernel (the first module), else the bare name."""
        name = self.exact(address)
        return f"nt!{name}" if name and modules and owner == modules[0].name else name


def service_table(
    kernel: VirtualReads,
    profile: NtProfile,
    kernel_base: int,
    modules: list[NtModule],
    symbols: KernelSymbols | None = None,
) -> tuple[list[ServiceEntry], list[str]]:
    """Every entry of the kernel's own table, resolved (the profile's pointer size says 32-bit or x64)."""
    wide = profile.pointer_size == 8
    try:
        base_at = profile.types.member_offset("_KSERVICE_TABLE_DESCRIPTOR", "Base")
        limit_at = profile.types.member_offset("_KSERVICE_TABLE_DESCRIPTOR", "Limit")
        descriptor = kernel_base + profile.rva("KeServiceDescriptorTable")
    except ProfileError as exc:
        return [], [f"the profile lacks the service table's layout: {exc}"]
    try:
        table = kernel.read_u64(descriptor + base_at) if wide else kernel.read_u32(descriptor + base_at)
        limit = kernel.read_u32(descriptor + limit_at)
    except TranslationError as exc:
        return [], [f"KeServiceDescriptorTable at {descriptor:#x} cannot be read: {exc}"]
    problems = []
    if limit > MAX_SERVICES:
        problems.append(f"the service table claims {limit} entries; reading the first {MAX_SERVICES}")
        limit = MAX_SERVICES
    try:
        raw = kernel.read(table, limit * 4)
    except TranslationError as exc:
        return [], [*problems, f"the service table at {table:#x} ({limit} entries) cannot be read: {exc}"]
    symbols = symbols or KernelSymbols(profile.symbols, kernel_base)
    out = []
    for number, (entry,) in enumerate(struct.iter_unpack("<i" if wide else "<I", raw)):
        address = (table + (entry >> 4)) & MASK64 if wide else entry
        owner = owner_of(modules, address)
        out.append(ServiceEntry(number, address, symbols.label(address, owner, modules), owner))
    return out, problems
