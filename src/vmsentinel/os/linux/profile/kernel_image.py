"""Kernel image files: ``vmlinux`` (ELF) or a compressed ``vmlinuz`` (bzImage).

A bzImage carries the kernel as a compressed ELF payload; the setup header says
where (``payload_offset``/``payload_length`` at 0x248). The compression is
recognised by its magic and undone with kept libraries (xz/lzma, gzip, bzip2
from the standard library; zstd with ``zstandard``; lz4 with ``lz4``)::

    image = KernelImage.open("/boot/vmlinuz-6.12.9-amd64")
    image.section(".BTF")        # bytes
    image.section_address(".rodata")
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmsentinel.errors import KernelImageError

MAX_KERNEL_BYTES = 1 << 30  # a decompressed kernel larger than this is hostile or not a kernel


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    offset: int
    size: int


def _decompress(payload: bytes) -> bytes:
    try:
        if payload[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MAX_KERNEL_BYTES).decompress(payload)
        if payload[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload))
            return reader.read(MAX_KERNEL_BYTES)
        if payload[:2] == b"\x1f\x8b":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return d.decompress(payload, MAX_KERNEL_BYTES)
        if payload[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(payload, MAX_KERNEL_BYTES)
        if payload[:4] == b"\x02\x21\x4c\x18":
            return _lz4_legacy(payload)
        if payload[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=MAX_KERNEL_BYTES).decompress(payload)
    except (lzma.LZMAError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise KernelImageError(f"kernel payload does not decompress: {exc}") from exc
    raise KernelImageError(f"unknown kernel payload compression (magic {payload[:6].hex()})")


def _lz4_legacy(payload: bytes) -> bytes:
    """The kernel's lz4 "legacy" frames: magic, then (u32 size, block) repeated, blocks of 8 MiB."""
    import lz4.block

    out = bytearray()
    pos = 4
    while pos + 4 <= len(payload) and len(out) < MAX_KERNEL_BYTES:
        (size,) = struct.unpack_from("<I", payload, pos)
        if size == 0x184C2102 or size == 0 or pos + 4 + size > len(payload):
            break
        out += lz4.block.decompress(payload[pos + 4 : pos + 4 + size], uncompressed_size=8 << 20)
        pos += 4 + size
    return bytes(out)


def _bzimage_payload(data: bytes) -> bytes:
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise KernelImageError("not a bzImage (no HdrS setup header)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    if payload_length == 0 or start + payload_length > len(data):
        raise KernelImageError("bzImage payload lies outside the file")
    return data[start : start + payload_length]


class KernelImage:
    """An uncompressed kernel ELF in memory, with its sections."""

    def __init__(self, elf_bytes: bytes, path: str = "") -> None:
        self.path = path
        self.data = elf_bytes
        try:
            elf = ELFFile(io.BytesIO(elf_bytes))
            self.sections = {
                s.name: Section(s.name, s["sh_addr"], s["sh_offset"], s["sh_size"])
                for s in elf.iter_sections()
                if s["sh_type"] != "SHT_NOBITS"
            }
            self.segments = [
                (seg["p_vaddr"], seg["p_offset"], seg["p_filesz"]) for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"
            ]
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
        if data[:2] == b"\x1f\x8b":  # a gzip'd vmlinux (some distributions ship vmlinux.gz)
            return cls(gzip.decompress(data), str(path))
        return cls(_decompress(_bzimage_payload(data)), str(path))

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
