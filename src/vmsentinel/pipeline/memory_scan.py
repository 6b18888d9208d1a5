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
CHUNK = 1 << 20
#: a match this close to a chunk's end is looked for again across the boundary
OVERLAP = 4096


def scan_regions(rules: YaraRules, regions: list[MemoryRegion]) -> list[YaraMatch]:
    matches: list[YaraMatch] = []
    for region in regions:
        for rule, address in scan_range(rules, region.read, region.start, region.size):
            matches.append(YaraMatch(region.pid, region.name, rule, address, region.label))
    return matches


def scan_range(rules: YaraRules, read: Callable[[int, int], bytes], start: int, size: int) -> list[tuple[str, int]]:
    """(rule, address of its first match) for each rule matching ``[start, start + size)``, read in
    chunks that overlap a little so that a string across a chunk boundary is still seen."""
    found: dict[str, int] = {}
    end = start + size
    for chunk in range(start, end, CHUNK):
        data = bytearray()
        for page in range(chunk, min(chunk + CHUNK + OVERLAP, end), PAGE):
            try:
                data += read(page, min(PAGE, end - page))
            except (VmSentinelError, TranslationError, UnmappedPhysicalAddress):
                data += bytes(min(PAGE, end - page))
        for rule, offset in rules.scan(bytes(data)):
            found.setdefault(rule, chunk + offset)
    return sorted(found.items(), key=lambda item: item[1])
