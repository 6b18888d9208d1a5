"""What a guest's peers are compared on: an inventory of its kernel and of what it runs, in a form
that does not depend on where KASLR put things, so that two clean guests of one kernel build give
equal values (``detect/fleet.py`` compares them).

Kernel-wide facets (every guest of one build should agree):

- ``kernel_text``: core kernel text, per 4 KiB page from ``_stext`` (key: offset in hex), canonical as
  :mod:`vmsentinel.os.linux.canonical` says: the slide's bits of operands cleared at instruction
  boundaries, and the sites the kernel rewrites at run time (jump labels, static calls and their
  trampolines) cleared when they hold what the kernel writes there (a NOP, a jump to the label's own
  target, a call into core text); a site holding anything else stays as it is, and differs.
  ftrace call sites are not cleared: an ftrace hook is what the comparison is for.
- ``kernel_rodata``: read-only data per page from ``__start_rodata`` (``__ro_after_init`` left out:
  the kernel writes it while booting), kernel addresses and per-CPU offsets canonical.
- ``syscalls`` (``TABLE:NR`` -> symbol, or ``outside:OWNER``), ``idt`` (vector -> symbol, of the first
  CPU; ``cpuN:VECTOR`` where another CPU's differs), ``modules`` (name -> text digest, every 32-bit
  operand cleared: a module's relocations are not known, and it loads at its own address), ``taint``,
  ``bpf`` (``TYPE/NAME/TAG`` -> how many).

Clone facets (only guests cloned from one image should agree): ``executables`` (the path of every
file mapped for execution), ``code_pages`` (``PATH@OFFSET`` -> digest of each present code page; a
page not present in one guest is no difference), ``listening`` (``PROTO:PORT`` -> the programs that
hold it).

The first inventory of a guest costs a decode of its kernel text (about 1.5-2 s for 6.12's 16 MiB,
in a worker); later ones hash the raw pages again (tens of ms) and canonicalise only the pages whose
raw bytes changed.

    reader = InventoryReader(kernel_reader, resolver, profile)
    inventory = reader.inventory(modules, syscalls, idt, taint, bpf, sockets, tasks, maps, spaces)
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blake3 import blake3

from vmsentinel.errors import VmSentinelError
from vmsentinel.os.linux import canonical
from vmsentinel.os.linux.views import build_masks
from vmsentinel.os.linux.views.modules import TAINT_LETTERS

if TYPE_CHECKING:
    from vmsentinel.arch.x86_64 import PagingAddressSpace
    from vmsentinel.os.linux.profile.profile import KernelProfile
    from vmsentinel.os.linux.reader import KernelReader
    from vmsentinel.os.linux.symbols import SymbolResolver
    from vmsentinel.os.linux.views.bpf import BpfSweep
    from vmsentinel.os.linux.views.memory_maps import MapSweep
    from vmsentinel.os.linux.views.sockets import SocketSweep
    from vmsentinel.os.records import HookSweep, Module, Task

PAGE = 4096
MASK64 = (1 << 64) - 1
#: core text or read-only data larger than this is not a kernel's (a hostile symbol says otherwise)
MAX_KERNEL_REGION = 128 << 20
#: a module's text larger than this is not hashed (its size comes from the guest)
MAX_MODULE_TEXT = 32 << 20
#: code pages hashed per inventory at most (32 MiB); more are left out, the same way in every guest
MAX_CODE_PAGES = 8192
#: code pages looked at per process (64 MiB), as for the allowlist's page hashes
MAX_PAGES_PER_PROCESS = 16384
NOP5 = bytes.fromhex("0f1f440000")
NOP2 = bytes.fromhex("6690")
#: what a static call site holds when its function is __static_call_return0
STATIC_CALL_RET0 = bytes.fromhex("2e2e2e31c0")
#: code kept in read-only data (the call depth tracking templates), decoded as code
RODATA_CODE = ("skl_call_thunk_template",)
#: linker tables of 32-bit offsets in read-only data whose per-CPU entries move with the slide
RELATIVE_TABLES = (("__start___ksymtab", "__stop___ksymtab"), ("__start___ksymtab_gpl", "__stop___ksymtab_gpl"))
#: functions of core text that run in 32-bit mode (the PVH entry point): decoded so, operands cleared
#: (before 6.12 it holds absolute physical addresses, which physical KASLR moves)
CODE_32 = ("pvh_start_xen",)
#: symbol types of functions (kallsyms): where decoding starts
FUNCTION_TYPES = frozenset("TtWw")


@dataclass
class Inventory:
    """One guest's inventory: its kernel build and facet name -> {item -> short digest or value}."""

    build_id: str
    release: str
    facets: dict[str, dict[str, str]] = field(default_factory=dict)
    #: what could not be read (a facet left out, or partly)
    problems: list[str] = field(default_factory=list)
    #: seconds the inventory took, and of them the kernel text's canonical form; CPU seconds it took
    seconds: float = 0.0
    text_seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class _Pages:
    """A region's page digests: raw (8 bytes a page, one string: to see what changed since) and canonical
    (what is compared; interned, so guests of one build share each digest's one copy)."""

    raw: bytes = b""
    canonical: list[str] = field(default_factory=list)

    def changed(self, raw: bytes) -> list[int]:
        """Pages whose raw digest is not the one kept (all of them when the region's size changed)."""
        if len(self.raw) != len(raw):
            return list(range(len(raw) // RAW_DIGEST))
        return [
            i // RAW_DIGEST for i in range(0, len(raw), RAW_DIGEST) if raw[i : i + RAW_DIGEST] != self.raw[i : i + RAW_DIGEST]
        ]


#: bytes of a page's raw digest
RAW_DIGEST = 8


def _raw_digests(data: bytes) -> bytes:
    view = memoryview(data)
    return b"".join(blake3(view[off : off + PAGE]).digest(length=RAW_DIGEST) for off in range(0, len(data), PAGE))


#: "0", "1000", "2000", ...: the page keys of every region's facet, made once per process
_PAGE_KEYS: list[str] = []


def _page_keys(count: int) -> list[str]:
    while len(_PAGE_KEYS) < count:
        _PAGE_KEYS.append(f"{len(_PAGE_KEYS) * PAGE:x}")
    return _PAGE_KEYS


def _facet(digests: list[str], leave_out: set[int] | frozenset[int] = frozenset()) -> dict[str, str]:
    keys = _page_keys(len(digests))
    return {keys[i]: d for i, d in enumerate(digests) if i not in leave_out}


def _interned(digests: list[str]) -> list[str]:
    return [sys.intern(d) for d in digests]


#: (build key, core text's size) -> offsets of its function starts (the same for every guest of the build)
_BUILD_STARTS: dict[tuple[str, int], array[int]] = {}


class InventoryReader:
    """Inventories of one guest (one boot of its kernel): keeps the last canonical page digests so that a
    refresh canonicalises only what changed."""

    def __init__(self, reader: KernelReader, resolver: SymbolResolver, profile: KernelProfile) -> None:
        self.r = reader
        self.resolver = resolver
        self.profile = profile
        self._text = _Pages()
        self._rodata = _Pages()
        #: (name, base, size) -> (raw content digest, canonical digest)
        self._modules: dict[tuple[str, int, int], tuple[bytes, str]] = {}

    def inventory(
        self,
        modules: Sequence[Module],
        hooks: HookSweep | None,
        idt: HookSweep | None,
        taint: int | None,
        bpf: BpfSweep | None,
        sockets: SocketSweep | None,
        tasks: Sequence[Task],
        maps: Mapping[int, MapSweep],
        spaces: Mapping[int, PagingAddressSpace],
        jump_sites: Mapping[int, int] | None = None,
    ) -> Inventory:
        """Every facet that can be read (one that cannot is left out, with the reason in ``problems``).
        ``jump_sites``: jump label site -> target, core and modules (read here when not given)."""
        started, cpu = time.perf_counter(), time.thread_time()
        identity = self.profile.identity
        inv = Inventory(identity.build_id or "", identity.release)
        if jump_sites is None:
            from vmsentinel.os.linux.views.patch_sites import read_patch_sites

            sites = read_patch_sites(self.r, list(modules))
            jump_sites = sites.jump_targets
            inv.problems += sites.problems
        try:
            inv.facets["kernel_text"] = self._kernel_text(jump_sites, inv.problems)
        except (VmSentinelError, ValueError, struct.error) as exc:  # hostile tables or symbols: said, left out
            inv.problems.append(f"kernel text: {exc}")
        inv.text_seconds = time.perf_counter() - started
        try:
            inv.facets["kernel_rodata"] = self._kernel_rodata()
        except (VmSentinelError, ValueError, struct.error) as exc:
            inv.problems.append(f"kernel read-only data: {exc}")
        if hooks is not None:
            inv.facets["syscalls"] = {f"{e.table}:{e.index}": _handler(e.symbol, e.owner) for e in hooks.syscalls}
        if idt is not None and idt.idt:
            inv.facets["idt"] = _idt(idt)
        inv.facets["modules"] = self._modules_facet(modules, jump_sites, inv.problems)
        if taint is not None:
            letters = "".join(ch for bit, ch in enumerate(TAINT_LETTERS) if taint >> bit & 1)
            inv.facets["taint"] = {"mask": f"{taint:#x}" + (f" {letters}" if letters else "")}
        if bpf is not None:
            programs: dict[str, int] = {}
            for p in bpf.programs:
                key = f"{p.type}/{p.name}/{p.tag}"
                programs[key] = programs.get(key, 0) + 1
            inv.facets["bpf"] = {k: str(n) for k, n in programs.items()}
        user = [t for t in tasks if not t.kernel_thread]
        if maps:
            executables, pages = _code_pages(maps, spaces, inv.problems)
            inv.facets["executables"] = executables
            inv.facets["code_pages"] = pages
        elif user:
            inv.problems.append("no process's memory maps were read: executables and code pages left out")
        if sockets is not None:
            inv.facets["listening"] = _listening(sockets, tasks)
        inv.seconds, inv.cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu
        return inv

    # -- core kernel text ---------------------------------------------------------------------------
    def _function_starts(self, start: int, end: int) -> array[int]:
        """Offsets from ``start`` of every function symbol in ``[start, end)``: the same for every guest of
        the build (the slide moves symbols and text together), so kept once per build in a process."""
        key = (self.profile.identity.key, end - start)
        starts = _BUILD_STARTS.get(key)
        if starts is None:
            symbols = self.profile.symbols
            addresses, types = symbols.addresses, symbols.types
            slide = self.r.location.kaslr_slide
            found = set()
            for i in range(len(symbols)):
                if types[i] in FUNCTION_TYPES:
                    address = (addresses[i] + slide) & MASK64
                    if start <= address < end:
                        found.add(address - start)
            starts = array("I", sorted(found))
            while len(_BUILD_STARTS) >= build_masks.MAX_SHARED_MASKS:
                del _BUILD_STARTS[next(iter(_BUILD_STARTS))]
            _BUILD_STARTS[key] = starts
        return starts

    def _kernel_text(self, jump_sites: Mapping[int, int], problems: list[str]) -> dict[str, str]:
        """Core text's canonical page digests. Pages whose raw bytes are those of the last inventory keep
        their digest; the others are first tried with the mask another guest of this build decoded (in
        this process): a page equal to that guest's under it has its digest, and only the pages that
        are not are decoded here (the second and later guests of a build cost a few tens of ms, not
        seconds). A page's instruction boundaries do not depend on the bits the mask clears, so the
        digest is the one this guest's own decoding would give."""
        start, end = self.resolver.text_start, self.resolver.text_end
        if not 0 < end - start <= MAX_KERNEL_REGION:
            raise VmSentinelError(f"core text of {end - start} bytes: not a kernel's")
        text = self.r.read(start, end - start)
        raw = _raw_digests(text)
        before = self._text
        changed = before.changed(raw)
        if not changed:
            return _facet(before.canonical)
        holes = self._text_holes(text, start, end, jump_sites, problems)
        count = len(raw) // RAW_DIGEST
        pages = list(before.canonical) if len(before.canonical) == count else [""] * count
        key = self.profile.identity.key
        with _DECODING:  # guests of one build starting together: one decodes, the others take its mask
            return self._text_pages(text, raw, changed, holes, pages, build_masks.shared(key, len(text)), key)

    def _text_pages(
        self,
        text: bytes,
        raw: bytes,
        changed: list[int],
        holes: list[tuple[int, int]],
        pages: list[str],
        shared: build_masks.SharedMask | None,
        key: str,
    ) -> dict[str, str]:
        start, end = self.resolver.text_start, self.resolver.text_end
        if shared is not None and len(shared.mask) == len(text):
            candidates = canonical.apply_mask(text, shared.mask)
            cleared = bytearray(candidates)
            canonical.clear_holes(cleared, holes)
            digests = canonical.page_digests(bytes(cleared))
            unlike = []
            for i in changed:
                if digests[i] == shared.digests[i] and shared.locks_hold(text, i):
                    pages[i] = shared.digests[i]
                else:
                    unlike.append(i)
            changed = unlike
        own = self._decode_pages(text, start, end, changed, holes, pages)
        pages = _interned(pages)
        if shared is None and own is not None:
            build_masks.keep(key, own, pages)
        self._text = _Pages(raw, pages)
        return _facet(pages)

    def _decode_pages(
        self, text: bytes, start: int, end: int, indexes: list[int], holes: list[tuple[int, int]], pages: list[str]
    ) -> bytes | None:
        """Decode the functions over the pages ``indexes`` and set their digests in ``pages``; the whole
        mask (before the holes) when every page was decoded, else None."""
        starts = self._function_starts(start, end)
        decoder = canonical.Decoder()
        code_32 = self._code_32(start, end)
        whole: list[bytes] = []
        for lo_page, hi_page in _spans(indexes):
            lo, hi = lo_page * PAGE, min(len(text), hi_page * PAGE)
            mask = bytearray(canonical.code_mask(text, starts, lo, hi, decoder=decoder))
            for a, b in code_32:
                if a < hi and b > lo:
                    narrow = canonical.code_mask(text, [a], max(a, lo), min(b, hi), operands=True, decoder=canonical.Decoder(32))
                    mask[max(a, lo) - lo : min(b, hi) - lo] = narrow
            if len(indexes) * PAGE >= len(text):
                whole.append(bytes(mask))
            canonical.clear_holes(mask, _holes_in(holes, lo, hi), lo)
            digests = canonical.page_digests(canonical.apply_mask(text[lo:hi], mask))
            pages[lo_page : lo_page + len(digests)] = digests
        return b"".join(whole) if whole else None

    def _code_32(self, start: int, end: int) -> list[tuple[int, int]]:
        """(start, end) offsets of the 32-bit functions in core text."""
        out = []
        for name in CODE_32:
            if self.r.has_symbol(name):
                at = self.r.symbol(name)
                size = min(self.resolver.extent(at), 1 << 16)
                if start <= at and at + size <= end and size:
                    out.append((at - start, at - start + size))
        return out

    def _text_holes(
        self, text: bytes, start: int, end: int, jump_sites: Mapping[int, int], problems: list[str]
    ) -> list[tuple[int, int]]:
        """(offset, length) of the sites in core text that hold what the kernel writes there at run time."""
        holes = _jump_label_holes(text, start, end, jump_sites)
        from vmsentinel.os.linux.views.branches import static_call_sites

        for site in static_call_sites(self.r, problems):
            if start <= site < end and _static_call_ok(text, site - start, site, self.resolver):
                holes.append((site - start, 5))
        for name, address in _trampolines(self.profile, self.r.location.kaslr_slide):
            if start <= address < end and _static_call_ok(text, address - start, address, self.resolver, trampoline=True):
                holes.append((address - start, 5))
            del name
        holes.sort()
        return holes

    # -- read-only data -----------------------------------------------------------------------------
    def _kernel_rodata(self) -> dict[str, str]:
        r = self.r
        lo, hi = r.symbol("__start_rodata"), r.symbol("__end_rodata")
        if not 0 < hi - lo <= MAX_KERNEL_REGION:
            raise VmSentinelError(f"read-only data of {hi - lo} bytes: not a kernel's")
        skip = (lo, lo)
        if r.has_symbol("__start_ro_after_init") and r.has_symbol("__end_ro_after_init"):
            skip = (r.symbol("__start_ro_after_init"), r.symbol("__end_ro_after_init"))
        data = bytearray(r.read(lo, hi - lo))
        data[max(0, skip[0] - lo) : max(0, min(hi, skip[1]) - lo)] = bytes(max(0, min(hi, skip[1]) - max(lo, skip[0])))
        blob = bytes(data)
        raw = _raw_digests(blob)
        changed = self._rodata.changed(raw)
        if changed:
            mask = canonical.rodata_mask(blob)
            for first, last in RELATIVE_TABLES:
                if r.has_symbol(first) and r.has_symbol(last):
                    canonical.relative_mask(blob, mask, r.symbol(first) - lo, r.symbol(last) - lo)
            for name in RODATA_CODE:
                if r.has_symbol(name):
                    at = r.symbol(name)
                    size = min(self.resolver.extent(at), 4096)
                    if lo <= at and at + size <= hi and size:
                        code = canonical.code_mask(blob, [at - lo], at - lo, at - lo + size)
                        for i, m in enumerate(code):
                            mask[at - lo + i] &= m
            digests = canonical.page_digests(canonical.apply_mask(blob, mask))
            self._rodata = _Pages(raw, _interned(digests))
        pages = len(raw) // RAW_DIGEST
        in_hole = {i for i in range(pages) if skip[0] <= lo + i * PAGE and lo + (i + 1) * PAGE <= skip[1]}
        return _facet(self._rodata.canonical, in_hole)

    # -- modules --------------------------------------------------------------------------------------
    def _modules_facet(self, modules: Sequence[Module], jump_sites: Mapping[int, int], problems: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        kept: dict[tuple[str, int, int], tuple[bytes, str]] = {}
        for m in modules:
            key = (m.name, m.base, m.text_size)
            if not 0 < m.text_size <= MAX_MODULE_TEXT:
                out[m.name] = "no text" if m.text_size == 0 else "unreadable"
                continue
            try:
                text = self.r.read(m.base, m.text_size)
            except VmSentinelError as exc:
                problems.append(f"text of module {m.name}: {exc}")
                out[m.name] = "unreadable"
                continue
            raw = blake3(text).digest(length=16)
            cached = self._modules.get(key)
            if cached is None or cached[0] != raw:
                mask = bytearray(canonical.code_mask(text, [0], operands=True, realign=16))
                holes = _jump_label_holes(text, m.base, m.base + m.text_size, jump_sites)
                holes += self._module_static_calls(m, text, problems)
                canonical.clear_holes(mask, holes)
                cached = (raw, blake3(canonical.apply_mask(text, mask)).hexdigest(length=8))
            kept[key] = cached
            name = m.name if m.name not in out else f"{m.name}@{len(out)}"  # two of one name: both kept
            out[name] = cached[1]
        self._modules = kept
        return out

    def _module_static_calls(self, m: Module, text: bytes, problems: list[str]) -> list[tuple[int, int]]:
        r = self.r
        if not (r.has("module", "static_call_sites") and r.has("module", "num_static_call_sites")):
            return []
        try:
            first = r.u64(m.address + r.off("module", "static_call_sites"))
            count = min(r.u32(m.address + r.off("module", "num_static_call_sites")), 1 << 16)
            if not first or not count:
                return []
            stride = r.size("static_call_site") if r.has("static_call_site", "addr") else 8
            raw = r.read(first, count * stride)
        except VmSentinelError as exc:
            problems.append(f"static call sites of module {m.name}: {exc}")
            return []
        holes = []
        for i in range(count):
            site = (first + i * stride + struct.unpack_from("<i", raw, i * stride)[0]) & MASK64
            if m.base <= site < m.base + len(text) and _static_call_ok(text, site - m.base, site, self.resolver):
                holes.append((site - m.base, 5))
        return holes


#: held while a text is canonicalised (the work is CPU under one interpreter lock anyway)
_DECODING = threading.Lock()


def _spans(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as [first, last + 1) runs."""
    spans: list[tuple[int, int]] = []
    for i in indexes:
        if spans and spans[-1][1] == i:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def _holes_in(holes: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    first = max(0, bisect_left(holes, (lo - 16, 0)))
    out = []
    for offset, length in holes[first:]:
        if offset >= hi:
            break
        if offset + length > lo:
            out.append((offset, length))
    return out


def _jump_label_holes(code: bytes, start: int, end: int, jump_sites: Mapping[int, int]) -> list[tuple[int, int]]:
    """Jump label sites in ``[start, end)`` that hold a NOP or a jump to their own target."""
    holes = []
    for site, target in jump_sites.items():
        if not start <= site < end:
            continue
        at = site - start
        head = code[at : at + 5]
        if head[:2] == NOP2 or (
            head[:1] == b"\xeb" and len(head) >= 2 and site + 2 + struct.unpack("<b", head[1:2])[0] == target
        ):
            holes.append((at, 2))
        elif head == NOP5 or (
            len(head) == 5 and head[0] == 0xE9 and (site + 5 + struct.unpack("<i", head[1:5])[0]) & MASK64 == target
        ):
            holes.append((at, 5))
    return holes


def _static_call_ok(code: bytes, at: int, site: int, resolver: SymbolResolver, trampoline: bool = False) -> bool:
    """A static call site (or trampoline) holds what the kernel writes there: a call or jump into core
    kernel text, a NOP, the return-0 form (or, in a trampoline, a return)."""
    head = code[at : at + 5]
    if len(head) < 5:
        return False
    if head[0] in (0xE8, 0xE9):
        return resolver.in_core_text((site + 5 + struct.unpack("<i", head[1:5])[0]) & MASK64)
    if trampoline and head[0] == 0xC3:
        return True
    return head in (NOP5, STATIC_CALL_RET0)


_TRAMPOLINES: dict[int, list[tuple[str, int]]] = {}


def _trampolines(profile: KernelProfile, slide: int) -> list[tuple[str, int]]:
    """(name, address) of every static call trampoline (``__SCT__*``); the scan of the names is made
    once per profile."""
    found = _TRAMPOLINES.get(id(profile.symbols))
    if found is None:
        symbols = profile.symbols
        addresses = symbols.addresses
        names = symbols.names_blob().split(b"\n")
        found = (
            [(n.decode(), addresses[i]) for i, n in enumerate(names) if n.startswith(b"__SCT__")]
            if len(names) == len(symbols)
            else []
        )
        _TRAMPOLINES.clear()  # one build at a time is enough to spare the scan
        _TRAMPOLINES[id(profile.symbols)] = found
    return [(name, (address + slide) & MASK64) for name, address in found]


def _handler(symbol: str | None, owner: str) -> str:
    if owner not in ("kernel", "kernel-init"):
        return f"outside:{owner}"
    return symbol or f"{owner}:?"


def _idt(idt: HookSweep) -> dict[str, str]:
    by_cpu: dict[int, dict[int, str]] = {}
    for e in idt.idt:
        by_cpu.setdefault(e.cpu, {})[e.vector] = _handler(e.symbol, e.owner) if e.present else "-"
    first = min(by_cpu)
    out = {str(v): h for v, h in sorted(by_cpu[first].items())}
    for cpu, table in sorted(by_cpu.items()):
        if cpu != first:
            out.update({f"cpu{cpu}:{v}": h for v, h in sorted(table.items()) if by_cpu[first].get(v) != h})
    return out


def _code_pages(
    maps: Mapping[int, MapSweep], spaces: Mapping[int, PagingAddressSpace], problems: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(path -> "mapped" for every file mapped for execution, ``PATH@OFFSET`` -> digest of each present
    code page). Pages are found through each process's physical runs and read once per frame."""
    executables: dict[str, str] = {}
    frames: dict[tuple[str, int], set[int]] = {}
    physical: PagingAddressSpace | None = None
    for pid, sweep in maps.items():
        space = spaces.get(pid)
        budget = MAX_PAGES_PER_PROCESS
        for m in sweep.maps:
            if "x" not in m.perms or not m.path.startswith("/"):
                continue
            executables[m.path] = "mapped"
            if space is None or budget <= 0:
                continue
            physical = physical or space
            try:
                runs = space.physical_runs(m.start, m.end - m.start).runs
            except VmSentinelError:
                continue  # its maps stand; its pages cannot be read
            for offset, paddr, size in runs:
                for k in range(0, min(size, budget * PAGE), PAGE):
                    frames.setdefault((m.path, m.offset + offset + k), set()).add(paddr + k)
                budget -= size // PAGE
    pages: dict[str, str] = {}
    if physical is None:
        return executables, pages
    digests: dict[int, str] = {}
    for n, ((path, offset), held) in enumerate(sorted(frames.items())):
        if n >= MAX_CODE_PAGES:
            problems.append(f"more than {MAX_CODE_PAGES} code pages: the rest left out")
            break
        values = []
        for frame in sorted(held):
            if frame not in digests:
                try:
                    digests[frame] = canonical.page_digest(physical.phys.read(frame, PAGE))
                except VmSentinelError:
                    digests[frame] = "unreadable"
            values.append(digests[frame])
        pages[f"{path}@{offset:x}"] = "|".join(sorted(set(values)))
    return executables, pages


def _listening(sockets: SocketSweep, tasks: Sequence[Task]) -> dict[str, str]:
    """``PROTO:PORT`` (``tcp6:22``) -> the programs holding a listening TCP or a bound, unconnected UDP
    socket there (``(kernel)`` when no process holds it)."""
    programs = {t.pid: t.exe or t.name for t in tasks}
    out: dict[str, set[str]] = {}
    for s in sockets.sockets:
        if s.family not in ("inet", "inet6") or not s.local_port:
            continue
        listening = s.state == "LISTEN" if s.protocol == "tcp" else s.protocol.startswith("udp") and not s.remote_port
        if not listening:
            continue
        key = f"{s.protocol}{'6' if s.family == 'inet6' else ''}:{s.local_port}"
        out.setdefault(key, set()).update(programs.get(pid, "?") for pid in s.pids)
    return {k: ",".join(sorted(v)) or "(kernel)" for k, v in sorted(out.items())}
