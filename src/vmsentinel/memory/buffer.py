"""An in-memory physical memory source: the fake that unit tests build
synthetic guests in (page tables, kernel structures), and a home for bytes
copied out of a guest.

    mem = BufferMemory({0: bytearray(1 << 20), 1 << 32: bytearray(1 << 16)})
    mem.write(0x1000, b"hello")
"""

from __future__ import annotations

import bisect
import struct

from vmsentinel.errors import UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory, PhysRange


class BufferMemory(PhysicalMemory):
    """Physical memory made of byte buffers at chosen physical addresses."""

    kind = "buffer"

    def __init__(self, ranges: dict[int, bytearray]) -> None:
        self._starts = sorted(ranges)
        self._bufs = [ranges[s] for s in self._starts]
        for i in range(1, len(self._starts)):
            if self._starts[i] < self._starts[i - 1] + len(self._bufs[i - 1]):
                raise ValueError("overlapping ranges")

    def _locate(self, address: int, length: int) -> tuple[bytearray, int]:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or length < 0:
            raise UnmappedPhysicalAddress(address, length, "buffer")
        off = address - self._starts[i]
        if off + length > len(self._bufs[i]):
            raise UnmappedPhysicalAddress(address, length, "buffer")
        return self._bufs[i], off

    def read(self, address: int, length: int) -> bytes:
        buf, off = self._locate(address, length)
        return bytes(buf[off : off + length])

    def read_u64(self, address: int) -> int:
        buf, off = self._locate(address, 8)
        return int(struct.unpack_from("<Q", buf, off)[0])

    def write(self, address: int, data: bytes) -> None:
        """Tests build guests with this; real sources have no write."""
        buf, off = self._locate(address, len(data))
        buf[off : off + len(data)] = data

    def write_u64(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<Q", value))

    def ranges(self) -> list[PhysRange]:
        return [PhysRange(s, len(b)) for s, b in zip(self._starts, self._bufs, strict=True)]
