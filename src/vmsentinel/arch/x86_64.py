"""x86-64 paging: translate guest-virtual addresses through the guest's own
page tables, 4- or 5-level, with 2 MiB and 1 GiB pages.

Every entry is hostile input. A translation walks a fixed number of levels, so
it cannot loop; a table outside RAM or a reserved-bit entry fails that one
address with a :class:`~vmsentinel.errors.TranslationError` saying where. The
walk over all mappings skips tables that loop back to an ancestor and stops at
a table budget, reporting what it skipped instead of raising::

    space = PagingAddressSpace(mem, root=cr3 & ~0xFFF, levels=4)
    space.read(0xffffffff81000000, 64)
    walk = space.walk_mappings()
    for m in walk.mappings: ...
    walk.problems           # ["level-2 table at 0x... is outside RAM", ...]
"""

from __future__ import annotations

import struct

from vmsentinel.arch.address_space import (
    DEFAULT_STRING_CAP,
    PAGE_SHIFT,
    PAGE_SIZE,
    Mapping,
    MappingWalk,
    PhysicalRuns,
    Translation,
    VirtualReads,
    _merge,
    coalesce_by_rights,
)
from vmsentinel.errors import BadPageTable, NonCanonicalAddress, PageNotPresent, TranslationError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory

P, RW, US, PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
NX = 1 << 63
ADDR_MASK = 0x000F_FFFF_FFFF_F000
#: lowest kernel-half address under 4-level paging (and the lowest any kernel symbol has under 5)
KERNEL_ADDRESS_MIN = 0xFFFF_8000_0000_0000
#: physical-address masks of the page frame for a leaf at level 1 (4K), 2 (2M), 3 (1G)
_LEAF_MASK = {1: ADDR_MASK, 2: 0x000F_FFFF_FFE0_0000, 3: 0x000F_FFFF_C000_0000}
_LEVEL_SHIFT = {1: 12, 2: 21, 3: 30, 4: 39, 5: 48}
_TABLE = struct.Struct("<512Q")
CR4_LA57 = 1 << 12

DEFAULT_TABLE_BUDGET = 1 << 17  # 512 MiB of page tables: far more than any sane guest has
#: tables reached again through another entry (shared lower tables): a hostile root whose 512 entries all
#: name one table that does the same below makes 512**3 paths out of four pages of tables
DEFAULT_REVISIT_BUDGET = 1 << 12
#: mappings (runs) one walk returns: each costs a Python object, and shared tables can multiply them
DEFAULT_MAPPING_BUDGET = 1 << 18


def paging_levels_from_cr4(cr4: int) -> int:
    return 5 if cr4 & CR4_LA57 else 4


def cr3_to_root(cr3: int) -> int:
    """The top-level table's physical address (drops PCID and flag bits)."""
    return cr3 & ADDR_MASK


class PagingAddressSpace(VirtualReads):
    """A guest-virtual address space defined by one page-table root."""

    def __init__(self, phys: PhysicalMemory, root: int, levels: int = 4) -> None:
        if levels not in (4, 5):
            raise ValueError("x86-64 paging has 4 or 5 levels")
        self.phys = phys
        self.root = root & ADDR_MASK
        self.levels = levels
        self.va_bits = 57 if levels == 5 else 48
        self._sign = 1 << (self.va_bits - 1)
        self._cache: dict[int, tuple[int, int, int]] = {}  # vpage -> (paddr of page, page size, flags)
        # large pages: key vaddr >> 21 for 2 MiB, -(vaddr >> 30) - 1 for 1 GiB -> (base, size, flags)
        self._large: dict[int, tuple[int, int, int]] = {}
        self._read_u64 = phys.read_u64

    # -- helpers -------------------------------------------------------
    def is_canonical(self, vaddr: int) -> bool:
        return vaddr < self._sign or (vaddr >= (1 << 64) - self._sign and vaddr < 1 << 64)

    def canonical(self, vaddr: int) -> int:
        """Sign-extend a ``va_bits`` address to 64 bits."""
        vaddr &= (1 << self.va_bits) - 1
        return vaddr | ((1 << 64) - (1 << self.va_bits)) if vaddr & self._sign else vaddr

    def new_sweep(self) -> None:
        """Forget cached translations (and what the memory source caches): a running guest changes
        its tables between sweeps."""
        self._cache.clear()
        self._large.clear()
        self.phys.new_sweep()

    # -- translation ---------------------------------------------------
    def _walk(self, vaddr: int) -> tuple[int, int, int]:
        """(physical page base, page size, flags) for the page holding ``vaddr``."""
        if not self.is_canonical(vaddr):
            raise NonCanonicalAddress(vaddr, f"not canonical for {self.levels}-level paging")
        table = self.root
        writable, user, nx = RW, US, 0
        for level in range(self.levels, 0, -1):
            index = (vaddr >> _LEVEL_SHIFT[level]) & 0x1FF
            try:
                entry = self._read_u64(table + index * 8)
            except UnmappedPhysicalAddress:
                raise BadPageTable(vaddr, f"table at {table:#x} is outside RAM", level) from None
            if not entry & P:
                raise PageNotPresent(vaddr, "entry not present", level)
            writable &= entry
            user &= entry
            nx |= entry & NX
            if level <= 3 and (level == 1 or entry & PS):
                size = 1 << _LEVEL_SHIFT[level]
                base = entry & _LEAF_MASK[level]
                return base, size, (writable & RW) | (user & US) | (1 if nx else 0)
            if entry & PS and level >= 4:
                raise BadPageTable(vaddr, f"large-page bit set in a level-{level} entry {entry:#x}", level)
            table = entry & ADDR_MASK
        raise TranslationError(vaddr, "page walk ended without a leaf")  # pragma: no cover

    def translate(self, vaddr: int) -> int:
        """Physical address of ``vaddr`` (cached for the sweep)."""
        vpage = vaddr >> PAGE_SHIFT
        hit = self._cache.get(vpage)
        if hit is None:
            large = self._large.get(vaddr >> 21) or self._large.get(-(vaddr >> 30) - 1)
            if large is None:
                base, size, flags = self._walk(vaddr)
                if size > PAGE_SIZE:  # one walk serves every 4 KiB page inside a large page
                    self._large[vaddr >> 21 if size == 1 << 21 else -(vaddr >> 30) - 1] = (base, size, flags)
            else:
                base, size, flags = large
            hit = (base + ((vaddr & (size - 1)) & ~(PAGE_SIZE - 1)), size, flags)
            self._cache[vpage] = hit
        return hit[0] + (vaddr & (PAGE_SIZE - 1))

    # -- walking every mapping ---------------------------------------------
    def walk_mappings(
        self, start: int = 0, end: int = 1 << 64, table_budget: int = DEFAULT_TABLE_BUDGET, merge: bool = True
    ) -> MappingWalk:
        """Every present mapping in ``[start, end)``, in address order.

        Linux shares some lower tables between entries, so a table may be
        visited more than once; a table that is its own ancestor (a loop) is
        skipped, and the total number of tables read is capped by the budget,
        as are the visits of tables already seen and the mappings returned
        (hostile tables shared by every entry would otherwise multiply them).
        With ``merge``, neighbours contiguous both virtually and physically
        with the same rights become one mapping.
        """
        walk = MappingWalk()
        out: list[Mapping] = []
        self._walk_table(self.root, self.levels, 0, RW, US, 0, start, end, walk, (), out, table_budget, merge)
        walk.mappings = _merge(out) if merge else out
        return walk

    def _walk_table(
        self,
        table: int,
        level: int,
        vbase: int,
        writable: int,
        user: int,
        nx: int,
        start: int,
        end: int,
        walk: MappingWalk,
        ancestors: tuple[int, ...],
        out: list[Mapping],
        budget: int,
        runs: bool = True,
    ) -> None:
        if table in ancestors:
            walk.problems.append(f"level-{level} table at {table:#x} points back to an ancestor (loop); skipped")
            return
        if walk.tables_visited >= budget:
            if not walk.truncated:
                walk.problems.append(f"stopped after {budget} page tables (budget)")
            walk.truncated = True
            return
        if table in walk.seen:
            if walk.revisits >= DEFAULT_REVISIT_BUDGET:
                if not walk.truncated:
                    walk.problems.append(f"stopped after {DEFAULT_REVISIT_BUDGET} visits of shared page tables (budget)")
                walk.truncated = True
                return
            walk.revisits += 1
        if len(out) >= DEFAULT_MAPPING_BUDGET:
            if not walk.truncated:
                walk.problems.append(f"stopped after {DEFAULT_MAPPING_BUDGET} mappings (budget)")
            walk.truncated = True
            return
        walk.seen.add(table)
        walk.tables_visited += 1
        try:
            entries = _TABLE.unpack(self.phys.read(table, PAGE_SIZE))
        except UnmappedPhysicalAddress:
            walk.problems.append(f"level-{level} table at {table:#x} (for {self.canonical(vbase):#x}) is outside RAM")
            return
        shift = _LEVEL_SHIFT[level]
        span = 1 << shift
        path = (*ancestors, table)
        if level == self.levels:  # the top table spans both halves: sign extension breaks the order
            indexes = range(512)
        else:  # a lower table lies in one half: only its entries that overlap [start, end)
            first = self.canonical(vbase)
            indexes = range(max(0, (start - first) // span), min(511, (end - 1 - first) // span) + 1)
            if level == 1 and runs:  # the bulk of any walk: 4 KiB pages, joined into runs as they are read
                _leaf_runs(entries, indexes, first, writable, user, nx, out)
                return
        for index in indexes:
            entry = entries[index]
            if not entry & P:
                continue
            raw_va = vbase | (index << shift)
            va = self.canonical(raw_va)
            if va + span <= start or va >= end:
                continue
            w, u, x = writable & entry, user & entry, nx | (entry & NX)
            if level == 1 or (level <= 3 and entry & PS):
                out.append(Mapping(va, entry & _LEAF_MASK[level], span, bool(w & RW), bool(u & US), bool(x)))
            elif entry & PS:
                walk.problems.append(f"large-page bit in level-{level} entry for {va:#x}; skipped")
            else:
                self._walk_table(entry & ADDR_MASK, level - 1, raw_va, w, u, x, start, end, walk, path, out, budget, runs)


def _leaf_runs(
    entries: tuple[int, ...], indexes: range, first: int, writable: int, user: int, nx: int, out: list[Mapping]
) -> None:
    """The present 4 KiB pages of one last-level table, as runs contiguous in both address spaces with
    the same rights (one Mapping per run, not per page)."""
    run_va = run_pa = run_size = run_rights = 0
    for index in indexes:
        entry = entries[index]
        if not entry & P:
            continue
        pa, rights = entry & ADDR_MASK, entry & (RW | US | NX)
        va = first + (index << 12)
        if run_size and rights == run_rights and run_va + run_size == va and run_pa + run_size == pa:
            run_size += PAGE_SIZE
            continue
        if run_size:
            out.append(_leaf(run_va, run_pa, run_size, run_rights, writable, user, nx))
        run_va, run_pa, run_size, run_rights = va, pa, PAGE_SIZE, rights
    if run_size:
        out.append(_leaf(run_va, run_pa, run_size, run_rights, writable, user, nx))


def _leaf(va: int, pa: int, size: int, rights: int, writable: int, user: int, nx: int) -> Mapping:
    return Mapping(va, pa, size, bool(writable & rights & RW), bool(user & rights & US), bool(nx or rights & NX))


__all__ = [
    "DEFAULT_STRING_CAP",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "Mapping",
    "MappingWalk",
    "PagingAddressSpace",
    "PhysicalRuns",
    "Translation",
    "coalesce_by_rights",
    "cr3_to_root",
    "paging_levels_from_cr4",
]
