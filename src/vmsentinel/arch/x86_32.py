"""32-bit x86 paging, for 32-bit NT-family guests (ReactOS, 32-bit Windows): two levels with 4 KiB
and 4 MiB pages (PSE, and PSE-36's physical bits above 4 GiB), or PAE's three levels with 4 KiB and
2 MiB pages, 64-bit entries and the no-execute bit.

As for x86-64, every entry is hostile input. A translation walks a fixed number of levels. The walk
over all mappings has a fixed depth too, so a table cannot loop; a page table that is also the page
directory (NT's self-map, which maps the page tables themselves at ``0xC0000000``) is read as the
hardware reads it: its entries become the pages of that window. Tables read again through other
entries and the mappings returned are capped by budgets, and what was skipped is reported::

    space = PagingAddressSpace32(mem, root=cr3, pae=False)
    space.read(0x80400000, 64)
    space.walk_mappings().problems
"""

from __future__ import annotations

import struct

from vmsentinel.arch.address_space import (
    FLAG_NX,
    FLAG_RW,
    FLAG_US,
    PAGE_SHIFT,
    PAGE_SIZE,
    Mapping,
    MappingWalk,
    VirtualReads,
    _merge,
)
from vmsentinel.errors import BadPageTable, NonCanonicalAddress, PageNotPresent, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory

P, RW, US, PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
NX = 1 << 63
#: a PAE entry's physical frame (52-bit physical addresses)
PAE_FRAME = 0x000F_FFFF_FFFF_F000
PAE_LARGE_FRAME = 0x000F_FFFF_FFE0_0000
#: what CR3 holds of the top table: a page for two levels, a 32-byte-aligned PDPT for PAE
ROOT_MASK, PAE_ROOT_MASK = 0xFFFF_F000, 0xFFFF_FFE0
CR4_PSE, CR4_PAE = 1 << 4, 1 << 5
#: the bits of a PAE page-directory-pointer entry that must be 0 (the CPU refuses to load such a PDPT)
PDPTE_RESERVED = 0b1_1110_0110
VA_LIMIT = 1 << 32

DEFAULT_TABLE_BUDGET = 1 << 14
#: tables reached again through another entry (NT's self-map is one; a hostile directory naming one table
#: 1024 times would make a million entries to read)
DEFAULT_REVISIT_BUDGET = 1 << 8
DEFAULT_MAPPING_BUDGET = 1 << 18
_TABLE32 = struct.Struct("<1024I")
_TABLE64 = struct.Struct("<512Q")


def pse36_base(pde: int) -> int:
    """A 4 MiB page's physical base: bits 22..31 of the entry, and bits 13..20 as physical bits 32..39."""
    return (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32)


class PagingAddressSpace32(VirtualReads):
    """A 32-bit guest-virtual address space defined by one CR3."""

    def __init__(self, phys: PhysicalMemory, root: int, pae: bool = False, pse: bool = True, nxe: bool = True) -> None:
        self.phys = phys
        self.pae = pae
        self.pse = pse or pae  # PAE always has large pages
        self.nxe = nxe and pae  # only PAE entries have an NX bit
        self.root = root & (PAE_ROOT_MASK if pae else ROOT_MASK)
        self.levels = 3 if pae else 2
        self.va_bits = 32
        self._cache: dict[int, tuple[int, int, int]] = {}
        self._large: dict[tuple[int, int], tuple[int, int, int]] = {}  # (size, vaddr // size) -> (base, size, flags)
        self._read_u64 = phys.read_u64

    def new_sweep(self) -> None:
        self._cache.clear()
        self._large.clear()
        self.phys.new_sweep()

    def _u32(self, paddr: int) -> int:
        return int.from_bytes(self.phys.read(paddr, 4), "little")

    def _entry(self, vaddr: int, table: int, index: int, level: int) -> int:
        try:
            return self._read_u64(table + index * 8) if self.pae else self._u32(table + index * 4)
        except UnmappedPhysicalAddress:
            raise BadPageTable(vaddr, f"table at {table:#x} is outside RAM", level) from None

    def _walk(self, vaddr: int) -> tuple[int, int, int]:
        """(physical page base, page size, flags) for the page holding ``vaddr``."""
        if not 0 <= vaddr < VA_LIMIT:
            raise NonCanonicalAddress(vaddr, "beyond 32 bits")
        if self.pae:
            pdpte = self._entry(vaddr, self.root, vaddr >> 30, 3)
            if not pdpte & P:
                raise PageNotPresent(vaddr, "entry not present", 3)
            if pdpte & PDPTE_RESERVED:
                raise BadPageTable(vaddr, f"reserved bits set in page-directory-pointer entry {pdpte:#x}", 3)
            pde = self._entry(vaddr, pdpte & PAE_FRAME, (vaddr >> 21) & 0x1FF, 2)
        else:
            pde = self._entry(vaddr, self.root, vaddr >> 22, 2)
        if not pde & P:
            raise PageNotPresent(vaddr, "entry not present", 2)
        writable, user, nx = pde & RW, pde & US, pde & NX
        if pde & PS and self.pse:
            if self.pae:
                return pde & PAE_LARGE_FRAME, 1 << 21, self._flags(writable, user, nx)
            return pse36_base(pde), 1 << 22, self._flags(writable, user, 0)
        if self.pae:
            pte = self._entry(vaddr, pde & PAE_FRAME, (vaddr >> 12) & 0x1FF, 1)
            frame = pte & PAE_FRAME
        else:
            pte = self._entry(vaddr, pde & ROOT_MASK, (vaddr >> 12) & 0x3FF, 1)
            frame = pte & ROOT_MASK
        if not pte & P:
            raise PageNotPresent(vaddr, "entry not present", 1)
        return frame, PAGE_SIZE, self._flags(writable & pte, user & pte, nx | (pte & NX if self.pae else 0))

    def _flags(self, writable: int, user: int, nx: int) -> int:
        return (FLAG_RW if writable else 0) | (FLAG_US if user else 0) | (FLAG_NX if nx and self.nxe else 0)

    def translate(self, vaddr: int) -> int:
        """Physical address of ``vaddr`` (cached for the sweep)."""
        vpage = vaddr >> PAGE_SHIFT
        hit = self._cache.get(vpage)
        if hit is None:
            large = None
            for size in (1 << 21, 1 << 22):
                large = self._large.get((size, vaddr // size))
                if large is not None:
                    break
            if large is None:
                base, size, flags = self._walk(vaddr)
                if size > PAGE_SIZE:
                    self._large[(size, vaddr // size)] = (base, size, flags)
            else:
                base, size, flags = large
            hit = (base + ((vaddr & (size - 1)) & ~(PAGE_SIZE - 1)), size, flags)
            self._cache[vpage] = hit
        return hit[0] + (vaddr & (PAGE_SIZE - 1))

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "little")

    # -- walking every mapping ---------------------------------------------
    def walk_mappings(
        self, start: int = 0, end: int = VA_LIMIT, table_budget: int = DEFAULT_TABLE_BUDGET, merge: bool = True
    ) -> MappingWalk:
        """Every present mapping in ``[start, end)``, in address order (neighbours contiguous in both
        address spaces with the same rights joined, with ``merge``)."""
        walk = MappingWalk()
        out: list[Mapping] = []
        end = min(end, VA_LIMIT)
        if self.pae:
            entries = self._table(self.root, 3, 0, walk, table_budget, count=4)
            for index, pdpte in enumerate(entries or ()):
                base = index << 30
                if not pdpte & P or base + (1 << 30) <= start or base >= end:
                    continue
                if pdpte & PDPTE_RESERVED:
                    walk.problems.append(f"reserved bits in page-directory-pointer entry {index} ({pdpte:#x}); skipped")
                    continue
                self._directory(pdpte & PAE_FRAME, base, start, end, walk, out, table_budget)
        else:
            self._directory(self.root, 0, start, end, walk, out, table_budget)
        walk.mappings = _merge(out) if merge else out
        return walk

    def _table(
        self, table: int, level: int, vbase: int, walk: MappingWalk, budget: int, count: int = 0
    ) -> tuple[int, ...] | None:
        """A table's entries, or None (outside RAM, or a budget spent: said in ``walk.problems``)."""
        if walk.tables_visited >= budget:
            if not walk.truncated:
                walk.problems.append(f"stopped after {budget} page tables (budget)")
            walk.truncated = True
            return None
        if table in walk.seen:
            if walk.revisits >= DEFAULT_REVISIT_BUDGET:
                if not walk.truncated:
                    walk.problems.append(f"stopped after {DEFAULT_REVISIT_BUDGET} visits of shared page tables (budget)")
                walk.truncated = True
                return None
            walk.revisits += 1
        walk.seen.add(table)
        walk.tables_visited += 1
        try:
            if count:
                return struct.unpack(f"<{count}Q", self.phys.read(table, count * 8))
            return (_TABLE64 if self.pae else _TABLE32).unpack(self.phys.read(table, PAGE_SIZE))
        except UnmappedPhysicalAddress:
            walk.problems.append(f"level-{level} table at {table:#x} (for {vbase:#x}) is outside RAM")
            return None

    def _directory(
        self, table: int, vbase: int, start: int, end: int, walk: MappingWalk, out: list[Mapping], budget: int
    ) -> None:
        entries = self._table(table, 2, vbase, walk, budget)
        if entries is None:
            return
        shift = 21 if self.pae else 22
        span = 1 << shift
        first = max(0, (start - vbase) // span)
        last = min(len(entries) - 1, (end - 1 - vbase) // span)
        for index in range(first, last + 1):
            pde = entries[index]
            if not pde & P:
                continue
            va = vbase + (index << shift)
            w, u, x = pde & RW, pde & US, pde & NX if self.pae else 0
            if pde & PS and self.pse:
                pa = pde & PAE_LARGE_FRAME if self.pae else pse36_base(pde)
                out.append(Mapping(va, pa, span, bool(w), bool(u), bool(x and self.nxe)))
                continue
            if len(out) >= DEFAULT_MAPPING_BUDGET:
                if not walk.truncated:
                    walk.problems.append(f"stopped after {DEFAULT_MAPPING_BUDGET} mappings (budget)")
                walk.truncated = True
                return
            pt = pde & (PAE_FRAME if self.pae else ROOT_MASK)
            ptes = self._table(pt, 1, va, walk, budget)
            if ptes is not None:
                self._pages(ptes, va, start, end, w, u, x, out)

    def _pages(self, ptes: tuple[int, ...], vbase: int, start: int, end: int, w: int, u: int, x: int, out: list[Mapping]) -> None:
        """The present 4 KiB pages of one page table, joined into runs as they are read."""
        frame = PAE_FRAME if self.pae else ROOT_MASK
        first = max(0, (start - vbase) >> 12)
        last = min(len(ptes) - 1, (end - 1 - vbase) >> 12)
        run: list[int] = []  # va, pa, size, writable, user, nx
        for index in range(first, last + 1):
            pte = ptes[index]
            if not pte & P:
                continue
            va, pa = vbase + (index << 12), pte & frame
            rights = (bool(w & pte & RW), bool(u & pte & US), bool((x or (pte & NX if self.pae else 0)) and self.nxe))
            if run and run[0] + run[2] == va and run[1] + run[2] == pa and tuple(run[3:]) == rights:
                run[2] += PAGE_SIZE
                continue
            if run:
                out.append(Mapping(run[0], run[1], run[2], bool(run[3]), bool(run[4]), bool(run[5])))
            run = [va, pa, PAGE_SIZE, *rights]
        if run:
            out.append(Mapping(run[0], run[1], run[2], bool(run[3]), bool(run[4]), bool(run[5])))
