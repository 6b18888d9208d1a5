"""The first look against a vendor image, on a synthetic kernel: the relocation table read from after
the ELF (with and without the inverse list, and hostile ones refused), the image relocated by the
slide, and each kind of difference judged: what the kernel writes at its own patch sites is
explained, anything else (another jump, a byte outside every site, an unrelocated pointer) is a
difference; ``__ro_after_init`` is left out; an unreadable page is a problem, not a crash. A page
explained once is not judged again for a guest of the build that differs in it the same way (at
any slide), and anything more in it, or at a site across its edge, is judged."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.unit.profiles.test_image_profile_isf import _elf

from vmsentinel.errors import KernelImageError, ReadError
from vmsentinel.os.linux.profile.kernel_image import KernelImage
from vmsentinel.os.linux.profile.profile import KernelIdentity, KernelProfile, SymbolTable
from vmsentinel.os.linux.vendor import compare, verdicts
from vmsentinel.os.linux.vendor.compare import compare_with_vendor
from vmsentinel.os.linux.vendor.image import VendorKernel

BASE = 0xFFFFFFFF81000000
RODATA = BASE + 0x100000
TABLES = BASE + 0x200000
SLIDE = 0x2600000
TEXT_SIZE = 0x3000
RODATA_SIZE = 0x2000
HOLE = (RODATA + 0x1000, RODATA + 0x1800)  # __ro_after_init

# places in the text
RET_SITE = BASE + 0x100  # jmp __x86_return_thunk
FTRACE_SITE = BASE + 0x200  # call __fentry__
LOCK_SITE = BASE + 0x300  # lock prefix
JUMP_SITE = BASE + 0x400  # jump label: NOP5, target JUMP_TARGET
JUMP_TARGET = BASE + 0x480
CROSS_SITE = BASE + 0xFFE  # a jump label across the first page's end: NOP5, target CROSS_TARGET
CROSS_TARGET = BASE + 0x1080
IMM32 = BASE + 0x500  # a 32-bit relocated immediate (mov eax, imm32)
PERCPU32 = BASE + 0x520  # a 32-bit field the boot code subtracts the slide from
PLAIN = BASE + 0x600  # ordinary code, no site
THUNK = BASE + 0x2000  # __x86_return_thunk
FENTRY = BASE + 0x2100  # __fentry__
FTRACE_CALLER = BASE + 0x2200  # ftrace_caller
POINTER = RODATA + 0x40  # a 64-bit pointer to PLAIN, in read-only data


def _rel32(at: int, target: int) -> bytes:
    return struct.pack("<i", target - (at + 5))


class Types:
    """The one struct layout the synthetic tables need (jump_entry: s32 code, s32 target, long key)."""

    def struct_size(self, name: str) -> int:
        return {"jump_entry": 16}[name]

    def member_offset(self, struct: str, path: str) -> int:
        raise KeyError(path)

    def has_struct(self, name: str) -> bool:
        return name == "jump_entry"


def _vendor(tail: bytes | None = None) -> VendorKernel:
    text = bytearray(b"\x90" * TEXT_SIZE)
    text[RET_SITE - BASE : RET_SITE - BASE + 5] = b"\xe9" + _rel32(RET_SITE, THUNK)
    text[FTRACE_SITE - BASE : FTRACE_SITE - BASE + 5] = b"\xe8" + _rel32(FTRACE_SITE, FENTRY)
    text[LOCK_SITE - BASE] = 0xF0
    text[JUMP_SITE - BASE : JUMP_SITE - BASE + 5] = bytes.fromhex("0f1f440000")
    text[IMM32 - BASE : IMM32 - BASE + 5] = b"\xb8" + struct.pack("<I", PLAIN & 0xFFFFFFFF)
    text[PERCPU32 - BASE : PERCPU32 - BASE + 4] = struct.pack("<I", 0x1234)
    text[PLAIN - BASE : PLAIN - BASE + 4] = bytes.fromhex("4889f8c3")  # mov rax, rdi; ret
    rodata = bytearray(RODATA_SIZE)
    struct.pack_into("<Q", rodata, POINTER - RODATA, PLAIN)
    rodata[HOLE[0] - RODATA : HOLE[0] - RODATA + 8] = b"booting!"
    tables = bytearray()
    symbols: dict[str, int] = {}

    def table(start: str, end: str, data: bytes) -> None:
        symbols[start] = TABLES + len(tables)
        tables.extend(data)
        symbols[end] = TABLES + len(tables)

    table("__return_sites", "__return_sites_end", struct.pack("<i", RET_SITE - (TABLES + len(tables))))
    table("__smp_locks", "__smp_locks_end", struct.pack("<i", LOCK_SITE - (TABLES + len(tables))))
    table("__start_mcount_loc", "__stop_mcount_loc", struct.pack("<Q", FTRACE_SITE))
    text[CROSS_SITE - BASE : CROSS_SITE - BASE + 5] = bytes.fromhex("0f1f440000")
    at = TABLES + len(tables)
    entries = struct.pack("<iiq", JUMP_SITE - at, JUMP_TARGET - (at + 4), 0)
    entries += struct.pack("<iiq", CROSS_SITE - (at + 16), CROSS_TARGET - (at + 20), 0)
    table("__start___jump_table", "__stop___jump_table", entries)
    elf = _elf({".text": (BASE, bytes(text)), ".rodata": (RODATA, bytes(rodata)), ".init.data": (TABLES, bytes(tables))})
    if tail is None:
        words = [0, POINTER & 0xFFFFFFFF, 0, PERCPU32 & 0xFFFFFFFF, 0, (IMM32 + 1) & 0xFFFFFFFF]
        tail = struct.pack(f"<{len(words)}I", *words)
    image = KernelImage(elf + tail, "vmlinuz-test")
    symbols |= {
        "_text": BASE,
        "_etext": BASE + TEXT_SIZE,
        "__start_rodata": RODATA,
        "__end_rodata": RODATA + RODATA_SIZE,
        "__start_ro_after_init": HOLE[0],
        "__end_ro_after_init": HOLE[1],
        "plain_function": PLAIN,
        "__x86_return_thunk": THUNK,
        "__fentry__": FENTRY,
        "ftrace_caller": FTRACE_CALLER,
    }
    names = sorted(symbols, key=symbols.__getitem__)
    table_ = SymbolTable(names, "T" * len(names), [symbols[n] for n in names])
    profile = KernelProfile(KernelIdentity("Linux version test", "6.1.0-test", "ab" * 20), Types(), table_, {})  # type: ignore[arg-type]
    return VendorKernel("vmlinuz-test", image, profile, image.relocations())


class Guest:
    """Guest memory at guest addresses: the vendor image as booted, then edited like a rootkit would."""

    def __init__(self, vendor: VendorKernel, slide: int = SLIDE) -> None:
        self.slide = slide
        self.mem = {
            BASE + slide: bytearray(vendor.expected(BASE, BASE + TEXT_SIZE, slide)),
            RODATA + slide: bytearray(vendor.expected(RODATA, RODATA + RODATA_SIZE, slide)),
        }
        self.unreadable: set[int] = set()

    def write(self, link: int, data: bytes) -> None:
        for start, buf in self.mem.items():
            if start <= link + self.slide < start + len(buf):
                buf[link + self.slide - start : link + self.slide - start + len(data)] = data
                return
        raise AssertionError(f"{link:#x} is in no region")

    def read(self, address: int, length: int) -> bytes:
        if address & ~0xFFF in self.unreadable:
            raise ReadError(f"page {address:#x} not present")
        for start, buf in self.mem.items():
            if start <= address and address + length <= start + len(buf):
                return bytes(buf[address - start : address - start + length])
        raise ReadError(f"nothing at {address:#x}")


@pytest.fixture(autouse=True)
def _judged_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test starts with no page remembered, in this process or on disk (every synthetic image has the
    same name and build id); the cache folder is the test's own."""
    monkeypatch.setenv("VMSENTINEL_CACHE", str(tmp_path / "cache"))
    verdicts.forget()
    return tmp_path / "cache" / verdicts.CACHE_FOLDER


def _check(edit: Callable[[Guest], None] | None = None) -> compare.VendorCheck:
    vendor = _vendor()
    guest = Guest(vendor)
    if edit is not None:
        edit(guest)
    return compare_with_vendor(guest.read, vendor, SLIDE)


def test_the_relocation_table_after_the_elf_is_read_with_and_without_the_inverse_list() -> None:
    vendor = _vendor()
    rel = vendor.relocations
    assert (list(rel.add64), list(rel.sub32), list(rel.add32)) == ([POINTER], [PERCPU32], [IMM32 + 1])
    words = [0, POINTER & 0xFFFFFFFF, 0, (IMM32 + 1) & 0xFFFFFFFF]  # Linux 6.15+: no inverse list
    two = _vendor(struct.pack("<4I", *words)).relocations
    assert (list(two.add64), list(two.sub32), list(two.add32)) == ([POINTER], [], [IMM32 + 1])


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (b"", "no relocation table"),
        (struct.pack("<3I", 5, 6, 7), "no relocation table"),
        (struct.pack("<5I", 0, 1, 0, 0, 0), "4 terminators"),
        (struct.pack("<4I", 0, 0x81000000 - 0x1000000, 0, 0x81000500), "outside the kernel"),
    ],
)
def test_a_missing_or_hostile_relocation_table_is_refused_naming_the_file(tail: bytes, message: str) -> None:
    with pytest.raises(KernelImageError, match=f"vmlinuz-test: .*{message}"):
        _vendor(tail)


def test_the_image_is_relocated_by_the_slide() -> None:
    vendor = _vendor()
    text = vendor.expected(BASE, BASE + TEXT_SIZE, SLIDE)
    rodata = vendor.expected(RODATA, RODATA + RODATA_SIZE, SLIDE)
    assert struct.unpack_from("<Q", rodata, POINTER - RODATA)[0] == PLAIN + SLIDE
    assert struct.unpack_from("<I", text, IMM32 + 1 - BASE)[0] == (PLAIN + SLIDE) & 0xFFFFFFFF
    assert struct.unpack_from("<I", text, PERCPU32 - BASE)[0] == (0x1234 - SLIDE) & 0xFFFFFFFF


def test_a_guest_as_booted_has_no_difference_and_every_byte_is_compared() -> None:
    check = _check()
    assert check.differences == [] and check.problems == [] and check.more == 0
    assert check.compared == TEXT_SIZE + RODATA_SIZE - (HOLE[1] - HOLE[0])


def test_what_the_kernel_writes_at_its_sites_is_explained() -> None:
    def patch(guest: Guest) -> None:
        guest.write(RET_SITE, bytes.fromhex("c3cccccccc"))  # the return thunk made a plain ret
        guest.write(FTRACE_SITE, bytes.fromhex("0f1f440000"))  # ftrace NOP
        guest.write(LOCK_SITE, b"\x3e")  # a uniprocessor's lock prefix
        guest.write(JUMP_SITE, b"\xe9" + _rel32(JUMP_SITE + SLIDE, JUMP_TARGET + SLIDE))  # the jump label taken
        guest.write(HOLE[0], b"written!")  # __ro_after_init, written while booting

    check = _check(patch)
    assert check.differences == []
    assert check.explained == {"return": 1, "ftrace": 1, "smp_lock": 1, "jump_label": 1}


def test_a_call_into_ftrace_or_a_trampoline_is_explained_but_a_jump_is_not() -> None:
    for observed, kind in (
        (b"\xe8" + _rel32(FTRACE_SITE + SLIDE, FTRACE_CALLER + SLIDE), None),
        (b"\xe8" + _rel32(FTRACE_SITE + SLIDE, 0xFFFFFFFFC0123000), None),  # a trampoline in the module area
        (b"\xe9" + _rel32(FTRACE_SITE + SLIDE, 0xFFFFFFFFC0123000), "ftrace"),  # an inline hook on the site
        (b"\xe8" + _rel32(FTRACE_SITE + SLIDE, PLAIN + SLIDE), "ftrace"),  # a call somewhere else
    ):
        check = _check(lambda g, o=observed: g.write(FTRACE_SITE, o))
        assert [d.kind for d in check.differences] == ([] if kind is None else [kind]), observed.hex()


def test_unwritten_content_at_a_site_and_bytes_outside_every_site_are_differences() -> None:
    def hooks(guest: Guest) -> None:
        guest.write(RET_SITE, b"\xe9" + _rel32(RET_SITE + SLIDE, 0xFFFFFFFFC0000000))  # return "thunk" in a module
        guest.write(LOCK_SITE, b"\x90")
        guest.write(JUMP_SITE, b"\xe9" + _rel32(JUMP_SITE + SLIDE, PLAIN + SLIDE))  # not the label's target
        guest.write(PLAIN, b"\xe9" + _rel32(PLAIN + SLIDE, 0xFFFFFFFFC0000000))  # an inline hook
        guest.write(POINTER, struct.pack("<Q", 0xFFFFFFFFC0000000))  # an ops pointer in rodata turned

    check = _check(hooks)
    found = [(d.address - SLIDE, d.kind, d.region) for d in check.differences]
    assert [(kind, region) for _, kind, region in found] == [
        ("return", "text"),
        ("smp_lock", "text"),
        ("jump_label", "text"),
        ("", "text"),
        ("", "rodata"),
    ]
    # each where its bytes changed: the return thunk's jmp kept its opcode, the pointer its low bytes
    for (address, _, _), site, size in zip(found, (RET_SITE, LOCK_SITE, JUMP_SITE, PLAIN, POINTER), (5, 1, 5, 5, 8), strict=True):
        assert site <= address < site + size
    plain = check.differences[3]
    assert plain.where == "plain_function+0x0" and plain.expected == bytes.fromhex("4889f8c390")[: plain.length]
    assert plain.observed[0] == 0xE9


def test_an_unrelocated_pointer_is_a_difference() -> None:
    check = _check(lambda g: g.write(POINTER, struct.pack("<Q", PLAIN)))
    assert [d.region for d in check.differences] == ["rodata"]
    assert POINTER <= check.differences[0].address - SLIDE < POINTER + 8


def test_an_unreadable_page_is_a_problem_and_the_rest_is_compared() -> None:
    def hide(guest: Guest) -> None:
        guest.unreadable.add(BASE + SLIDE + 0x1000)
        guest.write(PLAIN, b"\xcc")

    check = _check(hide)
    assert len(check.problems) == 1 and "page" in check.problems[0] and "not present" in check.problems[0]
    assert [d.address - SLIDE for d in check.differences] == [PLAIN]
    assert check.compared == TEXT_SIZE + RODATA_SIZE - (HOLE[1] - HOLE[0]) - 0x1000


def test_a_wiped_stretch_is_reported_in_bounded_pieces_and_the_rest_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "MAX_REPORTED", 3)
    check = _check(lambda g: g.write(BASE + 0x1000, b"\xcc" * 0x400))
    assert len(check.differences) == 3 and all(d.length <= compare.MAX_RUN for d in check.differences)
    assert check.more == 0x400 // compare.MAX_RUN - 3


def test_an_image_no_first_look_uses_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmsentinel.os.linux.vendor import locate

    vendor = _vendor()
    monkeypatch.setattr(locate, "_open", {})
    monkeypatch.setattr(locate, "_used", {})
    locate._keep(vendor)
    locate._used[vendor.build_id or ""] = 0.0  # last used long ago
    assert locate.forget_idle(idle=60.0) == 1 and locate._open == {}
    locate._keep(vendor)
    assert locate.find_vendor(vendor.build_id, "6.1.0-test") is vendor  # used now: kept
    assert locate.forget_idle(idle=60.0) == 0 and vendor.build_id in locate._open


def test_a_guest_whose_text_is_all_different_is_judged_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile or foreign text: a page that mostly differs is one run, and past the report cap runs are
    counted, not judged byte by byte."""
    monkeypatch.setattr(compare, "MAX_REPORTED", 2)
    check = _check(lambda g: g.write(BASE, bytes((i * 7 + 1) & 0xFF for i in range(TEXT_SIZE))))
    assert len(check.differences) == 2
    assert check.more == TEXT_SIZE // compare.MAX_RUN - 2  # every 64-byte piece of the three pages, counted


def _booted(guest: Guest) -> None:
    """What a booted kernel of the build writes at its sites, the same in every guest of it."""
    guest.write(RET_SITE, bytes.fromhex("c3cccccccc"))
    guest.write(FTRACE_SITE, bytes.fromhex("0f1f440000"))
    guest.write(JUMP_SITE, b"\xe9" + _rel32(JUMP_SITE + guest.slide, JUMP_TARGET + guest.slide))
    guest.write(CROSS_SITE, b"\xe9" + _rel32(CROSS_SITE + guest.slide, CROSS_TARGET + guest.slide))


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    judged: list[int] = []
    real = compare._judge

    def judge(check: compare.VendorCheck, checker: object, region: str, link: int, *rest: object) -> None:
        judged.append(link)
        real(check, checker, region, link, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(compare, "_judge", judge)
    return judged


def test_a_second_guest_of_the_build_at_another_slide_is_not_judged_again(monkeypatch: pytest.MonkeyPatch) -> None:
    vendor = _vendor()
    judged = _counting(monkeypatch)
    first, second = Guest(vendor), Guest(vendor, slide=SLIDE + 0x1400000)
    _booted(first)
    _booted(second)
    one = compare_with_vendor(first.read, vendor, first.slide)
    assert one.differences == [] and judged  # judged run by run
    explained = dict(one.explained)
    assert explained == {"return": 1, "ftrace": 1, "jump_label": 3}  # the label across the page edge: a run each side
    judged.clear()
    two = compare_with_vendor(second.read, vendor, second.slide)
    assert judged == [] and two.differences == [] and two.explained == explained
    assert two.compared == one.compared


def test_one_more_change_on_a_remembered_page_is_judged_and_found(monkeypatch: pytest.MonkeyPatch) -> None:
    vendor = _vendor()
    clean, hooked = Guest(vendor), Guest(vendor)
    for guest in (clean, hooked):
        _booted(guest)
    hooked.write(PLAIN, b"\xe9" + _rel32(PLAIN + SLIDE, 0xFFFFFFFFC0000000))  # on the page the sites are on
    assert compare_with_vendor(clean.read, vendor, SLIDE).differences == []
    found = compare_with_vendor(hooked.read, vendor, SLIDE)
    assert [d.address - SLIDE for d in found.differences] == [PLAIN]
    assert found.explained == {"return": 1, "ftrace": 1, "jump_label": 3}


def test_a_site_across_a_page_edge_half_undone_is_found_on_the_page_that_looks_remembered() -> None:
    """The first page of a guest whose label's tail (in the next page) is back to the image's bytes
    differs exactly as a clean guest's first page does; the label as a whole now jumps elsewhere."""
    vendor = _vendor()
    clean, mixed = Guest(vendor), Guest(vendor)
    for guest in (clean, mixed):
        _booted(guest)
    mixed.write(CROSS_SITE + 2, bytes.fromhex("440000"))  # the NOP's last three bytes, the jump's first two
    assert compare_with_vendor(clean.read, vendor, SLIDE).differences == []
    found = compare_with_vendor(mixed.read, vendor, SLIDE)
    assert [(d.address - SLIDE, d.kind) for d in found.differences] == [(CROSS_SITE, "jump_label")]


def test_a_verdict_that_depends_on_the_guest_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call into the module area (an ftrace trampoline) is explained where it lands there: the same
    bytes at another slide land elsewhere, so that page is judged for each guest."""
    vendor = _vendor()
    judged = _counting(monkeypatch)
    trampoline = b"\xe8" + _rel32(FTRACE_SITE + SLIDE, 0xFFFFFFFFA0100000)  # just inside the area
    first = Guest(vendor)
    first.write(FTRACE_SITE, trampoline)
    assert compare_with_vendor(first.read, vendor, SLIDE).differences == []
    judged.clear()
    moved = Guest(vendor, slide=SLIDE - 0x2000000)  # the same bytes: the call now lands below the module area
    moved.write(FTRACE_SITE, trampoline)
    found = compare_with_vendor(moved.read, vendor, moved.slide)
    assert judged and [d.kind for d in found.differences] == ["ftrace"]


def test_what_one_process_explained_the_next_one_reads_from_the_cache_folder(
    monkeypatch: pytest.MonkeyPatch, _judged_afresh: Path
) -> None:
    """A ``check`` after another: the verdicts file is read back and no page is judged, nor are the image's
    site tables read; a damaged or foreign file is judged afresh."""
    vendor = _vendor()
    first = Guest(vendor)
    _booted(first)
    explained = compare_with_vendor(first.read, vendor, SLIDE).explained
    files = list(_judged_afresh.glob("*.verdicts"))
    assert len(files) == 1
    verdicts.forget()  # a new process
    judged = _counting(monkeypatch)
    monkeypatch.setattr(compare, "read_sites", lambda _v: pytest.fail("the site tables were read"))
    second = Guest(vendor, slide=SLIDE + 0x200000)
    _booted(second)
    again = compare_with_vendor(second.read, vendor, second.slide)
    assert judged == [] and again.differences == [] and again.explained == explained
    monkeypatch.undo()
    monkeypatch.setenv("VMSENTINEL_CACHE", str(_judged_afresh.parent))
    data = files[0].read_bytes()
    for damaged in (data[:-3], b"junk" + data, data.replace(b"vmlinuz-test", b"vmlinuz-best", 1)):
        files[0].write_bytes(damaged)
        verdicts.forget()
        judged = _counting(monkeypatch)
        check = compare_with_vendor(second.read, vendor, second.slide)
        assert judged and check.differences == [] and check.explained == explained
        monkeypatch.undo()
        monkeypatch.setenv("VMSENTINEL_CACHE", str(_judged_afresh.parent))
