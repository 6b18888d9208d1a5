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

from blake3 import blake3

from vmsentinel.arch.x86_64 import PAGE_SIZE
from vmsentinel.errors import ReadError
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.symbols import TextRange
from vmsentinel.os.records import CodeRegion, CodeSweep, PageBytes

MAX_TEXT = 64 << 20
#: kernel text is hashed whole this many bytes at a time
CONTENT_CHUNK = 1 << 20


#: (owner, start) of a region -> that region as a baseline saw it
Reference = Mapping[tuple[str, int], CodeRegion]


def _page_digest(data: bytes | memoryview) -> str:
    return blake3(data).hexdigest(length=16)


def _content(reader: KernelReader, start: int, size: int) -> str:
    """BLAKE3 of ``size`` bytes at ``start``, a chunk at a time and hashed in place where the memory
    source lends views (no copy); "" when some page cannot be read (the caller then goes page by
    page, to say which)."""
    whole = blake3()
    try:
        for off in range(0, size, CONTENT_CHUNK):
            for piece in reader.pieces(start + off, min(CONTENT_CHUNK, size - off)):
                whole.update(piece)
    except ReadError:
        return ""
    return whole.hexdigest(length=32)


def hash_region(
    reader: KernelReader,
    owner: str,
    start: int,
    size: int,
    keep: PageBytes | None = None,
    reference: CodeRegion | None = None,
    previous: tuple[str, ...] | None = None,
    written: Collection[int] | None = None,
) -> CodeRegion:
    """Hash one region page by page; into ``keep`` go the bytes of every page (no ``reference``) or of
    the pages whose hash differs from ``reference``'s.

    Without host tracking (``written`` is None) the region is hashed whole first, a chunk at a time:
    when that equals the reference's content, every page is the reference's and no page is hashed
    (the common case, at memory speed); otherwise its pages are read and hashed one by one. With
    ``previous`` (this region's page hashes at the last sweep) and ``written`` (the page addresses
    written since then, from the host), a page not written keeps its previous hash unread, if that
    hash is the reference's (a page that differs is read again: its bytes explain the difference).
    The region's digest is the hash of its page hashes, the same whichever way they were found."""
    size = min(size, MAX_TEXT)
    ref = reference.page_hashes if reference is not None else None
    if keep is not None and ref is None and written is None:
        whole = _whole_region(reader, owner, start, size, keep)
        if whole is not None:
            return whole
    content = ""
    if written is None:
        content = _content(reader, start, size)
        if content and reference is not None and reference.content == content and reference.size == size:
            return CodeRegion(owner, start, size, reference.digest, reference.page_hashes, (), content)
    pages: list[str] = []
    unreadable: list[int] = []
    for off in range(0, size, PAGE_SIZE):
        take = min(PAGE_SIZE, size - off)
        index = len(pages)
        if (
            written is not None
            and previous is not None
            and ref is not None
            and index < len(previous)
            and index < len(ref)
            and previous[index]
            and previous[index] == ref[index]
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
        digest = _page_digest(data)
        pages.append(digest)
        if keep is not None and (ref is None or index >= len(ref) or ref[index] != digest):
            keep[start + off] = data
    digest = blake3("\n".join(pages).encode()).hexdigest(length=32)
    hashes = tuple(pages)
    if hashes == ref:
        hashes = ref  # the baseline's tuple, shared rather than held twice
    return CodeRegion(owner, start, size, digest, hashes, tuple(unreadable), content)


def _whole_region(reader: KernelReader, owner: str, start: int, size: int, keep: PageBytes) -> CodeRegion | None:
    """Every page of a region read as one buffer, hashed from it and kept as it (a baseline's read);
    None when some page cannot be read (the caller then goes page by page, to say which)."""
    try:
        blob = reader.read(start, size)
    except ReadError:
        return None
    if len(blob) != size:
        return None
    view = memoryview(blob)
    pages = [_page_digest(view[off : off + PAGE_SIZE]) for off in range(0, size, PAGE_SIZE)]
    keep.add_region(start, blob)
    digest = blake3("\n".join(pages).encode()).hexdigest(length=32)
    return CodeRegion(owner, start, size, digest, tuple(pages), (), blake3(blob).hexdigest(length=32))


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
            region = hash_region(
                reader, rng.owner, rng.start, size, sweep.page_bytes, reference.get(key) if reference else None, old, written
            )
        if region.unreadable_pages:
            sweep.problems.append(f"{rng.owner}: {len(region.unreadable_pages)} text pages unreadable")
        sweep.regions.append(region)
    return sweep
