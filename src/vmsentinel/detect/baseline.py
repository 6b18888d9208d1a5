"""What a guest looked like when first seen, and how a later change of its kernel
text is explained byte by byte.

The baseline is taken from one snapshot (trust on first sight): the system call
and IDT handlers, every kernel and module text page (hashes and bytes), the
places the kernel patches in itself at run time (jump labels, ftrace call sites,
from its own tables), the taint mask and the eBPF programs present. It reads no
memory: everything it compares comes in snapshots.

    baseline = Baseline.take(first)                  # first: a snapshot with code bytes and patch sites
    baseline.changed_bytes(page, later)              # addresses no self-patching explains
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import weakref
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmsentinel.os.records import CodeRegion
    from vmsentinel.os.snapshot import GuestSnapshot

PAGE = 4096
PATCH_SITE_BYTES = 5  # a jump label or ftrace site is one 5-byte (or 2-byte) instruction
MASK = (1 << 64) - 1
#: x86 NOPs the kernel writes at patch sites (5-byte and 2-byte forms)
NOPS5 = {bytes.fromhex("0f1f440000")}  # BYTES_NOP5
NOPS2 = {bytes.fromhex("6690")}  # BYTES_NOP2


#: address arrays held once per process, by content: every guest of a build has the same sites at its
#: own slide, so each keeps only where its first site is and shares the offsets from there
_shared: weakref.WeakValueDictionary[tuple[bytes, int], array[int]] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def _share(values: array[int]) -> array[int]:
    key = (hashlib.blake2b(values, digest_size=16).digest(), len(values))
    with _shared_lock:
        held = _shared.get(key)
        if held is None:
            _shared[key] = held = values
        return held


def _offsets_from(base: int, addresses: Iterable[int]) -> array[int]:
    return _share(array("Q", ((a - base) & MASK for a in addresses)))


class AddressSet:
    """A frozen set of addresses in a sorted array: 8 bytes an address instead of a set's ~60 (a
    kernel has ~40 000 ftrace sites, and every watched guest's baseline holds them), and those 8
    bytes shared between the guests of one build (offsets from the lowest address)."""

    def __init__(self, addresses: Iterable[int] = ()) -> None:
        ordered = sorted(set(addresses))
        self._base = ordered[0] if ordered else 0
        self._offsets = _offsets_from(self._base, ordered)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, int) or not self._base <= address < 1 << 64:
            return False
        offset = address - self._base
        i = bisect.bisect_left(self._offsets, offset)
        return i < len(self._offsets) and self._offsets[i] == offset

    def __iter__(self) -> Iterator[int]:
        base = self._base
        return (base + offset for offset in self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __setstate__(self, state: dict[str, object]) -> None:
        if "_sorted" in state:  # a baseline stored before the offsets were shared: absolute addresses
            self.__init__(state["_sorted"])  # type: ignore[misc]
            return
        self._base = int(state["_base"])  # type: ignore[call-overload]
        self._offsets = _share(state["_offsets"])  # type: ignore[arg-type]


class AddressMap(Mapping[int, int]):
    """An address -> address mapping in two sorted arrays (jump label site -> target), for the same
    reasons (targets as offsets from the lowest site too: they move with the kernel)."""

    def __init__(self, items: Mapping[int, int] | None = None) -> None:
        pairs = sorted((items or {}).items())
        self._base = pairs[0][0] if pairs else 0
        self._keys = _offsets_from(self._base, (k for k, _ in pairs))
        self._values = _offsets_from(self._base, (v for _, v in pairs))

    def __getitem__(self, address: int) -> int:
        if isinstance(address, int) and self._base <= address < 1 << 64:
            offset = address - self._base
            i = bisect.bisect_left(self._keys, offset)
            if i < len(self._keys) and self._keys[i] == offset:
                return (self._base + self._values[i]) & MASK
        raise KeyError(address)

    def __iter__(self) -> Iterator[int]:
        base = self._base
        return (base + offset for offset in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __setstate__(self, state: dict[str, object]) -> None:
        if "_base" not in state:  # stored before the offsets were shared: absolute keys and values
            keys, values = state["_keys"], state["_values"]
            self.__init__(dict(zip(keys, values, strict=True)))  # type: ignore[misc, call-overload]
            return
        self._base = int(state["_base"])  # type: ignore[call-overload]
        self._keys = _share(state["_keys"])  # type: ignore[arg-type]
        self._values = _share(state["_values"])  # type: ignore[arg-type]


@dataclass
class Baseline:
    """What the guest looked like when first seen."""

    syscalls: dict[str, int]
    idt: dict[str, int]
    code: dict[tuple[str, int], CodeRegion]
    #: page address -> its bytes at first sight (a dict, or pages kept on disk by content)
    page_bytes: Mapping[int, bytes] = field(repr=False, default_factory=dict)
    #: jump label sites -> their jump target; ftrace call sites (the kernel rewrites both at run time)
    jump_sites: Mapping[int, int] = field(repr=False, default_factory=AddressMap)
    ftrace_sites: AddressSet = field(repr=False, default_factory=AddressSet)
    problems: list[str] = field(default_factory=list)
    #: the kernel's taint mask and the eBPF programs (id, tag) present at first sight
    taint: int | None = None
    bpf: set[tuple[int, str]] = field(default_factory=set)
    #: keys of the findings of the first look: they stand as long as this baseline does (later sweeps
    #: do not repeat the first look's checks, and must not call them over)
    first_look: set[str] = field(default_factory=set)

    @classmethod
    def take(cls, snap: GuestSnapshot) -> Baseline:
        code = {(r.owner, r.start): r for r in (snap.code.regions if snap.code else [])}
        base = cls(
            syscalls={f"{e.table}:{e.index}": e.handler for e in snap.syscalls.syscalls},
            idt={f"cpu{e.cpu}:{e.vector}": e.handler for e in snap.idt.idt},
            code=code,
            taint=snap.taint,
            bpf={(p.id, p.tag) for p in snap.bpf.programs} if snap.bpf else set(),
        )
        kept: Mapping[int, bytes] = snap.code.page_bytes if snap.code else {}
        for region in code.values():
            for i, digest in enumerate(region.page_hashes):
                page = region.start + i * PAGE
                if digest and page not in kept:  # read for hashing but not kept: the snapshot was taken against a reference
                    base.problems.append(f"baseline page {page:#x}: bytes not in the snapshot")
        base.page_bytes = kept  # the snapshot's own (every page it read): shared, not copied
        if snap.patch_sites is not None:
            base.jump_sites = AddressMap(snap.patch_sites.jump_targets)
            base.ftrace_sites = AddressSet(snap.patch_sites.ftrace)
            base.problems.extend(snap.patch_sites.problems)
        elif snap.code is not None:
            base.problems.append("no patch sites in the baseline snapshot: every changed byte counts")
        return base

    @property
    def patch_sites(self) -> set[int]:
        return set(self.jump_sites) | set(self.ftrace_sites)

    def _current(self, address: int, length: int, snap: GuestSnapshot) -> bytes | None:
        """``length`` bytes at ``address`` as the snapshot saw them: a page the snapshot kept (it changed)
        or, when its hash did not change, the baseline's copy of it."""
        out = b""
        kept = snap.code.page_bytes if snap.code else {}
        while length > 0:
            page = address & ~(PAGE - 1)
            data = kept.get(page)
            if data is None:  # unchanged: the baseline's copy (which may be on disk)
                data = self.page_bytes.get(page)
            if data is None:
                return None
            chunk = data[address - page : address - page + length]
            if not chunk:
                return None
            out += chunk
            address += len(chunk)
            length -= len(chunk)
        return out

    def _site_ok(self, site: int, snap: GuestSnapshot) -> bool:
        """Does this self-patching site hold only what the kernel itself would write there?"""
        code = self._current(site, 5, snap)
        if code is None:
            return False
        if code in NOPS5 or code[:2] in NOPS2:
            return True
        if site in self.jump_sites:
            target = self.jump_sites[site]
            if code[0] == 0xE9:
                return (site + 5 + int.from_bytes(code[1:5], "little", signed=True)) & MASK == target
            if code[0] == 0xEB:
                return (site + 2 + int.from_bytes(code[1:2], "little", signed=True)) & MASK == target
        if site in self.ftrace_sites and code[0] == 0xE8:  # call into ftrace (core text or a trampoline)
            dest = (site + 5 + int.from_bytes(code[1:5], "little", signed=True)) & MASK
            owner = snap.symbols.owner(dest) if snap.symbols is not None else "unknown"
            return owner in ("kernel", "modules-area")
        return False

    def bytes_at(self, page: int, at: int, length: int) -> bytes:
        """Up to ``length`` baseline bytes from ``at``, within the kept ``page`` (empty when not kept)."""
        old = self.page_bytes.get(page)
        return bytes(old[at - page : at - page + length]) if old is not None else b""

    def changed_bytes(self, page: int, snap: GuestSnapshot) -> list[int]:
        """Addresses of bytes that differ from the baseline, outside known self-patching sites."""
        old = self.page_bytes.get(page)
        new = snap.code.page_bytes.get(page) if snap.code else None
        if old is None or new is None:
            return []
        diffs = [page + i for i in range(min(len(old), len(new))) if old[i] != new[i]]
        unexplained = []
        for a in diffs:
            sites = [a - k for k in range(PATCH_SITE_BYTES) if a - k in self.jump_sites or a - k in self.ftrace_sites]
            if not any(self._site_ok(site, snap) for site in sites):
                unexplained.append(a)
        return unexplained
