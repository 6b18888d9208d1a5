"""The byte searches under the memory scans: records of a page array holding a value at an offset, and
fields that point back at their own structure. Both must find exactly what a word-by-word loop finds,
on data made to mislead them (unaligned copies of the pattern, pointers near a 64 KiB line)."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vmsentinel.os.linux.views.scan import _records_holding, _self_pointers

BASE = 0xFFFFFFFFC0A0F000  # a module mapping a page below a 64 KiB line


def _naive_self_pointers(data: bytes, base: int, back: int) -> list[int]:
    return [o for o in range(0, len(data) - 7, 8) if struct.unpack_from("<Q", data, o)[0] == (base + o - back) % (1 << 64)]


def test_records_holding_a_value_only_at_its_offset() -> None:
    value = struct.pack("<Q", 0xFFFF888001234500)
    data = bytearray(64 * 10)
    for index in (0, 3, 9):
        data[index * 64 + 8 : index * 64 + 16] = value
    data[5 * 64 + 9 : 5 * 64 + 17] = value  # unaligned: not a record's field
    data[7 * 64 + 24 : 7 * 64 + 32] = value  # another field of the record
    assert _records_holding(bytes(data), 64, 8, value) == [0, 3, 9]
    assert _records_holding(bytes(value[:4]), 64, 8, value) == []


def test_self_pointers_found_across_a_64k_line_and_decoys_ignored() -> None:
    back = 0x2F0
    data = bytearray(random.Random(7).randbytes(3 * 4096))
    wanted = [0x10, 0xFF8, 0x1000, 0x1FF8, 0x2A40]
    for o in wanted:
        struct.pack_into("<Q", data, o, BASE + o - back)
    struct.pack_into("<Q", data, 0x804, BASE + 0x804 - back)  # unaligned
    struct.pack_into("<Q", data, 0x900, BASE + 0x908 - back)  # points 8 bytes off
    assert _self_pointers(bytes(data), BASE, back) == wanted == _naive_self_pointers(bytes(data), BASE, back)


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=0, max_size=9000), st.integers(0, 0x3FF8).map(lambda b: b & ~7), st.lists(st.integers(0, 1100), max_size=8)
)
def test_self_pointers_equal_the_word_by_word_answer(noise: bytes, back: int, slots: list[int]) -> None:
    data = bytearray(noise)
    for slot in slots:
        o = slot * 8
        if o + 8 <= len(data):
            struct.pack_into("<Q", data, o, BASE + o - back)
    assert _self_pointers(bytes(data), BASE, back) == _naive_self_pointers(bytes(data), BASE, back)
