"""NT kernel modules from the loader's own list (``PsLoadedModuleList``: ``_LDR_DATA_TABLE_ENTRY``
in load order: the kernel, the HAL, then drivers), with where each is and how large. On x64 (the
profile's pointer size is 8) the links, ``DllBase`` and ``EntryPoint`` are 8 bytes, and so is the
names' buffer pointer; ``SizeOfImage`` stays 4.

    modules, problems = list_modules(kernel_space, profile, kernel_base)
"""

from __future__ import annotations

from dataclasses import dataclass

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.errors import BtfError, TranslationError
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.lists import walk_list
from vmsentinel.os.windows.views.processes import read_unicode_string


@dataclass(frozen=True)
class NtModule:
    name: str
    path: str | None
    base: int
    size: int
    entry: int
    record: int  # the _LDR_DATA_TABLE_ENTRY

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


def owner_of(modules: list[NtModule], address: int) -> str:
    """The name of the module ``address`` lies in, or ``unknown``."""
    return next((m.name for m in modules if m.contains(address)), "unknown")


def list_modules(kernel: VirtualReads, profile: NtProfile, kernel_base: int) -> tuple[list[NtModule], list[str]]:
    try:
        t = profile.types
        links = t.member_offset("_LDR_DATA_TABLE_ENTRY", "InLoadOrderLinks")
        base_at = t.member_offset("_LDR_DATA_TABLE_ENTRY", "DllBase")
        size_at = t.member_offset("_LDR_DATA_TABLE_ENTRY", "SizeOfImage")
        entry_at = t.member_offset("_LDR_DATA_TABLE_ENTRY", "EntryPoint")
        full_at = t.member_offset("_LDR_DATA_TABLE_ENTRY", "FullDllName")
        name_at = t.member_offset("_LDR_DATA_TABLE_ENTRY", "BaseDllName")
    except BtfError as exc:
        return [], [f"the profile lacks what the module list needs: {exc}"]
    width = profile.pointer_size
    pointer = kernel.read_u64 if width == 8 else kernel.read_u32
    records, problems = walk_list(kernel, kernel_base + profile.rva("PsLoadedModuleList"), links, "module", pointer_size=width)
    out = []
    for record in records:
        try:
            name = read_unicode_string(kernel, record + name_at, width)
            out.append(
                NtModule(
                    name or f"(unnamed at {record:#x})",
                    read_unicode_string(kernel, record + full_at, width),
                    pointer(record + base_at),
                    kernel.read_u32(record + size_at),
                    pointer(record + entry_at),
                    record,
                )
            )
        except TranslationError as exc:
            problems.append(f"the module record at {record:#x} cannot be read: {exc}")
    return out, problems
