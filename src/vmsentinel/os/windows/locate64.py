"""Finding a 64-bit NT kernel (Windows 10 x64) in guest memory alone, and the x64 ways of its service
table and debugger data block.

PML4. Windows maps each process's PML4 into itself, as 32-bit NT does its page directory, but since
Windows 10 1607 the entry that does it is random: any of the 256 kernel-half entries (``0x100`` to
``0x1FF``). A page whose kernel half holds exactly one present entry naming the page itself is a
candidate (two would not be a PML4 Windows built: such a page is left out, not guessed at).

Kernel. KASLR puts ``ntoskrnl.exe`` on a 2 MiB boundary in ``0xFFFFF800_00000000`` up to
``0xFFFFF808_00000000``: the mapped runs of that window are walked, each 2 MiB boundary in them is
probed for a PE32+ header whose export directory names the kernel.

The x64 service table's relative entries are read by ``views/services.py``'s ``service_table``.

KDBG. With ``KdpDataBlockEncoded`` set, ``KdDebuggerDataBlock`` is kept encoded word by word with two
boot-random keys (``KiWaitNever``, ``KiWaitAlways``) and the address of ``KdpDataBlockEncoded`` itself
(not the block's: that is what ``nt!KdCopyDataBlock`` XORs in, and Volatility 2's ``win8_kdbg.py``
too). :func:`decode_kdbg` does what ``KdCopyDataBlock`` does.

Everything read here is hostile: scans and tables are bounded, translations that fail are reasons.

    kernel = find_nt_kernel_x64(memory)     # NtKernel(base=0xfffff8045a200000, ..., self_map_index=0x1ed)
    space = PagingAddressSpace(memory, kernel.directory)
"""

from __future__ import annotations

import struct
from typing import TypedDict

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.arch.x86_64 import ADDR_MASK, P, PagingAddressSpace
from vmsentinel.errors import ProfileError, TranslationError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.windows.locate import KERNEL_NAMES, MAX_CANDIDATES, MAX_HEADER_PROBES, NtKernel, PeHeader, read_pe_header
from vmsentinel.os.windows.profile.profile import NtProfile

PAGE = 0x1000
#: the kernel-half PML4 entries the self-map may take
SELF_MAP_FIRST, SELF_MAP_LAST = 0x100, 0x1FF
#: where Windows 10 x64's KASLR puts the kernel image, and its alignment there
KASLR_START, KASLR_END = 0xFFFF_F800_0000_0000, 0xFFFF_F808_0000_0000
KERNEL_ALIGN = 1 << 21
MACHINE_AMD64 = 0x8664
#: physical memory read at a time by the PML4 scan
SCAN_CHUNK = 1 << 22
MASK64 = (1 << 64) - 1
KDBG_TAG = b"KDBG"
#: larger than any _KDDEBUGGER_DATA64 (Windows 10 17763: 0x380)
MAX_KDBG_SIZE = 0x1000
#: the _KDDEBUGGER_DATA64 members read, at their offsets (fixed by the debugger's ABI, wdbgexts.h)
KDBG_OWNER_TAG, KDBG_SIZE = 0x10, 0x14
KDBG_OFFSETS = {"KernBase": 0x18, "PsLoadedModuleList": 0x48, "PsActiveProcessHead": 0x50, "PspCidTable": 0x58}
KDBG_MIN_SIZE = 0x60


def self_map_index_x64(memory: PhysicalMemory, limit: int = MAX_CANDIDATES) -> list[tuple[int, int]]:
    """``(physical page, entry index)`` of each page that could be a Windows x64 PML4: exactly one present
    kernel-half entry names the page itself. At most ``limit`` (a hostile guest can forge such pages)."""
    found: list[tuple[int, int]] = []
    for rng in memory.ranges():
        start = (rng.start + PAGE - 1) & ~(PAGE - 1)
        for chunk in range(start, rng.end, SCAN_CHUNK):
            size = min(SCAN_CHUNK, rng.end - chunk) & ~(PAGE - 1)
            if size <= 0:
                continue
            data = memory.read(chunk, size)
            for offset in range(0, size, PAGE):
                index = _self_entry(data, offset, chunk + offset)
                if index is not None:
                    found.append((chunk + offset, index))
                    if len(found) >= limit:
                        return found
    return found


def _self_entry(data: bytes, offset: int, page: int) -> int | None:
    """The kernel-half entry of the page at ``offset`` in ``data`` that names ``page`` (present), or None
    when none or several do. Bits 16..47 of the frame are searched for as bytes first (a C-speed
    scan): only their hits are decoded."""
    needle = ((page >> 16) & 0xFFFF_FFFF).to_bytes(4, "little")
    first, end = offset + SELF_MAP_FIRST * 8, offset + (SELF_MAP_LAST + 1) * 8
    index = None
    at = data.find(needle, first + 2, end - 2)
    while at >= 0:
        entry_at = at - 2
        if (entry_at - offset) % 8 == 0:
            (entry,) = struct.unpack_from("<Q", data, entry_at)
            if entry & P and entry & ADDR_MASK == page:
                if index is not None:
                    return None  # two self-maps: not a PML4 Windows made
                index = (entry_at - offset) // 8
        at = data.find(needle, at + 1, end - 2)
    return index


def _own_index(memory: PhysicalMemory, root: int) -> int | None:
    try:
        return _self_entry(memory.read(root, PAGE), 0, root)
    except UnmappedPhysicalAddress:
        return None


def find_kernel_image_x64(
    space: VirtualReads, start: int = KASLR_START, end: int = KASLR_END, limit: int = MAX_HEADER_PROBES
) -> PeHeader | None:
    """The x64 NT kernel's image: a PE32+ (AMD64) header exporting ``ntoskrnl.exe`` on a 2 MiB boundary
    of a mapped run in ``[start, end)``; at most ``limit`` boundaries are probed."""
    probes = 0
    for mapping in space.walk_mappings(start, end).mappings:
        first = (max(mapping.vaddr, start) + KERNEL_ALIGN - 1) & ~(KERNEL_ALIGN - 1)
        for va in range(first, min(mapping.vend, end), KERNEL_ALIGN):
            probes += 1
            if probes > limit:
                return None
            try:
                if space.read(va, 2) != b"MZ":
                    continue
            except TranslationError:
                continue
            header = read_pe_header(space, va)
            if header is not None and header.machine == MACHINE_AMD64 and header.export_name.lower().encode() in KERNEL_NAMES:
                return header
    return None


def find_nt_kernel_x64(memory: PhysicalMemory, cr3: int | None = None) -> NtKernel:
    """The x64 kernel and a PML4 mapping it, from a live CPU's CR3 (tried first) or from memory alone."""
    candidates: list[tuple[int, int | None]] = []
    if cr3 is not None:
        candidates.append((cr3 & ADDR_MASK, _own_index(memory, cr3 & ADDR_MASK)))
    live = candidates[0][0] if candidates else None
    try:
        candidates += [(root, index) for root, index in self_map_index_x64(memory) if root != live]
    except UnmappedPhysicalAddress as exc:
        raise ProfileError(f"cannot scan memory for PML4 pages: {exc}") from None
    for root, index in candidates:
        header = find_kernel_image_x64(PagingAddressSpace(memory, root, levels=4))
        if header is not None:
            return NtKernel(header.base, root, False, header, self_map_index=index)
    raise ProfileError(
        f"no x64 NT kernel found: {len(candidates)} PML4 candidate{'' if len(candidates) == 1 else 's'} tried"
        f" (an AMD64 ntoskrnl.exe on a 2 MiB boundary in {KASLR_START:#x}..{KASLR_END:#x})"
    )


# -- KdDebuggerDataBlock ----------------------------------------------------------------------


def _rotl(value: int, count: int) -> int:
    count &= 63  # as the CPU's rol does
    return ((value << count) | (value >> (64 - count))) & MASK64 if count else value


def _bswap(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "little"), "big")


def decode_kdbg(raw: bytes, flag_address: int, wait_never: int, wait_always: int) -> bytes:
    """``raw`` (an encoded ``KdDebuggerDataBlock``) decoded as ``nt!KdCopyDataBlock`` does, word by
    word: ``w ^= KiWaitNever; w = rotl(w, KiWaitNever & 0xFF); w ^= flag_address | 0xFFFF000000000000;
    w = bswap(w); w ^= KiWaitAlways``. ``flag_address`` is where ``KdpDataBlockEncoded`` lies; a
    trailing part word is left out."""
    salt = (flag_address | 0xFFFF_0000_0000_0000) & MASK64
    out = bytearray()
    for (word,) in struct.iter_unpack("<Q", raw[: len(raw) & ~7]):
        word = _rotl(word ^ wait_never, wait_never & 0xFF)
        out += struct.pack("<Q", _bswap(word ^ salt) ^ wait_always)
    return bytes(out)


def encode_kdbg(plain: bytes, flag_address: int, wait_never: int, wait_always: int) -> bytes:
    """What ``nt!KdEncodeDataBlock`` leaves: the inverse of :func:`decode_kdbg` (tests build guests with it)."""
    salt = (flag_address | 0xFFFF_0000_0000_0000) & MASK64
    out = bytearray()
    for (word,) in struct.iter_unpack("<Q", plain[: len(plain) & ~7]):
        word = _bswap(word ^ wait_always) ^ salt
        out += struct.pack("<Q", _rotl(word, 64 - ((wait_never & 0xFF) & 63)) ^ wait_never)
    return bytes(out)


class KdbgFields(TypedDict):
    OwnerTag: str
    Size: int
    KernBase: int
    PsLoadedModuleList: int
    PsActiveProcessHead: int
    PspCidTable: int


def kdbg_fields(decoded: bytes) -> KdbgFields | None:
    """The members of a decoded ``_KDDEBUGGER_DATA64`` that locate the kernel's lists; None when
    ``decoded`` is too short to hold them. The tag is not checked here (``KDBG`` when the decoding was right)."""
    if len(decoded) < KDBG_MIN_SIZE:
        return None

    def u64(name: str) -> int:
        return int.from_bytes(decoded[KDBG_OFFSETS[name] : KDBG_OFFSETS[name] + 8], "little")

    return KdbgFields(
        OwnerTag=decoded[KDBG_OWNER_TAG : KDBG_OWNER_TAG + 4].decode("latin-1"),
        Size=int.from_bytes(decoded[KDBG_SIZE : KDBG_SIZE + 4], "little"),
        KernBase=u64("KernBase"),
        PsLoadedModuleList=u64("PsLoadedModuleList"),
        PsActiveProcessHead=u64("PsActiveProcessHead"),
        PspCidTable=u64("PspCidTable"),
    )


def read_kdbg(space: VirtualReads, profile: NtProfile, kernel_base: int) -> tuple[KdbgFields | None, list[str]]:
    """The kernel's ``KdDebuggerDataBlock``, decoded when ``KdpDataBlockEncoded`` says it is encoded (a
    block already in the clear, as some acquisition tools leave it, is read as it is)."""
    try:
        block = kernel_base + profile.rva("KdDebuggerDataBlock")
        flag = kernel_base + profile.rva("KdpDataBlockEncoded")
        never_at, always_at = kernel_base + profile.rva("KiWaitNever"), kernel_base + profile.rva("KiWaitAlways")
    except ProfileError as exc:
        return None, [f"the profile lacks what the KDBG needs: {exc}"]
    try:
        head = space.read(block, KDBG_MIN_SIZE)
        encoded = head[KDBG_OWNER_TAG : KDBG_OWNER_TAG + 4] != KDBG_TAG and space.read(flag, 1) != b"\0"
        keys = (flag, space.read_u64(never_at), space.read_u64(always_at)) if encoded else None
        if keys is not None:
            head = decode_kdbg(head, *keys)
        fields = kdbg_fields(head)
        if fields is None or fields["OwnerTag"] != KDBG_TAG.decode():
            return None, [f"no KDBG at {block:#x} ({'encoded' if encoded else 'in the clear'}): its tag does not read KDBG"]
        problems = []
        size = fields["Size"]
        if size > MAX_KDBG_SIZE:
            problems.append(f"the KDBG claims {size} bytes; reading the first {MAX_KDBG_SIZE:#x}")
        raw = space.read(block, (max(KDBG_MIN_SIZE, min(size, MAX_KDBG_SIZE)) + 7) & ~7)
    except TranslationError as exc:
        return None, [f"the KDBG at {block:#x} cannot be read: {exc}"]
    fields = kdbg_fields(decode_kdbg(raw, *keys) if keys is not None else raw)
    if fields is not None and fields["KernBase"] != kernel_base:
        problems.append(f"the KDBG names the kernel at {fields['KernBase']:#x}, not {kernel_base:#x}")
    return fields, problems
