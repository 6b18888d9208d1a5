"""``Fields``: several members of a record unpacked in one call, in the order asked, whatever
their order in memory."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsentinel.os.linux.reader import Fields


def test_members_come_back_in_the_order_given_not_the_order_in_memory() -> None:
    raw = bytearray(64)
    struct.pack_into("<Q", raw, 40, 0x1111)
    struct.pack_into("<I", raw, 4, 0x22)
    struct.pack_into("<Q", raw, 16, 0x3333)
    fields = Fields([(40, "Q"), (4, "I"), (16, "Q")])
    assert fields.unpack(bytes(raw)) == (0x1111, 0x22, 0x3333)
    assert fields.size == 48


def test_one_member_is_still_a_tuple() -> None:
    assert Fields([(8, "Q")]).unpack(bytes(8) + struct.pack("<Q", 7)) == (7,)


def test_overlapping_members_are_refused() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Fields([(0, "Q"), (4, "I")])


def test_a_record_too_short_is_an_error_not_a_guess() -> None:
    with pytest.raises(struct.error):
        Fields([(0, "Q"), (100, "Q")]).unpack(bytes(64))


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_any_layout_reads_what_one_member_at_a_time_reads(values: list[int], rnd) -> None:
    offsets = [i * 8 for i in range(len(values))]
    rnd.shuffle(offsets)
    raw = bytearray(8 * len(values))
    for off, v in zip(offsets, values, strict=True):
        struct.pack_into("<Q", raw, off, v)
    assert Fields([(off, "Q") for off in offsets]).unpack(bytes(raw)) == tuple(values)
