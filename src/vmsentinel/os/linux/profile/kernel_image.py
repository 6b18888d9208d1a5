"""Kernel image files: ``vmlinux`` (ELF) or a compressed ``vmlinuz`` (bzImage).

A bzImage carries the kernel as a compressed ELF payload; the setup header says
where (``payload_offset``/``payload_length`` at 0x248). The compression is
recognised by its magic and undone by :mod:`vmsentinel.trust.compression` (xz,
lzma, gzip, bzip2, zstd, lz4), capped at MAX_KERNEL_BYTES: an image may come
from a guest, and a decompression bomb must fail, not fill memory::

    image = KernelImage.open("/boot/vmlinuz-6.12.9-amd64")
    image.section(".BTF")        # bytes
    image.section_address(".rodata")
    image.relocations()          # where KASLR adds its slide (a vmlinuz carries the table after the ELF)
"""

from __future__ import annotations

import io
import mmap
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmsentinel.errors import KernelImageError
from vmsentinel.trust.compression import MAGICS, codec_of, decompress

MAX_KERNEL_BYTES = 1 << 30  # a decompressed kernel larger than this is hostile or not a kernel


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    offset: int
    size: int


def _decompress(payload: bytes, where: str) -> bytes:
    codec = codec_of(payload[:8])
    if codec is None:
        raise KernelImageError(f"{where}: unknown kernel payload compression (magic {payload[:6].hex()})")
    # one stream only: the kernel build appends the uncompressed size after it, which is no stream
    return decompress(
        payload,
        codec=codec,
        limit=MAX_KERNEL_BYTES,
        error=KernelImageError,
        what=f"{where}: kernel payload does not decompress",
        concatenated=False,
    )


def _bzimage_payload(data: bytes) -> bytes:
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise KernelImageError("not a bzImage (no HdrS setup header)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    if payload_length == 0 or start + payload_length > len(data):
        raise KernelImageError("bzImage payload lies outside the file")
    return data[start : start + payload_length]


@dataclass(frozen=True)
class Relocations:
    """Link-time addresses the boot code adds the KASLR slide to: 32-bit fields (``add32``), 32-bit
    fields it subtracts it from (``sub32``: per-CPU references, until Linux 6.15) and 64-bit fields
    (``add64``). Each list is sorted as the build tool wrote it."""

    add32: array[int]
    sub32: array[int]
    add64: array[int]

    def __len__(self) -> int:
        return len(self.add32) + len(self.sub32) + len(self.add64)


#: a relocation table longer than this many entries is not a kernel's (a 6.12 kernel has ~250 000)
MAX_RELOCATIONS = 1 << 22


class KernelImage:
    """An uncompressed kernel ELF in memory (or mapped from a file: :meth:`mapped`), with its sections."""

    def __init__(self, elf_bytes: bytes | mmap.mmap, path: str = "") -> None:
        self.path = path
        self.data = elf_bytes
        try:
            elf = ELFFile(elf_bytes if isinstance(elf_bytes, mmap.mmap) else io.BytesIO(elf_bytes))
            self.sections = {
                s.name: Section(s.name, s["sh_addr"], s["sh_offset"], s["sh_size"])
                for s in elf.iter_sections()
                if s["sh_type"] != "SHT_NOBITS"
            }
            self.segments = [
                (seg["p_vaddr"], seg["p_offset"], seg["p_filesz"]) for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"
            ]
            #: where the ELF ends (a vmlinuz payload carries the relocation table after it)
            self.elf_end = max(
                [elf["e_shoff"] + elf["e_shnum"] * elf["e_shentsize"], elf["e_phoff"] + elf["e_phnum"] * elf["e_phentsize"]]
                + [s.offset + s.size for s in self.sections.values()]
                + [offset + size for _, offset, size in self.segments]
            )
        except (ELFError, struct.error, ValueError) as exc:
            raise KernelImageError(f"{path or 'kernel'}: not a readable ELF: {exc}") from exc
        for s in self.sections.values():
            if s.offset + s.size > len(elf_bytes):
                raise KernelImageError(f"section {s.name} runs past the end of the kernel ELF")

    @classmethod
    def open(cls, path: str | Path) -> KernelImage:
        data = Path(path).read_bytes()
        if data[:4] == b"\x7fELF":
            return cls(data, str(path))
        if data[:2] == MAGICS["gzip"]:  # a gzip'd vmlinux (some distributions ship vmlinux.gz)
            elf = decompress(data, codec="gzip", limit=MAX_KERNEL_BYTES, error=KernelImageError, what=f"{path}: gzip'd vmlinux")
            return cls(elf, str(path))
        return cls(_decompress(_bzimage_payload(data), str(path)), str(path))

    @classmethod
    def mapped(cls, elf_file: str | Path, path: str = "") -> KernelImage:
        """An uncompressed ELF file (with whatever follows it, as a vmlinuz payload has) mapped read-only:
        its pages are the page cache's, shared by every process that maps the file, and not counted in
        any one process's own memory. ``path`` names the image in messages (default: the file)."""
        with open(elf_file, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise KernelImageError(f"{elf_file}: not an uncompressed kernel ELF")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(data, path or str(elf_file))

    def section(self, name: str) -> bytes:
        s = self.sections.get(name)
        if s is None:
            raise KernelImageError(f"{self.path or 'kernel'} has no {name} section")
        return self.data[s.offset : s.offset + s.size]

    def read_virtual(self, address: int, length: int, allow_short: bool = False) -> bytes:
        """Bytes at a link-time virtual address, from the PT_LOAD segments (fewer at a segment's end if allowed)."""
        for vaddr, offset, size in self.segments:
            if vaddr <= address < vaddr + size and (allow_short or address + length <= vaddr + size):
                take = min(length, vaddr + size - address)
                return self.data[offset + address - vaddr : offset + address - vaddr + take]
        raise KernelImageError(f"{address:#x} is not in the kernel image's loaded segments")

    def relocations(self) -> Relocations:
        """The relocation table the build appends to the ELF in a vmlinuz (arch/x86/tools/relocs): 32-bit
        words after the ELF, forward: 0, the 64-bit list, [0, the inverse 32-bit list,] 0, the 32-bit list.
        Each word is a link-time address, sign-extended from 32 bits."""
        where = self.path or "kernel"
        tail = self.data[self.elf_end :]
        words = array("I", tail[: len(tail) // 4 * 4])
        if len(tail) < 8 or words[0] != 0:
            raise KernelImageError(f"{where}: no relocation table after the kernel ELF (give the vmlinuz, not a vmlinux)")
        if len(words) > MAX_RELOCATIONS:
            raise KernelImageError(f"{where}: relocation table of {len(words)} words: not a kernel's")
        zeros = [i for i, w in enumerate(words) if w == 0]
        if len(zeros) == 3:
            lists = (words[zeros[2] + 1 :], words[zeros[1] + 1 : zeros[2]], words[1 : zeros[1]])
        elif len(zeros) == 2:
            lists = (words[zeros[1] + 1 :], array("I"), words[1 : zeros[1]])
        else:
            raise KernelImageError(f"{where}: relocation table has {len(zeros)} terminators, not 2 or 3")
        add32, sub32, add64 = (array("Q", sorted(_sign_extend(w) for w in ws)) for ws in lists)
        for address in (*add32[:1], *add32[-1:], *add64[:1], *add64[-1:]):
            if not self._in_segments(address):
                raise KernelImageError(f"{where}: relocation at {address:#x} lies outside the kernel")
        return Relocations(add32, sub32, add64)

    def _in_segments(self, address: int) -> bool:
        return any(vaddr <= address < vaddr + size for vaddr, _, size in self.segments)

    def build_id(self) -> str | None:
        """The GNU build id from ``.notes``."""
        try:
            notes = self.section(".notes")
        except KernelImageError:
            return None
        return parse_build_id(notes)


def parse_build_id(notes: bytes) -> str | None:
    """Find NT_GNU_BUILD_ID (type 3, name "GNU") in a notes blob; bounded by its length."""
    pos = 0
    for _ in range(256):
        if pos + 12 > len(notes):
            return None
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name_end = pos + 12 + ((namesz + 3) & ~3)
        desc_end = name_end + ((descsz + 3) & ~3)
        if desc_end > len(notes) or namesz > 256 or descsz > 256:
            return None
        if ntype == 3 and notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0") == b"GNU":
            return notes[name_end : name_end + descsz].hex()
        pos = desc_end
    return None


def _sign_extend(word: int) -> int:
    """A relocation word as the 64-bit address it stands for (kernel addresses are negative)."""
    return word | 0xFFFF_FFFF_0000_0000 if word & 0x8000_0000 else word
