"""Find a Linux kernel in guest-physical memory with no help and no profile:
its banner, its own symbol table (kallsyms), BTF and build id; then, with a
profile, its KASLR slides, page-table root, paging mode and region bases.

    found = find_kernel(memory)            # slow path: scan + decode (~0.5 s)
    profile = profile_from_memory(found)   # link-time symbols, memory BTF
    loc = locate(memory, profile, found.banner_phys)   # fast: microseconds
    loc.runtime_symbol("init_task"), loc.kaslr_slide, loc.address_space()

Method: the banner scan gives the physical address of ``linux_banner``; the
kallsyms tables sit in ``.rodata`` near it and decode to runtime addresses; the
kernel image is physically contiguous, so any image symbol's physical address
is ``P(_text) + (V(symbol) - V(_text))``. ``kallsyms_relative_base`` read in
memory against its link-time value gives the KASLR slide; ``phys_base`` read
in memory must agree with where ``_text`` lies; ``init_top_pgt`` is the root;
the paging mode is the one under which ``linux_banner`` translates to where we
found it.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmsentinel.arch.x86_64 import KERNEL_ADDRESS_MIN, PagingAddressSpace
from vmsentinel.errors import KernelNotFound, ProfileError, TranslationError, UnmappedPhysicalAddress, VmSentinelError
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.linux.banner import Banner, find_banners
from vmsentinel.os.linux.profile.profile import KernelIdentity, KernelProfile, SymbolTable
from vmsentinel.os.linux.profile.types import BtfTypes

if TYPE_CHECKING:  # decoding kallsyms is the cold path; a cached profile never needs it
    from vmsentinel.os.linux.profile import kallsyms

START_KERNEL_MAP = 0xFFFFFFFF80000000
WINDOW = 24 << 20  # bytes around linux_banner searched for kallsyms (both sides)
MASK64 = (1 << 64) - 1


@dataclass
class FoundKernel:
    """What a cold look at memory found: enough to build a profile."""

    banner: Banner
    banner_phys: int
    text_phys: int
    symbols: kallsyms.KernelSymbols  # runtime (randomised) addresses, straight from memory
    relative_base_offset: int
    btf_blob: bytes | None
    build_id: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def identity(self) -> KernelIdentity:
        return KernelIdentity(self.banner.text, self.banner.release, self.build_id)


@dataclass
class KernelLocation:
    """One boot of a kernel in memory: where it lies and how it is randomised."""

    profile: KernelProfile
    banner_phys: int
    text_phys: int
    kaslr_slide: int
    physical_slide: int
    phys_base: int
    page_table_root: int
    paging_levels: int
    page_offset_base: int | None
    vmalloc_base: int | None
    vmemmap_base: int | None
    notes: list[str]
    memory: PhysicalMemory = field(repr=False)

    def runtime_symbol(self, name: str) -> int:
        """A symbol's address in this boot (per-CPU symbols are absolute and do not move)."""
        addr = self.profile.symbol(name)
        return (addr + self.kaslr_slide) & MASK64 if addr >= KERNEL_ADDRESS_MIN else addr

    def address_space(self) -> PagingAddressSpace:
        return PagingAddressSpace(self.memory, self.page_table_root, self.paging_levels)


def _read_window(mem: PhysicalMemory, center: int) -> tuple[int, bytes]:
    for rng in mem.ranges():
        if rng.start <= center < rng.end:
            start = max(rng.start, center - WINDOW)
            end = min(rng.end, center + WINDOW)
            return start, mem.read(start, end - start)
    raise KernelNotFound(f"banner address {center:#x} is outside RAM")


def find_kernel(mem: PhysicalMemory) -> FoundKernel:
    """Cold path: scan for the banner and decode kallsyms, BTF and build id from memory."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    banners = find_banners(mem)
    seconds["banner_scan"] = time.perf_counter() - t0
    if not banners:
        raise KernelNotFound("no Linux kernel banner in physical memory")
    problems: list[str] = []
    for banner in banners[:4]:
        for banner_phys in banner.physical_addresses[:8]:
            try:
                return _decode_around(mem, banner, banner_phys, seconds)
            except (VmSentinelError, struct.error, IndexError) as exc:
                problems.append(f"{banner_phys:#x}: {exc}")
    raise KernelNotFound("found a banner but no consistent kernel around it: " + "; ".join(problems[:4]))


def _decode_around(mem: PhysicalMemory, banner: Banner, banner_phys: int, seconds: dict[str, float]) -> FoundKernel:
    from vmsentinel.os.linux.profile import kallsyms
    from vmsentinel.os.linux.profile.kernel_image import parse_build_id

    t0 = time.perf_counter()
    win_start, window = _read_window(mem, banner_phys)
    layout = kallsyms.locate(window)
    symbols = kallsyms.decode(window, layout)
    seconds["kallsyms"] = time.perf_counter() - t0
    by_name = symbols.as_dict()
    for needed in ("linux_banner", "_text", "init_top_pgt", "phys_base"):
        if needed not in by_name:
            raise KernelNotFound(f"kallsyms has no {needed}")
    text_phys = banner_phys - (by_name["linux_banner"] - by_name["_text"])
    # This banner must be linux_banner itself (copies exist): then phys_base, read where the
    # image puts it, maps init_top_pgt exactly where the image says it lies.
    phys_base = int.from_bytes(mem.read(text_phys + by_name["phys_base"] - by_name["_text"], 8), "little")
    pgt_phys = text_phys + by_name["init_top_pgt"] - by_name["_text"]
    if (by_name["init_top_pgt"] - START_KERNEL_MAP + phys_base) & MASK64 != pgt_phys:
        raise KernelNotFound("this banner is a copy, not linux_banner (phys_base does not agree)")
    if symbols.relative_base != int.from_bytes(window[layout.relative_base_at : layout.relative_base_at + 8], "little"):
        raise KernelNotFound("kallsyms_relative_base changed while reading")

    def read_image(name_start: str, name_stop: str, cap: int) -> bytes | None:
        if name_start not in by_name or name_stop not in by_name:
            return None
        size = by_name[name_stop] - by_name[name_start]
        if not 0 < size <= cap:
            raise KernelNotFound(f"{name_start}..{name_stop} gives an impossible size {size}")
        return mem.read(text_phys + by_name[name_start] - by_name["_text"], size)

    notes: list[str] = []
    t0 = time.perf_counter()
    btf_blob = read_image("__start_BTF", "__stop_BTF", 64 << 20)
    if btf_blob is None:
        notes.append("no __start_BTF/__stop_BTF symbols: this kernel carries no BTF")
    seconds["btf_read"] = time.perf_counter() - t0
    notes_blob = read_image("__start_notes", "__stop_notes", 1 << 16)
    return FoundKernel(
        banner=banner,
        banner_phys=banner_phys,
        text_phys=text_phys,
        symbols=symbols,
        relative_base_offset=win_start + layout.relative_base_at - text_phys,
        btf_blob=btf_blob,
        build_id=parse_build_id(notes_blob) if notes_blob else None,
        seconds=seconds,
        notes=notes,
    )


def profile_from_memory(found: FoundKernel, source: str) -> KernelProfile:
    """A build profile from what memory held: link-time symbols and the resident BTF."""
    from vmsentinel.os.linux.profile.btf import Btf

    t0 = time.perf_counter()
    runtime_text = found.symbols.as_dict()["_text"]
    link_text = START_KERNEL_MAP + _physical_start_guess(found)
    link_symbols = found.symbols.shifted(link_text - runtime_text)
    btf = Btf(found.btf_blob) if found.btf_blob is not None else None
    sources = {"symbols": f"kallsyms in memory of {source}", "types": f"BTF in memory of {source}" if btf else "none"}
    return KernelProfile(
        identity=found.identity,
        types=BtfTypes(btf, sources["types"]) if btf else None,
        symbols=SymbolTable.from_kallsyms(link_symbols),
        sources=sources,
        relative_base_offset=found.relative_base_offset,
        build_seconds=sum(found.seconds.values()) + time.perf_counter() - t0,
        btf_blob=found.btf_blob,
    )


def _physical_start_guess(found: FoundKernel) -> int:
    """The link-time offset of ``_text`` above ``__START_KERNEL_map`` (CONFIG_PHYSICAL_START).

    KASLR moves ``_text`` in steps of CONFIG_PHYSICAL_ALIGN (2 MiB) and, unrandomised,
    ``_text`` sits at ``__START_KERNEL_map + CONFIG_PHYSICAL_START``; ``phys_startup_64``
    (an absolute symbol, where present) is that start, else the x86-64 default 16 MiB.
    """
    by_name = found.symbols.as_dict()
    start = by_name.get("phys_startup_64")
    if start is not None and start < 1 << 32 and start & 0x1FFFFF == 0 and not start >= KERNEL_ADDRESS_MIN:
        return start
    return 0x1000000


def locate(mem: PhysicalMemory, profile: KernelProfile, banner_phys: int, kaslr_slide: int | None = None) -> KernelLocation:
    """Fast path: place a known build in this memory (KASLR slides, root, paging mode).

    The slide comes from ``kallsyms_relative_base`` in memory against its link-time
    value, or from the caller (who decoded kallsyms, e.g. for an ISF profile).
    """
    notes: list[str] = []
    try:
        text_phys = banner_phys - (profile.symbol("linux_banner") - profile.symbol("_text"))
        link_text = profile.symbol("_text")
        if kaslr_slide is None:
            if profile.relative_base_offset is None:
                raise ProfileError("the profile does not say where kallsyms_relative_base lies")
            runtime_base = int.from_bytes(mem.read(text_phys + profile.relative_base_offset, 8), "little")
            kaslr_slide = (runtime_base - _link_relative_base(profile)) & MASK64
            if kaslr_slide >= 1 << 63:
                kaslr_slide -= 1 << 64

        def phys_of(name: str) -> int:
            return text_phys + profile.symbol(name) - link_text

        phys_base = int.from_bytes(mem.read(phys_of("phys_base"), 8), "little")
        root = phys_of("init_top_pgt")
        runtime_pgt = profile.symbol("init_top_pgt") + kaslr_slide
        if root != (runtime_pgt - START_KERNEL_MAP + phys_base) & MASK64:
            notes.append("phys_base disagrees with where _text lies")
    except (ProfileError, UnmappedPhysicalAddress) as exc:
        raise KernelNotFound(f"this memory does not hold {profile.identity.release} at {banner_phys:#x}: {exc}") from exc
    v_banner = profile.symbol("linux_banner") + kaslr_slide
    levels = None
    for candidate in (5, 4):
        try:
            if PagingAddressSpace(mem, root, candidate).translate(v_banner) == banner_phys:
                levels = candidate
                break
        except (TranslationError, UnmappedPhysicalAddress):
            continue
    if levels is None:
        raise KernelNotFound(f"init_top_pgt at {root:#x} does not map linux_banner under 4- or 5-level paging")
    space = PagingAddressSpace(mem, root, levels)

    def variable(name: str) -> int | None:
        if name not in profile.symbols:
            return None
        try:
            return space.read_u64(profile.symbol(name) + kaslr_slide)
        except (TranslationError, UnmappedPhysicalAddress):
            notes.append(f"{name} unreadable")
            return None

    return KernelLocation(
        profile=profile,
        banner_phys=banner_phys,
        text_phys=text_phys,
        kaslr_slide=kaslr_slide,
        physical_slide=text_phys - (link_text - START_KERNEL_MAP),
        phys_base=phys_base,
        page_table_root=root,
        paging_levels=levels,
        page_offset_base=variable("page_offset_base"),
        vmalloc_base=variable("vmalloc_base"),
        vmemmap_base=variable("vmemmap_base"),
        notes=notes,
        memory=mem,
    )


def _link_relative_base(profile: KernelProfile) -> int:
    """kallsyms_relative_base at link time: the lowest relative (non-per-CPU) symbol address."""
    hot = profile.hot_layout
    if "@kallsyms_relative_base" not in hot:
        hot["@kallsyms_relative_base"] = min(a for a in profile.symbols.addresses if a >= KERNEL_ADDRESS_MIN)
    return hot["@kallsyms_relative_base"]
