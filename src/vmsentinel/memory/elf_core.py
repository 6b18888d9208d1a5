"""QEMU ELF cores (``dump-guest-memory``): PT_LOAD segments give the RAM; the
``QEMU`` notes give each vCPU's control registers, so CR3 and the paging mode
are known even without a live hypervisor.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from vmsentinel.errors import UnknownImageFormat
from vmsentinel.memory.mapped_file import MappedFileMemory, Segment
from vmsentinel.paths import cache_dir, write_atomic

#: offset of cr[0] in QEMU's QEMUCPUState (version, size, 16 GPRs, rip, rflags, 10 segments of 24 bytes)
_QEMU_CR_OFFSET = 8 + 18 * 8 + 10 * 24
MAX_SEGMENTS = 1 << 16


@dataclass(frozen=True)
class CpuState:
    """Control registers of one vCPU as QEMU recorded them in the dump."""

    cr0: int
    cr3: int
    cr4: int


def is_elf_core(head: bytes) -> bool:
    return head[:4] == b"\x7fELF" and len(head) >= 18 and struct.unpack_from("<H", head, 16)[0] == 4  # ET_CORE


class ElfCoreMemory(MappedFileMemory):
    """A QEMU (or any) ELF core: RAM from PT_LOAD by physical address."""

    def __init__(self, path: str | Path) -> None:
        segments, self.cpus = _layout(path)
        super().__init__(path, segments, "elf-core")


def _layout(path: str | Path) -> tuple[list[Segment], list[CpuState]]:
    """Segments and vCPU registers, remembered per file (path, inode, size, mtime).

    A dump is looked at many times; parsing its headers is quick, but loading the ELF
    library costs more than a whole ``ps``, so the second look reads a small JSON instead.
    """
    try:
        st = os.stat(path)
        stamp = [str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
    except OSError:
        return _parse(path)  # the open that follows reports the error
    # the name only spreads files out; the stamp inside decides whether one applies
    cached = cache_dir() / "images" / f"{zlib.crc32(str(stamp).encode()):08x}.json"
    try:
        data = json.loads(cached.read_text())
        if data["stamp"] == stamp:
            return [Segment(*map(int, s)) for s in data["segments"]], [CpuState(**c) for c in data["cpus"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    segments, cpus = _parse(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "stamp": stamp,
            "segments": [[s.phys_start, s.file_offset, s.length] for s in segments],
            "cpus": [asdict(c) for c in cpus],
        }
        write_atomic(cached, json.dumps(record).encode())
    except OSError:
        pass  # a read-only cache only costs time
    return segments, cpus


def _parse(path: str | Path) -> tuple[list[Segment], list[CpuState]]:
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile

    segments: list[Segment] = []
    cpus: list[CpuState] = []
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.num_segments() > MAX_SEGMENTS:
                raise UnknownImageFormat(f"{path}: {elf.num_segments()} ELF segments is too many")
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    segments.append(Segment(seg["p_paddr"], seg["p_offset"], seg["p_filesz"]))
                elif seg["p_type"] == "PT_NOTE":
                    for note in seg.iter_notes():
                        if note["n_name"] == "QEMU":
                            cpu = _qemu_cpu_state(note["n_desc"])
                            if cpu:
                                cpus.append(cpu)
    except (ELFError, ConstructError, struct.error, ValueError) as exc:  # ConstructError: a note or header cut short
        raise UnknownImageFormat(f"{path}: corrupt ELF core: {exc}") from exc
    return segments, cpus


def _qemu_cpu_state(desc: bytes | str) -> CpuState | None:
    raw = desc.encode("latin-1") if isinstance(desc, str) else bytes(desc)
    if len(raw) < _QEMU_CR_OFFSET + 5 * 8:
        return None
    cr = struct.unpack_from("<5Q", raw, _QEMU_CR_OFFSET)
    return CpuState(cr0=cr[0], cr3=cr[3], cr4=cr[4])
