"""32-bit x86 paging on synthetic tables: two levels with 4 KiB and 4 MiB pages (PSE-36 above 4 GiB),
PAE with 2 MiB pages and no-execute, NT's self-map, and hostile tables: entries outside RAM,
reserved PDPT bits, every entry naming one shared table, addresses beyond 32 bits."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsentinel.arch.x86_32 import NX, PS, RW, US, P, PagingAddressSpace32, pse36_base
from vmsentinel.errors import BadPageTable, NonCanonicalAddress, PageNotPresent, TranslationError
from vmsentinel.memory.buffer import BufferMemory

PD, PT = 0x1000, 0x2000


def put32(ram: bytearray, at: int, value: int) -> None:
    ram[at : at + 4] = struct.pack("<I", value)


def put64(ram: bytearray, at: int, value: int) -> None:
    ram[at : at + 8] = struct.pack("<Q", value)


def two_level() -> tuple[PagingAddressSpace32, bytearray]:
    """0x00400000 -> 4 KiB pages at 0x5000 (rw, user) and 0x6000 (read-only); 0x80000000 -> a 4 MiB
    page at 0x00800000; PDE 0x300 names the directory itself (the self-map at 0xC0000000)."""
    ram = bytearray(0x1000000)
    put32(ram, PD + (0x00400000 >> 22) * 4, PT | P | RW | US)
    put32(ram, PT + 0 * 4, 0x5000 | P | RW | US)
    put32(ram, PT + 1 * 4, 0x6000 | P | US)
    put32(ram, PD + (0x80000000 >> 22) * 4, 0x00800000 | P | RW | PS)
    put32(ram, PD + 0x300 * 4, PD | P | RW)
    ram[0x5000:0x5004] = b"ABCD"
    ram[0x00800000 + 0x1234 : 0x00800000 + 0x1238] = b"big!"
    return PagingAddressSpace32(BufferMemory({0: ram}), PD | 0x18), ram


def test_two_level_translation_with_small_and_large_pages() -> None:
    space, _ = two_level()
    assert space.translate(0x00400010) == 0x5010
    assert space.read(0x00400000, 4) == b"ABCD"
    assert space.read(0x80001234, 4) == b"big!"
    t = space.translation(0x00401000)
    assert (t.paddr, t.page_size, t.writable, t.user, t.nx) == (0x6000, 0x1000, False, True, False)
    big = space.translation(0x80000000)
    assert big.page_size == 1 << 22 and big.writable and not big.user
    with pytest.raises(PageNotPresent):
        space.translate(0x00402000)
    with pytest.raises(NonCanonicalAddress):
        space.translate(1 << 32)


def test_the_self_map_shows_the_page_tables_as_pages() -> None:
    space, _ = two_level()
    # 0xC0000000 + PDE index * 4 KiB is that PDE's page table as a page
    assert space.translate(0xC0000000 + (0x00400000 >> 22) * 0x1000) == PT
    assert space.read_u32(0xC0300000 + 0x300 * 4) == PD | P | RW  # the directory itself, at 0xC0300000
    walk = space.walk_mappings()
    assert not walk.problems
    starts = {m.vaddr: m for m in walk.mappings}
    assert starts[0x00400000].size == 0x1000 and starts[0x00401000].writable is False
    assert starts[0x80000000].size == 1 << 22 and starts[0x80000000].paddr == 0x00800000
    assert any(m.vaddr <= 0xC0300000 < m.vend for m in walk.mappings)


def test_pse36_puts_large_pages_above_4_gib() -> None:
    pde = 0xFFC00000 | (0x3 << 13) | P | PS
    assert pse36_base(pde) == 0x3_FFC0_0000
    ram = bytearray(0x3000)
    put32(ram, PD, pde)
    space = PagingAddressSpace32(BufferMemory({0: ram}), PD)
    assert space.translate(0x1234) == 0x3_FFC0_1234
    with pytest.raises(BadPageTable, match="outside RAM"):
        space.read(0x1234, 4)


def test_without_pse_the_large_page_bit_is_ignored() -> None:
    ram = bytearray(0x8000)
    put32(ram, PD, PT | P | PS | RW)
    put32(ram, PT + 4, 0x7000 | P)
    space = PagingAddressSpace32(BufferMemory({0: ram}), PD, pse=False)
    assert space.translate(0x1000) == 0x7000


def pae() -> tuple[PagingAddressSpace32, bytearray]:
    ram = bytearray(0x800000)
    pdpt, pd, pt = 0x1020, 0x2000, 0x3000  # a PDPT is 32-byte aligned, not page aligned
    put64(ram, pdpt + 2 * 8, pd | P)  # 0x80000000..0xBFFFFFFF
    put64(ram, pd + 0 * 8, pt | P | RW)
    put64(ram, pt + 5 * 8, 0x5000 | P | RW | NX)  # 0x80005000: data, no execute
    put64(ram, pt + 6 * 8, 0x6000 | P)  # 0x80006000: code, read-only
    put64(ram, pd + 3 * 8, 0x400000 | P | PS | US)  # 0x80600000: a 2 MiB page
    ram[0x5000:0x5003] = b"pae"
    return PagingAddressSpace32(BufferMemory({0: ram}), pdpt | 0x8, pae=True), ram


def test_pae_three_levels_large_pages_and_no_execute() -> None:
    space, _ = pae()
    assert space.read(0x80005000, 3) == b"pae"
    data, code = space.translation(0x80005000), space.translation(0x80006000)
    assert data.nx and data.writable and not code.nx and not code.writable
    big = space.translation(0x80612345)
    assert big.paddr == 0x412345 and big.page_size == 1 << 21 and big.user
    with pytest.raises(PageNotPresent):
        space.translate(0x00001000)  # PDPT entry 0 not present
    walk = space.walk_mappings()
    assert [(m.vaddr, m.size, m.nx) for m in walk.mappings] == [
        (0x80005000, 0x1000, True),
        (0x80006000, 0x1000, False),
        (0x80600000, 1 << 21, False),
    ]


def test_pae_reserved_pdpt_bits_and_tables_outside_ram_are_named() -> None:
    space, ram = pae()
    put64(ram, 0x1020 + 3 * 8, 0x3000 | P | (1 << 5))  # reserved bit 5
    put64(ram, 0x2000 + 8 * 8, 0x7FFFF000 | P)  # a page table far outside RAM
    with pytest.raises(BadPageTable, match="reserved"):
        space.translate(0xC0000000)
    with pytest.raises(BadPageTable, match="outside RAM"):
        space.translate(0x81000000)
    walk = space.walk_mappings()
    assert any("reserved" in p for p in walk.problems) and any("outside RAM" in p for p in walk.problems)


def test_every_entry_naming_one_table_stops_at_a_budget() -> None:
    ram = bytearray(0x4000)
    ram[PD : PD + 0x1000] = struct.pack("<I", PT | P | RW) * 1024
    ram[PT : PT + 0x1000] = b"".join(struct.pack("<I", (0x3000 + 0x1000 * (i % 2)) | P) for i in range(1024))
    walk = PagingAddressSpace32(BufferMemory({0: ram}), PD).walk_mappings()
    assert walk.truncated and any("budget" in p for p in walk.problems)


ENTRY = st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 0xF).map(lambda f: (f << 12) | P | RW | US))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x3FF), ENTRY), max_size=64), st.booleans(), st.integers(0, (1 << 32) - 1))
def test_random_tables_translate_or_raise_a_translation_error(entries: list[tuple[int, int]], use_pae: bool, vaddr: int) -> None:
    ram = bytearray(0x10000)
    for index, value in entries:  # entries of the root and of the tables it may name (pages 1..15)
        put64(ram, 0x1000 + index * 8, value) if use_pae else put32(ram, 0x1000 + index * 4, value & 0xFFFFFFFF)
    space = PagingAddressSpace32(BufferMemory({0: ram}), 0x1000, pae=use_pae)
    with contextlib.suppress(TranslationError):
        space.read(vaddr, 16)
    walk = space.walk_mappings()
    assert all(0 <= m.vaddr < m.vend <= 1 << 32 for m in walk.mappings)
