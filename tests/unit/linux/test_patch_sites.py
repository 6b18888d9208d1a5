"""The patch-site walk on a fake kernel: core and module jump tables, the ftrace page list, and
hostile input (a looping page list, an impossible record count, an unreadable module table)."""

from __future__ import annotations

import struct
from typing import Any

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.views.patch_sites import MAX_FTRACE_PAGES, read_patch_sites

BASE = 0xFFFFFFFF82000000


class FakeReader:
    def __init__(self, memory: dict[int, bytes], symbols: dict[str, int]) -> None:
        self.memory, self.symbols = memory, symbols
        self.layout = {("ftrace_page", "records"): 0, ("ftrace_page", "index"): 8, ("ftrace_page", "next"): 16}
        self.layout |= {("module", "jump_entries"): 0, ("module", "num_jump_entries"): 8}
        self.reads = 0

    def has_symbol(self, name: str) -> bool:
        return name in self.symbols

    def symbol(self, name: str) -> int:
        return self.symbols[name]

    def has(self, struct_name: str, member: str) -> bool:
        return (struct_name, member) in self.layout

    def off(self, struct_name: str, member: str) -> int:
        return self.layout[(struct_name, member)]

    def size(self, struct_name: str) -> int:
        return {"jump_entry": 16, "dyn_ftrace": 16}[struct_name]

    def read(self, addr: int, length: int) -> bytes:
        self.reads += 1
        for start, data in self.memory.items():
            if start <= addr and addr + length <= start + len(data):
                return data[addr - start : addr - start + length]
        raise ReadError(f"nothing at {addr:#x}")

    def u64(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def u32(self, addr: int) -> int:
        return int(struct.unpack("<I", self.read(addr, 4))[0])

    def s32(self, addr: int) -> int:
        return int(struct.unpack("<i", self.read(addr, 4))[0])


def jump_table(start: int, sites: list[tuple[int, int]]) -> bytes:
    out = b""
    for i, (code, target) in enumerate(sites):
        entry = start + i * 16
        out += struct.pack("<iiq", code - entry, target - entry - 4, 0)
    return out


def module(name: str, address: int) -> Any:
    return type("M", (), {"name": name, "address": address})()


def test_core_and_module_jump_tables_and_ftrace_records() -> None:
    table, mod_table, mod, page, records = BASE, BASE + 0x1000, BASE + 0x2000, BASE + 0x3000, BASE + 0x4000
    memory = {
        table: jump_table(table, [(BASE + 0x10, BASE + 0x80), (BASE + 0x20, BASE + 0x90)]),
        mod_table: jump_table(mod_table, [(BASE + 0x30, BASE + 0xA0)]),
        mod: struct.pack("<QI", mod_table, 1),
        page: struct.pack("<QiiQ", records, 2, 0, 0),
        records: struct.pack("<QQQQ", BASE + 0x40, 0, BASE + 0x50, 0),
        BASE + 0x5000: struct.pack("<Q", page),
    }
    symbols = {"__start___jump_table": table, "__stop___jump_table": table + 32, "ftrace_pages_start": BASE + 0x5000}
    sites = read_patch_sites(FakeReader(memory, symbols), [module("veth", mod), module("gone", BASE + 0x9000)])  # type: ignore[arg-type]
    assert sites.jump_targets == {BASE + 0x10: BASE + 0x80, BASE + 0x20: BASE + 0x90, BASE + 0x30: BASE + 0xA0}
    assert sites.ftrace == {BASE + 0x40, BASE + 0x50}
    assert [p for p in sites.problems if "gone" in p]  # an unreadable module table is said, not raised


def test_a_looping_ftrace_list_and_an_impossible_count_are_bounded() -> None:
    page, records = BASE + 0x3000, BASE + 0x4000
    memory = {
        page: struct.pack("<QiiQ", records, 1 << 30, 0, page),  # points at itself; claims a billion records
        BASE + 0x5000: struct.pack("<Q", page),
    }
    reader = FakeReader(memory, {"ftrace_pages_start": BASE + 0x5000})
    sites = read_patch_sites(reader, [])  # type: ignore[arg-type]
    assert sites.ftrace == set() and reader.reads <= 4 * MAX_FTRACE_PAGES + 2
