"""Raw memory images: byte N of the file is guest-physical address N."""

from __future__ import annotations

import os
from pathlib import Path

from vmsentinel.memory.mapped_file import MappedFileMemory, Segment


def open_raw(path: str | Path) -> MappedFileMemory:
    size = os.path.getsize(path)
    return MappedFileMemory(path, [Segment(0, 0, size)], "raw")
