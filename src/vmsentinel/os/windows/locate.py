"""Finding an NT kernel in guest memory alone: a page directory, then the kernel's image.

Page directory. A 32-bit NT kernel maps each process's page directory into itself (the self-map):
entry ``0x300`` of a non-PAE directory names the directory's own page, which makes such pages easy
to find by scanning physical memory 4 KiB at a time and checking one word. The candidates are then
tried: the first that maps an NT kernel image in the system half names the kernel, and of all that
map its header the one mapping most of its image is kept (every live process maps the kernel the same
way, so any of theirs will do for kernel reads; a stale directory left in RAM by the boot loader or an
exited process may map the header and not the code). A live guest's CR3, when known, is tried first.

PAE. A PAE NT kernel has four page directories per process (one per GB) and maps them at
``0xC0600000``: entries 0..3 of the top GB's directory (PD3) name PD0..PD3, so PD3's entry 3 names
its own page. Such pages are found as above; what CR3 holds is the page-directory-pointer table
(PDPT) naming the four, 32-byte aligned below 4 GiB, which is found by one more pass over memory:
a 32-byte slot whose four present entries name PD0..PD3 in order (their flags are not compared).
Non-PAE candidates are tried first; a live CR3 that is not page aligned can only be a PDPT and is
tried first as one.

Kernel. In the system half (``0x80000000`` up), the first pages of every mapped run are looked at for
a PE header whose export directory names ``ntoskrnl.exe`` (or one of its multiprocessor and PAE
names). Its header gives the time stamp and :func:`layout_digest` that choose the profile.

Everything read here is hostile: headers are checked against the sizes around them, and the scans
are bounded.

    kernel = find_nt_kernel(memory)          # NtKernel(base=0x80400000, directory=0x33cd000, ...)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.arch.x86_32 import PAE_FRAME, PAE_ROOT_MASK, PDPTE_RESERVED, PS, P, PagingAddressSpace32
from vmsentinel.errors import ProfileError, TranslationError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory

SELF_MAP_INDEX = 0x300
SYSTEM_START, SYSTEM_END = 0x8000_0000, 1 << 32
KERNEL_NAMES = (b"ntoskrnl.exe", b"ntkrnlpa.exe", b"ntkrnlmp.exe", b"ntkrpamp.exe")
#: candidate directories tried at most (a hostile guest could fill RAM with self-mapping pages)
MAX_CANDIDATES = 64
#: pages looked at for a kernel header in one candidate address space
MAX_HEADER_PROBES = 1 << 16
#: pages of a kernel image counted when directories are compared (64 MiB; ntoskrnl is a few MiB)
MAX_IMAGE_PAGES = 1 << 14
#: PAE: the entry of the top GB's page directory (PD3) that names PD3 itself (entries 0..3 name PD0..PD3)
PAE_SELF_MAP_INDEX = 3
#: PAE: PDPTs kept per PD3 candidate (a hostile guest could copy one PDPT all over RAM), and 32-byte
#: slots whose four entries look like PDPT entries checked at most in the whole scan
MAX_PDPTS_PER_DIRECTORY, MAX_PDPT_CHECKS = 4, 1 << 20
#: a PDPT is what a 32-bit CR3 holds: below 4 GiB
PDPT_END = 1 << 32
#: physical memory read at a time by the scans
SCAN_CHUNK = 1 << 22
#: the low byte of an entry that can be a PDPT entry (present, no reserved bit 1, 2, 5..7; PWT, PCD
#: free) -> 1, any other -> 0
_PDPTE_LOW_BYTE = bytes(1 if value & 0xE7 == P else 0 for value in range(256))


@dataclass(frozen=True)
class PeHeader:
    base: int
    timestamp: int
    size_of_image: int
    machine: int
    layout: str
    export_name: str
    #: the program database the image was linked with (its CodeView record: ``ntkrnlmp.pdb``) and that
    #: build's id (GUID and age, as Volatility names its ISF files: ``3844DBB9...FA-2``); "" when none
    pdb: str = ""
    pdb_id: str = ""


@dataclass(frozen=True)
class NtKernel:
    """Where the kernel is: its image's base and header, and a page directory that maps it."""

    base: int
    directory: int
    pae: bool
    header: PeHeader
    #: x64: the PML4 entry that maps the PML4 itself (randomised from Windows 10 1607 on); None for 32-bit NT
    self_map_index: int | None = None


def self_mapping_directories(memory: PhysicalMemory, limit: int = MAX_CANDIDATES) -> list[int]:
    """Physical pages whose entry ``0x300`` names the page itself, present: non-PAE NT page directories."""
    found = []
    for rng in memory.ranges():
        start = (rng.start + 0xFFF) & ~0xFFF
        for chunk in range(start, rng.end, 1 << 22):
            size = min(1 << 22, rng.end - chunk) & ~0xFFF
            if size <= 0:
                continue
            data = memory.read(chunk, size)
            for offset in range(0, size, 0x1000):
                (entry,) = struct.unpack_from("<I", data, offset + SELF_MAP_INDEX * 4)
                if entry & P and entry & 0xFFFF_F000 == chunk + offset:
                    found.append(chunk + offset)
                    if len(found) >= limit:
                        return found
    return found


def pae_self_maps(memory: PhysicalMemory, limit: int = MAX_CANDIDATES) -> list[tuple[int, int, int, int]]:
    """``(PD0, PD1, PD2, PD3)`` of each physical page PD3 that could be a PAE NT top-GB page directory:
    its entry 3 names the page itself, entries 0..2 name three other distinct pages of RAM, all four
    present and none a large page. At most ``limit`` (a hostile guest can forge such pages)."""
    found: list[tuple[int, int, int, int]] = []
    for rng in memory.ranges():
        start = (rng.start + 0xFFF) & ~0xFFF
        for chunk in range(start, rng.end, SCAN_CHUNK):
            size = min(SCAN_CHUNK, rng.end - chunk) & ~0xFFF
            if size <= 0:
                continue
            data = memory.read(chunk, size)
            for offset in range(0, size, 0x1000):
                page = chunk + offset
                (entry,) = struct.unpack_from("<Q", data, offset + PAE_SELF_MAP_INDEX * 8)
                if not entry & P or entry & PAE_FRAME != page:
                    continue
                directories = _pae_directories_named(memory, struct.unpack_from("<4Q", data, offset), page)
                if directories is not None:
                    found.append(directories)
                    if len(found) >= limit:
                        return found
    return found


def _pae_directories_named(memory: PhysicalMemory, entries: tuple[int, ...], page: int) -> tuple[int, int, int, int] | None:
    """PD0..PD3 as entries 0..3 of ``page`` name them, or None when they cannot be a PAE self-map."""
    frames = tuple(e & PAE_FRAME for e in entries)
    if any(not e & P or e & PS for e in entries) or len(set(frames)) != 4 or frames[PAE_SELF_MAP_INDEX] != page:
        return None
    if not all(memory.is_valid(frame, 0x1000) for frame in frames):
        return None
    return frames[0], frames[1], frames[2], frames[3]


def pae_directories(memory: PhysicalMemory, limit: int = MAX_CANDIDATES) -> list[int]:
    """Physical addresses of PAE page-directory-pointer tables that name a PAE NT self-map's four
    directories (:func:`pae_self_maps`) in order, in address order: what CR3 would hold for that
    process. At most ``limit``, and :data:`MAX_PDPTS_PER_DIRECTORY` naming the same directories.

    One pass over memory below 4 GiB whatever the number of candidates: the low byte of each entry of
    every 32-byte slot is taken out (strided slices), the slots whose four low bytes could all be PDPT
    entries are kept (a translation and an AND of big integers, in C), and only those few are read
    entry by entry."""
    by_top = {top[3]: top for top in pae_self_maps(memory, limit)}
    if not by_top:
        return []
    kept: dict[int, int] = {}
    found: list[int] = []
    checks = 0
    for rng in memory.ranges():
        start, end = (rng.start + 31) & ~31, min(rng.end, PDPT_END)
        for chunk in range(start, end, SCAN_CHUNK):
            size = min(SCAN_CHUNK, end - chunk) & ~31
            if size <= 0:
                continue
            data = memory.read(chunk, size)
            slots = size // 32
            mask = (1 << (8 * slots)) - 1
            for entry in range(4):
                mask &= int.from_bytes(data[entry * 8 :: 32].translate(_PDPTE_LOW_BYTE), "little")
            if not mask:
                continue
            likely = mask.to_bytes(slots, "little")
            slot = likely.find(1)
            while slot >= 0:
                checks += 1
                if checks > MAX_PDPT_CHECKS:
                    return found
                entries = struct.unpack_from("<4Q", data, slot * 32)
                top = by_top.get(entries[3] & PAE_FRAME)
                if (
                    top is not None
                    and not any(e & PDPTE_RESERVED for e in entries)
                    and tuple(e & PAE_FRAME for e in entries) == top
                    and kept.get(top[3], 0) < MAX_PDPTS_PER_DIRECTORY
                ):
                    kept[top[3]] = kept.get(top[3], 0) + 1
                    found.append(chunk + slot * 32)
                    if len(found) >= limit:
                        return found
                slot = likely.find(1, slot + 1)
    return found


def read_pe_header(space: VirtualReads, base: int) -> PeHeader | None:
    """The PE header of an image at ``base``, or None when there is none (or it is malformed); PE32 or
    PE32+ (x64), in any address space."""
    import pefile

    from vmsentinel.os.windows.profile.pe_debug import layout_digest

    try:
        head = space.read(base, 0x1000)
    except TranslationError:
        return None
    if head[:2] != b"MZ":
        return None
    (e_lfanew,) = struct.unpack_from("<I", head, 0x3C)
    if not 0x40 <= e_lfanew <= 0x1000 - 0x200 or head[e_lfanew : e_lfanew + 4] != b"PE\0\0":
        return None
    try:
        pe = pefile.PE(data=head, fast_load=True)
    except pefile.PEFormatError:
        return None
    name = b""
    export_dir = pe.OPTIONAL_HEADER.DATA_DIRECTORY[0] if len(pe.OPTIONAL_HEADER.DATA_DIRECTORY) > 0 else None
    if export_dir is not None and 0 < export_dir.VirtualAddress < pe.OPTIONAL_HEADER.SizeOfImage:
        try:
            (name_rva,) = struct.unpack_from("<I", space.read(base + export_dir.VirtualAddress + 12, 4))
            if 0 < name_rva < pe.OPTIONAL_HEADER.SizeOfImage:
                name = space.read_cstring(base + name_rva, 64)
        except TranslationError:
            name = b""
    pdb, pdb_id = codeview(space, base, pe.OPTIONAL_HEADER.DATA_DIRECTORY, pe.OPTIONAL_HEADER.SizeOfImage)
    return PeHeader(
        base,
        pe.FILE_HEADER.TimeDateStamp,
        pe.OPTIONAL_HEADER.SizeOfImage,
        pe.FILE_HEADER.Machine,
        layout_digest(pe),
        name.decode("latin-1", "replace"),
        pdb,
        pdb_id,
    )


#: the debug data directory's index, a CodeView entry's type, and the RSDS record's size before its name
DEBUG_DIRECTORY, DEBUG_TYPE_CODEVIEW, RSDS_HEADER = 6, 2, 24
MAX_DEBUG_ENTRIES = 16


def codeview(space: VirtualReads, base: int, directories: list[object], size_of_image: int) -> tuple[str, str]:
    """The PDB name and ``GUID-age`` id in the image's CodeView (RSDS) debug record, ("", "") when it has
    none or it cannot be read: what ties a kernel to the ISF made from Microsoft's symbols."""
    if len(directories) <= DEBUG_DIRECTORY:
        return "", ""
    entry = directories[DEBUG_DIRECTORY]
    rva, length = getattr(entry, "VirtualAddress", 0), getattr(entry, "Size", 0)
    if not 0 < rva < size_of_image or length <= 0:
        return "", ""
    try:
        raw = space.read(base + rva, min(length, 28 * MAX_DEBUG_ENTRIES))
        for at in range(0, len(raw) - 27, 28):
            kind, _size, data_rva = struct.unpack_from("<I I I", raw, at + 12)
            if kind != DEBUG_TYPE_CODEVIEW or not 0 < data_rva < size_of_image:
                continue
            record = space.read(base + data_rva, RSDS_HEADER)
            if record[:4] != b"RSDS":
                continue
            d1, d2, d3 = struct.unpack_from("<IHH", record, 4)
            age = struct.unpack_from("<I", record, 20)[0]
            guid = f"{d1:08X}{d2:04X}{d3:04X}{record[12:20].hex().upper()}"
            name = space.read_cstring(base + data_rva + RSDS_HEADER, 128).decode("latin-1", "replace")
            return name.rsplit("\\", 1)[-1], f"{guid}-{age}"
    except TranslationError:
        return "", ""
    return "", ""


def find_kernel_image(space: PagingAddressSpace32, limit: int = MAX_HEADER_PROBES) -> PeHeader | None:
    """The NT kernel's image in the system half of ``space``."""
    probes = 0
    for mapping in space.walk_mappings(SYSTEM_START, SYSTEM_END).mappings:
        for page in range(mapping.vaddr, mapping.vend, 0x1000):
            probes += 1
            if probes > limit:
                return None
            try:
                if space.read(page, 2) != b"MZ":
                    continue
            except TranslationError:
                continue
            header = read_pe_header(space, page)
            if header is not None and header.export_name.lower().encode() in KERNEL_NAMES:
                return header
    return None


def find_nt_kernel(memory: PhysicalMemory, cr3: int | None = None) -> NtKernel:
    """The kernel and a directory mapping it, from a live CPU's CR3 or from memory alone: non-PAE
    directories first, then PAE PDPTs (a CR3 that is not page aligned is tried as a PDPT first)."""
    tried_pae: list[int] = []
    if cr3 is not None and cr3 & PAE_ROOT_MASK & 0xFFF:  # only a PDPT is not page aligned
        tried_pae.append(cr3 & PAE_ROOT_MASK)
        kernel = _pae_kernel(memory, tried_pae[0])
        if kernel is not None:
            return kernel
    candidates = [cr3 & 0xFFFF_F000] if cr3 is not None else []
    try:
        candidates += [d for d in self_mapping_directories(memory) if d not in candidates]
    except UnmappedPhysicalAddress as exc:
        raise ProfileError(f"cannot scan memory for page directories: {exc}") from None
    for i, directory in enumerate(candidates):
        header = find_kernel_image(PagingAddressSpace32(memory, directory))
        if header is not None:
            best = best_directory(header, [(d, PagingAddressSpace32(memory, d)) for d in candidates[i:]])
            return NtKernel(header.base, best, False, header)
    pdpts = [cr3 & PAE_ROOT_MASK] if cr3 is not None and not tried_pae else []
    try:
        pdpts += [d for d in pae_directories(memory) if d not in pdpts and d not in tried_pae]
    except UnmappedPhysicalAddress as exc:
        raise ProfileError(f"cannot scan memory for PAE page directories: {exc}") from None
    for i, pdpt in enumerate(pdpts):
        kernel = _pae_kernel(memory, pdpt)
        if kernel is not None:
            spaces = [(d, PagingAddressSpace32(memory, d, pae=True)) for d in pdpts[i:]]
            return NtKernel(kernel.base, best_directory(kernel.header, spaces), True, kernel.header)
    tables = len(tried_pae) + len(pdpts)
    raise ProfileError(
        f"no NT kernel found: {len(candidates)} page director{'y' if len(candidates) == 1 else 'ies'} and"
        f" {tables} PAE page-directory-pointer table{'' if tables == 1 else 's'} tried"
        " (32-bit NT kernels, PAE or not, are found from memory alone here; 64-bit ones elsewhere)"
    )


def image_pages_mapped(space: VirtualReads, base: int, size: int, limit: int = MAX_IMAGE_PAGES) -> int:
    """How many pages of the image at ``base`` (``size`` bytes, at most ``limit`` pages looked at) ``space`` maps."""
    mapped = 0
    for page in range(base, base + min(size, limit << 12), 0x1000):
        try:
            space.translate(page)
        except TranslationError:
            continue
        mapped += 1
    return mapped


def best_directory(header: PeHeader, spaces: Sequence[tuple[int, VirtualReads]]) -> int:
    """Of the directories (the first maps ``header``), the one mapping most of the kernel's image: a stale
    directory left in RAM (the boot loader's, an exited process's) may map the kernel's header and not its
    code, and whichever comes first in memory must not decide what the views read through."""
    scored: list[tuple[int, int, int]] = []
    for directory, space in spaces[:MAX_CANDIDATES]:
        try:
            if space.read(header.base, 2) != b"MZ":
                continue
        except TranslationError:
            continue
        scored.append((image_pages_mapped(space, header.base, header.size_of_image), -len(scored), directory))
    return max(scored)[2] if scored else spaces[0][0]


def _pae_kernel(memory: PhysicalMemory, pdpt: int) -> NtKernel | None:
    header = find_kernel_image(PagingAddressSpace32(memory, pdpt, pae=True))
    return NtKernel(header.base, pdpt, True, header) if header is not None else None
