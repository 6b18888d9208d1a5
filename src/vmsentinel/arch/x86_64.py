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
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmsentinel.errors import BadPageTable, NonCanonicalAddress, PageNotPresent, TranslationError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12
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
DEFAULT_STRING_CAP = 4096


@dataclass(frozen=True)
class Translation:
    """Where a virtual address lands and the rights its page grants."""

    paddr: int
    page_size: int
    writable: bool
    user: bool
    nx: bool


@dataclass(frozen=True)
class Mapping:
    """A virtual range ``[vaddr, vaddr + size)`` mapped to physical ``paddr`` onward."""

    vaddr: int
    paddr: int
    size: int
    writable: bool
    user: bool
    nx: bool

    @property
    def vend(self) -> int:
        return self.vaddr + self.size


@dataclass
class MappingWalk:
    """The result of walking every mapping: what was seen and what went wrong."""

    mappings: list[Mapping] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tables_visited: int = 0
    truncated: bool = False
    revisits: int = 0  # tables visited again through another entry
    seen: set[int] = field(default_factory=set, repr=False)  # tables visited so far


def paging_levels_from_cr4(cr4: int) -> int:
    return 5 if cr4 & CR4_LA57 else 4


def cr3_to_root(cr3: int) -> int:
    """The top-level table's physical address (drops PCID and flag bits)."""
    return cr3 & ADDR_MASK


class PagingAddressSpace:
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

    def translation(self, vaddr: int) -> Translation:
        """Physical address and the page's rights."""
        paddr = self.translate(vaddr)
        _, size, flags = self._cache[vaddr >> PAGE_SHIFT]
        return Translation(paddr, size, bool(flags & RW), bool(flags & US), bool(flags & 1))

    def is_mapped(self, vaddr: int, length: int = 1) -> bool:
        try:
            for page in range(vaddr & ~(PAGE_SIZE - 1), vaddr + max(length, 1), PAGE_SIZE):
                self.phys_valid_or_raise(page)
            return True
        except TranslationError:
            return False

    def phys_valid_or_raise(self, vaddr: int) -> int:
        paddr = self.translate(vaddr)
        if not self.phys.is_valid(paddr):
            raise BadPageTable(vaddr, f"maps to {paddr:#x}, outside RAM")
        return paddr

    # -- reads -----------------------------------------------------------
    def read(self, vaddr: int, length: int) -> bytes:
        """``length`` bytes at ``vaddr``, crossing pages as needed. Pages that follow each other in
        physical memory too (a large page, kernel text) are read as one run: a 14 MiB read of kernel
        text is a handful of copies, not thousands."""
        if length <= 0:
            return b""
        first = PAGE_SIZE - (vaddr & (PAGE_SIZE - 1))
        if length <= first:
            return self._read_phys(vaddr, length)
        parts = [self._read_run(v, p, n) for v, p, n in self._runs(vaddr, length)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pieces(self, vaddr: int, length: int) -> list[bytes | memoryview]:
        """The bytes of ``[vaddr, vaddr + length)`` as one piece per physically contiguous run, without
        copying where the memory source can lend a view of itself (a mapped file): what hashing a
        long stretch needs, when nothing keeps the bytes. Raises as :meth:`read` does."""
        view = getattr(self.phys, "view", None)
        return [self._piece(view, v, p, n) for v, p, n in self._runs(vaddr, length)]

    def _runs(self, vaddr: int, length: int) -> list[tuple[int, int, int]]:
        """(virtual start, physical start, length) of each physically contiguous run of the range; every
        page is translated first, so a range with an unmapped page raises before anything is read."""
        runs: list[tuple[int, int, int]] = []
        cursor, remaining = vaddr, length
        run_vaddr, run_start, run_end = vaddr, -1, -1
        while remaining > 0:
            paddr = self.translate(cursor)
            size = self._cache[cursor >> PAGE_SHIFT][1]
            take = min(remaining, size - (cursor & (size - 1)))
            if paddr != run_end:
                if run_end >= 0:
                    runs.append((run_vaddr, run_start, run_end - run_start))
                run_vaddr, run_start, run_end = cursor, paddr, paddr
            run_end += take
            cursor += take
            remaining -= take
        if run_end >= 0:
            runs.append((run_vaddr, run_start, run_end - run_start))
        return runs

    def _piece(self, view: Any, vaddr: int, paddr: int, length: int) -> bytes | memoryview:
        if view is not None:
            try:
                return view(paddr, length)  # type: ignore[no-any-return]
            except UnmappedPhysicalAddress:
                pass  # across segments (or outside RAM): a copying read says which
        return self._read_run(vaddr, paddr, length)

    def _read_run(self, vaddr: int, paddr: int, length: int) -> bytes:
        try:
            return self.phys.read(paddr, length)
        except UnmappedPhysicalAddress:
            raise BadPageTable(vaddr, f"maps to {paddr:#x}, outside RAM") from None

    def _read_phys(self, vaddr: int, length: int) -> bytes:
        hit = self._cache.get(vaddr >> PAGE_SHIFT)
        paddr = hit[0] + (vaddr & (PAGE_SIZE - 1)) if hit is not None else self.translate(vaddr)
        return self._read_run(vaddr, paddr, length)

    def read_u64(self, vaddr: int) -> int:
        if vaddr & 7 == 0:
            hit = self._cache.get(vaddr >> PAGE_SHIFT)  # the hot path of every pointer chase: no call to translate
            return self._read_u64(hit[0] + (vaddr & (PAGE_SIZE - 1)) if hit is not None else self.translate(vaddr))
        return int.from_bytes(self.read(vaddr, 8), "little")

    def read_cstring(self, vaddr: int, max_length: int = DEFAULT_STRING_CAP) -> bytes:
        """A NUL-terminated string of at most ``max_length`` bytes (without the NUL).

        Reads page by page, so a string near an unmapped page still reads.
        """
        out = bytearray()
        cursor = vaddr
        while len(out) < max_length:
            chunk = self._read_phys(cursor, min(PAGE_SIZE - (cursor & (PAGE_SIZE - 1)), max_length - len(out)))
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return bytes(out)
            out += chunk
            cursor += len(chunk)
        return bytes(out)

    def read_present(self, vaddr: int, length: int) -> bytes:
        """``length`` bytes at ``vaddr`` with zeros where nothing is mapped (or mapped outside RAM): what a
        scan of a whole region reads. The tables are walked once for the range (not once per page),
        and each physically contiguous run is one read."""
        return self.physical_runs(vaddr, length).read(0, length)

    def physical_runs(self, vaddr: int, length: int) -> PhysicalRuns:
        """Where ``[vaddr, vaddr + length)`` lies in physical memory, walked once: two ranges with equal
        runs hold the same bytes (a library's code shared by every process that maps it)."""
        end = vaddr + length
        runs = []
        for m in self.walk_mappings(vaddr, end).mappings:
            lo, hi = max(m.vaddr, vaddr), min(m.vend, end)
            if lo < hi:
                runs.append((lo - vaddr, m.paddr + (lo - m.vaddr), hi - lo))
        return PhysicalRuns(tuple(runs), length, self.phys)

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


@dataclass(frozen=True)
class PhysicalRuns:
    """A virtual range as ``(offset, paddr, size)`` runs of physical memory, in offset order; the gaps
    between runs (nothing mapped) read as zeros, as do runs outside RAM."""

    runs: tuple[tuple[int, int, int], ...]
    length: int
    phys: PhysicalMemory = field(compare=False, repr=False)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` into the range (zeros past its end)."""
        end = offset + length
        parts: list[bytes] = []
        cursor = offset
        first = max(0, bisect_right(self.runs, (offset, 1 << 64)) - 1)
        for run_offset, paddr, size in self.runs[first:]:
            if run_offset >= end:
                break
            lo, hi = max(run_offset, offset), min(run_offset + size, end)
            if lo >= hi:
                continue
            if lo > cursor:
                parts.append(bytes(lo - cursor))
            try:
                parts.append(self.phys.read(paddr + (lo - run_offset), hi - lo))
            except UnmappedPhysicalAddress:
                parts.append(bytes(hi - lo))
            cursor = hi
        if cursor < end:
            parts.append(bytes(end - cursor))
        return parts[0] if len(parts) == 1 else b"".join(parts)


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


def _merge(mappings: list[Mapping]) -> list[Mapping]:
    merged: list[Mapping] = []
    for m in mappings:
        if merged:
            last = merged[-1]
            if (
                last.vend == m.vaddr
                and last.paddr + last.size == m.paddr
                and last.writable == m.writable
                and last.user == m.user
                and last.nx == m.nx
            ):
                merged[-1] = Mapping(last.vaddr, last.paddr, last.size + m.size, m.writable, m.user, m.nx)
                continue
        merged.append(m)
    return merged


def coalesce_by_rights(mappings: list[Mapping], with_nx: bool = False) -> Iterator[tuple[int, int, bool, bool]]:
    """Virtual ranges with the same rights, ignoring where they map (QEMU's ``info mem`` view).

    Yields (start, end, user, writable).
    """
    current: list[int | bool] | None = None
    for m in mappings:
        key = (m.user, m.writable, m.nx) if with_nx else (m.user, m.writable)
        if current is not None and current[1] == m.vaddr and tuple(current[2:]) == key:
            current[1] = m.vend
            continue
        if current is not None:
            yield int(current[0]), int(current[1]), bool(current[2]), bool(current[3])
        current = [m.vaddr, m.vend, *key]
    if current is not None:
        yield int(current[0]), int(current[1]), bool(current[2]), bool(current[3])
