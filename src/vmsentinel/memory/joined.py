"""Several memory sources that together make one guest's physical memory: a QEMU whose NUMA nodes
live in different files (each mapped on its own), or whose RAM is partly a shared file and partly
anonymous. Each part serves its own ranges; a read that runs from one part into the next (two
nodes side by side in guest-physical space) is joined::

    ram = JoinedMemory([node0, node1], "map_files")
    ram.read(node1.ranges()[0].start - 8, 16)    # the last 8 bytes of node 0, the first 8 of node 1
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Iterable, Iterator

from vmsentinel.errors import MemoryError_, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory, PhysRange


class JoinedMemory(PhysicalMemory):
    """The union of sources whose physical ranges do not overlap."""

    def __init__(self, parts: Iterable[PhysicalMemory], kind: str) -> None:
        self.parts = list(parts)
        self.kind = kind
        owned = sorted((r.start, r.end, i) for i, part in enumerate(self.parts) for r in part.ranges())
        for (_, end, _), (start, _, _) in itertools.pairwise(owned):
            if start < end:
                raise MemoryError_(f"{kind}: two sources both hold physical address {start:#x}")
        self._owned = owned
        self._starts = [start for start, _, _ in owned]

    def _part(self, address: int) -> tuple[PhysicalMemory, int] | None:
        """The part holding ``address`` and where its range ends."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            _, end, which = self._owned[i]
            if address < end:
                return self.parts[which], end
        return None

    def read(self, address: int, length: int) -> bytes:
        hit = self._part(address)
        if hit is None or length < 0:
            raise UnmappedPhysicalAddress(address, length, self.kind)
        part, end = hit
        if address + length <= end:
            return part.read(address, length)
        pieces, cursor, remaining = [], address, length
        while remaining:
            hit = self._part(cursor)
            if hit is None:
                raise UnmappedPhysicalAddress(address, length, self.kind)
            part, end = hit
            take = min(remaining, end - cursor)
            pieces.append(part.read(cursor, take))
            cursor += take
            remaining -= take
        return b"".join(pieces)

    def read_u64(self, address: int) -> int:
        hit = self._part(address)
        if hit is not None and address + 8 <= hit[1]:
            return hit[0].read_u64(address)
        return int.from_bytes(self.read(address, 8), "little")

    def scan(self, pattern: bytes, chunk: int = 1 << 22) -> Iterator[int]:
        """Each part scans its own memory (at its own speed), in physical order, and a match that
        straddles two parts side by side is found in a small window across their border."""
        sequence = [i for _, _, i in self._owned]
        order = list(dict.fromkeys(sequence))  # the parts by their first address
        runs = [i for n, i in enumerate(sequence) if n == 0 or sequence[n - 1] != i]
        if len(runs) != len(order):  # a part's ranges interleave with another's: find all, then sort
            found = {hit for part in self.parts for hit in part.scan(pattern, chunk)}
            yield from sorted(found | set(self._border_hits(pattern)))
            return
        borders = self._border_hits(pattern)
        for i in order:
            yield from self.parts[i].scan(pattern, chunk)
            last = self.parts[i].ranges()[-1].end
            yield from (hit for hit in borders if hit < last and hit + len(pattern) > last)

    def _border_hits(self, pattern: bytes) -> list[int]:
        """Matches that start in one range and end in the next one, which touches it."""
        hits = []
        for (start, end, _), (next_start, next_end, _) in itertools.pairwise(self._owned):
            if next_start != end or len(pattern) < 2:
                continue
            lo, hi = max(end - len(pattern) + 1, start), min(end + len(pattern) - 1, next_end)
            window = self.read(lo, hi - lo)
            hit = window.find(pattern)
            while hit >= 0:
                if lo + hit < end < lo + hit + len(pattern):
                    hits.append(lo + hit)
                hit = window.find(pattern, hit + 1)
        return hits

    def ranges(self) -> list[PhysRange]:
        merged: list[PhysRange] = []
        for start, end, _ in self._owned:
            if merged and merged[-1].end == start:
                merged[-1] = PhysRange(merged[-1].start, end - merged[-1].start)
            else:
                merged.append(PhysRange(start, end - start))
        return merged

    def is_valid(self, address: int, length: int = 1) -> bool:
        cursor, stop = address, address + max(length, 1)
        while cursor < stop:
            hit = self._part(cursor)
            if hit is None:
                return False
            cursor = hit[1]
        return True

    def new_sweep(self) -> None:
        for part in self.parts:
            part.new_sweep()

    def close(self) -> None:
        for part in self.parts:
            with contextlib.suppress(OSError):
                part.close()

    def describe(self) -> str:
        return f"{self.kind} ({', '.join(part.describe() for part in self.parts)})"
