"""Where each run of guest-physical addresses lives in a backing store: the map every
segmented source shares (a file for images and QEMU RAM files, a process's address space
for a running QEMU)::

    layout = SegmentMap([Segment(0, 0, 2 << 30), Segment(4 << 30, 2 << 30, 1 << 30)], "vm.ram")
    layout.pieces(0x7FFF_F000, 0x2000)    # [(0x7FFF_F000, 0x1000)] ... or UnmappedPhysicalAddress
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from vmsentinel.errors import MemoryError_, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysRange


@dataclass(frozen=True, order=True)
class Segment:
    """Guest-physical ``[phys_start, phys_start + length)`` is at ``file_offset`` of the backing
    store (a byte offset in a file, or a host virtual address in a process)."""

    phys_start: int
    file_offset: int
    length: int

    @property
    def phys_end(self) -> int:
        return self.phys_start + self.length


class SegmentMap:
    """Segments sorted by physical address, checked not to overlap (empty ones dropped)."""

    def __init__(self, segments: Iterable[Segment], where: str) -> None:
        self.where = where
        self.segments = sorted(s for s in segments if s.length > 0)
        for a, b in itertools.pairwise(self.segments):
            if b.phys_start < a.phys_end:
                raise MemoryError_(f"{where}: physical segments overlap at {b.phys_start:#x}")
        self.starts = [s.phys_start for s in self.segments]

    def find(self, address: int) -> Segment | None:
        """The segment holding ``address``."""
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0:
            seg = self.segments[i]
            if address < seg.phys_end:
                return seg
        return None

    def pieces(self, address: int, length: int) -> list[tuple[int, int]]:
        """(backing offset, length) runs that make up ``[address, address + length)``, crossing
        from one segment into the next only where they are physically contiguous; a hole
        raises UnmappedPhysicalAddress."""
        if address < 0 or length < 0:
            raise UnmappedPhysicalAddress(address, length, self.where)
        parts: list[tuple[int, int]] = []
        cursor, remaining = address, length
        while remaining:
            seg = self.find(cursor)
            if seg is None:
                raise UnmappedPhysicalAddress(address, length, self.where)
            take = min(remaining, seg.phys_end - cursor)
            parts.append((seg.file_offset + (cursor - seg.phys_start), take))
            cursor += take
            remaining -= take
        return parts

    def is_valid(self, address: int, length: int = 1) -> bool:
        seg = self.find(address)
        return seg is not None and address + length <= seg.phys_end

    def ranges(self) -> list[PhysRange]:
        """The physical ranges, adjacent segments merged."""
        merged: list[PhysRange] = []
        for seg in self.segments:
            if merged and merged[-1].end == seg.phys_start:
                merged[-1] = PhysRange(merged[-1].start, merged[-1].length + seg.length)
            else:
                merged.append(PhysRange(seg.phys_start, seg.length))
        return merged
