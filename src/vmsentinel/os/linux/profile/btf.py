"""BTF (BPF Type Format) parser: the kernel's own description of its types.

BTF sits in the ``.BTF`` section of ``vmlinux`` and, resident, in kernel memory
between ``__start_BTF`` and ``__stop_BTF``. It answers what a profile needs::

    btf = Btf(blob)
    off, tid = btf.member_offset("task_struct", "cred")   # bytes, type id
    btf.size_of(btf.find("module"))
    btf.enum_values("pid_type")                           # {'PIDTYPE_PID': 0, ...}

A blob may come from a hostile guest: the header, every section bound, every
type's trailing data and every string offset are checked, type references are
range-checked, and chains of typedefs/modifiers are followed a bounded number
of steps, so a loop is an error, never a hang.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from dataclasses import dataclass
from enum import IntEnum

from vmsentinel.errors import BtfError

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
MAX_CHAIN = 64  # typedef/const/volatile/array nesting followed before calling it a loop
MAX_BTF_BYTES = 64 << 20


class Kind(IntEnum):
    VOID = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# bytes of kind-specific data after the 12-byte btf_type: fixed, or per vlen entry
_FIXED_EXTRA = {Kind.INT: 4, Kind.ARRAY: 12, Kind.VAR: 4, Kind.DECL_TAG: 4}
_PER_VLEN = {Kind.STRUCT: 12, Kind.UNION: 12, Kind.ENUM: 8, Kind.FUNC_PROTO: 8, Kind.DATASEC: 12, Kind.ENUM64: 12}
_MODIFIERS = (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG)


@dataclass(frozen=True, slots=True)
class BtfType:
    """One type record: kind, name, and ``size_or_type`` (a size for INT/STRUCT/..., a type id for PTR/TYPEDEF/...)."""

    type_id: int
    kind: Kind
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    offset: int  # of the record in the type section


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int

    @property
    def offset(self) -> int:
        return self.bit_offset // 8


#: what BTF can be parsed from: bytes, or a mapped file
Buffer = bytes | bytearray | memoryview | mmap.mmap


class _Window:
    """``size`` bytes from ``start`` of a buffer that can search itself (bytes or a mapped file),
    addressed from 0: the string section is searched where it lies, never copied out."""

    __slots__ = ("buf", "size", "start")

    def __init__(self, buf: Buffer, start: int, size: int) -> None:
        self.buf, self.start, self.size = buf, start, size

    def __len__(self) -> int:
        return self.size

    def find(self, sub: bytes, pos: int = 0) -> int:
        if isinstance(self.buf, memoryview):  # a view cannot search: its bytes can
            self.buf, self.start = bytes(self.buf[self.start : self.start + self.size]), 0
        hit = self.buf.find(sub, self.start + pos, self.start + self.size)
        return -1 if hit < 0 else hit - self.start

    def slice(self, lo: int, hi: int) -> bytes:
        return bytes(self.buf[self.start + lo : self.start + min(hi, self.size)])


class Btf:
    """Parsed BTF: type ids from 1, id 0 is ``void``."""

    def __init__(
        self, data: Buffer, index: tuple[Buffer, Buffer] | None = None, *, base: int = 0, length: int | None = None
    ) -> None:
        """Parse the BTF at ``base`` of ``data`` (``length`` bytes, default: the rest); ``index`` is a saved
        :meth:`index_bytes` result that skips the scan. ``data`` may be a mapped file (``mmap``): nothing
        is copied out of it, so processes that map one profile file share its pages."""
        length = len(data) - base if length is None else length
        if length > MAX_BTF_BYTES:
            raise BtfError(f"BTF blob of {length} bytes is larger than the {MAX_BTF_BYTES} allowed")
        if length < _HEADER.size or base < 0 or base + length > len(data):
            raise BtfError("BTF blob shorter than its header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data, base)
        if magic != BTF_MAGIC or version != 1:
            raise BtfError(f"not BTF: magic {magic:#x} version {version}")
        if hdr_len < _HEADER.size or hdr_len > length:
            raise BtfError(f"BTF header length {hdr_len} is impossible")
        for name, off, size in (("type", type_off, type_len), ("string", str_off, str_len)):
            if hdr_len + off + size > length:
                raise BtfError(f"BTF {name} section ({off:#x}+{size:#x}) runs past the blob ({length:#x} bytes)")
        self._buf, self._base = data, base
        self._size = hdr_len + max(type_off + type_len, str_off + str_len)
        self._types = memoryview(data)[base + hdr_len + type_off : base + hdr_len + type_off + type_len]
        self._strings = _Window(data, base + hdr_len + str_off, str_len)
        self._offsets: array[int] | memoryview
        self._name_offs: array[int] | memoryview
        if index is not None:
            try:
                self._offsets, self._name_offs = memoryview(index[0]).cast("I"), memoryview(index[1]).cast("I")
            except TypeError as exc:
                raise BtfError(f"saved BTF index is malformed: {exc}") from None
            if len(self._offsets) != len(self._name_offs) or (len(self._offsets) > 1 and self._offsets[-1] + 12 > type_len):
                raise BtfError("saved BTF index does not match the blob")
        else:
            self._offsets, self._name_offs = self._index()
        self._name_offs_bytes: bytes | None = None
        self._ids_memo: dict[str, list[int]] = {}

    @property
    def data(self) -> bytes:
        """The BTF blob's bytes (a copy: to save, not to parse)."""
        return bytes(memoryview(self._buf)[self._base : self._base + self._size])

    def index_bytes(self) -> tuple[bytes, bytes]:
        """The type index, to save next to the blob so a reload skips the scan."""
        return self._offsets.tobytes(), self._name_offs.tobytes()

    def _index(self) -> tuple[array[int], array[int]]:
        """Offsets and name offsets of every type record; validates that each one's data fits."""
        offsets = array("I", [0])  # id 0: void, no record
        name_offs = array("I", [0])
        types, size = self._types, len(self._types)
        unpack = _TYPE.unpack_from
        pos = 0
        fixed, per_vlen = _FIXED_EXTRA, _PER_VLEN
        while pos < size:
            if pos + 12 > size:
                raise BtfError(f"truncated BTF type record at {pos:#x}")
            name_off, info, _ = unpack(types, pos)
            kind = (info >> 24) & 0x1F
            if kind > 19 or kind == 0:
                raise BtfError(f"unknown BTF kind {kind} at {pos:#x}")
            extra = fixed.get(kind, 0) + per_vlen.get(kind, 0) * (info & 0xFFFF)
            offsets.append(pos)
            name_offs.append(name_off)
            pos += 12 + extra
        if pos != size:
            raise BtfError("last BTF type record runs past the type section")
        return offsets, name_offs

    # -- basic access ------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offsets)

    def string(self, offset: int) -> str:
        if offset == 0:
            return ""
        if offset >= len(self._strings):
            raise BtfError(f"BTF string offset {offset:#x} is outside the string section")
        end = self._strings.find(b"\0", offset)
        return self._strings.slice(offset, end if end >= 0 else len(self._strings)).decode(errors="replace")

    def type(self, type_id: int) -> BtfType:
        if type_id == 0:
            return BtfType(0, Kind.VOID, "void", 0, False, 0, -1)
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"BTF type id {type_id} out of range (1..{len(self._offsets) - 1})")
        off = self._offsets[type_id]
        name_off, info, size_or_type = _TYPE.unpack_from(self._types, off)
        return BtfType(
            type_id, Kind((info >> 24) & 0x1F), self.string(name_off), info & 0xFFFF, bool(info >> 31), size_or_type, off
        )

    def _extra(self, t: BtfType, index: int, fmt: struct.Struct, entry: int) -> tuple[int, ...]:
        return fmt.unpack_from(self._types, t.offset + 12 + index * entry)

    # -- names ---------------------------------------------------------------
    def ids_named(self, name: str) -> list[int]:
        """Type ids whose name is exactly ``name`` (BTF stores each distinct string once)."""
        needle = b"\0" + name.encode() + b"\0"
        if name in self._ids_memo:
            return self._ids_memo[name]
        if self._name_offs_bytes is None:
            self._name_offs_bytes = self._name_offs.tobytes()
        table = self._name_offs_bytes
        ids: list[int] = []
        pos = self._strings.find(needle)
        while pos >= 0 and len(ids) < 4096:
            # bytes.find runs at memchr speed; only hits on a 4-byte boundary are name offsets
            key = struct.pack("<I", pos + 1)
            hit = table.find(key, 4)
            while hit >= 0 and len(ids) < 4096:
                if hit % 4 == 0:
                    ids.append(hit // 4)
                hit = table.find(key, hit + 1)
            pos = self._strings.find(needle, pos + 1)
        self._ids_memo[name] = sorted(ids)
        return self._ids_memo[name]

    def find(self, name: str, kinds: tuple[Kind, ...] = (Kind.STRUCT, Kind.UNION)) -> int:
        """The id of the named type of one of ``kinds`` (complete definitions before forward declarations)."""
        for type_id in self.ids_named(name):
            if self.type(type_id).kind in kinds:
                return type_id
        raise BtfError(f"no {'/'.join(k.name.lower() for k in kinds)} named {name!r} in BTF")

    def count(self, kinds: tuple[Kind, ...]) -> int:
        """How many types of these kinds there are (named or not)."""
        return sum(1 for i in range(1, len(self._offsets)) if self.type(i).kind in kinds)

    # -- resolution -------------------------------------------------------------
    def resolve(self, type_id: int) -> BtfType:
        """Follow typedefs and modifiers to the underlying type (bounded: loops are errors)."""
        t = self.type(type_id)
        for _ in range(MAX_CHAIN):
            if t.kind not in _MODIFIERS:
                return t
            t = self.type(t.size_or_type)
        raise BtfError(f"BTF type {type_id} is a chain of more than {MAX_CHAIN} typedefs/modifiers (a loop?)")

    def size_of(self, type_id: int, _depth: int = 0) -> int:
        if _depth > MAX_CHAIN:
            raise BtfError(f"BTF type {type_id}: nesting deeper than {MAX_CHAIN} (a loop?)")
        t = self.resolve(type_id)
        if t.kind in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT, Kind.DATASEC):
            return t.size_or_type
        if t.kind == Kind.PTR:
            return 8
        if t.kind == Kind.ARRAY:
            elem, _index, nelems = self._extra(t, 0, _TYPE, 12)
            return nelems * self.size_of(elem, _depth + 1)
        if t.kind == Kind.VOID:
            return 0
        raise BtfError(f"BTF type {type_id} ({t.kind.name}) has no size")

    def array_info(self, type_id: int) -> tuple[int, int]:
        """(element type id, element count) of an array type."""
        t = self.resolve(type_id)
        if t.kind != Kind.ARRAY:
            raise BtfError(f"BTF type {type_id} is {t.kind.name}, not an array")
        elem, _index, nelems = self._extra(t, 0, _TYPE, 12)
        return elem, nelems

    def int_info(self, type_id: int) -> tuple[bool, int]:
        """(signed, bits) of an integer type."""
        t = self.resolve(type_id)
        if t.kind != Kind.INT:
            raise BtfError(f"BTF type {type_id} is {t.kind.name}, not an int")
        (enc,) = struct.unpack_from("<I", self._types, t.offset + 12)
        return bool((enc >> 24) & 1), enc & 0xFF

    def members(self, type_id: int) -> list[Member]:
        t = self.resolve(type_id)
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise BtfError(f"BTF type {type_id} ({t.name or t.kind.name}) is not a struct or union")
        out = []
        for i in range(t.vlen):
            name_off, mtype, offset = self._extra(t, i, _TYPE, 12)
            if t.kind_flag:
                out.append(Member(self.string(name_off), mtype, offset & 0xFFFFFF, offset >> 24))
            else:
                out.append(Member(self.string(name_off), mtype, offset, 0))
        return out

    def member(self, struct_id: int, path: str) -> tuple[int, int]:
        """(byte offset, type id) of a dotted member path, looking into anonymous structs/unions."""
        offset, type_id = 0, struct_id
        for part in path.split("."):
            found = self._find_member(type_id, part, 0)
            if found is None:
                raise BtfError(f"{self.type_name(type_id)} has no member {part!r}")
            bit_offset, type_id = found
            offset += bit_offset // 8
        return offset, type_id

    def _find_member(self, type_id: int, name: str, depth: int) -> tuple[int, int] | None:
        if depth > MAX_CHAIN:
            raise BtfError(f"anonymous members nested deeper than {MAX_CHAIN} in type {type_id}")
        anonymous = []
        for m in self.members(type_id):
            if m.name == name:
                return m.bit_offset, m.type_id
            if not m.name:
                anonymous.append(m)
        for m in anonymous:
            inner = self.resolve(m.type_id)
            if inner.kind in (Kind.STRUCT, Kind.UNION):
                found = self._find_member(inner.type_id, name, depth + 1)
                if found is not None:
                    return m.bit_offset + found[0], found[1]
        return None

    def member_offset(self, struct_name: str, path: str) -> tuple[int, int]:
        return self.member(self.find(struct_name), path)

    def enum_values(self, name_or_id: str | int) -> dict[str, int]:
        type_id = self.find(name_or_id, (Kind.ENUM, Kind.ENUM64)) if isinstance(name_or_id, str) else name_or_id
        t = self.resolve(type_id)
        values: dict[str, int] = {}
        if t.kind == Kind.ENUM:
            for i in range(t.vlen):
                name_off, raw = self._extra(t, i, _ENUM, 8)
                values[self.string(name_off)] = raw - (1 << 32) if t.kind_flag and raw >> 31 else raw
        elif t.kind == Kind.ENUM64:
            for i in range(t.vlen):
                name_off, lo, hi = self._extra(t, i, _TYPE, 12)
                values[self.string(name_off)] = lo | (hi << 32)
        else:
            raise BtfError(f"BTF type {type_id} is not an enum")
        return values

    def type_name(self, type_id: int, _depth: int = 0) -> str:
        """A C-like name: ``struct cred *``, ``char [16]``."""
        if _depth > MAX_CHAIN:
            return "<loop>"
        t = self.type(type_id)
        if t.kind == Kind.PTR:
            return self.type_name(t.size_or_type, _depth + 1) + " *"
        if t.kind == Kind.ARRAY:
            elem, _index, nelems = self._extra(t, 0, _TYPE, 12)
            return f"{self.type_name(elem, _depth + 1)} [{nelems}]"
        if t.kind in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPE_TAG):
            return f"{t.kind.name.lower()} {self.type_name(t.size_or_type, _depth + 1)}"
        prefix = {Kind.STRUCT: "struct ", Kind.UNION: "union ", Kind.ENUM: "enum ", Kind.ENUM64: "enum "}.get(t.kind, "")
        return prefix + (t.name or f"<anon {t.kind.name.lower()} {type_id}>")


_ENUM = struct.Struct("<II")


def find_btf_blobs(buf: bytes, limit: int = 64) -> list[int]:
    """Offsets in ``buf`` where a plausible BTF header starts (magic, version 1, sane lengths)."""
    hits: list[int] = []
    pos = buf.find(b"\x9f\xeb\x01")
    while pos >= 0 and len(hits) < limit:
        if pos + _HEADER.size <= len(buf):
            _, _, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(buf, pos)
            if (
                hdr_len == 24
                and type_off == 0
                and str_off == type_len
                and 0 < type_len < MAX_BTF_BYTES
                and 0 < str_len < MAX_BTF_BYTES
            ):
                hits.append(pos)
        pos = buf.find(b"\x9f\xeb\x01", pos + 1)
    return hits
