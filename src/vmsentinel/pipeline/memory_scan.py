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
from vmsentinel.os.records import YaraMatch

if TYPE_CHECKING:
    from vmsentinel.arch.x86_64 import PhysicalRuns
    from vmsentinel.detect.yara_rules import YaraRules
    from vmsentinel.os.records import MemoryRegion

PAGE = 4096
CHUNK = 4 << 20
#: a match this close to a chunk's end is looked for again across the boundary
OVERLAP = 4096
UNREADABLE = (VmSentinelError, TranslationError, UnmappedPhysicalAddress)


def scan_regions(rules: YaraRules, regions: list[MemoryRegion]) -> list[YaraMatch]:
    """Every region's matches. A region laid out on exactly the physical frames of one scanned before
    in this sweep holds the same bytes, so its matches are that region's, moved: a library or
    executable mapped by hundreds of processes is scanned once, not once per process."""
    matches: list[YaraMatch] = []
    scanner = rules.scanner()  # one per sweep: making one per chunk costs more than scanning a small region
    scanned: dict[PhysicalRuns, list[tuple[str, int]]] = {}  # layout -> (rule, offset into the region)
    for region in regions:
        if region.runs is None:
            found = scan_range(rules, region.read, region.start, region.size, scanner)
        else:
            layout = region.runs(region.start, region.size)
            relative = scanned.get(layout)
            if relative is None:
                read = _reader_of(layout, region.start)
                relative = [(r, a - region.start) for r, a in scan_range(rules, read, region.start, region.size, scanner)]
                scanned[layout] = relative
            found = [(rule, region.start + offset) for rule, offset in relative]
        for rule, address in found:
            matches.append(YaraMatch(region.pid, region.name, rule, address, region.label))
    return matches


def _reader_of(layout: PhysicalRuns, start: int) -> Callable[[int, int], bytes]:
    def read(address: int, length: int) -> bytes:
        return layout.read(address - start, length)

    return read


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
