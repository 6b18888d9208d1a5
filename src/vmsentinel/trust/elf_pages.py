"""What a file is (executable, shared library, kernel module, or no code) and the pages it maps.

The sentinel compares guest pages with allowlisted hashes, so each page of an executable
segment is hashed as a mapping shows it, not as the file holds it: whole file pages around
an unaligned segment, zeros past the end of the file, and bss zeroed as the loader does.
Any ELF that is unusable raises :class:`AllowlistError`, which the builder turns into "skip
this one file and say why", because one bad file must not stop a whole distribution::

    found = examine("/usr/bin/ls", data)   # CodeFile(kind="executable", pages={0x4000: ...}) or None
    found.pages[0x4000] == page_hash(mapped_page)
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile

from vmsentinel.errors import AllowlistError
from vmsentinel.trust.allowlist import MODULE_NAME, PAGE_SIZE, page_hash
from vmsentinel.trust.compression import codec_of
from vmsentinel.trust.kernel_modules import decompress_module, module_name, module_stem

ELF_MAGIC = b"\x7fELF"
_PF_X = 1


@dataclass
class CodeFile:
    """What one file's bytes turned out to be, whatever its path (hard links share it)."""

    sha256: str
    kind: str
    pages: dict[int, str]
    module: str | None = None
    module_sha256: str | None = None


def may_be_code(paths: list[str], head: bytes) -> bool:
    """From a file's first 8 bytes: ELF, or a compressed file named like a module. Anything else is not code."""
    if head.startswith(ELF_MAGIC):
        return True
    return codec_of(head) is not None and any(module_stem(p) is not None for p in paths)


def examine(path: str, data: bytes) -> CodeFile | None:
    """Executable, shared library, kernel module, or None for anything else."""
    stem = module_stem(path)
    elf = data
    if stem is not None and not data.startswith(ELF_MAGIC):
        codec = codec_of(data[:8])
        if codec is None:
            return None
        elf = decompress_module(data, codec)
    if not elf.startswith(ELF_MAGIC):
        return None
    try:
        return _examine_elf(data, elf, stem)
    except AllowlistError:
        raise
    except Exception as exc:  # pyelftools on hostile bytes raises many kinds of errors: all mean "unusable"
        raise AllowlistError(f"unreadable ELF ({type(exc).__name__}: {exc})") from None


def _examine_elf(data: bytes, elf_bytes: bytes, stem: str | None) -> CodeFile | None:
    sha = hashlib.sha256(data).hexdigest()
    elf = ELFFile(io.BytesIO(elf_bytes))
    etype = elf["e_type"]
    if etype == "ET_REL":
        if stem is None:
            return None  # an object file, not a module
        name = module_name(elf, elf_bytes) or stem
        if MODULE_NAME.fullmatch(name) is None:
            raise AllowlistError(f"module name {name[:80]!r} is not one the kernel would use")
        return CodeFile(sha, "kernel-module", {}, name, hashlib.sha256(elf_bytes).hexdigest())
    if etype not in ("ET_EXEC", "ET_DYN") or elf_bytes is not data:
        return None
    phdrs = _program_headers(elf, len(data))
    if not any(ph["p_type"] == "PT_LOAD" and ph["p_flags"] & _PF_X for ph in phdrs):
        return None
    has_interp = any(ph["p_type"] == "PT_INTERP" for ph in phdrs)
    kind = "executable" if etype == "ET_EXEC" or has_interp else "shared-library"
    return CodeFile(sha, kind, exec_pages(data, phdrs, kind))


def _program_headers(elf: ELFFile, size: int) -> list[Any]:
    count = elf.num_segments()
    if not count:
        return []
    entsize, offset = elf["e_phentsize"], elf["e_phoff"]
    if entsize != elf.structs.Elf_Phdr.sizeof() or offset + count * entsize > size:
        raise AllowlistError("program headers out of bounds")
    return [struct_parse(elf.structs.Elf_Phdr, elf.stream, stream_pos=offset + i * entsize) for i in range(count)]


def exec_pages(data: bytes, phdrs: list[Any], kind: str) -> dict[int, str]:
    """page_hash of every page of every executable PT_LOAD segment, as mapped.

    A mapping shows the whole file page, so bytes of neighbouring segments are in it and bytes
    past the end of the file are zeros. Only when an executable segment has bss (p_memsz >
    p_filesz) does the loader zero the rest of its last page: the kernel to the end of the page
    (executables), ld.so up to p_memsz (libraries).
    """
    pages: dict[int, str] = {}
    budget = len(data) // PAGE_SIZE + 1
    for ph in phdrs:
        if ph["p_type"] != "PT_LOAD" or not ph["p_flags"] & _PF_X or ph["p_filesz"] == 0:
            continue
        start, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
        end = start + filesz
        if end > len(data):
            raise AllowlistError(f"executable segment at {start:#x}+{filesz:#x} runs past the end of the file")
        if (ph["p_vaddr"] - start) % PAGE_SIZE:
            raise AllowlistError(f"segment at offset {start:#x} is not page-congruent with its address; it cannot be mapped")
        first = start - start % PAGE_SIZE
        budget -= (end - first + PAGE_SIZE - 1) // PAGE_SIZE - 1
        if budget < 0:
            raise AllowlistError("executable segments overlap far more than a loader would allow")
        zero_to = 0
        if memsz > filesz:
            page_end = end + (-end % PAGE_SIZE)
            zero_to = page_end if kind == "executable" else min(page_end, start + memsz)
        for offset in range(first, end, PAGE_SIZE):
            page = data[offset : offset + PAGE_SIZE]
            if zero_to > end and offset < end <= offset + PAGE_SIZE:
                keep, zeros = end - offset, zero_to - end
                page = page[:keep] + bytes(zeros) + page[keep + zeros :]
            pages.setdefault(offset, page_hash(page))
    return pages
