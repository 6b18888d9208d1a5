"""Kernel code and read-only data in a form that does not depend on where KASLR put them.

Two clean guests of one kernel build hold the same text and read-only data except where the boot
code relocated an address: every guest's kernel sits at its own random virtual slide (a multiple of
2 MiB, below 1 GiB). The relocated values are 32-bit sign-extended addresses of the kernel image
(``mov $sym, %reg``, the low half of a 64-bit address) and, the other way round, RIP-relative
displacements to per-CPU variables (linked at zero, so they move against the code). Both keep
``0xffffffff`` above them and ``10`` in their top two bits whatever the slide, so a slide changes
only their bits 21 to 29. Those bits are cleared, without a vendor image or relocation table:

- in text, at every instruction boundary (functions decoded from their kallsyms starts with
  capstone: where an instruction ends does not depend on its operands' values), in each 32-bit
  window that may hold such an operand: the 4 bytes that end the instruction, and for instructions
  long enough to hold a ``disp32`` followed by an immediate, the windows that end 1, 2 or 4 bytes
  before it. The decision is unconditional (it does not look at the value), so it is the same in
  every guest; the price is that those 9 bits of some operands are not compared.
- ``movabs $imm64`` whose value is a kernel-half pointer (``0xffff`` on top): the low 48 bits (the
  run-time constants of 6.10+, e.g. ``dentry_hashtable``, hold a direct-map address patched at boot),
  and the immediate of a ``shr $imm8, %r32`` within a few instructions of one (its partner run-time
  constant ``d_hash_shift``, which follows the guest's memory size). Their tables are freed after boot.
- a ``lock`` prefix and the ``ds`` prefix the kernel writes over it on a one-CPU guest compare equal,
  so guests with one and with more vCPUs are alike.
- in read-only data, every 8-aligned qword whose upper half is ``0xffffffff`` and whose low half's
  top two bits are ``10``: a decision taken on bits the slide never changes.

Sites the kernel rewrites at run time (jump labels, static calls) are given as ``holes`` and
cleared whole. The result is hashed per 4 KiB page (16 hex characters of BLAKE3).

    mask = code_mask(text, starts)                       # starts: offsets of function starts
    pages = page_digests(apply_mask(text, mask))
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import operator
import re
from collections.abc import Iterable, Sequence

from blake3 import blake3

PAGE = 4096
#: bits 21..29 of a little-endian dword, cleared: byte 2 keeps bits 0..4, byte 3 keeps bits 6..7
_BYTE2, _BYTE3 = 0x1F, 0xC0
#: what a lock prefix (0xf0) and a ds prefix (0x3e) have in common
_LOCK_OR_DS = 0x31
_LOCKISH = 0x10  # flag bit added to an instruction's size when its first byte is f0 or 3e
_FLAG_TABLE = bytes(_LOCKISH if b in (0xF0, 0x3E) else 0 for b in range(256))
#: an instruction is at most 15 bytes
MAX_INSN = 15
#: a function is decoded this far at most (a hostile symbol table cannot make one decode forever)
MAX_FUNCTION = 1 << 20


def _windows(size: int) -> list[int]:
    """Offsets in an instruction of ``size`` bytes of the 32-bit windows that may hold a relocated operand:
    the last 4 bytes, and those before an imm8 (>= 7 bytes: opcode, modrm, disp32, imm8), an imm16
    (>= 9 with its 0x66 prefix) or an imm32 (>= 10; also the low half of a ``movabs`` imm64)."""
    out = []
    for before, least in ((0, 5), (1, 7), (2, 9), (4, 10)):
        if size >= least:
            out.append(size - 4 - before)
    return out


def _template(key: int, clear: bool) -> bytes:
    size = key & 0x0F
    mask = bytearray(b"\xff" * size)
    for w in _windows(size):
        if clear:  # a module's text: whole operands (its relocations are not known)
            mask[w : w + 4] = b"\0\0\0\0"
        else:
            mask[w + 2] &= _BYTE2
            mask[w + 3] &= _BYTE3
    if key & _LOCKISH and size:
        mask[0] &= _LOCK_OR_DS
    return bytes(mask)


#: mask bytes of one instruction by its key (size, plus _LOCKISH): slide bits only, or whole operands
_SLIDE_TEMPLATES = tuple(_template(k, False) for k in range(32))
_OPERAND_TEMPLATES = tuple(_template(k, True) for k in range(32))
_MOVABS = re.compile(rb"[\x48-\x4f][\xb8-\xbf]", re.DOTALL)


class Decoder:
    """Instruction sizes (and first bytes) of x86-64 code (or 32-bit code: ``bits=32``), from capstone. The fast path calls
    ``cs_disasm`` through the binding's own ctypes declarations and reads the sizes out of the array it
    returns (about 3x faster than ``disasm_lite`` on 4 million instructions: the Python objects per
    instruction are what cost); it falls back to ``disasm_lite`` if the binding lacks them."""

    def __init__(self, bits: int = 64) -> None:
        import capstone

        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if bits == 32 else capstone.CS_MODE_64)
        self._fast = False
        self._code: bytes | None = None
        self._base = 0
        try:
            insn = capstone._cs_insn
            self._lib = capstone._cs
            self._stride = ctypes.sizeof(insn)
            self._size_at = insn.size.offset
            self._bytes_at = insn.bytes.offset
            self._insn_p = ctypes.POINTER(insn)()
            self._out = ctypes.addressof(self._insn_p)
            # cs_disasm declared again with plain addresses: no ctypes.cast per call
            prototype = ctypes.CFUNCTYPE(
                ctypes.c_size_t,
                ctypes.c_size_t,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint64,
                ctypes.c_size_t,
                ctypes.c_void_p,
            )
            self._disasm = prototype(("cs_disasm", self._lib))
            self._handle = self._cs.csh.value
            self._fast = True
        except (AttributeError, TypeError):
            pass

    def decode(self, code: bytes, start: int, end: int) -> tuple[bytes, bytes]:
        """(size of each instruction, first byte of each) decoded from ``code[start:end]`` until an
        instruction does not decode."""
        if end <= start:
            return b"", b""
        if code is not self._code:  # the address of its buffer, once per buffer (bytes do not move)
            self._code = code
            self._base = ctypes.cast(ctypes.c_char_p(code), ctypes.c_void_p).value or 0
        if not self._fast:
            sizes = bytearray()
            firsts = bytearray()
            for address, size, _mnemonic, _ops in self._cs.disasm_lite(code[start:end], start):
                sizes.append(size)
                firsts.append(code[address])
            return bytes(sizes), bytes(firsts)
        count = self._disasm(self._handle, self._base + start, end - start, start, 0, self._out)
        if not count:
            return b"", b""
        try:
            raw = ctypes.string_at(self._insn_p, count * self._stride)
        finally:
            self._lib.cs_free(self._insn_p, count)
        return raw[self._size_at :: self._stride], raw[self._bytes_at :: self._stride]


def code_mask(
    code: bytes,
    starts: Sequence[int],
    lo: int = 0,
    hi: int | None = None,
    *,
    operands: bool = False,
    realign: int = 0,
    decoder: Decoder | None = None,
) -> bytes:
    """The mask (bytes to AND with ``code``) for ``code[lo:hi]``, decoding every function that overlaps it
    from its start (``starts``: sorted offsets of function starts in ``code``). Bytes no instruction
    covers (padding, what does not decode) are kept whole. ``operands``: clear whole operand windows
    instead of only the slide's bits (code whose relocations are not known, as a module's). ``realign``:
    where an instruction does not decode, go on from the next address aligned so (a module's text is
    one piece with no symbols to start again from; functions are aligned to 16 bytes)."""
    hi = len(code) if hi is None else min(hi, len(code))
    if lo >= hi:
        return b""
    decoder = decoder or Decoder()
    templates = _OPERAND_TEMPLATES if operands else _SLIDE_TEMPLATES
    first = max(0, bisect.bisect_right(starts, lo) - 1)
    begin = starts[first] if starts and starts[first] <= lo else lo
    pieces: list[bytes] = []
    patches: list[tuple[int, int]] = []  # (offset, length) cleared whole: run-time constants
    at = begin
    k = first
    while at < hi:
        while k < len(starts) and starts[k] < at:
            k += 1
        if k < len(starts) and starts[k] == at:
            end = starts[k + 1] if k + 1 < len(starts) else len(code)
        else:  # before the first function, or code no symbol starts (a module's): up to the next start
            end = starts[k] if k < len(starts) else len(code)
        end = min(end, at + MAX_FUNCTION, len(code))
        stop = at + len(code[at:end].rstrip(b"\xcc"))  # int3 padding: nothing to decode
        piece, movabs = _decode_function(code, at, stop, end, templates, decoder, realign)
        patches += movabs
        pieces.append(piece)
        covered = at + len(piece)
        if covered < end:
            pieces.append(b"\xff" * (end - covered))
        at = end
    mask = b"".join(pieces)
    if patches:
        editable = bytearray(mask)
        for offset, length in patches:
            editable[offset - begin : offset - begin + length] = bytes(length)
        mask = bytes(editable)
    return mask[lo - begin : hi - begin]


def _decode_function(
    code: bytes, at: int, stop: int, end: int, templates: tuple[bytes, ...], decoder: Decoder, realign: int = 0
) -> tuple[bytes, list[tuple[int, int]]]:
    """The mask of one function's instructions from ``at`` (decoded up to ``stop``, where its int3 padding
    begins), and the (offset, length) of the run-time constants in it (see the module's docstring). An instruction capstone does
    not know (SERIALIZE, PVALIDATE, TDCALL, LKGS, AMX...) is stepped over by its length; one that the
    padding cut (its last byte is 0xcc) is decoded again with the bytes up to ``end``."""
    pieces: list[bytes] = []
    movabs: list[tuple[int, int]] = []
    pos = at
    while pos < stop:
        sizes, firsts = decoder.decode(code, pos, stop)
        keys = sizes
        if b"\xf0" in firsts or b">" in firsts:
            keys = bytes(map(operator.or_, sizes, firsts.translate(_FLAG_TABLE)))
        pieces.append(b"".join(map(templates.__getitem__, keys)))
        if b"\n" in sizes:  # a 10-byte instruction may be a movabs of a kernel pointer
            movabs += _runtime_constants(code, pos, sizes)
        pos += sum(sizes)
        if pos >= stop:
            break
        unknown = _unknown_length(code, pos, stop)
        if unknown:
            pieces.append(b"\xff" * unknown)
            pos += unknown
            continue
        cut, _ = decoder.decode(code, pos, min(end, pos + MAX_INSN))
        if cut and pos + cut[0] > stop:  # the padding strip cut this instruction: it is the last one
            pieces.append(templates[cut[0]])
            pos += cut[0]
            break
        if not realign:
            break  # bytes that do not decode: kept whole from here to the end of the function
        skip = min(stop, pos + realign - pos % realign) - pos
        pieces.append(b"\xff" * skip)
        pos += skip
    return b"".join(pieces), movabs


#: instructions looked at on either side of a run-time pointer for its shift
_SHIFT_NEAR = 4


def _runtime_constants(code: bytes, pos: int, sizes: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the imm64 of each ``movabs`` of a kernel-half pointer among the instructions
    of ``sizes`` from ``pos``, and of the imm8 of a ``shr $imm8, %r32`` near one."""
    offsets = []
    offset = pos
    for size in sizes:
        offsets.append(offset)
        offset += size
    out: list[tuple[int, int]] = []
    for i, size in enumerate(sizes):
        at = offsets[i]
        if size != 10 or not _MOVABS.match(code, at) or code[at + 8 : at + 10] != b"\xff\xff":
            continue
        out.append((at + 2, 6))
        for j in range(max(0, i - _SHIFT_NEAR), min(len(sizes), i + _SHIFT_NEAR + 1)):
            insn = code[offsets[j] : offsets[j] + sizes[j]]
            if (len(insn) == 3 and insn[0] == 0xC1 and insn[1] & 0xF8 == 0xE8) or (
                len(insn) == 4 and insn[0] == 0x41 and insn[1] == 0xC1 and insn[2] & 0xF8 == 0xE8
            ):
                out.append((offsets[j] + len(insn) - 1, 1))
    return out


_PREFIXES = frozenset((0x66, 0xF2, 0xF3))


def _unknown_length(code: bytes, pos: int, stop: int) -> int:
    """The length of an instruction capstone 5 does not decode, of a form whose length is plain: a
    register form of the ``0f 01``/``0f 00`` groups (SERIALIZE, PVALIDATE, RMPADJUST, TDCALL, LKGS)
    after legacy prefixes, or a register form of a VEX-encoded one (TILERELEASE); 0 for anything else."""
    at = pos
    while at < stop and at - pos < 4 and code[at] in _PREFIXES:
        at += 1
    window = code[at : at + 5]
    if len(window) >= 3 and window[0] == 0x0F and window[1] in (0x00, 0x01) and window[2] >= 0xC0:
        length = at - pos + 3
    elif len(window) == 5 and window[0] == 0xC4 and window[4] >= 0xC0:
        length = at - pos + 5
    elif len(window) >= 4 and window[0] == 0xC5 and window[3] >= 0xC0:
        length = at - pos + 4
    else:
        return 0
    return length if pos + length <= stop else 0


def rodata_mask(data: bytes, lo: int = 0, hi: int | None = None) -> bytearray:
    """The mask for read-only data ``data[lo:hi]`` (``lo`` 8-aligned): the slide's bits of every qword
    that holds an address of the kernel image."""
    hi = len(data) if hi is None else min(hi, len(data))
    mask = bytearray(b"\xff" * max(0, hi - lo))
    for found in re.finditer(rb"(?=\xff\xff\xff\xff)", data[lo:hi]):
        upper = found.start()
        if upper % 8 == 4 and data[lo + upper - 1] & 0xC0 == 0x80:
            mask[upper - 2] &= _BYTE2
            mask[upper - 1] &= _BYTE3
    return mask


def relative_mask(data: bytes, mask: bytearray, lo: int, hi: int) -> None:
    """Clear the slide's bits of the 32-bit offsets in a table of them (``data[lo:hi]``, 4-aligned, e.g.
    ``__ksymtab``) that point from the image to a per-CPU variable (linked at zero: the offset moves
    with the slide, and its top two bits are ``01`` whatever the slide)."""
    lo, hi = max(0, lo - lo % 4), min(hi, len(data), len(mask))
    hi -= (hi - lo) % 4
    if hi <= lo:
        return
    for i, value in enumerate(memoryview(data[lo:hi]).cast("I")):
        if value >> 30 == 1:
            mask[lo + 4 * i + 2] &= _BYTE2
            mask[lo + 4 * i + 3] &= _BYTE3


def clear_holes(mask: bytearray, holes: Iterable[tuple[int, int]], lo: int = 0) -> None:
    """Clear the mask over each ``(offset, length)`` hole (offsets in the same space as ``lo``)."""
    size = len(mask)
    for offset, length in holes:
        a, b = max(0, offset - lo), min(size, offset - lo + length)
        if a < b:
            mask[a:b] = bytes(b - a)


def apply_mask(data: bytes, mask: bytes | bytearray | mmap.mmap) -> bytes:
    """``data`` AND ``mask``, byte by byte (as two big integers: one C loop, not a Python one)."""
    if len(mask) != len(data):
        raise ValueError("mask and data differ in length")
    return (int.from_bytes(data, "little") & int.from_bytes(mask, "little")).to_bytes(len(data), "little")


def page_digest(data: bytes | memoryview) -> str:
    return blake3(data).hexdigest(length=8)


def page_digests(data: bytes) -> list[str]:
    """16-hex-character BLAKE3 of each 4 KiB page of ``data`` (the last one may be short)."""
    view = memoryview(data)
    return [page_digest(view[off : off + PAGE]) for off in range(0, len(data), PAGE)]
