"""Finding an NT kernel in guest memory alone: a page directory, then the kernel's image.

Page directory. A 32-bit NT kernel maps each process's page directory into itself (the self-map):
entry ``0x300`` of a non-PAE directory names the directory's own page, which makes such pages easy
to find by scanning physical memory 4 KiB at a time and checking one word. The candidates are then
tried: the one that maps an NT kernel image in the system half is kept (every process maps the
kernel the same way, so any process's directory will do for kernel reads). A live guest's CR3, when
known, is tried first.

Kernel. In the system half (``0x80000000`` up), the first pages of every mapped run are looked at for
a PE header whose export directory names ``ntoskrnl.exe`` (or one of its multiprocessor and PAE
names). Its header gives the time stamp and :func:`layout_digest` that choose the profile.

Everything read here is hostile: headers are checked against the sizes around them, and the scans
are bounded.

    kernel = find_nt_kernel(memory)          # NtKernel(base=0x80400000, directory=0x33cd000, ...)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.arch.x86_32 import P, PagingAddressSpace32
from vmsentinel.errors import ProfileError, TranslationError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory

SELF_MAP_INDEX = 0x300
SYSTEM_START, SYSTEM_END = 0x8000_0000, 1 << 32
KERNEL_NAMES = (b"ntoskrnl.exe", b"ntkrnlpa.exe", b"ntkrnlmp.exe", b"ntkrpamp.exe")
#: candidate directories tried at most (a hostile guest could fill RAM with self-mapping pages)
MAX_CANDIDATES = 64
#: pages looked at for a kernel header in one candidate address space
MAX_HEADER_PROBES = 1 << 16


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
    """The kernel and a directory mapping it, from a live CPU's CR3 or from memory alone."""
    candidates = [cr3 & 0xFFFF_F000] if cr3 is not None else []
    try:
        candidates += [d for d in self_mapping_directories(memory) if d not in candidates]
    except UnmappedPhysicalAddress as exc:
        raise ProfileError(f"cannot scan memory for page directories: {exc}") from None
    for directory in candidates:
        space = PagingAddressSpace32(memory, directory)
        header = find_kernel_image(space)
        if header is not None:
            return NtKernel(header.base, directory, False, header)
    raise ProfileError(
        f"no NT kernel found: {len(candidates)} page director{'y' if len(candidates) == 1 else 'ies'} tried"
        " (32-bit non-PAE NT kernels are found from memory alone; PAE and 64-bit ones not yet)"
    )
