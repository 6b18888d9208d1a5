"""Guest-physical memory sources: QEMU shared RAM files, raw images, QEMU ELF
cores and LiME images, all behind :class:`PhysicalMemory`.

    with open_image("guest.core") as mem:     # format from the content
        mem.read(0x1000, 16)
"""

from __future__ import annotations

from pathlib import Path

from vmsentinel.errors import MemoryError_
from vmsentinel.memory.base import PhysicalMemory, PhysRange
from vmsentinel.memory.elf_core import ElfCoreMemory, is_elf_core
from vmsentinel.memory.lime import is_lime, open_lime
from vmsentinel.memory.mapped_file import MappedFileMemory, Segment
from vmsentinel.memory.qemu_ram import open_qemu_ram
from vmsentinel.memory.raw import open_raw


def open_image(path: str | Path) -> PhysicalMemory:
    """Open a memory image, choosing ELF core, LiME or raw from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise MemoryError_(f"cannot open memory image {path}: {exc.strerror}") from exc
    if is_elf_core(head):
        return ElfCoreMemory(path)
    if is_lime(head):
        return open_lime(path)
    return open_raw(path)


__all__ = [
    "ElfCoreMemory",
    "MappedFileMemory",
    "PhysRange",
    "PhysicalMemory",
    "Segment",
    "open_image",
    "open_qemu_ram",
]
