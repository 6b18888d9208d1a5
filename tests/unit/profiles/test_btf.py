"""BTF parsing on synthetic blobs, including forged and corrupt ones."""

from __future__ import annotations

import struct

import pytest
from tests.synthetic_kernel import BtfBuilder, sample_btf

from vmsentinel.errors import BtfError
from vmsentinel.os.linux.profile.btf import Btf, Kind, find_btf_blobs


def test_members_typedefs_anonymous_unions_and_bitfields() -> None:
    btf = Btf(sample_btf())
    assert btf.member_offset("task_struct", "pid") == (0, btf.ids_named("int")[0])
    assert btf.member_offset("task_struct", "tasks")[0] == 8
    assert btf.member_offset("task_struct", "mm")[0] == 24  # inside an anonymous union
    assert btf.member_offset("task_struct", "active_mm")[0] == 24
    assert btf.member_offset("task_struct", "tasks.prev")[0] == 16
    assert btf.member_offset("cred", "uid.val")[0] == 8
    assert btf.type_name(btf.member_offset("task_struct", "cred")[1]) == "const struct cred *"
    assert btf.type_name(btf.member_offset("task_struct", "comm")[1]) == "char [16]"
    assert btf.size_of(btf.find("task_struct")) == 96
    assert btf.size_of(btf.member_offset("task_struct", "comm")[1]) == 16
    assert btf.size_of(btf.ids_named("kuid_t")[0]) == 4
    flags = [m for m in btf.members(btf.find("task_struct")) if not m.name]
    inner = btf.members(btf.resolve(flags[1].type_id).type_id)
    assert [(m.name, m.bit_offset, m.bitfield_size) for m in inner] == [("in_execve", 0, 1), ("in_iowait", 1, 1), ("pf_io", 5, 3)]
    assert btf.enum_values("pid_type") == {"PIDTYPE_PID": 0, "PIDTYPE_TGID": 1, "PIDTYPE_MAX": 4}
    assert btf.int_info(btf.ids_named("int")[0]) == (True, 32)
    with pytest.raises(BtfError, match="no member"):
        btf.member_offset("task_struct", "nope")
    with pytest.raises(BtfError, match="no struct"):
        btf.find("not_a_struct")


def test_saved_index_gives_the_same_answers() -> None:
    blob = sample_btf()
    first = Btf(blob)
    again = Btf(blob, first.index_bytes())
    assert again.member_offset("task_struct", "cred") == first.member_offset("task_struct", "cred")
    with pytest.raises(BtfError):
        Btf(blob, (first.index_bytes()[0], b""))
    with pytest.raises(BtfError):  # not a whole number of entries
        Btf(blob, (first.index_bytes()[0] + b"\x01", first.index_bytes()[1]))


def test_btf_parsed_in_place_inside_a_bigger_buffer() -> None:
    """A profile file holds the blob at some offset: parsed there, with the same answers, and a blob
    said to run past its buffer is refused."""
    blob = sample_btf()
    buf = b"\xaa" * 13 + blob + b"\xbb" * 7
    inside = Btf(buf, base=13, length=len(blob))
    assert inside.data == blob and inside.member_offset("task_struct", "cred") == Btf(blob).member_offset("task_struct", "cred")
    with pytest.raises(BtfError):
        Btf(buf, base=13, length=len(blob) + 8)


def test_find_btf_blobs_in_a_buffer() -> None:
    blob = sample_btf()
    buf = b"\x9f\xeb\x01junk" + bytes(100) + blob + bytes(50)
    assert find_btf_blobs(buf) == [len(b"\x9f\xeb\x01junk") + 100]


def _header(blob: bytes, **fields: int) -> bytes:
    names = ["magic", "version", "flags", "hdr_len", "type_off", "type_len", "str_off", "str_len"]
    values = list(struct.unpack_from("<HBBIIIII", blob))
    for k, v in fields.items():
        values[names.index(k)] = v
    return struct.pack("<HBBIIIII", *values) + blob[24:]


@pytest.mark.parametrize(
    "forge",
    [
        lambda b: b[:10],
        lambda b: _header(b, magic=0x1234),
        lambda b: _header(b, version=2),
        lambda b: _header(b, hdr_len=1 << 30),
        lambda b: _header(b, type_len=1 << 30),
        lambda b: _header(b, str_off=1 << 31, str_len=16),
        lambda b: _header(b, type_len=struct.unpack_from("<I", b, 12)[0] - 3),  # last record cut short
    ],
)
def test_corrupt_headers_are_clear_errors(forge: object) -> None:
    with pytest.raises(BtfError):
        Btf(forge(sample_btf()))  # type: ignore[operator]


def test_unknown_kind_and_vlen_past_the_section() -> None:
    b = BtfBuilder()
    b.int_("int", 4)
    b.records.append(struct.pack("<III", 0, 31 << 24, 0))  # kind 31 does not exist
    with pytest.raises(BtfError, match="unknown BTF kind"):
        Btf(b.build())
    b = BtfBuilder()
    b.records.append(struct.pack("<III", 0, (int(Kind.STRUCT) << 24) | 0xFFFF, 8))  # 65535 members, none present
    with pytest.raises(BtfError, match="runs past"):
        Btf(b.build())


def test_typedef_loops_and_bad_references_do_not_hang() -> None:
    b = BtfBuilder()
    a = b.typedef("a_t", 0)
    c = b.typedef("b_t", a)
    b.patch(a, c)  # a_t -> b_t -> a_t
    bad = b.ptr(9999)
    s = b.struct("holder", 8, [("x", a, 0, 0), ("p", bad, 0, 0), ("dangling", 7777, 0, 0)])
    arr = b.array(a, 4, a)
    btf = Btf(b.build())
    with pytest.raises(BtfError, match="loop"):
        btf.resolve(a)
    with pytest.raises(BtfError):
        btf.size_of(btf.member_offset("holder", "x")[1])
    with pytest.raises(BtfError, match="out of range"):
        btf.resolve(btf.member_offset("holder", "dangling")[1])
    with pytest.raises(BtfError):
        btf.size_of(arr)
    with pytest.raises(BtfError, match="out of range"):
        btf.type_name(bad)
    assert btf.size_of(s) == 8


def test_self_nested_anonymous_members_are_bounded() -> None:
    b = BtfBuilder()
    anon = b.struct("", 8, [("", 0, 0, 0)])
    b.records[anon - 1] = struct.pack("<III", 0, (int(Kind.STRUCT) << 24) | 1, 8) + struct.pack("<III", 0, anon, 0)
    b.struct("outer", 8, [("", anon, 0, 0)])
    btf = Btf(b.build())
    with pytest.raises(BtfError):
        btf.member_offset("outer", "missing")


def test_string_offsets_outside_the_section() -> None:
    b = BtfBuilder()
    b.int_("int", 4)
    blob = bytearray(b.build())
    struct.pack_into("<I", blob, 24, 1 << 20)  # name_off of type 1
    btf = Btf(bytes(blob))
    with pytest.raises(BtfError, match="string offset"):
        btf.type(1)
