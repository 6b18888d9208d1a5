"""Kernel module files: the name a module loads under, its ``.modinfo`` strings, its decompressed ELF.

The kernel names a module by the ``name=`` string in its ``.modinfo`` section, or else by
its file name, and loads modules compressed with gzip, xz or zstd. The allowlist builder
and the lab (which reads ``depends=``) both parse ``.modinfo`` here::

    modinfo_field(b"license=GPL\\0depends=virtio,net_failover\\0", "depends")   # 'virtio,net_failover'
    module_stem("/lib/modules/6.1.0/kernel/fake-mod.ko.xz")                     # 'fake_mod'
"""

from __future__ import annotations

import posixpath

from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile

from vmsentinel.errors import AllowlistError
from vmsentinel.trust.allowlist import MAX_FILE_BYTES
from vmsentinel.trust.compression import decompress

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
MAX_SECTIONS = 1 << 17  # section headers read from one module
_KERNEL_CODECS = ("gzip", "xz", "zstd")  # what the kernel's module loader decompresses


def module_stem(path: str) -> str | None:
    """The module name a file name gives ("fake-mod.ko.xz" -> "fake_mod"), or None if it is no module file."""
    base = posixpath.basename(path)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)].replace("-", "_")
    return None


def modinfo_field(blob: bytes, key: str) -> str | None:
    """The value of the first ``key=value`` string in NUL-separated ``.modinfo`` strings.

    ``blob`` may be the section or a whole module file: a string only counts where it starts
    the blob or follows a NUL, as the kernel lays them out.
    """
    prefix = key.encode("ascii") + b"="
    if blob.startswith(prefix):
        start = len(prefix)
    else:
        at = blob.find(b"\0" + prefix)
        if at < 0:
            return None
        start = at + 1 + len(prefix)
    end = blob.find(b"\0", start)
    return blob[start : end if end >= 0 else len(blob)].decode("utf-8", "replace")


def module_name(elf: ELFFile, data: bytes) -> str | None:
    """The ``name=`` string of a module's ``.modinfo``: the name the kernel gives the module.

    Section headers are bounds-checked before pyelftools reads them: ``data`` is hostile.
    """
    count = elf.num_sections()
    if not count:
        return None
    shdr = elf.structs.Elf_Shdr
    entsize, offset = elf["e_shentsize"], elf["e_shoff"]
    if entsize != shdr.sizeof() or count > MAX_SECTIONS or offset + count * entsize > len(data):
        raise AllowlistError("section headers out of bounds")
    headers = [struct_parse(shdr, elf.stream, stream_pos=offset + i * entsize) for i in range(count)]
    strndx = elf.get_shstrndx()
    if not 0 < strndx < count:
        return None
    names = headers[strndx]
    strtab = data[names["sh_offset"] : names["sh_offset"] + names["sh_size"]]
    for header in headers:
        at = header["sh_name"]
        if strtab[at : at + 9] != b".modinfo\0" or header["sh_type"] == "SHT_NOBITS":
            continue
        name = modinfo_field(data[header["sh_offset"] : header["sh_offset"] + header["sh_size"]], "name")
        if name is not None:
            return name.replace("-", "_")
    return None


def decompress_module(data: bytes, codec: str) -> bytes:
    """A compressed module as the kernel decompresses it (gzip, xz or zstd), bounded to MAX_FILE_BYTES.

    Raises AllowlistError: the caller skips this one file and reports why.
    """
    if codec not in _KERNEL_CODECS:
        raise AllowlistError(f"module compressed with {codec}, which the kernel does not load")
    return decompress(data, codec=codec, limit=MAX_FILE_BYTES, error=AllowlistError)
