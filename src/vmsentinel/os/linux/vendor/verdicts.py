"""What first looks have explained, page by page, for each kernel build: kept in this process and
in the cache folder (``vendor-verdicts/``), so that a guest like one seen before, in this process
or in an earlier ``check``, is not judged again.

A page is remembered by a digest of what it differs in from the relocated vendor image: its link
address, the XOR with the image (where and how it differs), its own bytes where they differ, and
the whole of every patch site across its edges. The digest stands for the page's verdict only
because the verdict is a function of those bytes alone; :mod:`~vmsentinel.os.linux.vendor.compare`
remembers no page whose verdict depended on anything else. The file is as trusted as the vendor
images cached beside it: whoever can write one can replace the other.

    verdicts = known(vendor)                    # None: judge every page (and then PageVerdicts.of_sites)
    verdicts.explained.get(verdicts.key(page, got, want, read, slide))
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.errors import ReadError
from vmsentinel.paths import cache_dir, write_atomic

if TYPE_CHECKING:
    from vmsentinel.os.linux.vendor.image import VendorKernel
    from vmsentinel.os.linux.vendor.sites import Site

PAGE = 4096
#: builds whose explained pages a process keeps (each ~0.5 MB: a few thousand digests)
KEEP_BUILDS = 4
#: pages remembered per build, at most (a guest flipping its static keys at will makes new ones)
MAX_REMEMBERED = 1 << 16
#: where the verdicts are kept, under the cache folder
CACHE_FOLDER = "vendor-verdicts"
MAGIC = b"VMSVRD1\n"
DIGEST = 16
_ENTRY = struct.Struct(f"<{DIGEST}sH")
#: a verdicts file larger than this is not ours
MAX_FILE = 16 << 20
#: each byte that differs as 0xFF, each equal one as 0 (over the XOR of the two pages)
_DIFFERS = bytes([0] + [0xFF] * 255)

Outcome = tuple[tuple[str, int], ...]
Build = tuple[str, str | None, int]
_lock = threading.Lock()


@dataclass
class PageVerdicts:
    """One build's explained pages: a page's digest to the kinds of site that explained it."""

    #: link page -> (address, length) of each site that crosses one of its edges
    crossing: dict[int, tuple[tuple[int, int], ...]]
    explained: dict[bytes, Outcome] = field(default_factory=dict)
    #: one tuple per distinct outcome, shared by every page that had it
    outcomes: dict[Outcome, Outcome] = field(default_factory=dict)
    #: pages remembered since the file was last written
    unsaved: int = 0

    @classmethod
    def of_sites(cls, sites: list[Site]) -> PageVerdicts:
        crossing: dict[int, list[tuple[int, int]]] = {}
        for site in sites:
            first, last = site.address // PAGE, (site.address + max(site.length, 1) - 1) // PAGE
            for page in range(first, last + 1) if first != last else ():
                crossing.setdefault(page * PAGE, []).append((site.address, site.length))
        return cls({page: tuple(found) for page, found in crossing.items()})

    def key(self, link: int, got: bytes, want: bytes, read: Callable[[int, int], bytes], slide: int) -> bytes:
        """A page's digest: its address, the XOR with the image, its own bytes where they differ, and
        the whole of every site across its edges (a site is judged on all of its bytes, some of them
        maybe in the next page)."""
        size = len(got)
        xor = (int.from_bytes(got, "little") ^ int.from_bytes(want, "little")).to_bytes(size, "little")
        mask = int.from_bytes(xor.translate(_DIFFERS), "little")
        digest = hashlib.blake2b(link.to_bytes(8, "little"), digest_size=DIGEST)
        digest.update(xor)
        digest.update((int.from_bytes(got, "little") & mask).to_bytes(size, "little"))
        for address, length in self.crossing.get(link - link % PAGE, ()):
            try:
                held = read(address + slide, length)
            except ReadError:
                held = b"?"  # unreadable: not the bytes of any page that was readable
            digest.update(address.to_bytes(8, "little") + length.to_bytes(4, "little") + held)
        return digest.digest()

    def remember(self, key: bytes, kinds: dict[str, int]) -> None:
        with _lock:  # a file being written meanwhile lists the pages as they were
            if len(self.explained) >= MAX_REMEMBERED or key in self.explained:
                return
            outcome = tuple(sorted(kinds.items()))
            self.explained[key] = self.outcomes.setdefault(outcome, outcome)
            self.unsaved += 1

    # -- the file ----------------------------------------------------------
    def to_bytes(self, build: Build) -> bytes:
        order = list(self.outcomes)
        index = {outcome: i for i, outcome in enumerate(order)}
        header = json.dumps(
            {
                "build": list(build),
                "outcomes": [[list(pair) for pair in outcome] for outcome in order],
                "crossing": [[page, [list(s) for s in sites]] for page, sites in sorted(self.crossing.items())],
            }
        ).encode()
        entries = b"".join(_ENTRY.pack(key, index[outcome]) for key, outcome in self.explained.items())
        return MAGIC + struct.pack("<I", len(header)) + header + entries

    @classmethod
    def from_bytes(cls, data: bytes, build: Build) -> PageVerdicts | None:
        """The verdicts in ``data``, if it is an intact file of ``build``; None otherwise (a damaged or
        foreign file is judged afresh, never half-trusted)."""
        try:
            if not data.startswith(MAGIC) or len(data) > MAX_FILE:
                return None
            (size,) = struct.unpack_from("<I", data, len(MAGIC))
            start = len(MAGIC) + 4 + size
            header = json.loads(data[len(MAGIC) + 4 : start])
            if header["build"] != list(build) or (len(data) - start) % _ENTRY.size:
                return None
            outcomes = [tuple((str(kind), int(count)) for kind, count in outcome) for outcome in header["outcomes"]]
            crossing = {int(page): tuple((int(a), int(n)) for a, n in sites) for page, sites in header["crossing"]}
            verdicts = cls(crossing)
            for outcome in outcomes:
                verdicts.outcomes.setdefault(outcome, outcome)
            for key, i in _ENTRY.iter_unpack(data[start:]):
                verdicts.explained[key] = verdicts.outcomes[outcomes[i]]
            return verdicts
        except (ValueError, KeyError, IndexError, TypeError, struct.error):
            return None


_held: OrderedDict[Build, PageVerdicts] = OrderedDict()


def build_of(vendor: VendorKernel) -> Build:
    return (vendor.path, vendor.build_id, len(vendor.image.data))


def _file(build: Build) -> Path:
    name = hashlib.blake2b(json.dumps(list(build)).encode(), digest_size=12).hexdigest()
    return cache_dir() / CACHE_FOLDER / f"{name}.verdicts"


def known(vendor: VendorKernel) -> PageVerdicts | None:
    """This build's verdicts: this process's, else the cache folder's, else None."""
    build = build_of(vendor)
    with _lock:
        found = _held.get(build)
        if found is not None:
            _held.move_to_end(build)
            return found
    try:
        found = PageVerdicts.from_bytes(_file(build).read_bytes(), build)
    except OSError:
        found = None
    if found is not None:
        keep(vendor, found)
    return found


def keep(vendor: VendorKernel, verdicts: PageVerdicts) -> None:
    with _lock:
        _held[build_of(vendor)] = verdicts
        while len(_held) > KEEP_BUILDS:
            _held.popitem(last=False)


def save(vendor: VendorKernel, verdicts: PageVerdicts) -> None:
    """Write the build's verdicts to the cache folder when pages were remembered since the last write
    (a folder that cannot be written: they stay in this process only)."""
    if not verdicts.unsaved:
        return
    build = build_of(vendor)
    path = _file(build)
    with _lock:
        data, verdicts.unsaved = verdicts.to_bytes(build), 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError:
        pass


def forget() -> None:
    """Judge every page again from now on, in this process (tests; a vendor image replaced in place)."""
    with _lock:
        _held.clear()
