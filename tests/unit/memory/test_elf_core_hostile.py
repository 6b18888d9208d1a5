"""An ELF core the fuzz harness (benchmarks/fuzz.py) found crashing the parser: pyelftools raised its own
ConstructError, which is neither an ELFError nor a ValueError, for a note whose name lost its NUL."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tests.synthetic import write_elf_core

from vmsentinel.errors import UnknownImageFormat
from vmsentinel.memory.elf_core import _parse


def test_a_note_name_without_its_terminator_is_a_corrupt_core(tmp_path: Path) -> None:
    path = tmp_path / "core"
    write_elf_core(str(path), [(0, bytes(0x1000))])
    data = bytearray(path.read_bytes())
    note = 64 + 2 * 56  # the notes follow the header and the two program headers
    assert struct.unpack_from("<I", data, note)[0] == 5  # namesz of "QEMU\0"
    struct.pack_into("<I", data, note, 4)  # "QEMU" without its NUL
    path.write_bytes(bytes(data))
    with pytest.raises(UnknownImageFormat, match="corrupt ELF core"):
        _parse(path)
