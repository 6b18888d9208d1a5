"""Core-text masks shared by the guests of one kernel build: the first guest of a build decodes its text
(seconds of CPU) and the mask it made lets every later guest of the build take its pages' canonical
digests by one masking pass (tens of ms). The mask is as long as the text (~16 MiB), so it is kept in a
file under the cache folder and mapped read-only: the page cache holds one copy for every worker process
of the host, none of it in any process's own memory, and a worker's first guest of a build that another
worker (or an earlier watch) decoded needs no decoding at all.

    shared = build_masks.shared(key, len(text))      # SharedMask or None
    build_masks.keep(key, mask, digests)             # after decoding a whole text
"""

from __future__ import annotations

import mmap
import re
import sys
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

from vmsentinel.paths import cache_dir, write_atomic

PAGE = 4096
#: builds whose text mask a process keeps mapped for the next guest of the build
MAX_SHARED_MASKS = 2
#: where masks are kept, under the cache folder
CACHE_FOLDER = "text-masks"
#: a page digest as the inventory writes it (16 hex characters)
DIGEST_CHARS = 16


@dataclass
class SharedMask:
    """The text mask one guest of a build decoded (before its holes) and its page digests (after them)."""

    mask: bytes | mmap.mmap
    digests: list[str]
    #: offsets of the lock-or-ds prefixes the mask merges (a page is taken only where they are still one)
    locks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.locks = [m.start() for m in re.finditer(rb"\x31", self.mask)]

    def locks_hold(self, text: bytes, page: int) -> bool:
        """Every merged prefix on ``page`` is still a lock or a ds prefix in ``text`` (another byte there
        would decode as another instruction)."""
        lo = bisect_left(self.locks, page * PAGE)
        hi = bisect_left(self.locks, (page + 1) * PAGE)
        return all(text[at] in (0xF0, 0x3E) for at in self.locks[lo:hi])


#: build key -> the text mask of that build this process has mapped (or holds, where no cache is writable)
_MASKS: dict[str, SharedMask] = {}


def _files(key: str, size: int) -> tuple[Path, Path]:
    folder = cache_dir() / CACHE_FOLDER
    name = "".join(ch for ch in key if ch.isalnum() or ch in "-_.")[:96] or "build"
    return folder / f"{name}-{size:x}.mask", folder / f"{name}-{size:x}.pages"


def shared(key: str, size: int) -> SharedMask | None:
    """The mask of build ``key`` for a text of ``size`` bytes: the one this process holds, else the one a
    process of this host left in the cache, else None."""
    held = _MASKS.get(key)
    if held is not None and len(held.mask) == size:
        return held
    mask_file, pages_file = _files(key, size)
    try:
        text = pages_file.read_text()
        with open(mask_file, "rb") as f:
            mask = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    digests = [sys.intern(d) for d in text.split()]
    if len(mask) != size or len(digests) != (size + PAGE - 1) // PAGE or any(len(d) != DIGEST_CHARS for d in digests):
        mask.close()
        return None  # another build's, or cut short: decoded again, and written again
    found = SharedMask(mask, digests)
    _hold(key, found)
    return found


def keep(key: str, mask: bytes, digests: list[str]) -> None:
    """Keep the mask a guest of build ``key`` decoded: written to the cache and mapped from there (held
    in memory where the cache cannot be written)."""
    mask_file, pages_file = _files(key, len(mask))
    try:
        mask_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(pages_file, "\n".join(digests).encode())
        write_atomic(mask_file, mask)
        found = shared(key, len(mask))
    except OSError:
        found = None
    _hold(key, found if found is not None else SharedMask(mask, list(digests)))


def _hold(key: str, mask: SharedMask) -> None:
    _MASKS.pop(key, None)
    while len(_MASKS) >= MAX_SHARED_MASKS:  # the oldest build goes
        del _MASKS[next(iter(_MASKS))]
    _MASKS[key] = mask


def forget(files: bool = False) -> None:
    """Let go of every mask this process holds; with ``files``, remove the cache's too (the next guest
    of each build decodes its text again)."""
    _MASKS.clear()
    if files:
        for path in (cache_dir() / CACHE_FOLDER).glob("*"):
            path.unlink(missing_ok=True)
