"""Memory sources that are segments of one file, mapped read-only with mmap.

Raw images, QEMU shared RAM files, QEMU ELF cores and LiME images all come
down to "guest-physical range X lives at file offset Y". This class holds that
map and serves reads straight from the page cache, without copying more than
the caller asked for (``view`` copies nothing at all).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmsentinel.errors import MemoryError_, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory, PhysRange

_U64 = struct.Struct("<Q")


@dataclass(frozen=True, order=True)
class Segment:
    """Guest-physical ``[phys_start, phys_start + length)`` is at ``file_offset``."""

    phys_start: int
    file_offset: int
    length: int

    @property
    def phys_end(self) -> int:
        return self.phys_start + self.length


class MappedFileMemory(PhysicalMemory):
    """Physical memory read from segments of a file mapped read-only."""

    def __init__(self, path: str | Path, segments: Iterable[Segment], kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self.file_size = os.fstat(fd).st_size
            if self.file_size == 0:
                raise MemoryError_(f"{self.path} is empty")
            # PROT_READ only: the sentinel can never write guest memory, even by a bug.
            self._mm = mmap.mmap(fd, self.file_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        segs = sorted(s for s in segments if s.length > 0)
        for seg in segs:
            if seg.file_offset < 0 or seg.file_offset + seg.length > self.file_size:
                self._mm.close()
                raise MemoryError_(f"{self.path}: segment at {seg.phys_start:#x} runs past the end of the file")
        for a, b in itertools.pairwise(segs):
            if b.phys_start < a.phys_end:
                self._mm.close()
                raise MemoryError_(f"{self.path}: physical segments overlap at {b.phys_start:#x}")
        self.segments = segs
        self._starts = [s.phys_start for s in segs]
        # RAM is mostly one big segment: remember the last one hit (start, end, file delta)
        self._hot = (segs[0].phys_start, segs[0].phys_end, segs[0].file_offset - segs[0].phys_start) if segs else (0, 0, 0)

    def _find(self, address: int) -> Segment | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            seg = self.segments[i]
            if address < seg.phys_end:
                return seg
        return None

    def view(self, address: int, length: int) -> memoryview:
        """A zero-copy view of ``length`` bytes inside one segment."""
        seg = self._find(address)
        if seg is None or address + length > seg.phys_end or length < 0:
            raise UnmappedPhysicalAddress(address, length, str(self.path))
        off = seg.file_offset + (address - seg.phys_start)
        return memoryview(self._mm)[off : off + length]

    def read(self, address: int, length: int) -> bytes:
        if length < 0 or address < 0:
            raise UnmappedPhysicalAddress(address, length, str(self.path))
        start, end, delta = self._hot
        if start <= address and address + length <= end:
            return self._mm[address + delta : address + delta + length]
        seg = self._find(address)
        if seg is None:
            raise UnmappedPhysicalAddress(address, length, str(self.path))
        off = seg.file_offset + (address - seg.phys_start)
        if address + length <= seg.phys_end:
            return self._mm[off : off + length]
        # Crosses into the next segment: allowed only when physically contiguous.
        parts = []
        cursor, remaining = address, length
        while remaining:
            seg = self._find(cursor)
            if seg is None:
                raise UnmappedPhysicalAddress(address, length, str(self.path))
            take = min(remaining, seg.phys_end - cursor)
            off = seg.file_offset + (cursor - seg.phys_start)
            parts.append(self._mm[off : off + take])
            cursor += take
            remaining -= take
        return b"".join(parts)

    def read_u64(self, address: int) -> int:
        start, end, delta = self._hot
        if not (start <= address and address + 8 <= end):
            seg = self._find(address)
            if seg is None or address + 8 > seg.phys_end:
                raise UnmappedPhysicalAddress(address, 8, str(self.path))
            start, end, delta = self._hot = (seg.phys_start, seg.phys_end, seg.file_offset - seg.phys_start)
        return int(_U64.unpack_from(self._mm, address + delta)[0])

    def scan(self, pattern: bytes, chunk: int = 0) -> Iterator[int]:
        """Search the mapped file directly: no copies, C speed."""
        if not pattern:
            return
        for seg in self.segments:
            end = seg.file_offset + seg.length
            hit = self._mm.find(pattern, seg.file_offset, end)
            while hit >= 0:
                yield seg.phys_start + hit - seg.file_offset
                hit = self._mm.find(pattern, hit + 1, end)

    def ranges(self) -> list[PhysRange]:
        merged: list[PhysRange] = []
        for seg in self.segments:
            if merged and merged[-1].end == seg.phys_start:
                merged[-1] = PhysRange(merged[-1].start, merged[-1].length + seg.length)
            else:
                merged.append(PhysRange(seg.phys_start, seg.length))
        return merged

    def is_valid(self, address: int, length: int = 1) -> bool:
        seg = self._find(address)
        return seg is not None and address + length <= seg.phys_end

    def close(self) -> None:
        if not self._mm.closed:
            # A caller may still hold a view(); the map then goes when they drop it.
            with contextlib.suppress(BufferError):
                self._mm.close()

    def describe(self) -> str:
        return f"{self.kind} {self.path}"
