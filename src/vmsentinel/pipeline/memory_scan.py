"""YARA over the memory regions a snapshot lists, read in overlapping chunks.

The regions come from the OS view (where, and how to read it), the rules from
the policy; this module joins them. Pages that cannot be read are zeros: they
keep offsets right and match nothing.

    snap.yara = scan_regions(rules, snap.regions)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vmsentinel.errors import TranslationError, UnmappedPhysicalAddress, VmSentinelError
from vmsentinel.os.linux.views.memory_regions import YaraMatch

if TYPE_CHECKING:
    from vmsentinel.detect.yara_rules import YaraRules
    from vmsentinel.os.linux.views.memory_regions import MemoryRegion

PAGE = 4096
CHUNK = 4 << 20
#: a match this close to a chunk's end is looked for again across the boundary
OVERLAP = 4096
UNREADABLE = (VmSentinelError, TranslationError, UnmappedPhysicalAddress)


def scan_regions(rules: YaraRules, regions: list[MemoryRegion]) -> list[YaraMatch]:
    matches: list[YaraMatch] = []
    scanner = rules.scanner()  # one per sweep: making one per chunk costs more than scanning a small region
    for region in regions:
        for rule, address in scan_range(rules, region.read, region.start, region.size, scanner):
            matches.append(YaraMatch(region.pid, region.name, rule, address, region.label))
    return matches


def read_or_zeros(read: Callable[[int, int], bytes], start: int, length: int) -> bytes:
    """``length`` bytes at ``start``, in one read when every page is readable (contiguous memory is then
    one copy); otherwise page by page, with zeros for the pages that cannot be read."""
    try:
        data = read(start, length)
        if len(data) == length:
            return data
    except UNREADABLE:
        pass
    parts = []
    end = start + length
    page = start
    while page < end:
        take = min(PAGE - (page % PAGE), end - page)
        try:
            parts.append(read(page, take))
        except UNREADABLE:
            parts.append(bytes(take))
        page += take
    return b"".join(parts)


def scan_range(
    rules: YaraRules, read: Callable[[int, int], bytes], start: int, size: int, scanner: object | None = None
) -> list[tuple[str, int]]:
    """(rule, address of its first match) for each rule matching ``[start, start + size)``, read in
    chunks that overlap a little so that a string across a chunk boundary is still seen."""
    found: dict[str, int] = {}
    end = start + size
    for chunk in range(start, end, CHUNK):
        data = read_or_zeros(read, chunk, min(chunk + CHUNK + OVERLAP, end) - chunk)
        for rule, offset in rules.scan(data, scanner):
            found.setdefault(rule, chunk + offset)
    return sorted(found.items(), key=lambda item: item[1])
