"""Memory sources that are segments of one file, mapped read-only with mmap.

Raw images, QEMU shared RAM files, QEMU ELF cores and LiME images all come
down to "guest-physical range X lives at file offset Y". This class holds that
map and serves reads straight from the page cache, without copying more than
the caller asked for (``view`` copies nothing at all).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from vmsentinel.errors import MemoryError_, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory, PhysRange
from vmsentinel.memory.segments import Segment, SegmentMap

__all__ = ["MappedFileMemory", "Segment"]

_U64 = struct.Struct("<Q")


class MappedFileMemory(PhysicalMemory):
    """Physical memory read from segments of a file mapped read-only."""

    def __init__(self, path: str | Path, segments: Iterable[Segment], kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        fd = os.open(self.path, os.O_RDONLY)  # an OSError is the caller's to explain (qemu-pid falls back on it)
        try:
            self.file_size = os.fstat(fd).st_size
            if self.file_size == 0:
                raise MemoryError_(f"{self.path} is empty")
            # PROT_READ only: the sentinel can never write guest memory, even by a bug.
            self._mm = mmap.mmap(fd, self.file_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        try:
            self.layout = SegmentMap(segments, str(self.path))
        except MemoryError_:
            self._mm.close()
            raise
        segs = self.segments = self.layout.segments
        for seg in segs:
            if seg.file_offset < 0 or seg.file_offset + seg.length > self.file_size:
                self._mm.close()
                raise MemoryError_(f"{self.path}: segment at {seg.phys_start:#x} runs past the end of the file")
        self._find = self.layout.find
        # RAM is mostly one big segment: remember the last one hit (start, end, file delta)
        self._hot = (segs[0].phys_start, segs[0].phys_end, segs[0].file_offset - segs[0].phys_start) if segs else (0, 0, 0)

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
        return b"".join(self._mm[off : off + take] for off, take in self.layout.pieces(address, length))

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
        return self.layout.ranges()

    def is_valid(self, address: int, length: int = 1) -> bool:
        return self.layout.is_valid(address, length)

    def close(self) -> None:
        if not self._mm.closed:
            # A caller may still hold a view(); the map then goes when they drop it.
            with contextlib.suppress(BufferError):
                self._mm.close()

    def describe(self) -> str:
        return f"{self.kind} {self.path}"
