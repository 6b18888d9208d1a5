"""QEMU guest RAM shared as a file (``memory-backend-file,share=on``).

The file holds RAM in order, but a PC guest does not see it 1:1: above a
threshold QEMU leaves a hole below 4 GiB for PCI and places the rest of RAM
at 4 GiB. The layout comes from QEMU itself (``info mtree -f`` over QMP) when a
QMP socket is known, otherwise from the PC machine's rule:

* ``pc`` (i440fx): RAM ≥ 3.5 GiB keeps 3 GiB low, the rest above 4 GiB;
* ``q35``: RAM ≥ 2.75 GiB keeps 2 GiB low, the rest above 4 GiB.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vmsentinel.memory.mapped_file import MappedFileMemory, Segment

GiB = 1 << 30
FOUR_GIB = 4 * GiB

#: the flat view's lines: "  0000000000000000-000000000009ffff (prio 0, ram): ram0 @0000000000000000 KVM"
_MTREE_LINE = re.compile(
    r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (ram|rom|ramd|romd)\): (\S+)(?: @([0-9a-f]+))?", re.MULTILINE
)


def pc_layout(
    ram_size: int, machine: str = "pc", max_ram_below_4g: int | None = None, gigabyte_align: bool = True
) -> list[Segment]:
    """The PC machine's split of RAM around the PCI hole below 4 GiB, as QEMU 7.2 computes it
    (``hw/i386/pc_piix.c``, ``pc_q35.c``); ``max_ram_below_4g`` is the machine option of that name,
    ``gigabyte_align`` is false for i440fx machine types before 2.0 (3.5 GiB stay low)."""
    if machine.startswith("q35"):
        low = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
        if max_ram_below_4g and low > max_ram_below_4g:
            low = max_ram_below_4g
    else:
        low = max_ram_below_4g or 0xE0000000
        if ram_size >= low and gigabyte_align:
            low = min(low, 0xC0000000)
    low = min(low, ram_size)
    segments = [Segment(0, 0, low)]
    if ram_size > low:
        segments.append(Segment(FOUR_GIB, low, ram_size - low))
    return segments


def mtree_regions(mtree_text: str) -> dict[str, list[Segment]]:
    """Every RAM (and ROM) region of the system address space in ``info mtree -f`` output, by name:
    where each piece sits in guest-physical space and at which offset of its region."""
    flat = _system_flatview(mtree_text.replace("\r\n", "\n"))
    by_name: dict[str, list[Segment]] = {}
    for m in _MTREE_LINE.finditer(flat):
        start, end, _kind, name, offset = m.groups()
        seg = Segment(int(start, 16), int(offset or "0", 16), int(end, 16) - int(start, 16) + 1)
        by_name.setdefault(name, []).append(seg)
    return {name: sorted(segs) for name, segs in by_name.items()}


def mtree_layout(mtree_text: str, region_name: str | None = None) -> list[Segment]:
    """RAM segments of the system address space from ``info mtree -f`` output.

    ``region_name`` is the memory backend's id (its region's name); without it
    the region mapped most is taken as main RAM.
    """
    by_name = mtree_regions(mtree_text)
    if not by_name:
        return []
    if region_name is None or region_name not in by_name:
        region_name = max(by_name, key=lambda n: sum(s.length for s in by_name[n]))
    return by_name[region_name]


def _system_flatview(text: str) -> str:
    """The FlatView block that serves address space "memory" (the CPU's view)."""
    blocks = re.split(r"(?m)^FlatView #\d+\n", text)
    for block in blocks:
        if re.search(r'AS "memory"', block):
            return block
    return text


def open_qemu_ram(path: str | Path, segments: list[Segment] | None = None, machine: str = "pc") -> MappedFileMemory:
    """Map a QEMU RAM file with the given layout, or the PC rule for its size."""
    if segments is None:
        segments = pc_layout(os.path.getsize(path), machine)
    return MappedFileMemory(path, segments, "qemu-ram")
