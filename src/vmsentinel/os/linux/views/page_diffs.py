"""Code pages of one file that differ between the processes that map it (malfind's patched code).

Every process that maps a file's page for execution normally maps the very same physical frame: the
file's page in the page cache. A process that wrote into its own private copy of that page (made its
text writable and patched it, or had it patched through ``ptrace``/``/proc/PID/mem``) maps a frame of
its own, an anonymous copy-on-write page. So pages are grouped by (file, file offset); only where the
processes of a group map more than one frame are the frames read and their bytes compared, and a
group whose bytes differ is a difference. The file is named by device and inode, so two files that
share a path over time (a replaced binary) are never compared. Where the kernel's ``struct page``s
can be read, each frame is also told apart as the file's own page (page cache) or a private,
anonymous copy: the copies in the page cache are what the file holds, the private ones that differ
from them were written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.errors import ReadError, TranslationError, UnmappedPhysicalAddress
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.views.memory_maps import MapEntry

PAGE = 4096
#: code pages looked at per process (64 MiB), as for the allowlist's page hashes
MAX_PAGES_PER_PROCESS = 16384
#: frames read (and compared) per sweep at most: 32 MiB
MAX_FRAMES = 8192
#: bytes kept from where a copy first differs, to show
CONTEXT = 16


@dataclass(frozen=True)
class PageCopy:
    """One content of a code page, and who maps it."""

    digest: str
    pids: tuple[int, ...]
    addresses: tuple[int, ...]  # where each of ``pids`` maps it (same order)
    frames: tuple[int, ...]  # the physical frames that hold it
    #: held on private (anonymous, copy-on-write) frames; False: the file's own page; None: not known
    private: bool | None = None
    #: against the most shared copy: first differing byte in the page (-1: none), bytes that differ,
    #: and the bytes from the first difference on
    first_difference: int = -1
    bytes_changed: int = 0
    observed: bytes = b""


@dataclass(frozen=True)
class CodePageDiff:
    path: str
    dev: str
    inode: int
    file_offset: int
    #: the contents, the most shared first
    copies: tuple[PageCopy, ...]
    #: the most shared copy's bytes from the first difference of the next copy on
    expected: bytes = b""


@dataclass
class PageDiffSweep:
    diffs: list[CodePageDiff] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: (file, offset) pages mapped by more than one process, and frames read to compare them
    shared_pages: int = 0
    frames_read: int = 0


_FileKey = tuple[str, int, int]  # dev, inode, file offset
_RunKey = tuple[str, int, int, int, int]  # dev, inode, file offset, physical address, size


#: whether the frame at a physical address is an anonymous page (None: not known)
FrameKind = Callable[[int], "bool | None"]


class FrameKinds:
    """Tells a file's page-cache frame from an anonymous copy by its ``struct page`` (``mapping``'s low bit
    is ``PAGE_MAPPING_ANON``; a tail page of a large folio answers for its head)."""

    def __init__(self, reader: KernelReader) -> None:
        self.r = reader
        self.base = reader.location.vmemmap_base
        self.size = reader.size("page")
        self.mapping = reader.off("page", "mapping")
        self.head = reader.off("page", "compound_head") if reader.has("page", "compound_head") else None

    def anonymous(self, paddr: int) -> bool | None:
        if self.base is None:
            return None
        page = self.base + (paddr >> 12) * self.size
        try:
            if self.head is not None:
                head = self.r.u64(page + self.head)
                if head & 1 and self.r.is_kernel_pointer(head - 1):
                    page = head - 1
            return bool(self.r.u64(page + self.mapping) & 1)
        except ReadError:
            return None


def _private(frames: list[int], anonymous: FrameKind | None) -> bool | None:
    if anonymous is None:
        return None
    kinds = {anonymous(f) for f in frames}
    return None if None in kinds else True in kinds


def code_page_diffs(
    spaces: Mapping[int, PagingAddressSpace], maps: Mapping[int, list[MapEntry]], anonymous: FrameKind | None = None
) -> PageDiffSweep:
    """Compare the present code pages of the processes in ``spaces`` (their ``maps`` say which are code
    and from which file); ``anonymous`` tells private copies from the file's own pages, when it can."""
    sweep = PageDiffSweep()
    # most processes map a file's code as the same physical runs: each distinct run is expanded into
    # pages once, and who maps it is kept with the run (a private page splits a run, and shows)
    users: dict[_RunKey, list[tuple[int, int]]] = {}  # run -> [(pid, address of the run)]
    paths: dict[tuple[str, int], str] = {}
    physical: PagingAddressSpace | None = None
    for pid, space in spaces.items():
        physical = physical or space
        budget = MAX_PAGES_PER_PROCESS
        for m in maps.get(pid, []):
            if "x" not in m.perms or not m.path.startswith("/") or not m.inode:
                continue
            paths.setdefault((m.dev, m.inode), m.path)
            try:
                runs = space.physical_runs(m.start, m.end - m.start).runs
            except (TranslationError, UnmappedPhysicalAddress) as exc:
                sweep.problems.append(f"pid {pid}: code at {m.start:#x}: {exc}")
                continue
            for offset, paddr, size in runs:
                size = min(size, budget * PAGE)
                budget -= size // PAGE
                users.setdefault((m.dev, m.inode, m.offset + offset, paddr, size), []).append((pid, m.start + offset))
                if budget <= 0:
                    break
            if budget <= 0:
                sweep.problems.append(f"pid {pid}: more than {MAX_PAGES_PER_PROCESS} code pages: the rest not compared")
                break
    if physical is None:
        return sweep
    where: dict[_FileKey, dict[int, list[tuple[_RunKey, int]]]] = {}  # page -> frame -> [(run, offset in it)]
    for run in users:
        dev, inode, file_offset, paddr, size = run
        for k in range(0, size, PAGE):
            where.setdefault((dev, inode, file_offset + k), {}).setdefault(paddr + k, []).append((run, k))
    contents: dict[int, bytes | None] = {}
    for (dev, inode, offset), frames in where.items():
        if sum(len(users[run]) for held in frames.values() for run, _ in held) > 1:
            sweep.shared_pages += 1
        if len(frames) < 2:
            continue  # one frame for everyone: the page cache's
        if sweep.frames_read + len(frames) > MAX_FRAMES:
            sweep.problems.append(f"more than {MAX_FRAMES} code frames to compare: the rest not compared")
            break
        mapped = {frame: [(pid, at + k) for run, k in held for pid, at in users[run]] for frame, held in frames.items()}
        diff = _compare(paths[(dev, inode)], dev, inode, offset, mapped, contents, physical, anonymous)
        sweep.frames_read = len(contents)
        if diff is not None:
            sweep.diffs.append(diff)
    return sweep


def _compare(
    path: str,
    dev: str,
    inode: int,
    offset: int,
    frames: dict[int, list[tuple[int, int]]],
    contents: dict[int, bytes | None],
    space: PagingAddressSpace,
    anonymous: FrameKind | None,
) -> CodePageDiff | None:
    by_content: dict[bytes, list[int]] = {}
    for frame in frames:
        if frame not in contents:
            try:
                contents[frame] = space.phys.read(frame, PAGE)
            except UnmappedPhysicalAddress:
                contents[frame] = None  # a frame outside RAM: nothing to compare
        data = contents[frame]
        if data is not None:
            by_content.setdefault(data, []).append(frame)
    if len(by_content) < 2:
        return None
    # the file's own page first (what the file holds), then the copy most processes map
    ranked = sorted(
        by_content.items(),
        key=lambda kv: (_private(kv[1], anonymous) is True, -sum(len(frames[f]) for f in kv[1]), min(kv[1])),
    )
    common = ranked[0][0]
    copies = []
    expected = b""
    for data, held in ranked:
        users = sorted(u for f in held for u in frames[f])
        first, changed = -1, 0
        if data is not common:
            changed = sum(1 for a, b in zip(data, common, strict=True) if a != b)
            first = next(i for i, (a, b) in enumerate(zip(data, common, strict=True)) if a != b)
            expected = expected or common[first : first + CONTEXT]
        copies.append(
            PageCopy(
                hashlib.blake2b(data, digest_size=16).hexdigest(),
                tuple(p for p, _ in users),
                tuple(a for _, a in users),
                tuple(sorted(held)),
                _private(held, anonymous),
                first,
                changed,
                data[first : first + CONTEXT] if first >= 0 else b"",
            )
        )
    return CodePageDiff(path, dev, inode, offset, tuple(copies), expected)
