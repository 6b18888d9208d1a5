"""Kernel code as it is in memory: core kernel text and each module's text,
hashed per 4 KiB page with BLAKE3 (a keyed-collision-resistant hash: a guest
cannot forge a page that hashes like the original).

Pages the kernel patches itself (jump labels, alternatives, ftrace call sites)
change legitimately; the detector learns those sites from the kernel's own
tables (``patch_sites``) instead of ignoring whole regions. To explain a change
it needs the page's bytes, so the sweep keeps them: every page for a sweep that
may become a baseline (no ``reference``), else only the pages whose hash is not
the reference's (a few, or none), read once for hashing and kept.

    code = read_kernel_code(reader, core, modules)                      # all bytes kept
    code = read_kernel_code(reader, core, modules, reference=hashes)    # changed pages only
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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
    #: page address -> its bytes as read for hashing (all pages, or those unlike the reference's)
    page_bytes: dict[int, bytes] = field(default_factory=dict, repr=False)


#: (owner, start) of a region -> its page hashes, as a baseline saw them
Reference = Mapping[tuple[str, int], tuple[str, ...]]


def hash_region(
    reader: KernelReader,
    owner: str,
    start: int,
    size: int,
    keep: dict[int, bytes] | None = None,
    reference: tuple[str, ...] | None = None,
    previous: tuple[str, ...] | None = None,
    written: Collection[int] | None = None,
) -> CodeRegion:
    """Hash one region page by page; into ``keep`` go the bytes of every page (no ``reference``) or of
    the pages whose hash differs from ``reference``'s. With ``previous`` (this region's page hashes
    at the last sweep) and ``written`` (the page addresses written since then, from the host), a
    page not written keeps its previous hash unread, if that hash is the reference's (a page that
    differs is read again: its bytes explain the difference). The region's digest is the hash of its
    page hashes, the same whether pages were read or not."""
    size = min(size, MAX_TEXT)
    pages: list[str] = []
    unreadable: list[int] = []
    for off in range(0, size, PAGE_SIZE):
        take = min(PAGE_SIZE, size - off)
        index = len(pages)
        if (
            written is not None
            and previous is not None
            and reference is not None
            and index < len(previous)
            and index < len(reference)
            and previous[index]
            and previous[index] == reference[index]
            and start + off not in written
        ):
            pages.append(previous[index])
            continue
        try:
            data = reader.read(start + off, take)
        except ReadError:
            unreadable.append(start + off)
            pages.append("")
            continue
        digest = blake3(data).hexdigest(length=16)
        pages.append(digest)
        if keep is not None and (reference is None or index >= len(reference) or reference[index] != digest):
            keep[start + off] = data
    whole = blake3("\n".join(pages).encode()).hexdigest(length=32)
    return CodeRegion(owner, start, size, whole, tuple(pages), tuple(unreadable))


def text_chunks(ranges: list[TextRange]) -> list[tuple[int, int]]:
    """(address, length) of each piece :func:`read_kernel_code` hashes: a page's worth from each region's
    start, at most MAX_TEXT of a region (a module's size comes from the guest)."""
    chunks: list[tuple[int, int]] = []
    for rng in ranges:
        size = min(rng.end - rng.start, MAX_TEXT)
        chunks.extend((rng.start + off, min(PAGE_SIZE, size - off)) for off in range(0, size, PAGE_SIZE))
    return chunks


def read_kernel_code(
    reader: KernelReader,
    core: TextRange,
    modules: list[TextRange],
    reference: Reference | None = None,
    previous: CodeSweep | None = None,
    written: Collection[int] | None = None,
) -> CodeSweep:
    """Hash core kernel and module text; with ``previous`` (the last sweep's) and ``written`` (the virtual
    page addresses written since, from host dirty tracking), only written pages are read."""
    sweep = CodeSweep()
    before = {(r.owner, r.start, r.size): r.page_hashes for r in previous.regions} if previous is not None else {}
    for rng in [core, *modules]:
        key = (rng.owner, rng.start)
        size = min(rng.end - rng.start, MAX_TEXT)
        old = before.get((rng.owner, rng.start, size))
        if reference is not None and key not in reference:  # code the reference never saw: no bytes to explain
            region = hash_region(reader, rng.owner, rng.start, size)
        else:
            ref = reference[key] if reference else None
            region = hash_region(reader, rng.owner, rng.start, size, sweep.page_bytes, ref, old, written)
        if region.unreadable_pages:
            sweep.problems.append(f"{rng.owner}: {len(region.unreadable_pages)} text pages unreadable")
        sweep.regions.append(region)
    return sweep
