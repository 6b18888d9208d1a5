"""Memory sources: raw, QEMU RAM layouts, LiME and ELF cores, including corrupt files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from tests.synthetic import write_elf_core

from vmsentinel.errors import MemoryError_, UnknownImageFormat, UnmappedPhysicalAddress
from vmsentinel.memory import ElfCoreMemory, MappedFileMemory, Segment, open_image, open_qemu_ram
from vmsentinel.memory.lime import LIME_MAGIC, write_lime
from vmsentinel.memory.qemu_ram import FOUR_GIB, mtree_layout, pc_layout

HERE = Path(__file__).parent


def _file(tmp_path: Path, data: bytes, name: str = "mem.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_raw_reads_and_end_of_ram(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096)
    with open_image(_file(tmp_path, data)) as mem:
        assert mem.kind == "raw"
        assert mem.read(100, 50) == data[100:150]
        assert mem.read_u64(8) == int.from_bytes(data[8:16], "little")
        assert mem.size() == len(data)
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(len(data) - 4, 8)
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(-1, 1)


def test_segments_with_hole_and_contiguous_cross_read(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64  # 16 KiB
    path = _file(tmp_path, data)
    segs = [Segment(0, 0, 0x1000), Segment(0x1000, 0x2000, 0x1000), Segment(0x10000, 0x1000, 0x1000)]
    with MappedFileMemory(path, segs, "test") as mem:
        # contiguous physically although not in the file: the read joins both segments
        assert mem.read(0xFF0, 0x20) == data[0xFF0:0x1000] + data[0x2000:0x2010]
        assert mem.read(0x10000, 4) == data[0x1000:0x1004]
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(0x1FF0, 0x20)  # runs into the hole
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(0x5000, 1)
        assert [(r.start, r.length) for r in mem.ranges()] == [(0, 0x2000), (0x10000, 0x1000)]
        assert bytes(mem.view(0x10, 4)) == data[0x10:0x14]
        assert not mem.is_valid(0x2000)


def test_scan_finds_patterns_in_every_segment(tmp_path: Path) -> None:
    data = bytearray(0x4000)
    data[0x10:0x16] = b"NEEDLE"
    data[0x3000:0x3006] = b"NEEDLE"
    path = _file(tmp_path, bytes(data))
    with MappedFileMemory(path, [Segment(0, 0, 0x2000), Segment(FOUR_GIB, 0x2000, 0x2000)], "t") as mem:
        assert list(mem.scan(b"NEEDLE")) == [0x10, FOUR_GIB + 0x1000]


def test_segments_outside_file_or_overlapping_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, bytes(0x1000))
    with pytest.raises(MemoryError_):
        MappedFileMemory(path, [Segment(0, 0, 0x2000)], "t")
    with pytest.raises(MemoryError_):
        MappedFileMemory(path, [Segment(0, 0, 0x800), Segment(0x400, 0x800, 0x800)], "t")
    with pytest.raises(MemoryError_):
        MappedFileMemory(_file(tmp_path, b"", "empty"), [], "t")


def test_mapping_is_read_only(tmp_path: Path) -> None:
    with open_image(_file(tmp_path, bytes(4096))) as mem:
        assert isinstance(mem, MappedFileMemory)
        with pytest.raises(TypeError):
            mem._mm[0:1] = b"x"  # PROT_READ: the sentinel cannot write guest memory


@pytest.mark.parametrize(
    ("machine", "ram", "expected"),
    [
        ("pc", 512 << 20, [Segment(0, 0, 512 << 20)]),
        ("pc", 0xE0000000, [Segment(0, 0, 0xC0000000), Segment(FOUR_GIB, 0xC0000000, 0x20000000)]),
        ("pc", 0xDFFFF000, [Segment(0, 0, 0xDFFFF000)]),
        ("q35", 0xB0000000, [Segment(0, 0, 0x80000000), Segment(FOUR_GIB, 0x80000000, 0x30000000)]),
        ("q35", 4 << 30, [Segment(0, 0, 0x80000000), Segment(FOUR_GIB, 0x80000000, 0x80000000)]),
        ("pc-i440fx-7.2", 6 << 30, [Segment(0, 0, 0xC0000000), Segment(FOUR_GIB, 0xC0000000, 0xC0000000)]),
    ],
)
def test_pc_machine_rule(machine: str, ram: int, expected: list[Segment]) -> None:
    assert pc_layout(ram, machine) == expected


def test_mtree_layout_from_real_qemu_output() -> None:
    text = (HERE / "mtree_q35_512m.txt").read_text()
    segs = mtree_layout(text, "ram0")
    assert segs[0] == Segment(0, 0, 0xC0000)
    assert sum(s.length for s in segs) == 512 << 20
    assert all(s.phys_start == s.file_offset for s in segs)
    assert mtree_layout(text) == segs  # without the id, the biggest RAM region wins
    assert mtree_layout(text.replace("\n", "\r\n"), "ram0") == segs  # HMP over QMP uses CRLF


def test_mtree_layout_above_4g() -> None:
    text = (
        'FlatView #0\n AS "memory", root: system\n Root memory region: system\n'
        "  0000000000000000-000000007fffffff (prio 0, ram): mem\n"
        "  00000000b0000000-00000000bfffffff (prio 0, i/o): pcie-mmcfg-mmio\n"
        "  0000000100000000-000000017fffffff (prio 0, ram): mem @0000000080000000\n"
        '\nFlatView #1\n AS "I/O", root: io\n'
    )
    assert mtree_layout(text, "mem") == [Segment(0, 0, 1 << 31), Segment(FOUR_GIB, 1 << 31, 1 << 31)]
    assert mtree_layout("garbage") == []


def test_qemu_ram_file_above_4g(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    with open(path, "wb") as f:
        f.truncate(0xC0000000)  # sparse 3 GiB: q35 keeps 2 GiB low
        f.seek(0x80000000)
        f.write(b"HIGH")
    with open_qemu_ram(path, machine="q35") as mem:
        assert mem.read(FOUR_GIB, 4) == b"HIGH"
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(0x80000000, 4)  # the PCI hole


def test_lime_round_trip_with_gaps(tmp_path: Path) -> None:
    a, b = os.urandom(0x2000), os.urandom(0x1000)
    path = tmp_path / "img.lime"
    write_lime(path, [(0x1000, a), (0x100000, b)])
    with open_image(path) as mem:
        assert mem.kind == "lime"
        assert mem.read(0x1000, 0x2000) == a and mem.read(0x100000, 0x1000) == b
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(0x3000, 1)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda h: h[:-2],  # truncated header
        lambda h: struct.pack("<IIQQ8s", LIME_MAGIC, 9, 0, 0xFFF, bytes(8)) + bytes(0x1000),  # bad version
        lambda h: struct.pack("<IIQQ8s", LIME_MAGIC, 1, 0x2000, 0x1000, bytes(8)),  # end before start
        lambda h: struct.pack("<IIQQ8s", LIME_MAGIC, 1, 0, (1 << 64) - 1, bytes(8)),  # absurd length
        lambda h: h + b"junk after the last range",  # trailing garbage is a bad header
    ],
)
def test_corrupt_lime_is_a_clear_error(tmp_path: Path, corrupt: object) -> None:
    good = struct.pack("<IIQQ8s", LIME_MAGIC, 1, 0, 0xFFF, bytes(8)) + bytes(0x1000)
    path = _file(tmp_path, corrupt(good))  # type: ignore[operator]
    with pytest.raises(UnknownImageFormat):
        open_image(path)


def test_elf_core_segments_and_registers(tmp_path: Path) -> None:
    low, high = os.urandom(0x3000), os.urandom(0x1000)
    path = tmp_path / "core"
    write_elf_core(str(path), [(0, low), (FOUR_GIB, high)], cr3=0x1234000 | 5, cr4=1 << 12, cpus=2)
    with open_image(path) as mem:
        assert isinstance(mem, ElfCoreMemory)
        assert mem.read(0x100, 16) == low[0x100:0x110]
        assert mem.read(FOUR_GIB + 8, 8) == high[8:16]
        assert len(mem.cpus) == 2 and mem.cpus[0].cr3 == 0x1234005 and mem.cpus[0].cr4 == 1 << 12
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(0x3000, 1)


def test_corrupt_elf_core_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "core"
    write_elf_core(str(path), [(0, bytes(0x1000))])
    data = bytearray(path.read_bytes())
    data[0x20:0x28] = struct.pack("<Q", 1 << 40)  # e_phoff far past the end
    path.write_bytes(bytes(data))
    with pytest.raises(UnknownImageFormat):
        open_image(path)
    # PT_LOAD running past the end of the file
    write_elf_core(str(path), [(0, bytes(0x1000))])
    data = bytearray(path.read_bytes())
    ph = 64 + 56  # second program header (the PT_LOAD)
    data[ph + 32 : ph + 40] = struct.pack("<Q", 1 << 30)  # p_filesz
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryError_):
        open_image(path)


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MemoryError_, match="cannot open"):
        open_image(tmp_path / "nope")


def test_a_ram_file_that_cannot_be_mapped_is_one_line_naming_it(tmp_path: Path) -> None:
    from vmsentinel.access import open_connector
    from vmsentinel.errors import TargetError

    with pytest.raises(TargetError, match=f"qemu:{tmp_path}: cannot map RAM file {tmp_path}: .*run as QEMU's user or root"):
        open_connector(f"qemu:{tmp_path}")  # a folder: it opens, and cannot be mapped
