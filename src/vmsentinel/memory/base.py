"""The one interface every guest-physical memory source offers.

A source reads ``length`` bytes at a guest-physical address, lists the valid
physical ranges, and closes. A read of a hole or past the end raises
:class:`~vmsentinel.errors.UnmappedPhysicalAddress`: a source never invents bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True, order=True)
class PhysRange:
    """A run of valid guest-physical addresses ``[start, start + length)``."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


class PhysicalMemory(ABC):
    """Guest-physical memory, read-only."""

    #: short name of the source kind, e.g. ``qemu-ram``, ``raw``, ``elf-core``, ``lime``
    kind: str = "memory"

    @abstractmethod
    def read(self, address: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``address``, or UnmappedPhysicalAddress."""

    @abstractmethod
    def ranges(self) -> list[PhysRange]:
        """The valid physical ranges, sorted, not overlapping."""

    def read_u64(self, address: int) -> int:
        """One little-endian 64-bit word (page-table entries); sources override for speed."""
        return int.from_bytes(self.read(address, 8), "little")

    def scan(self, pattern: bytes, chunk: int = 1 << 22) -> Iterator[int]:
        """Physical addresses where ``pattern`` occurs, in order (matches may span chunks)."""
        overlap = len(pattern) - 1
        for rng in self.ranges():
            pos = rng.start
            while pos < rng.end:
                take = min(chunk + overlap, rng.end - pos)
                data = self.read(pos, take)
                hit = data.find(pattern)
                while hit >= 0 and hit < chunk:
                    yield pos + hit
                    hit = data.find(pattern, hit + 1)
                pos += chunk

    def size(self) -> int:
        """Bytes of RAM backed by this source (holes excluded)."""
        return sum(r.length for r in self.ranges())

    def is_valid(self, address: int, length: int = 1) -> bool:
        return any(r.start <= address and address + length <= r.end for r in self.ranges())

    def new_sweep(self) -> None:  # noqa: B027 - optional hook
        """A new look at the guest begins: forget anything cached of a running guest's memory, and
        raise if the source is gone (a process that exited)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the source (unmap files)."""

    def describe(self) -> str:
        return self.kind

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
