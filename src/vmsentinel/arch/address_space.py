"""What every paging mode shares: the records of a translation and a mapping, and reading through a
per-sweep translation cache. A paging mode (:mod:`.x86_64`, :mod:`.x86_32`) supplies ``translate``
(filling ``_cache``: virtual page -> (physical page, page size, flags)) and ``walk_mappings``; the
reads here cross pages, join physically contiguous runs and stop at what is not mapped."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vmsentinel.errors import BadPageTable, TranslationError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12
DEFAULT_STRING_CAP = 4096
#: rights flags kept in the translation cache (bit 0: no-execute)
FLAG_NX, FLAG_RW, FLAG_US = 1, 1 << 1, 1 << 2


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


class VirtualReads:
    """Reads of guest-virtual memory for a paging mode that fills ``_cache`` in ``translate``."""

    phys: PhysicalMemory
    _cache: dict[int, tuple[int, int, int]]
    _read_u64: Callable[[int], int]

    def translate(self, vaddr: int) -> int:  # pragma: no cover - every paging mode has its own
        raise NotImplementedError

    def walk_mappings(self, start: int = 0, end: int = 1 << 64) -> MappingWalk:  # pragma: no cover
        raise NotImplementedError

    def translation(self, vaddr: int) -> Translation:
        """Physical address and the page's rights."""
        paddr = self.translate(vaddr)
        _, size, flags = self._cache[vaddr >> PAGE_SHIFT]
        return Translation(paddr, size, bool(flags & FLAG_RW), bool(flags & FLAG_US), bool(flags & FLAG_NX))

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

    def read_u32(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 4), "little")

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
