"""Find the Linux kernel banner (``linux_banner``, what ``/proc/version`` shows)
by scanning guest-physical memory. The banner names the exact kernel build,
which is what a profile is keyed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmsentinel.memory.base import PhysicalMemory

_PREFIX = b"Linux version "
#: "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc ...) #1 SMP ... \n"
_BANNER = re.compile(rb"Linux version (\S{1,64}) \([^\n]{1,400}\) #[^\n]{1,200}\n")
MAX_CANDIDATES = 4096
BANNER_MAX = 512


@dataclass(frozen=True)
class Banner:
    text: str
    release: str
    physical_addresses: tuple[int, ...]


def find_banners(mem: PhysicalMemory, limit: int = MAX_CANDIDATES) -> list[Banner]:
    """Every distinct well-formed banner, the most often seen first."""
    seen: dict[bytes, list[int]] = {}
    for count, addr in enumerate(mem.scan(_PREFIX)):
        if count >= limit:
            break
        data = _read_upto(mem, addr, BANNER_MAX)
        m = _BANNER.match(data)
        if m:
            seen.setdefault(m.group(0), []).append(addr)
    # linux_banner itself is a C string "...\\n\\0"; copies in logs or page cache rank after it.
    ranked = sorted(seen, key=lambda t: (not _is_c_string(mem, seen[t]), -len(seen[t])))
    return [
        Banner(
            text.decode(errors="replace").rstrip("\n"),
            _BANNER.match(text).group(1).decode(errors="replace"),  # type: ignore[union-attr]
            tuple(seen[text]),
        )
        for text in ranked
    ]


def _is_c_string(mem: PhysicalMemory, addrs: list[int]) -> bool:
    return any(_read_upto(mem, a, BANNER_MAX).split(b"\n", 1)[1][:1] == b"\0" for a in addrs)


def _read_upto(mem: PhysicalMemory, addr: int, length: int) -> bytes:
    """Up to ``length`` bytes: a banner may sit at the very end of a RAM range."""
    for rng in mem.ranges():
        if rng.start <= addr < rng.end:
            return mem.read(addr, min(length, rng.end - addr))
    return b""


def find_banner(mem: PhysicalMemory) -> Banner | None:
    banners = find_banners(mem)
    return banners[0] if banners else None
