"""Where the kernel rewrites its own text while booting and running, read from the vendor image's
own tables (never the guest's): alternatives, paravirt calls, retpolines and return thunks, static
calls and their trampolines, jump labels, ftrace call sites, SMP lock prefixes, sealed ENDBRs, and
run-time constants (6.10+). A difference between the guest and the vendor image is the kernel's
only if it lies inside one of these, and holds what the kernel writes there.

    sites = read_sites(vendor)     # sorted by address, link-time
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmsentinel.errors import KernelImageError, ProfileError
from vmsentinel.os.linux.vendor.image import MASK64, VendorKernel

#: a table longer than this many entries is not a kernel's
MAX_ENTRIES = 1 << 20
TRAMPOLINE = 5  # a static call trampoline: one jmp/ret, then padding
NOP2 = bytes.fromhex("6690")


@dataclass(frozen=True)
class Site:
    address: int
    length: int
    kind: str
    #: kind-specific: a jump label's target; an alternative's replacement address
    target: int = 0
    #: an alternative's replacement length; a run-time constant's name
    extra: int | str = 0


@dataclass
class Sites:
    sites: list[Site]
    problems: list[str]


def _bounds(vendor: VendorKernel, start: str, stop: str) -> tuple[int, int] | None:
    if not (vendor.has_symbol(start) and vendor.has_symbol(stop)):
        return None
    a, b = vendor.symbol(start), vendor.symbol(stop)
    return (a, b) if a <= b else None


def _relative(vendor: VendorKernel, bounds: tuple[int, int], stride: int, field: int = 0) -> list[tuple[int, bytes]]:
    """(site, entry bytes) of a table of ``s32`` offsets from each entry's field to its site."""
    start, stop = bounds
    count = (stop - start) // stride
    if count > MAX_ENTRIES:
        raise KernelImageError(f"table at {start:#x} has {count} entries: not a kernel's")
    raw = vendor.raw(start, count * stride)
    out = []
    for i in range(count):
        entry = start + i * stride
        (offset,) = struct.unpack_from("<i", raw, i * stride + field)
        out.append(((entry + field + offset) & MASK64, raw[i * stride : (i + 1) * stride]))
    return out


def read_sites(vendor: VendorKernel) -> Sites:
    sites: list[Site] = []
    problems: list[str] = []
    types = vendor.profile.types

    def table(kind: str, start: str, stop: str, length: int, stride: int = 4) -> None:
        bounds = _bounds(vendor, start, stop)
        if bounds is None:
            return
        try:
            sites.extend(Site(site, length, kind) for site, _ in _relative(vendor, bounds, stride))
        except (KernelImageError, struct.error) as exc:
            problems.append(f"{kind} sites: {exc}")

    table("return", "__return_sites", "__return_sites_end", 5)
    table("retpoline", "__retpoline_sites", "__retpoline_sites_end", 6)
    table("smp_lock", "__smp_locks", "__smp_locks_end", 1)
    table("endbr", "__ibt_endbr_seal", "__ibt_endbr_seal_end", 4)
    table("static_call", "__start_static_call_sites", "__stop_static_call_sites", 5, 8)
    try:
        if types is None:
            raise ProfileError("the vendor image has no BTF")
        _alternatives(vendor, sites)
        _jump_labels(vendor, sites)
        _paravirt(vendor, sites)
    except (ProfileError, KernelImageError, struct.error) as exc:
        problems.append(f"patch tables: {exc}")
    _ftrace(vendor, sites, problems)
    _named_sites(vendor, sites, problems)
    sites.sort(key=lambda s: s.address)
    return Sites(sites, problems)


def _alternatives(vendor: VendorKernel, sites: list[Site]) -> None:
    bounds = _bounds(vendor, "__alt_instructions", "__alt_instructions_end")
    types = vendor.profile.types
    if bounds is None or types is None:
        return
    size = types.struct_size("alt_instr")
    instr, repl = types.member_offset("alt_instr", "instr_offset"), types.member_offset("alt_instr", "repl_offset")
    ilen, rlen = types.member_offset("alt_instr", "instrlen"), types.member_offset("alt_instr", "replacementlen")
    for site, raw in _relative(vendor, bounds, size, instr):
        entry = site - instr - struct.unpack_from("<i", raw, instr)[0]
        replacement = (entry + repl + struct.unpack_from("<i", raw, repl)[0]) & MASK64
        sites.append(Site(site, raw[ilen], "alternative", replacement, raw[rlen]))


def _jump_labels(vendor: VendorKernel, sites: list[Site]) -> None:
    bounds = _bounds(vendor, "__start___jump_table", "__stop___jump_table")
    types = vendor.profile.types
    if bounds is None or types is None:
        return
    size = types.struct_size("jump_entry")
    for site, raw in _relative(vendor, bounds, size):
        entry = site - struct.unpack_from("<i", raw, 0)[0]
        target = (entry + 4 + struct.unpack_from("<i", raw, 4)[0]) & MASK64
        try:  # a short jump label (``jmp rel8`` or a 2-byte NOP) is two bytes long, the others five
            head = vendor.raw(site, 2)
        except KernelImageError:
            continue
        sites.append(Site(site, 2 if head[0] == 0xEB or head == NOP2 else 5, "jump_label", target))


def _paravirt(vendor: VendorKernel, sites: list[Site]) -> None:
    """Linux before 6.8: ``struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }``."""
    bounds = _bounds(vendor, "__parainstructions", "__parainstructions_end")
    types = vendor.profile.types
    if bounds is None or types is None or not types.has_struct("paravirt_patch_site"):
        return
    size = types.struct_size("paravirt_patch_site")
    length_at = types.member_offset("paravirt_patch_site", "len")
    start, stop = bounds
    count = min((stop - start) // size, MAX_ENTRIES)
    raw = vendor.raw(start, count * size)
    for i in range(count):
        (instr,) = struct.unpack_from("<Q", raw, i * size)
        sites.append(Site(instr, raw[i * size + length_at], "paravirt"))


def _ftrace(vendor: VendorKernel, sites: list[Site], problems: list[str]) -> None:
    """``__mcount_loc``: the address of each ``call __fentry__`` (64-bit, in init data the vendor image still has)."""
    bounds = _bounds(vendor, "__start_mcount_loc", "__stop_mcount_loc")
    if bounds is None:
        return
    start, stop = bounds
    count = (stop - start) // 8
    if count > MAX_ENTRIES:
        problems.append(f"ftrace sites: {count} entries: not a kernel's")
        return
    try:
        raw = vendor.raw(start, count * 8)
    except KernelImageError as exc:
        problems.append(f"ftrace sites: {exc}")
        return
    sites.extend(Site(address, 5, "ftrace") for (address,) in struct.iter_unpack("<Q", raw))


#: tables of run-time constants (Linux 6.10+), by the prefix of their start symbol: kind, bytes at each site
RUNTIME_CONSTANTS = {"__start_runtime_ptr_": ("runtime_ptr", 8), "__start_runtime_shift_": ("runtime_shift", 1)}


#: the calls in ftrace's own trampolines that ftrace points at the callback list (or at the one callback)
FTRACE_CALLS = frozenset({"ftrace_call", "ftrace_regs_call"})


def _named_sites(vendor: VendorKernel, sites: list[Site], problems: list[str]) -> None:
    """The sites found by symbol name, in one pass over the names: static call trampolines
    (``__SCT__name``: the kernel rewrites their first instruction), the calls ftrace rewrites in its
    trampolines (``ftrace_call``, ``ftrace_regs_call``) and run-time constants
    (``runtime_const_ptr``/``runtime_const_shift`` immediates patched at boot, one table per constant:
    ``__start_runtime_ptr_NAME`` holds s32 offsets to each imm64, ``..._shift_NAME`` to each imm8)."""
    names = vendor.profile.symbols
    addresses = names.addresses
    for i in range(len(names)):
        name = names.name_at(i)
        if name.startswith("__SCT__"):
            sites.append(Site(addresses[i], TRAMPOLINE, "trampoline", 0, name))
            continue
        if name in FTRACE_CALLS:
            sites.append(Site(addresses[i], 5, "ftrace_call", 0, name))
            continue
        for prefix, (kind, length) in RUNTIME_CONSTANTS.items():
            if not name.startswith(prefix):
                continue
            constant = name[len(prefix) :]
            bounds = _bounds(vendor, name, "__stop_" + name[len("__start_") :])
            if bounds is None:
                continue
            try:
                sites.extend(Site(site, length, kind, 0, constant) for site, _ in _relative(vendor, bounds, 4))
            except KernelImageError as exc:
                problems.append(f"run-time constant {constant}: {exc}")
