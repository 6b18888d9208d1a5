"""Stretches of guest memory worth scanning for known-bad bytes (YARA), each with
the function that reads it: a process's readable mappings through its own page
tables, the kernel's text and read-only data, and every block of a module.

The view only says *where* and *how to read*; the scan itself belongs to the
pipeline, which owns the compiled rules.

    regions = process_regions(tasks, maps, spaces) + kernel_regions(reader, kernel, modules)
"""

from __future__ import annotations

from collections.abc import Callable

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.os.linux.views.memory_maps import MapSweep
from vmsentinel.os.records import MemoryRegion, Task

#: a process or kernel region is scanned up to this many bytes (a huge mapping cannot stall a sweep)
MAX_BYTES_PER_PROCESS = 64 << 20
MAX_KERNEL_REGION = 64 << 20
#: mappings whose bytes are the kernel's, not the process's
SKIPPED_MAPPINGS = ("[vsyscall]", "[vvar]")


def process_regions(tasks: list[Task], maps: dict[int, MapSweep], spaces: dict[int, PagingAddressSpace]) -> list[MemoryRegion]:
    """The readable mappings of each process (capped per process), read through its own address space."""
    regions: list[MemoryRegion] = []
    for t in tasks:
        space = spaces.get(t.pid)
        if t.kernel_thread or space is None or t.pid not in maps:
            continue
        budget = MAX_BYTES_PER_PROCESS
        for m in maps[t.pid].maps:
            if "r" not in m.perms or m.path in SKIPPED_MAPPINGS or budget <= 0:
                continue
            size = min(m.end - m.start, budget)
            budget -= size
            regions.append(
                MemoryRegion(t.pid, t.name, m.path or "anonymous", m.start, size, space.read_present, space.physical_runs)
            )
    return regions


def kernel_regions(
    read: Callable[[int, int], bytes], kernel: list[tuple[str, int, int]], modules: list[tuple[str, list[tuple[int, int]]]]
) -> list[MemoryRegion]:
    """The core kernel's ``(label, start, size)`` regions and each module's ``(name, blocks)``."""
    regions = [MemoryRegion(None, "kernel", label, start, min(size, MAX_KERNEL_REGION), read) for label, start, size in kernel]
    for name, blocks in modules:
        regions += [
            MemoryRegion(None, name, f"module {name}", start, min(size, MAX_KERNEL_REGION), read) for start, size in blocks
        ]
    return regions
