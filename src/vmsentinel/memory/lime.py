"""LiME images: a sequence of (32-byte header, data) records, one per range.

Header: magic ``0x4C694D45`` ("EMiL" on disk), version 1, start and inclusive
end physical address, 8 reserved bytes. The file is untrusted: every header is
checked against the file size and the number of ranges is capped.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from vmsentinel.errors import UnknownImageFormat
from vmsentinel.memory.mapped_file import MappedFileMemory, Segment

LIME_MAGIC = 0x4C694D45
_HEADER = struct.Struct("<IIQQ8s")
MAX_RANGES = 1 << 16


def is_lime(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack_from("<I", head)[0] == LIME_MAGIC


def lime_segments(path: str | Path) -> list[Segment]:
    size = os.path.getsize(path)
    segments: list[Segment] = []
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            if len(segments) >= MAX_RANGES:
                raise UnknownImageFormat(f"{path}: more than {MAX_RANGES} LiME ranges")
            f.seek(offset)
            raw = f.read(_HEADER.size)
            if len(raw) < _HEADER.size:
                raise UnknownImageFormat(f"{path}: truncated LiME header at offset {offset:#x}")
            magic, version, start, end_inclusive, _ = _HEADER.unpack(raw)
            if magic != LIME_MAGIC or version != 1:
                raise UnknownImageFormat(f"{path}: bad LiME header at offset {offset:#x}")
            if end_inclusive < start:
                raise UnknownImageFormat(f"{path}: LiME range at {offset:#x} ends before it starts")
            length = end_inclusive - start + 1
            data_at = offset + _HEADER.size
            if data_at + length > size:
                raise UnknownImageFormat(f"{path}: LiME range {start:#x}-{end_inclusive:#x} runs past the end")
            segments.append(Segment(start, data_at, length))
            offset = data_at + length
    return segments


def open_lime(path: str | Path) -> MappedFileMemory:
    return MappedFileMemory(path, lime_segments(path), "lime")


def write_lime(out: str | Path, ranges: list[tuple[int, bytes]]) -> None:
    """Write a LiME image (used by tests and by ``dump --format lime``)."""
    with open(out, "wb") as f:
        for start, data in ranges:
            f.write(_HEADER.pack(LIME_MAGIC, 1, start, start + len(data) - 1, b"\0" * 8))
            f.write(data)
