"""Decode the kernel's compressed symbol table (kallsyms) from raw bytes: a
kernel image's ``.rodata`` or a window of guest physical memory.

The tables (see the kernel's ``scripts/kallsyms.c``) are found without any
symbol, by their shape:

* ``token_table``: 256 NUL-terminated tokens; the single digits ``0``..``9``
  keep their own slots 0x30..0x39, so ``"0\\01\\0...9\\0"`` marks it;
* ``token_index``: 256 u16 offsets of those tokens, right after the table;
* ``markers``: one u32 offset into ``names`` per 256 symbols, before the table
  (with ``seqs_of_names``, 3 bytes per symbol, in between on 6.1-stable to 6.3);
* ``num_syms`` then ``names``: each entry a length (one byte, or two when the
  top bit is set) followed by token numbers; the first character is the type;
* ``offsets`` (s32 per symbol) and ``relative_base`` (u64): before ``num_syms``
  up to 6.3, after ``token_index`` from 6.4 on, where ``seqs_of_names`` follows.

With ``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` a non-negative offset is an absolute
value (per-CPU symbols) and a negative one means ``relative_base - 1 - offset``.

All of it may come from a hostile guest: every table is bounds-checked, the
markers must agree with the names walk, and counts are capped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vmsentinel.arch.x86_64 import KERNEL_ADDRESS_MIN
from vmsentinel.errors import KallsymsError

DIGITS = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
MAX_SYMBOLS = 1 << 21


@dataclass(frozen=True)
class KallsymsLayout:
    """Where each table sits in the buffer it was found in."""

    token_table: int
    token_index: int
    markers: int
    marker_count: int
    names: int
    names_end: int
    num_syms: int
    num_syms_at: int
    offsets: int
    relative_base_at: int
    relative_base: int
    seqs_of_names: int | None
    order: str  # "offsets-first" (up to 6.3) or "names-first" (6.4+)


@dataclass(frozen=True)
class KernelSymbols:
    """Decoded symbols in table order (sorted by address).

    ``relative`` marks symbols stored relative to ``relative_base`` (everything
    but the absolute per-CPU ones): only those move with KASLR.
    """

    names: list[str]
    types: str
    addresses: list[int]
    relative: list[bool]
    relative_base: int

    def __len__(self) -> int:
        return len(self.names)

    def shifted(self, delta: int) -> KernelSymbols:
        """The same symbols with every relative address moved by ``delta`` (undo or apply KASLR)."""
        mask = (1 << 64) - 1
        addresses = [(a + delta) & mask if rel else a for a, rel in zip(self.addresses, self.relative, strict=True)]
        return KernelSymbols(self.names, self.types, addresses, self.relative, (self.relative_base + delta) & mask)

    def as_dict(self) -> dict[str, int]:
        """name -> address; the first of duplicate names wins, as kallsyms_lookup_name does."""
        out: dict[str, int] = {}
        for name, addr in zip(self.names, self.addresses, strict=True):
            out.setdefault(name, addr)
        return out


def _tokens_at(buf: bytes, start: int) -> tuple[list[bytes], int] | None:
    tokens = []
    pos = start
    for _ in range(256):
        end = buf.find(b"\0", pos, pos + 256)
        if end < 0 or end == pos:
            return None
        tokens.append(buf[pos:end])
        pos = end + 1
    return tokens, pos


def _find_token_table(buf: bytes, digits_at: int) -> tuple[int, list[bytes], int] | None:
    """Walk back from the digits to token 0 and check the token_index that follows."""
    start = digits_at
    for _ in range(0x30):
        if start < 2 or buf[start - 1] != 0:
            return None
        prev = buf.rfind(b"\0", max(0, start - 258), start - 1)
        start = prev + 1 if prev >= 0 else max(0, start - 258)
        if prev < 0 and start != 0:
            return None
    parsed = _tokens_at(buf, start)
    if parsed is None:
        return None
    tokens, end = parsed
    expected, acc = [], 0
    for tok in tokens:
        expected.append(acc)
        acc += len(tok) + 1
    want = struct.pack("<256H", *expected) if acc < 0x10000 else None
    if want is None:
        return None
    for align in (1, 2, 4, 8):
        index_at = (end + align - 1) & ~(align - 1)
        if buf[index_at : index_at + 512] == want:
            return start, tokens, index_at
    return None


def _marker_chain(buf: bytes, end: int) -> tuple[int, list[int]] | None:
    """Read u32 markers backwards from ``end``: strictly decreasing down to a 0."""
    values: list[int] = []
    pos = end - 4
    while pos >= 0 and len(values) <= MAX_SYMBOLS // 256:
        (v,) = struct.unpack_from("<I", buf, pos)
        if values and v >= values[-1]:
            return None
        values.append(v)
        if v == 0:
            values.reverse()
            return (pos, values) if len(values) >= 2 else None
        pos -= 4
    return None


def _markers_before(buf: bytes, table_at: int) -> Iterator[tuple[int, list[int], int | None]]:
    """Candidate (markers offset, markers, seqs_of_names offset or None), most likely first.

    The markers end right before the token table, or (6.1 stable and 6.2/6.3)
    before ``seqs_of_names``: 3 bytes per symbol between markers and tokens.
    """
    for pad in (0, 4):
        found = _marker_chain(buf, table_at - pad)
        if found is not None and (pad == 0 or struct.unpack_from("<I", buf, table_at - 4)[0] == 0):
            yield found[0], found[1], None
    q = table_at - 8
    lowest = max(7, table_at - 3 * MAX_SYMBOLS - 16)  # at least 8: both candidates read a u32 before ``q - 4``
    while q > lowest:
        for end in (q, q - 4):  # the markers may be followed by 4 bytes of alignment padding
            (v,) = struct.unpack_from("<I", buf, end - 4)
            if end < q and struct.unpack_from("<I", buf, q - 4)[0] != 0:
                break
            if 0 < v < 1 << 26:
                found = _marker_chain(buf, end)
                if found is not None:
                    m = len(found[1])
                    gap = table_at - q
                    if 3 * 256 * (m - 1) < gap <= 3 * 256 * m + 16:
                        yield found[0], found[1], q
        q -= 4


def _entry(buf: bytes, pos: int) -> tuple[int, int]:
    """(offset of the token numbers, their count) of the names entry at ``pos``: one length byte, or two
    when the top bit is set (names longer than 127 tokens, since 6.1)."""
    length = buf[pos]
    if length & 0x80:
        return pos + 2, (length & 0x7F) | (buf[pos + 1] << 7)
    return pos + 1, length


def _walk_names(buf: bytes, start: int, count: int, markers: list[int], limit: int) -> int | None:
    """Follow ``count`` name entries from ``start``; check markers; return the end offset."""
    off = 0
    for i in range(count):
        if i & 0xFF == 0 and markers[i >> 8] != off:
            return None
        pos = start + off
        if pos >= limit:
            return None
        data_at, length = _entry(buf, pos)
        off = data_at + length - start
    return start + off


def locate(buf: bytes) -> KallsymsLayout:
    """Find the kallsyms tables in ``buf``."""
    problems: list[str] = []
    hit = buf.find(DIGITS)
    tries = 0
    while hit >= 0 and tries < 64:
        tries += 1
        found = _find_token_table(buf, hit)
        if found is not None:
            try:
                return _locate_from_tokens(buf, *found)
            except KallsymsError as exc:
                problems.append(str(exc))
        hit = buf.find(DIGITS, hit + 1)
    raise KallsymsError("no kallsyms token table found" + (f" ({'; '.join(problems[:3])})" if problems else ""))


def _locate_from_tokens(buf: bytes, table_at: int, tokens: list[bytes], index_at: int) -> KallsymsLayout:
    tried = 0
    for markers_at, markers, seqs_at in _markers_before(buf, table_at):
        tried += 1
        if tried > 64:
            break
        found = _names_for_markers(buf, markers_at, markers)
        if found is not None:
            names_at, end, n, p = found
            return _with_addresses(buf, table_at, index_at, markers_at, len(markers), names_at, end, n, p, seqs_at)
    if not tried:
        raise KallsymsError(f"no kallsyms_markers before the token table at {table_at:#x}")
    raise KallsymsError("kallsyms_names does not agree with kallsyms_markers")


def _names_for_markers(buf: bytes, markers_at: int, markers: list[int]) -> tuple[int, int, int, int] | None:
    """(names offset, names end, num_syms, num_syms offset) that agree with these markers."""
    m = len(markers)
    last = markers[-1]
    lo = max(0, markers_at - last - 256 * 0x8100 - 16)
    p = (markers_at - last - 4) & ~3
    while p >= lo:
        (n,) = struct.unpack_from("<I", buf, p)
        if 256 * (m - 1) < n <= 256 * m:
            for names_at in {p + 4, (p + 4 + 7) & ~7}:
                end = _walk_names(buf, names_at, n, markers, markers_at)
                if end is not None and markers_at - 8 <= end <= markers_at:
                    return names_at, end, n, p
        p -= 4
    return None


def _plausible_base(buf: bytes, at: int) -> int | None:
    if at < 0 or at + 8 > len(buf):
        return None
    (v,) = struct.unpack_from("<Q", buf, at)
    return v if v >= KERNEL_ADDRESS_MIN and v & 0xFFF == 0 else None


def _with_addresses(
    buf: bytes,
    table_at: int,
    index_at: int,
    markers_at: int,
    m: int,
    names_at: int,
    names_end: int,
    n: int,
    num_syms_at: int,
    seqs_at: int | None,
) -> KallsymsLayout:
    size = 4 * n
    common = (table_at, index_at, markers_at, m, names_at, names_end, n, num_syms_at)
    # up to 6.3: offsets, relative_base, num_syms, names, markers, token_table, token_index
    rb_at = num_syms_at - 8
    base = _plausible_base(buf, rb_at)
    if base is not None:
        offsets_at = rb_at - ((size + 7) & ~7)
        if offsets_at >= 0:
            return KallsymsLayout(*common, offsets_at, rb_at, base, seqs_at, "offsets-first")
    # 6.4+: num_syms, names, markers, token_table, token_index, offsets, relative_base, seqs_of_names
    after_index = index_at + 512
    for align in (4, 8):
        offsets_at = (after_index + align - 1) & ~(align - 1)
        rb_at = (offsets_at + size + 7) & ~7
        base = _plausible_base(buf, rb_at)
        if base is not None and rb_at + 8 <= len(buf):
            seqs = rb_at + 8 if rb_at + 8 + 3 * n <= len(buf) else None
            return KallsymsLayout(*common, offsets_at, rb_at, base, seqs, "names-first")
    raise KallsymsError("kallsyms_relative_base not found next to the tables")


def decode(buf: bytes, layout: KallsymsLayout | None = None) -> KernelSymbols:
    """Decode every symbol: names, types and absolute addresses."""
    layout = layout or locate(buf)
    parsed = _tokens_at(buf, layout.token_table)
    if parsed is None:
        raise KallsymsError("token table became unreadable")
    tokens = parsed[0]
    spans = []
    pos = layout.names
    for _ in range(layout.num_syms):
        pos, length = _entry(buf, pos)
        spans.append((pos, pos + length))
        pos += length
    getter = tokens.__getitem__
    raw = [b"".join(map(getter, buf[s:e])) for s, e in spans]
    types = "".join(chr(r[0]) if r else "?" for r in raw)
    names = [r[1:].decode(errors="replace") for r in raw]
    n = layout.num_syms
    if layout.offsets + 4 * n > len(buf):
        raise KallsymsError("kallsyms_offsets run past the buffer")
    offsets = struct.unpack_from(f"<{n}i", buf, layout.offsets)
    base = layout.relative_base
    # unsigned long arithmetic, as the kernel's kallsyms_sym_address: a hostile base near 2**64 wraps
    addresses = [off if off >= 0 else (base - 1 - off) & 0xFFFF_FFFF_FFFF_FFFF for off in offsets]
    return KernelSymbols(names, types, addresses, [off < 0 for off in offsets], base)
