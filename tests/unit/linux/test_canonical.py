"""Kernel code and read-only data made independent of the KASLR slide: the same synthetic code and
data relocated at different slides (multiples of 2 MiB below 1 GiB) hash equal page by page; a
changed opcode, register or address bit the slide does not touch differs; the kernel's own run-time
patch sites are cleared only when given as holes."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsentinel.os.linux import canonical
from vmsentinel.os.linux.views.inventory import _jump_label_holes

LINK = 0xFFFFFFFF81000000  # where the synthetic kernel's text starts at a slide of 0
PERCPU = 0x1F040  # a per-CPU variable: linked at zero, it does not move with the slide
SLIDES = (0, 0x2600000, 0x1BA00000, 0x3E000000)
MASK64 = (1 << 64) - 1
NOP5 = bytes.fromhex("0f1f440000")


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def assemble(
    slide: int, variant: str = "", lock: bool = True, direct_map: int = 0xFFFF888003A00000, shift: int = 0x11
) -> tuple[bytes, list[int]]:
    """Two pages of functions holding every kind of operand a slide moves, as the boot code leaves them
    relocated at ``slide``; the offsets of the function starts."""
    base = LINK + slide
    code = bytearray()
    starts = []
    rng = random.Random(7)
    for n in range(120):
        starts.append(len(code))
        here = base + len(code)
        body = bytearray(b"\xf3\x0f\x1e\xfa")  # endbr64
        target = base + 0x5000 + 0x40 * n  # some kernel symbol
        reg = 0xC6 if variant == "register" and n == 20 else 0xC7
        body += b"\x48\xc7" + bytes([reg]) + _u32(target)  # mov $sym, %rdi (sign-extended imm32)
        end = here + len(body) + 7
        body += b"\x48\x8b\x05" + _u32(PERCPU - end)  # mov percpu(%rip), %rax: moves against the code
        body += b"\x48\x8d\x35" + _u32(0x1234)  # lea sym(%rip), %rsi: both ends move, nothing changes
        end = here + len(body) + 10
        body += b"\xc7\x05" + _u32(PERCPU + 8 - end) + _u32(rng.randrange(1 << 32))  # movl $imm, percpu(%rip)
        body += b"\x48\xb8" + struct.pack("<Q", target)  # movabs $sym, %rax
        body += b"\x48\xb9" + struct.pack("<Q", direct_map)  # movabs $direct-map pointer (a run-time constant)
        body += b"\x48\x89\xd8" + bytes([0xC1, 0xE8, shift])  # mov %rbx,%rax; shr $d_hash_shift, %eax
        body += (b"\xf0" if lock else b"\x3e") + b"\x48\x0f\xb1\x0f"  # lock cmpxchg (a ds prefix on one CPU)
        body += b"\x68" + _u32(target + 0x11)  # push $1f (the sync_core iret frame)
        body += NOP5  # a jump label site, disabled
        opcode = 0x29 if variant == "opcode" and n == 30 else 0x01
        body += bytes([0x48, opcode, 0xD8])  # add/sub %rbx, %rax
        if variant == "address" and n == 40:
            body[7:11] = _u32(target + 0x10)  # the mov's address off by bits the slide never changes
        body += b"\xc3"
        body += b"\xcc" * (-len(body) % 16)
        code += body
    code += b"\xcc" * (-len(code) % 4096)
    return bytes(code), starts


def digests(code: bytes, starts: list[int], holes: list[tuple[int, int]] = ()) -> list[str]:  # type: ignore[assignment]
    mask = bytearray(canonical.code_mask(code, starts))
    canonical.clear_holes(mask, holes)
    return canonical.page_digests(canonical.apply_mask(code, mask))


def test_text_relocated_at_different_slides_hashes_equal() -> None:
    reference, starts = assemble(0)
    for slide in SLIDES[1:]:
        code, again = assemble(slide)
        assert again == starts and code != reference  # the raw bytes do differ
        assert digests(code, starts) == digests(reference, starts), f"slide {slide:#x}"


def test_run_time_constants_and_a_ds_prefix_for_lock_compare_equal() -> None:
    a, starts = assemble(0)
    b, _ = assemble(0x4000000, lock=False, direct_map=0xFFFF9A4F43E00000, shift=0x10)
    assert digests(a, starts) == digests(b, starts)


@pytest.mark.parametrize("variant", ["opcode", "register", "address"])
def test_a_changed_instruction_differs_on_its_page_only(variant: str) -> None:
    clean, starts = assemble(0x2600000)
    changed, _ = assemble(0x1BA00000, variant)
    a, b = digests(clean, starts), digests(changed, starts)
    assert sum(x != y for x, y in zip(a, b, strict=True)) == 1


def test_a_jump_label_site_is_cleared_only_when_it_holds_what_the_kernel_writes() -> None:
    code, starts = assemble(0)
    site = code.index(NOP5)
    target = LINK + site + 0x40
    enabled = bytearray(code)
    enabled[site : site + 5] = b"\xe9" + struct.pack("<i", 0x40 - 5)  # jmp to the label's own target
    hooked = bytearray(code)
    hooked[site : site + 5] = b"\xe9" + struct.pack("<i", 0x3B000000)  # jmp somewhere else
    sites = {LINK + site: target}
    for blob, same in ((bytes(enabled), True), (bytes(hooked), False)):
        holes = _jump_label_holes(blob, LINK, LINK + len(blob), sites)
        assert (
            digests(blob, starts, holes) == digests(code, starts, _jump_label_holes(code, LINK, LINK + len(code), sites))
        ) is same


def test_instructions_capstone_does_not_know_are_stepped_over() -> None:
    head = b"\x0f\x01\xe8"  # serialize
    tail_a = b"\x48\xc7\xc7" + _u32(LINK + 0x100) + b"\xc3"
    tail_b = b"\x48\xc7\xc7" + _u32(LINK + 0x2600000 + 0x100) + b"\xc3"
    a, b = head + tail_a, head + tail_b
    assert canonical.apply_mask(a, canonical.code_mask(a, [0])) == canonical.apply_mask(b, canonical.code_mask(b, [0]))


def test_a_range_is_masked_as_the_whole_would_be() -> None:
    code, starts = assemble(0x600000)
    whole = canonical.code_mask(code, starts)
    assert canonical.code_mask(code, starts, 4096, 8192) == whole[4096:8192]
    assert canonical.code_mask(code, starts, 100, 300) == whole[100:300]


def test_read_only_data_relocated_at_different_slides_hashes_equal() -> None:
    def rodata(slide: int, changed: bool = False) -> bytes:
        out = bytearray()
        for i in range(1024):
            out += struct.pack("<Q", LINK + slide + 0x100000 + 8 * i)  # a table of kernel pointers
            out += struct.pack("<Q", 0xFFFFFFFFFFFFFFFF if i % 7 else i)  # constants (-1 included)
            out += b"hello, world\x00\x00\x00\x00"
        table = bytearray()  # __ksymtab-like: s32 offsets to (per-CPU) symbols
        for i in range(64):
            entry = LINK + slide + 0x200000 + 12 * i
            value = PERCPU + 64 * i if i % 2 else LINK + slide + 0x400 * i
            table += struct.pack("<iii", _signed(value - entry), 0x10 * i, 0)
        if changed:
            out[8 * 17] ^= 0x01
        blob = bytes(out + table)
        mask = canonical.rodata_mask(blob)
        canonical.relative_mask(blob, mask, len(out), len(out) + len(table))
        return canonical.apply_mask(blob, mask)

    reference = rodata(0)
    for slide in SLIDES[1:]:
        assert rodata(slide) == reference
    assert rodata(0x2600000, changed=True) != reference


def _signed(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def test_the_fallback_decoder_agrees_with_the_fast_one() -> None:
    code, starts = assemble(0x2600000)
    slow = canonical.Decoder()
    slow._fast = False
    assert canonical.code_mask(code, starts, decoder=slow) == canonical.code_mask(code, starts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3100), max_size=40), st.integers(0, 3100), st.integers(0, 3100))
def test_any_bytes_and_any_starts_give_a_mask_of_the_range(code: bytes, starts: list[int], lo: int, hi: int) -> None:
    """Guest text is hostile: undecodable bytes, symbols past the end, ranges inside out."""
    starts = sorted(set(starts))
    for operands in (False, True):
        mask = canonical.code_mask(code, starts, lo, hi, operands=operands, realign=16 if operands else 0)
        assert len(mask) == max(0, min(hi, len(code)) - lo)
    whole = bytearray(canonical.code_mask(code, starts))
    canonical.clear_holes(whole, [(-5, 10), (len(code) - 2, 100), (7, 0)])
    assert len(canonical.apply_mask(code, whole)) == len(code)
    ro = canonical.rodata_mask(code)
    canonical.relative_mask(code, ro, lo, hi)
    assert len(ro) == len(code)


def test_locks_the_shared_mask_merged_must_still_be_locks() -> None:
    from vmsentinel.os.linux.views.build_masks import SharedMask

    code, starts = assemble(0)
    shared = SharedMask(canonical.code_mask(code, starts), [])
    assert shared.locks and all(shared.locks_hold(code, page) for page in range(len(code) // 4096))
    xor = bytearray(code)
    xor[shared.locks[0]] = 0x30  # the same bits under the mask, another instruction
    assert not shared.locks_hold(bytes(xor), shared.locks[0] // 4096)
