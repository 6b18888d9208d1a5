"""Address → symbol for one boot of a kernel, and who owns an address
(core kernel text, a module's text, or nothing known).

    resolver = SymbolResolver(location)
    resolver.describe(0xffffffffa1234567)    # 'do_sys_openat2+0x17'
    resolver.owner(addr, modules)            # 'kernel' | 'module:veth' | 'unknown'
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from vmsentinel.arch.x86_64 import KERNEL_ADDRESS_MIN
from vmsentinel.os.linux.kernel_locate import KernelLocation

TEXT_TYPES = frozenset("Tt")
MODULES_VADDR = 0xFFFFFFFFC0000000  # x86-64 module mapping space, up to the fixmap
MODULES_END = 0xFFFFFFFFFF000000
MASK64 = (1 << 64) - 1
MAX_DESCRIBED = 1 << 14


@dataclass(frozen=True)
class TextRange:
    owner: str
    start: int
    end: int


class SymbolResolver:
    """One boot's view of a profile's symbols: the profile's address-sorted columns (built once per
    build, shared by every guest of it) and this boot's KASLR slide."""

    def __init__(self, location: KernelLocation) -> None:
        profile = location.profile
        self._slide = location.kaslr_slide
        self._table = profile.symbols
        self._addrs, self._order = profile.symbols.by_address(KERNEL_ADDRESS_MIN)
        self._described: dict[int, str | None] = {}
        first, last = (
            ((self._addrs[0] + self._slide) & MASK64, (self._addrs[-1] + self._slide) & MASK64) if self._addrs else (0, 0)
        )
        self.text_start = location.runtime_symbol("_stext") if "_stext" in profile.symbols else first
        self.text_end = location.runtime_symbol("_etext") if "_etext" in profile.symbols else last
        self.init_start = location.runtime_symbol("_sinittext") if "_sinittext" in profile.symbols else 0
        self.init_end = location.runtime_symbol("_einittext") if "_einittext" in profile.symbols else 0
        #: the kernel's own credentials (its threads run on them; no user process should)
        self.init_cred = location.runtime_symbol("init_cred") if "init_cred" in profile.symbols else None
        ram_end = max((r.end for r in location.memory.ranges()), default=0)
        vmalloc_span = 1 << (52 if location.paging_levels == 5 else 45)  # VMALLOC_SIZE_TB: 12.5 PiB / 32 TiB
        self.regions: list[TextRange] = [TextRange("modules-area", MODULES_VADDR, MODULES_END)]
        if location.page_offset_base is not None:
            self.regions.append(TextRange("direct-map", location.page_offset_base, location.page_offset_base + ram_end))
        if location.vmalloc_base is not None:
            self.regions.append(TextRange("vmalloc", location.vmalloc_base, location.vmalloc_base + vmalloc_span))

    def in_core_text(self, addr: int) -> bool:
        return self.text_start <= addr < self.text_end

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(symbol, offset) of the closest symbol at or below ``addr``, within core kernel addresses."""
        link = (addr - self._slide) & MASK64
        i = bisect.bisect_right(self._addrs, link) - 1
        if i < 0 or not (self.text_start <= addr < self.text_end or link - self._addrs[i] < 1 << 20):
            return None
        return self._table.name_at(self._order[i]), link - self._addrs[i]

    def extent(self, addr: int) -> int:
        """Bytes from ``addr`` to the next symbol above it (a function's size, as the symbol table tells it; 0: none)."""
        link = (addr - self._slide) & MASK64
        i = bisect.bisect_right(self._addrs, link)
        return self._addrs[i] - link if i < len(self._addrs) else 0

    def describe(self, addr: int) -> str | None:
        """``name+0xoff`` of ``addr``; remembered (the same few hundred handlers are described every sweep)."""
        if addr in self._described:
            return self._described[addr]
        found = self.lookup(addr)
        text = None if found is None else found[0] if found[1] == 0 else f"{found[0]}+{found[1]:#x}"
        if len(self._described) >= MAX_DESCRIBED:
            self._described.clear()
        self._described[addr] = text
        return text

    def owner(self, addr: int, module_text: Sequence[TextRange] = ()) -> str:
        """``kernel``, ``kernel-init`` (boot-time text, freed later), ``module:NAME``, or for code the
        kernel does not know, the memory it lies in: ``modules-area``, ``direct-map``, ``vmalloc``, ``user``,
        ``unknown``."""
        if self.in_core_text(addr):
            return "kernel"
        if self.init_start <= addr < self.init_end:
            return "kernel-init"
        for rng in module_text:
            if rng.start <= addr < rng.end:
                return f"module:{rng.owner}"
        if addr < 1 << 63:
            return "user"
        for rng in self.regions:  # not code the kernel knows: say which memory it is in
            if rng.start <= addr < rng.end:
                return rng.owner
        return "unknown"
