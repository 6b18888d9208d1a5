"""The system service table: ``KeServiceDescriptorTable``'s first descriptor (``Base``, ``Limit``)
names the kernel's own service functions, one 32-bit pointer per system call number. Each entry is
resolved to the kernel symbol it points at (``nt!NtClose``) or to the module it lies in; an entry
outside the kernel is the classic service-table hook.

    entries, problems = service_table(kernel_space, profile, kernel_base, modules)
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.errors import BtfError, TranslationError
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.modules import NtModule, owner_of

#: more entries than any NT kernel's table has (Windows 11: ~480)
MAX_SERVICES = 4096


@dataclass(frozen=True)
class ServiceEntry:
    number: int
    address: int
    symbol: str | None  # nt!NAME when the entry is a kernel function's start
    owner: str  # the module it lies in ("ntoskrnl.exe"), or "unknown"


class KernelSymbols:
    """Kernel symbols by address (the profile's RVAs moved to where the kernel is)."""

    def __init__(self, profile: NtProfile, kernel_base: int) -> None:
        pairs = sorted((kernel_base + rva, name) for name, rva in profile.symbols.items())
        self.addresses = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def exact(self, address: int) -> str | None:
        at = bisect_right(self.addresses, address) - 1
        return self.names[at] if at >= 0 and self.addresses[at] == address else None

    def label(self, address: int, owner: str, modules: list[NtModule]) -> str | None:
        """``nt!NAME`` for the start of a function of the kernel (the first module), else the bare name."""
        name = self.exact(address)
        return f"nt!{name}" if name and modules and owner == modules[0].name else name


def service_table(
    kernel: PagingAddressSpace32, profile: NtProfile, kernel_base: int, modules: list[NtModule]
) -> tuple[list[ServiceEntry], list[str]]:
    try:
        base_at = profile.types.member_offset("_KSERVICE_TABLE_DESCRIPTOR", "Base")
        limit_at = profile.types.member_offset("_KSERVICE_TABLE_DESCRIPTOR", "Limit")
    except BtfError as exc:
        return [], [f"the profile lacks the service table's layout: {exc}"]
    descriptor = kernel_base + profile.rva("KeServiceDescriptorTable")
    try:
        table = kernel.read_u32(descriptor + base_at)
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
        return [], [f"the service table at {table:#x} ({limit} entries) cannot be read: {exc}"]
    symbols = KernelSymbols(profile, kernel_base)
    out = []
    for number in range(limit):
        address = int.from_bytes(raw[number * 4 : number * 4 + 4], "little")
        owner = owner_of(modules, address)
        out.append(ServiceEntry(number, address, symbols.label(address, owner, modules), owner))
    return out, problems
