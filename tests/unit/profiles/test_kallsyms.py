"""kallsyms decoding on synthetic tables in both layouts, and on corrupt ones."""

from __future__ import annotations

import struct

import pytest
from tests.synthetic_kernel import build_kallsyms, sample_symbols

from vmsentinel.errors import KallsymsError
from vmsentinel.os.linux.profile import kallsyms

BASE = 0xFFFFFFFFA1000000


@pytest.mark.parametrize(("order", "seqs"), [("offsets-first", True), ("offsets-first", False), ("names-first", True)])
def test_decodes_every_symbol_in_each_layout(order: str, seqs: bool) -> None:
    syms = sample_symbols()
    buf, rb_at = build_kallsyms(syms, BASE, order=order, seqs=seqs)
    layout = kallsyms.locate(buf)
    assert layout.order == order and layout.num_syms == len(syms)
    assert layout.relative_base == BASE and layout.relative_base_at == rb_at
    assert (layout.seqs_of_names is not None) == seqs or order == "names-first"
    decoded = kallsyms.decode(buf, layout)
    assert decoded.names == [n for _, n, _ in syms]
    assert decoded.types == "".join(t for t, _, _ in syms)
    assert decoded.addresses == [a for _, _, a in syms]
    assert decoded.relative == [a >= BASE for _, _, a in syms]
    assert decoded.as_dict()["fixed_percpu_data"] == 0


def test_shifting_moves_only_relative_symbols() -> None:
    syms = sample_symbols(300)  # real kernels have far more than 256 symbols: at least two markers
    decoded = kallsyms.decode(build_kallsyms(syms, BASE)[0])
    moved = decoded.shifted(-0x20000000)
    assert moved.addresses[0] == 0 and moved.addresses[1] == 0x1000
    assert moved.addresses[2] == BASE - 0x20000000
    assert moved.relative_base == BASE - 0x20000000


def test_digits_elsewhere_do_not_fool_the_search() -> None:
    decoy = b"".join(bytes([c]) + b"\0" for c in range(0x20, 0x80))  # a plain byte table with the digits in it
    buf, _ = build_kallsyms(sample_symbols(300), BASE, prefix=decoy * 3)
    assert kallsyms.decode(buf).names[2] == "sys_call_0_init_task"


def test_no_tables_is_a_clear_error() -> None:
    with pytest.raises(KallsymsError, match="no kallsyms"):
        kallsyms.locate(bytes(4096))


def _corrupt(buf: bytes, at: int, data: bytes) -> bytes:
    return buf[:at] + data + buf[at + len(data) :]


def test_corrupt_markers_names_and_counts_are_rejected() -> None:
    syms = sample_symbols(600)
    buf, _ = build_kallsyms(syms, BASE, order="names-first", seqs=False)
    layout = kallsyms.locate(buf)
    # a marker that disagrees with the names walk
    bad_marker = _corrupt(buf, layout.markers + 4, struct.pack("<I", 5))
    with pytest.raises(KallsymsError):
        kallsyms.locate(bad_marker)
    # a names entry whose length runs far past its neighbours
    bad_name = _corrupt(buf, layout.names, b"\xff\x7f")
    with pytest.raises(KallsymsError):
        kallsyms.locate(bad_name)
    # an absurd num_syms
    bad_count = _corrupt(buf, layout.num_syms_at, struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(KallsymsError):
        kallsyms.locate(bad_count)
    # a relative_base that is no kernel address
    bad_base = _corrupt(buf, layout.relative_base_at, struct.pack("<Q", 0x1234))
    with pytest.raises(KallsymsError, match="relative_base"):
        kallsyms.locate(bad_base)


def test_truncated_buffer_is_rejected() -> None:
    buf, _ = build_kallsyms(sample_symbols(300), BASE, order="names-first")
    layout = kallsyms.locate(buf)
    with pytest.raises(KallsymsError):
        kallsyms.locate(buf[: layout.offsets + 8])
