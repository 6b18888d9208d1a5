"""The memory-maps walker on synthetic maple trees: leaves, inner nodes, and
hostile trees (loops, unknown node types, pointers outside the address space)."""

from __future__ import annotations

import gc
from typing import Any

from tests.synthetic import DIRECT_MAP, synthetic_kernel_reader
from tests.synthetic_kernel import maple_btf

from vmsentinel.os.linux.views.memory_maps import ARANGE_64, LEAF_64, RANGE_64, MapReader

DIRECT = DIRECT_MAP


class World:
    def __init__(self) -> None:
        self.mem, reader = synthetic_kernel_reader(maple_btf())
        namer: Any = None  # no file-backed mappings here
        self.maps = MapReader(reader, namer)
        self.next = 0x10000
        self.mm = self.alloc(512)

    def alloc(self, size: int) -> int:
        addr = DIRECT + self.next
        self.next += (size + 0xFF) & ~0xFF
        return addr

    def put(self, vaddr: int, value: int) -> None:
        self.mem.write_u64(vaddr - DIRECT, value)

    def vma(self, start: int, end: int, flags: int = 0x3) -> int:
        v = self.alloc(176)
        self.put(v, start)
        self.put(v + 8, end)
        self.put(v + 16, self.mm)
        self.put(v + 32, flags)
        return v

    def node(self, ntype: int, slots: list[int]) -> int:
        n = self.alloc(256)
        base = 128 if ntype in (LEAF_64, RANGE_64) else 80
        for i, s in enumerate(slots):
            self.put(n + base + 8 * i, s)
        return n | ntype << 3 | 4

    def set_root(self, value: int) -> None:
        self.put(self.mm + 64 + 8, value)


def test_two_level_tree_gives_every_vma_in_order() -> None:
    w = World()
    vmas = [w.vma(0x400000 + i * 0x1000, 0x401000 + i * 0x1000) for i in range(20)]
    leaf_a = w.node(LEAF_64, vmas[:12])
    leaf_b = w.node(LEAF_64, vmas[12:])
    root = w.node(ARANGE_64, [leaf_a, leaf_b])
    w.set_root(root | 2)
    sweep = w.maps.maps(1, w.mm)
    assert not sweep.problems
    assert [(m.start, m.perms) for m in sweep.maps] == [(0x400000 + i * 0x1000, "rw-p") for i in range(20)]


def test_single_entry_root_and_empty_tree() -> None:
    w = World()
    w.set_root(w.vma(0x7000, 0x8000, flags=0x5))
    assert [(m.start, m.perms) for m in w.maps.maps(1, w.mm).maps] == [(0x7000, "r-xp")]
    w.set_root(0)
    assert w.maps.maps(1, w.mm).maps == []


def test_loops_bad_types_and_stray_pointers_are_reported_not_followed() -> None:
    w = World()
    good = w.vma(0x400000, 0x401000)
    foreign = w.vma(0x500000, 0x501000)
    w.put(foreign + 16, DIRECT + 0x999000)  # belongs to another mm
    inner = w.alloc(256)
    root = inner | RANGE_64 << 3 | 4
    leaf = w.node(LEAF_64, [good, foreign, 0x1234, DIRECT + 0x7FFFF00])  # user junk, unmapped kernel address
    bad_type = (w.alloc(256)) | 9 << 3 | 4
    outside = (DIRECT + 0x8000000) | LEAF_64 << 3 | 4
    for i, s in enumerate([leaf, root, bad_type, outside]):  # root points back at itself
        w.put(inner + 128 + 8 * i, s)
    w.set_root(root | 2)
    sweep = w.maps.maps(1, w.mm)
    assert [m.start for m in sweep.maps] == [0x400000]
    text = " ".join(sweep.problems)
    assert "loop" in text and "type 9" in text and "another mm" not in text
    assert "does not belong" in text and "cannot read" in text


def test_a_three_level_walk_keeps_slot_order_and_leaves_no_reference_cycles() -> None:
    """The walk is depth first in slot order, and frees everything it made by reference counting: a
    worker runs without the automatic cycle collector, so a walker that made cycles would leak until
    the timed collection."""
    w = World()
    vmas = [w.vma(0x400000 + i * 0x1000, 0x401000 + i * 0x1000) for i in range(30)]
    leaves = [w.node(LEAF_64, vmas[i : i + 5]) for i in range(0, 30, 5)]
    middle = [w.node(ARANGE_64, leaves[:3]), w.node(ARANGE_64, leaves[3:])]
    w.set_root(w.node(ARANGE_64, middle) | 2)
    gc.collect()
    gc.disable()
    try:
        problems: list[str] = []
        found = w.maps.vma_addresses(w.mm, problems)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert found == vmas and not problems
