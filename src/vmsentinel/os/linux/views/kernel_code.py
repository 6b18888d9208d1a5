"""Kernel code as it is in memory: core kernel text and each module's text,
hashed per 4 KiB page with BLAKE3 (a keyed-collision-resistant hash: a guest
cannot forge a page that hashes like the original).

Pages the kernel patches itself (jump labels, alternatives, ftrace call sites)
change legitimately; the detector (later) learns those sites from the kernel's
own tables instead of ignoring whole regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blake3 import blake3

from vmsentinel.arch.x86_64 import PAGE_SIZE
from vmsentinel.errors import ReadError
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.symbols import TextRange
from vmsentinel.os.linux.views.declare import column

MAX_TEXT = 64 << 20


@dataclass(frozen=True)
class CodeRegion:
    owner: str = column("OWNER")
    start: int = column("START", hex=True)
    size: int = column("SIZE")
    digest: str = column("BLAKE3")
    page_hashes: tuple[str, ...] = column("PAGES", table=False)
    unreadable_pages: tuple[int, ...] = column("UNREADABLE", table=False)


@dataclass
class CodeSweep:
    regions: list[CodeRegion] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def hash_region(reader: KernelReader, owner: str, start: int, size: int) -> CodeRegion:
    size = min(size, MAX_TEXT)
    whole = blake3()
    pages: list[str] = []
    unreadable: list[int] = []
    for off in range(0, size, PAGE_SIZE):
        take = min(PAGE_SIZE, size - off)
        try:
            data = reader.read(start + off, take)
        except ReadError:
            unreadable.append(start + off)
            pages.append("")
            continue
        whole.update(data)
        pages.append(blake3(data).hexdigest(length=16))
    return CodeRegion(owner, start, size, whole.hexdigest(length=32), tuple(pages), tuple(unreadable))


def read_kernel_code(reader: KernelReader, core: TextRange, modules: list[TextRange]) -> CodeSweep:
    sweep = CodeSweep()
    for rng in [core, *modules]:
        region = hash_region(reader, rng.owner, rng.start, rng.end - rng.start)
        if region.unreadable_pages:
            sweep.problems.append(f"{rng.owner}: {len(region.unreadable_pages)} text pages unreadable")
        sweep.regions.append(region)
    return sweep
