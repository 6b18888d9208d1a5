"""Page tables the fuzz harness (benchmarks/fuzz.py) found hanging the walk: every entry of the root
naming one table whose entries all name one table, and so on. Four pages of tables make 512**3
paths and, before the walk had budgets for shared tables and for mappings, 100 s and 33 million
Mapping objects; it must now stop quickly and say why."""

from __future__ import annotations

import struct

import pytest

from vmsentinel.arch import x86_64
from vmsentinel.arch.x86_64 import DEFAULT_REVISIT_BUDGET, PagingAddressSpace
from vmsentinel.memory.buffer import BufferMemory


@pytest.mark.parametrize("leaves", ["distinct pages", "no pages"])
def test_tables_shared_by_every_entry_stop_at_a_budget(leaves: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a smaller mapping budget keeps the test quick; the fuzz run meets the real one
    monkeypatch.setattr(x86_64, "DEFAULT_MAPPING_BUDGET", 1 << 14)
    ram = bytearray(0x10000)
    t4, t3, t2, t1 = 0x1000, 0x2000, 0x3000, 0x4000
    for table, below in ((t4, t3), (t3, t2), (t2, t1)):
        ram[table : table + 0x1000] = struct.pack("<Q", below | 7) * 512
    if leaves == "distinct pages":  # alternating frames: no two neighbours merge into one run
        ram[t1 : t1 + 0x1000] = b"".join(struct.pack("<Q", (0x5000 + 0x1000 * (i % 2)) | 7) for i in range(512))
    space = PagingAddressSpace(BufferMemory({0: ram}), t4, 4)
    walk = space.walk_mappings()
    assert walk.truncated and any("budget" in p for p in walk.problems)
    # the work is bounded, not the wall clock (the suite may share the machine): before the budgets,
    # 131072 tables (the table budget) and 33 million mappings; now half a second or so
    assert walk.tables_visited <= DEFAULT_REVISIT_BUDGET + 4
    assert len(walk.mappings) <= 1 << 14
