"""The executable file-backed pages of a process, hashed as they are in memory.

What a process runs is what its executable mappings hold, whatever its files
on disk say: each present page of a mapping with ``x`` rights that comes from a
file is hashed and tagged with the file's path and the file offset it maps, so
it can be compared with the page hashes of a signed allowlist. Pages shared
between processes (the same physical page) are hashed once per sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.errors import TranslationError, UnmappedPhysicalAddress
from vmsentinel.os.linux.views.memory_maps import MapEntry

PAGE = 4096
#: pages looked at per process (64 MiB of code); more is cut and said so
MAX_PAGES_PER_PROCESS = 16384


@dataclass(frozen=True)
class ExecPage:
    path: str
    file_offset: int
    address: int
    digest: str


def exec_pages(
    space: PagingAddressSpace,
    maps: list[MapEntry],
    hasher: Callable[[bytes], str],
    cache: dict[int, str],
    problems: list[str],
) -> list[ExecPage]:
    """Hash every present page of the file-backed executable mappings (``cache``: physical page -> hash)."""
    pages: list[ExecPage] = []
    budget = MAX_PAGES_PER_PROCESS
    for m in maps:
        if "x" not in m.perms or not m.path.startswith("/"):
            continue  # anonymous code is another detector's business; [vdso] is the kernel's
        for address in range(m.start, m.end, PAGE):
            if budget <= 0:
                problems.append(f"more than {MAX_PAGES_PER_PROCESS} code pages: the rest not checked")
                return pages
            budget -= 1
            try:
                phys = space.translate(address) & ~(PAGE - 1)
                digest = cache.get(phys)
                if digest is None:
                    digest = cache[phys] = hasher(space.phys.read(phys, PAGE))
            except (TranslationError, UnmappedPhysicalAddress):
                continue  # not present (never touched or paged out): nothing runs from it now
            pages.append(ExecPage(m.path, m.offset + (address - m.start), address, digest))
    return pages
