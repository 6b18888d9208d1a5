"""x86-64 paging on synthetic page tables: 4 and 5 levels, large pages, rights,
and hostile tables (loops, entries outside RAM, reserved bits)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.synthetic import PAGE, PageTableBuilder, new_memory

from vmsentinel.arch.x86_64 import (
    PS,
    RW,
    P,
    PagingAddressSpace,
    coalesce_by_rights,
    cr3_to_root,
    paging_levels_from_cr4,
)
from vmsentinel.errors import BadPageTable, NonCanonicalAddress, PageNotPresent
from vmsentinel.memory.buffer import BufferMemory

KERNEL_VA = 0xFFFFFFFF81000000
KERNEL_VA_57 = 0xFF11000000000000


@pytest.mark.parametrize("levels", [4, 5])
def test_4k_translation_and_reads_cross_pages(levels: int) -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem, levels)
    va = KERNEL_VA if levels == 4 else KERNEL_VA_57
    # two virtually adjacent pages backed by physically distant frames
    pt.map(va, 0x600000)
    pt.map(va + PAGE, 0x500000)
    mem.write(0x600000 + PAGE - 3, b"abc")
    mem.write(0x500000, b"defg")
    space = PagingAddressSpace(mem, pt.root, levels)
    assert space.translate(va + 5) == 0x600005
    assert space.translate(va + PAGE + 7) == 0x500007
    assert space.read(va + PAGE - 3, 7) == b"abcdefg"


def test_large_pages_2m_and_1g() -> None:
    mem = BufferMemory({0: bytearray(0x800000), 0x40000000: bytearray(0x400000)})
    pt = PageTableBuilder(mem)
    pt.map(0xFFFF888000000000, 0x40000000, size=1 << 30)
    pt.map(0xFFFFFFFF80000000, 0x200000, size=1 << 21, writable=False)
    space = PagingAddressSpace(mem, pt.root)
    assert space.translate(0xFFFF888000000000 + 0x123456) == 0x40123456
    assert space.translate(0xFFFFFFFF80000000 + 0x1FFFFF) == 0x3FFFFF
    tr = space.translation(0xFFFFFFFF80000000 + 0x1000)
    assert tr.page_size == 1 << 21 and not tr.writable
    big = space.translation(0xFFFF888000000000)
    assert big.page_size == 1 << 30


def test_rights_combine_across_levels() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    # upper levels deny user access: the leaf's U bit must not win
    pt.map(0x400000, 0x600000, user=True, writable=True, upper_flags=P | RW)
    pt.map(0x7F0000000000, 0x601000, user=True, writable=False, nx=True)
    space = PagingAddressSpace(mem, pt.root)
    a = space.translation(0x400000)
    assert (a.user, a.writable, a.nx) == (False, True, False)
    b = space.translation(0x7F0000000000)
    assert (b.user, b.writable, b.nx) == (True, False, True)


def test_not_present_and_non_canonical() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    space = PagingAddressSpace(mem, pt.root)
    with pytest.raises(PageNotPresent) as exc:
        space.translate(0x1000)
    assert exc.value.level == 4
    with pytest.raises(NonCanonicalAddress):
        space.translate(0x0000800000000000)
    five = PagingAddressSpace(mem, pt.root, 5)
    with pytest.raises(PageNotPresent):  # canonical with 57 bits
        five.translate(0x0000800000000000)
    with pytest.raises(NonCanonicalAddress):
        five.translate(0x0100000000000000)


def test_table_outside_ram_fails_that_address_only() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.map(0x400000, 0x600000)
    pt.set_entry(pt.root, 1, 0x7FFF_FFFF_F000 | P | RW)  # PML4[1] -> nowhere
    space = PagingAddressSpace(mem, pt.root)
    with pytest.raises(BadPageTable) as exc:
        space.translate(1 << 39)
    assert "outside RAM" in str(exc.value) and exc.value.level == 3
    assert space.translate(0x400000) == 0x600000
    walk = space.walk_mappings()
    assert [m.vaddr for m in walk.mappings] == [0x400000]
    assert any("outside RAM" in p for p in walk.problems)


def test_leaf_pointing_outside_ram_fails_the_read() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.map(0x400000, 0x7_0000_0000)
    space = PagingAddressSpace(mem, pt.root)
    assert space.translate(0x400000) == 0x7_0000_0000  # translation itself is fine
    with pytest.raises(BadPageTable):
        space.read(0x400000, 4)
    assert not space.is_mapped(0x400000)


def test_large_page_bit_in_pml4_is_rejected() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.set_entry(pt.root, 0, 0x200000 | P | PS)
    space = PagingAddressSpace(mem, pt.root)
    with pytest.raises(BadPageTable):
        space.translate(0x1000)
    assert space.walk_mappings().problems


@pytest.mark.parametrize("levels", [4, 5])
def test_self_referencing_tables_do_not_hang(levels: int) -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem, levels)
    pt.map(0x400000, 0x600000)
    # every entry of the root points at the root itself: a Windows-style self map, 512 times over
    for i in range(1, 512):
        pt.set_entry(pt.root, i, pt.root | P | RW)
    space = PagingAddressSpace(mem, pt.root, levels)
    walk = space.walk_mappings(table_budget=5000)
    assert walk.tables_visited <= 5000
    assert walk.problems  # loops or budget reported, not raised
    assert space.translate(0x400000) == 0x600000
    # translating through the loop terminates: fixed depth
    with contextlib.suppress(PageNotPresent, BadPageTable):
        space.translate(1 << 39)


def test_table_budget_truncates_explosive_fanout() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    shared = pt.alloc_table()
    leaf_table = pt.alloc_table()
    for i in range(512):
        pt.set_entry(leaf_table, i, (0x600000 + i * PAGE) | P | RW)
    # 512 x 512 paths to the same leaf table: legal but huge
    mid = pt.alloc_table()
    for i in range(512):
        pt.set_entry(mid, i, leaf_table | P | RW)
        pt.set_entry(shared, i, mid | P | RW)
    pt.set_entry(pt.root, 0, shared | P | RW)
    walk = PagingAddressSpace(mem, pt.root).walk_mappings(table_budget=1000)
    assert walk.truncated and walk.tables_visited == 1000
    assert any("budget" in p for p in walk.problems)


def test_walk_merges_contiguous_runs_and_coalesces_rights() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    for i in range(4):
        pt.map(0x400000 + i * PAGE, 0x600000 + i * PAGE)
    pt.map(0x404000, 0x700000)  # virtually next, physically not
    pt.map(0x405000, 0x701000, writable=False)
    walk = PagingAddressSpace(mem, pt.root).walk_mappings()
    assert [(m.vaddr, m.size) for m in walk.mappings] == [(0x400000, 0x4000), (0x404000, 0x1000), (0x405000, 0x1000)]
    assert list(coalesce_by_rights(walk.mappings)) == [(0x400000, 0x405000, False, True), (0x405000, 0x406000, False, False)]
    unmerged = PagingAddressSpace(mem, pt.root).walk_mappings(merge=False)
    assert len(unmerged.mappings) == 6


def test_walk_range_limits_and_kernel_half_sign_extension() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.map(0x400000, 0x600000)
    pt.map(KERNEL_VA, 0x601000)
    space = PagingAddressSpace(mem, pt.root)
    kernel_only = space.walk_mappings(start=1 << 63)
    assert [m.vaddr for m in kernel_only.mappings] == [KERNEL_VA]


def test_cstring_with_cap_and_across_pages() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.map(0x400000, 0x600000)
    pt.map(0x401000, 0x500000)
    mem.write(0x600FFC, b"abcd")
    mem.write(0x500000, b"ef\0")
    space = PagingAddressSpace(mem, pt.root)
    assert space.read_cstring(0x400FFC) == b"abcdef"
    assert space.read_cstring(0x400FFC, max_length=3) == b"abc"
    # an endless string stops at the cap, never runs off
    mem.write(0x600000, b"x" * PAGE)
    mem.write(0x500000, b"x" * PAGE)
    assert len(space.read_cstring(0x400000, max_length=6000)) == 6000
    with pytest.raises(PageNotPresent):
        space.read_cstring(0x400000, max_length=3 * PAGE)


def test_sweep_cache_sees_changes_only_after_new_sweep() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.map(0x400000, 0x600000)
    space = PagingAddressSpace(mem, pt.root)
    assert space.translate(0x400000) == 0x600000
    pt.map(0x400000, 0x700000)
    assert space.translate(0x400000) == 0x600000  # cached within the sweep
    space.new_sweep()
    assert space.translate(0x400000) == 0x700000


def test_register_helpers() -> None:
    assert cr3_to_root(0x8000_0000_0123_4ABC) == 0x1234000
    assert paging_levels_from_cr4(1 << 12) == 5 and paging_levels_from_cr4(0x6F0) == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, (1 << 35) - 1), st.integers(0, 0x3FF), st.booleans()), min_size=1, max_size=30),
    st.sampled_from([4, 5]),
)
def test_random_mappings_translate_as_mapped(pages: list[tuple[int, int, bool]], levels: int) -> None:
    mem = BufferMemory({0: bytearray(0x2000000)})
    pt = PageTableBuilder(mem, levels, pool_start=0x1000000, pool_end=0x2000000)
    expected: dict[int, int] = {}
    for vpage, frame, user in pages:
        va = vpage << 12
        if levels == 4:
            va &= (1 << 47) - 1
        pa = 0x400000 + frame * PAGE
        pt.map(va, pa, user=user)
        expected[va] = pa
    space = PagingAddressSpace(mem, pt.root, levels)
    for va, pa in expected.items():
        assert space.translate(va + 0x123) == pa + 0x123
    walked = {m.vaddr: m.paddr for m in space.walk_mappings(merge=False).mappings}
    assert walked == expected


class CountingMemory(BufferMemory):
    """Counts the physical reads a virtual read turns into."""

    def __init__(self, size: int) -> None:
        super().__init__({0: bytearray(size)})
        self.reads: list[tuple[int, int]] = []

    def read(self, address: int, length: int) -> bytes:
        self.reads.append((address, length))
        return super().read(address, length)


def test_a_long_read_is_one_physical_read_per_contiguous_run_and_equals_reading_page_by_page() -> None:
    mem = CountingMemory(8 << 20)
    pt = PageTableBuilder(mem, 4)
    frames = [0x600000, 0x601000, 0x602000, 0x400000, 0x401000, 0x700000]  # runs of 3, 2 and 1 frames
    for i, frame in enumerate(frames):
        pt.map(KERNEL_VA + i * PAGE, frame)
        mem.write(frame, bytes([i + 1]) * PAGE)
    space = PagingAddressSpace(mem, pt.root, 4)
    space.read(KERNEL_VA, 1)  # the page walks' own reads are not what is counted
    for i in range(len(frames)):
        space.translate(KERNEL_VA + i * PAGE)
    mem.reads.clear()
    data = space.read(KERNEL_VA + 10, len(frames) * PAGE - 20)
    assert mem.reads == [(0x60000A, 3 * PAGE - 10), (0x400000, 2 * PAGE), (0x700000, PAGE - 10)]
    assert data == b"".join(space.read(KERNEL_VA + 10 + o, 1) for o in range(len(frames) * PAGE - 20))


def test_a_read_running_into_an_unmapped_page_fails_and_names_it() -> None:
    mem = new_memory()
    pt = PageTableBuilder(mem, 4)
    pt.map(KERNEL_VA, 0x600000)
    space = PagingAddressSpace(mem, pt.root, 4)
    with pytest.raises(PageNotPresent) as caught:
        space.read(KERNEL_VA + 100, 2 * PAGE)
    assert f"{KERNEL_VA + PAGE:#x}" in str(caught.value)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1100), st.integers(0, 300), st.booleans()), max_size=40),
    st.integers(0, 1100 * PAGE),
    st.integers(1, 600 * PAGE),
)
def test_walks_in_runs_equal_page_by_page_and_read_present_fills_holes_with_zeros(
    pages: list[tuple[int, int, bool]], offset: int, length: int
) -> None:
    """Random 4 KiB mappings (some across a last-level table's end, some read-only): the merged walk
    covers exactly the pages the unmerged one lists, a range walk only those overlapping it, and
    ``read_present`` reads what page-by-page reads give, with zeros where nothing is mapped."""
    mem = new_memory(0x1000000)
    pt = PageTableBuilder(mem, 4)
    base = 0x7F0000000000 - 512 * PAGE  # the range crosses last-level tables
    mapped: dict[int, int] = {}
    for vpage, frame, writable in pages:
        pt.map(base + vpage * PAGE, 0x400000 + frame * PAGE, writable=writable)
        mapped[base + vpage * PAGE] = 0x400000 + frame * PAGE
        mem.write(0x400000 + frame * PAGE, frame.to_bytes(2, "little") * (PAGE // 2))
    space = PagingAddressSpace(mem, pt.root, 4)
    unmerged = {m.vaddr: m.paddr for m in space.walk_mappings(merge=False).mappings}
    merged = {m.vaddr + o: m.paddr + o for m in space.walk_mappings().mappings for o in range(0, m.size, PAGE)}
    assert merged == unmerged == mapped
    start = base + offset
    ranged = {m.vaddr + o for m in space.walk_mappings(start, start + length).mappings for o in range(0, m.size, PAGE)}
    assert ranged == {v for v in mapped if v + PAGE > start and v < start + length}
    expected = b"".join(
        space.read(p, min(PAGE - p % PAGE, start + length - p))
        if (p & ~(PAGE - 1)) in mapped
        else bytes(min(PAGE - p % PAGE, start + length - p))
        for p in _page_steps(start, start + length)
    )
    assert space.read_present(start, length) == expected
    runs = space.physical_runs(start, length)
    cut = offset % (length + 1)  # any offset into the range reads the same bytes from there, zeros past its end
    assert runs.read(cut, length - cut + PAGE) == expected[cut:] + bytes(PAGE)
    assert all(o >= 0 and o + size <= length for o, _, size in runs.runs)


def _page_steps(start: int, end: int) -> list[int]:
    steps, p = [], start
    while p < end:
        steps.append(p)
        p = (p & ~(PAGE - 1)) + PAGE
    return steps


class ViewMemory(CountingMemory):
    """Lends views of itself, as a mapped file does."""

    def view(self, address: int, length: int) -> memoryview:
        buf, off = self._locate(address, length)
        return memoryview(buf)[off : off + length]


def test_pieces_are_views_per_contiguous_run_where_the_source_lends_them_and_equal_a_read() -> None:
    for memory in (ViewMemory(8 << 20), CountingMemory(8 << 20)):
        pt = PageTableBuilder(memory, 4)
        for i, frame in enumerate([0x600000, 0x601000, 0x400000]):
            pt.map(KERNEL_VA + i * PAGE, frame)
            memory.write(frame, bytes([i + 7]) * PAGE)
        space = PagingAddressSpace(memory, pt.root, 4)
        pieces = space.pieces(KERNEL_VA + 5, 3 * PAGE - 10)
        assert [len(p) for p in pieces] == [2 * PAGE - 5, PAGE - 5]
        assert all(isinstance(p, memoryview) for p in pieces) == isinstance(memory, ViewMemory)
        assert b"".join(bytes(p) for p in pieces) == space.read(KERNEL_VA + 5, 3 * PAGE - 10)
    with pytest.raises(PageNotPresent):
        space.pieces(KERNEL_VA + 2 * PAGE, 2 * PAGE)
