"""The guest's core kernel text and read-only data against the vendor's image, on first sight.

Every byte that differs from the relocated vendor image must lie in a place the kernel rewrites
itself (:mod:`~vmsentinel.os.linux.vendor.sites`) and hold what the kernel writes there: a NOP or
the jump a jump label takes, a return thunk or a plain ``ret``, a call into ftrace, an alternative's
replacement (compared instruction by instruction, branch targets and RIP-relative operands as the
absolute addresses they mean), and so on. Anything else is a difference the kernel would not have
written, whatever the guest looked like before anyone watched it. ``__ro_after_init`` data is left
out: the kernel writes it while booting.

    check = compare_with_vendor(reader.read, vendor, slide)
    check.differences      # [CodeDifference(address, length, where, region, kind, expected, observed)]

Guests of one build differ from its image in the same places with the same bytes (a site's
rewritten bytes are relative, so they do not move with the slide). A page whose every difference
was explained is remembered by what it differs in (:mod:`~vmsentinel.os.linux.vendor.verdicts`):
the next guest of the build with a page that differs in exactly those bytes is not judged again.
Only fully explained pages are remembered, and never one whose verdict depended on where this
guest's slide or its memory put something (a module-area call, a run-time constant): a
difference is judged every time.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from capstone import x86_const as x86

from vmsentinel.errors import KernelImageError, ReadError
from vmsentinel.os.linux.vendor import verdicts as remembered
from vmsentinel.os.linux.vendor.image import MASK64, VendorKernel
from vmsentinel.os.linux.vendor.sites import Site, read_sites
from vmsentinel.os.linux.vendor.verdicts import PageVerdicts
from vmsentinel.os.records import CodeDifference, VendorCheck

PAGE = 4096
BLOCK = 16
#: equal bytes between two differing ones that still leave them one run
GAP = 4
#: no patch site is longer than this (an alternative's instruction; the longest real ones are ~40)
MAX_SITE = 256
#: a differing run longer than this is reported in pieces of it (a wiped page is one finding per piece)
MAX_RUN = 64
#: differences reported per check: past this the rest are counted
MAX_REPORTED = 200
NOP5 = bytes.fromhex("0f1f440000")
NOP2 = bytes.fromhex("6690")
#: an ENDBR64, and what the kernel seals one with (4-byte NOPs, or UD1-style poison)
ENDBR_FORMS = {bytes.fromhex(h) for h in ("f30f1efa", "660f1f00", "0f1f4000", "d60f1f00")}
#: ``xor %eax,%eax`` padded with CS prefixes: a static call to __static_call_return0
STATIC_CALL_RET0 = bytes.fromhex("2e2e2e31c0")
RET_THUNK_NAMES = ("return_thunk",)
#: instructions a retpoline site may become (the thunk's call or jump made direct through the register)
RETPOLINE_MNEMONICS = {"call", "jmp", "lfence", "nop", "int3"}
#: what the kernel writes at a paravirt site under a native (or TCG) host: a direct call or native code
PARAVIRT_MNEMONICS = {"call", "pushfq", "popfq", "pop", "push", "cli", "sti", "mov", "xor", "ret", "wbinvd", "swapgs", "nop"}
#: values the USER_PTR_MAX run-time constant takes (4- and 5-level paging)
USER_PTR_MAX = {0x00007FFFFFFFF000, 0x00FFFFFFFFFFF000}

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True


def compared_ranges(vendor: VendorKernel) -> list[tuple[str, int, int]]:
    """(region, start, end) at link time: the core text, and every read-only section the file holds
    bytes for, less ``__ro_after_init`` (written while booting)."""
    text = ("text", vendor.symbol("_text"), vendor.symbol("_etext"))
    ranges = [text]
    if vendor.has_symbol("__start_rodata") and vendor.has_symbol("__end_rodata"):
        lo, hi = vendor.symbol("__start_rodata"), vendor.symbol("__end_rodata")
        holes = []
        if vendor.has_symbol("__start_ro_after_init") and vendor.has_symbol("__end_ro_after_init"):
            holes.append((vendor.symbol("__start_ro_after_init"), vendor.symbol("__end_ro_after_init")))
        for section in sorted(vendor.image.sections.values(), key=lambda s: s.address):
            start, end = max(section.address, lo), min(section.address + section.size, hi)
            if start >= end:
                continue
            for hole_lo, hole_hi in holes:
                if start < hole_lo < end:
                    ranges.append(("rodata", start, hole_lo))
                    start = max(start, hole_hi)
                elif hole_lo <= start < hole_hi:
                    start = hole_hi
            if start < end:
                ranges.append(("rodata", start, end))
    return ranges


def _runs(observed: bytes, expected: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each run of differing bytes (a few equal bytes inside a run do not end it: one
    rewritten instruction is one run)."""
    runs: list[list[int]] = []
    differing = sum(observed[b : b + BLOCK] != expected[b : b + BLOCK] for b in range(0, len(expected), BLOCK))
    if differing * 2 > -(-len(expected) // BLOCK):  # most of it differs: one run, not a byte-by-byte walk
        return [(0, len(expected))]
    for block in range(0, len(expected), BLOCK):
        if observed[block : block + BLOCK] == expected[block : block + BLOCK]:
            continue
        for i in range(block, min(block + BLOCK, len(expected))):
            if observed[i] != expected[i]:
                if runs and i - runs[-1][1] <= GAP:
                    runs[-1][1] = i + 1
                else:
                    runs.append([i, i + 1])
    return [(a, b - a) for a, b in runs]


class _Checker:
    def __init__(self, read: Callable[[int, int], bytes], vendor: VendorKernel, slide: int, sites: list[Site]) -> None:
        self.read = read
        self.vendor = vendor
        self.slide = slide
        self.sites = sites
        self.starts = [s.address for s in sites]
        self.text = (vendor.symbol("_text") + slide, vendor.symbol("_etext") + slide)
        self.addresses, self.order = vendor.profile.symbols.by_address()
        self.constants: dict[str, set[bytes]] = {}
        self.ok: dict[Site, bool] = {}
        #: set when a verdict depended on more than a page's own bytes and the image: on where this
        #: guest's slide puts the module area, or on a run-time constant's value in its memory
        self.variant = False
        self.variant_sites: set[Site] = set()

    # -- names -------------------------------------------------------------
    def where(self, link: int) -> str:
        i = bisect.bisect_right(self.addresses, link) - 1
        if i < 0:
            return f"{link:#x}"
        return f"{self.vendor.profile.symbols.name_at(self.order[i])}+{link - self.addresses[i]:#x}"

    def name_at(self, guest: int) -> str:
        link = (guest - self.slide) & MASK64
        i = bisect.bisect_right(self.addresses, link) - 1
        return self.vendor.profile.symbols.name_at(self.order[i]) if i >= 0 and self.addresses[i] == link else ""

    def in_text(self, guest: int) -> bool:
        return self.text[0] <= guest < self.text[1]

    def in_module_area(self, guest: int) -> bool:
        self.variant = True  # an absolute range: whether a relative branch lands in it depends on the slide
        return 0xFFFF_FFFF_A000_0000 <= guest < 0xFFFF_FFFF_FF00_0000

    # -- sites -------------------------------------------------------------
    def covering(self, link: int) -> list[Site]:
        i = bisect.bisect_right(self.starts, link)
        out = []
        j = i - 1
        while j >= 0 and self.starts[j] > link - MAX_SITE:
            site = self.sites[j]
            if site.address <= link < site.address + max(site.length, 1):
                out.append(site)
            j -= 1
        return out

    def site_ok(self, site: Site, expected: bytes, start: int) -> bool:
        """:meth:`valid` for a site, read once per check. Alternatives at one address (ALTERNATIVE_2 and
        more) are one site: it is right if any of them (or the original) is what it holds."""
        cached = self.ok.get(site)
        if cached is not None:
            self.variant = self.variant or site in self.variant_sites
            return cached
        outer, self.variant = self.variant, False
        at = site.address - start
        want = expected[at : at + site.length] if at >= 0 and at + site.length <= len(expected) else b""
        try:
            have = self.read(site.address + self.slide, site.length) if site.length else b""
        except ReadError:
            have = b""
        group = [site]
        if site.kind == "alternative":
            group = [s for s in self.covering(site.address) if s.kind == "alternative" and s.address == site.address] or group
        result = bool(want) and bool(have) and any(self.valid(s, have, want) for s in group)
        self.ok[site] = result
        if self.variant:
            self.variant_sites.add(site)
        self.variant = self.variant or outer
        return result

    def valid(self, site: Site, observed: bytes, expected: bytes) -> bool:
        """Does the site hold what the kernel itself writes there?"""
        if observed == expected:
            return True
        at = site.address + self.slide
        kind = site.kind
        if kind == "return":
            return observed == b"\xc3" + b"\xcc" * (len(observed) - 1) or self._branch_to(observed, at, 0xE9, self._return_thunk)
        if kind == "ftrace":
            return observed == NOP5 or self._branch_to(observed, at, 0xE8, self._ftrace_target)
        if kind == "ftrace_call":  # ftrace's list function, its stub, or the one registered callback
            return self._branch_to(observed, at, 0xE8, self._ftrace_target)
        if kind == "jump_label":
            if observed in (NOP5, NOP2):
                return True
            if observed[0] == 0xEB and len(observed) == 2:
                return (at + 2 + int.from_bytes(observed[1:2], "little", signed=True)) & MASK64 == site.target + self.slide
            return observed[0] == 0xE9 and (at + 5 + int.from_bytes(observed[1:5], "little", signed=True)) & MASK64 == (
                site.target + self.slide
            )
        if kind == "smp_lock":
            return observed in (b"\xf0", b"\x3e")
        if kind == "endbr":
            return observed in ENDBR_FORMS
        if kind == "static_call":  # a call or tail call made direct, a NULL call (NOP, or RET for a tail call), RET0
            return observed in (NOP5, STATIC_CALL_RET0, b"\xc3" + b"\xcc" * (len(observed) - 1)) or self._branch_to(
                observed, at, (0xE8, 0xE9), self._code_target
            )
        if kind == "trampoline":
            return (
                observed == b"\xc3" + b"\xcc" * (len(observed) - 1)
                or self._branch_to(observed, at, 0xE9, self._code_target)
                or self._only(observed, at, {"xor", "ret", "int3", "nop"})
            )
        if kind == "retpoline":
            return self._only(observed, at, RETPOLINE_MNEMONICS, calls_ok=False)
        if kind == "paravirt":
            return self._only(observed, at, PARAVIRT_MNEMONICS)
        if kind == "alternative":
            return self._alternative(site, observed, expected, at)
        if kind in ("runtime_ptr", "runtime_shift"):
            return self._constant(site, observed)
        return False

    def _branch_to(self, observed: bytes, at: int, opcodes: int | tuple[int, ...], ok: Callable[[int], bool]) -> bool:
        codes = opcodes if isinstance(opcodes, tuple) else (opcodes,)
        if len(observed) < 5 or observed[0] not in codes or any(b not in (0xCC, 0x90) for b in observed[5:]):
            return False
        return ok((at + 5 + int.from_bytes(observed[1:5], "little", signed=True)) & MASK64)

    def _return_thunk(self, target: int) -> bool:
        return any(part in self.name_at(target) for part in RET_THUNK_NAMES)

    def _ftrace_target(self, target: int) -> bool:
        return self.name_at(target).startswith(("ftrace_", "arch_ftrace_", "function_")) or self.in_module_area(target)

    def _code_target(self, target: int) -> bool:
        return self.in_text(target) or self.in_module_area(target)

    def _decode(self, code: bytes, at: int) -> list[tuple[str, str]] | None:
        """(mnemonic, operands) of each instruction that does something, branch targets and RIP-relative
        operands absolute; None when some bytes do not decode."""
        insns = _disassemble(code, at)
        return None if insns is None else self._meaningful(insns)

    def _meaningful(self, insns: list[tuple[int, int, str, str]]) -> list[tuple[str, str]]:
        """NOPs, INT3 padding and a short jump over padding (how the kernel fills the rest of a site) do
        nothing; a jump to a return thunk is a ``ret`` (what the kernel makes of it)."""

        out = []
        for i, (address, size, mnemonic, ops) in enumerate(insns):
            if mnemonic.startswith("nop") or mnemonic == "int3":
                continue
            target = _target(ops)
            if mnemonic == "jmp" and target is not None:
                if self._return_thunk(target):
                    out.append(("ret", ""))
                    continue
                skipped = insns[i + 1 :]
                end = address + size
                for later in skipped:
                    if later[2] != "int3" or later[0] >= target:
                        break
                    end = later[0] + later[1]
                if target == end and end > address + size:
                    continue  # jumps over the int3 padding after it
            out.append((mnemonic, ops))
        return out

    def _only(self, observed: bytes, at: int, mnemonics: set[str], calls_ok: bool = True) -> bool:
        insns = self._decode(observed, at)
        if insns is None:
            return False
        for mnemonic, ops in insns:
            if mnemonic not in mnemonics and not mnemonic.startswith("nop"):
                return False
            if mnemonic in ("call", "jmp") and ops.startswith("0x") and (not calls_ok or not self.in_text(int(ops, 16))):
                return False
        return True

    def _alternative(self, site: Site, observed: bytes, expected: bytes, at: int) -> bool:
        got = self._decode(observed, at)
        if got is None:
            return False
        original = self._decode(expected, at)
        if original is not None and got == original:
            return True  # the original, its padding made into other NOPs
        length = site.extra if isinstance(site.extra, int) else 0
        try:
            replacement = self.vendor.expected(site.target, site.target + length, self.slide) if length else b""
        except KernelImageError:
            return False
        wanted = self._moved(replacement, site.target + self.slide, at)
        if wanted is None:
            return False
        if got == wanted:
            return True
        # an alternative call (paravirt through alternatives, 6.8+): the kernel calls the op's function
        # directly, or writes NOPs for an op that does nothing
        if len(wanted) == 1 and wanted[0][0] == "call":
            return not got or (len(got) == 1 and got[0][0] == "call" and self._only(observed, at, {"call", "int3"}))
        return False

    def _moved(self, code: bytes, origin: int, at: int) -> list[tuple[str, str]] | None:
        """``code`` (at ``origin``) as the kernel copies it to ``at``: a branch or RIP-relative operand
        pointing outside the code keeps its absolute target, one pointing inside moves with it."""
        here, there = _disassemble(code, origin), _disassemble(code, at)
        if here is None or there is None or len(here) != len(there):
            return None
        moved = []
        for own, copy in zip(here, there, strict=True):
            target = _target(own[3])
            moved.append(copy if target is not None and origin <= target < origin + len(code) else (*copy[:3], own[3]))
        return self._meaningful(moved)

    def _constant(self, site: Site, observed: bytes) -> bool:
        self.variant = True  # its value is this guest's, checked against its other sites and its memory
        name = str(site.extra)
        values = self.constants.setdefault(name, set())
        values.add(observed)
        if len(values) > 1:
            return False  # one constant, one value at every site
        value = int.from_bytes(observed, "little")
        if name == "USER_PTR_MAX":
            return value in USER_PTR_MAX
        if self.vendor.has_symbol(name):  # the variable the constant caches: it must hold the same value
            try:
                held = self.read(self.vendor.symbol(name) + self.slide, len(observed) if len(observed) == 8 else 4)
            except ReadError:
                return False
            return int.from_bytes(held, "little") == value
        return False


def compare_with_vendor(read: Callable[[int, int], bytes], vendor: VendorKernel, slide: int) -> VendorCheck:
    """Compare the guest (``read`` at guest addresses) with ``vendor`` moved by ``slide``. The image's
    sites are read only when a page needs judging (a guest like one of its build seen before: never)."""
    check = VendorCheck(vendor.path, slide)
    verdicts = remembered.known(vendor)
    checker: _Checker | None = None

    def judge_with() -> _Checker:
        nonlocal checker, verdicts
        if checker is None:
            found = read_sites(vendor)
            check.problems.extend(found.problems)
            checker = _Checker(read, vendor, slide, found.sites)
            if verdicts is None and not found.problems:  # a build whose tables read cleanly
                verdicts = PageVerdicts.of_sites(found.sites)
                remembered.keep(vendor, verdicts)
        return checker

    if verdicts is None:
        judge_with()
    for region, start, end in compared_ranges(vendor):
        try:
            expected = vendor.expected(start, end, slide)
        except KernelImageError as exc:
            check.problems.append(f"{region} {start:#x}: {exc}")
            continue
        for page in range(start, end, PAGE):
            length = min(PAGE - page % PAGE, end - page)
            want = expected[page - start : page - start + length]
            try:
                got = read(page + slide, length)
            except ReadError as exc:
                check.problems.append(f"{region} page {page + slide:#x}: {exc}")
                continue
            check.compared += length
            if got == want:
                continue
            key = outcome = None
            if verdicts is not None:
                key = verdicts.key(page, got, want, read, slide)
                outcome = verdicts.explained.get(key)
            if outcome is not None:
                for kind, count in outcome:
                    check.explained[kind] = check.explained.get(kind, 0) + count
                continue
            judge = judge_with()
            before, reported, more = dict(check.explained), len(check.differences), check.more
            judge.variant = False
            for offset, run in _runs(got, want):
                if len(check.differences) >= MAX_REPORTED:  # plainly not the vendor's kernel: count, do not judge
                    check.more += -(-run // MAX_RUN)
                    continue
                observed, wanted = got[offset : offset + run], want[offset : offset + run]
                _judge(check, judge, region, page + offset, observed, wanted, expected, start)
            explained = len(check.differences) == reported and check.more == more  # every byte of it
            if verdicts is not None and key is not None and explained and not judge.variant:
                verdicts.remember(key, {k: n - before.get(k, 0) for k, n in check.explained.items() if n != before.get(k, 0)})
    if verdicts is not None:
        remembered.save(vendor, verdicts)
    return check


def _judge(
    check: VendorCheck, checker: _Checker, region: str, link: int, observed: bytes, wanted: bytes, expected: bytes, start: int
) -> None:
    """One run of differing bytes: explained by the sites under it, or a difference."""
    kinds: set[str] = set()
    bad = ""
    covered = True
    for i in range(len(observed)):
        if observed[i] == wanted[i]:
            continue
        sites = checker.covering(link + i)
        good = [site for site in sites if checker.site_ok(site, expected, start)]
        if not good:  # no site, or none holding what the kernel writes: the byte is not explained
            covered = False
            bad = bad or (sites[0].kind if sites else "")
            if not bad:
                break
        kinds.update(site.kind for site in good)
    if covered:
        for kind in kinds:
            check.explained[kind] = check.explained.get(kind, 0) + 1
        return
    for piece in range(0, len(observed), MAX_RUN):
        if len(check.differences) >= MAX_REPORTED:
            check.more += 1
            continue
        address = link + piece
        check.differences.append(
            CodeDifference(
                address + checker.slide,
                min(MAX_RUN, len(observed) - piece),
                checker.where(address),
                region,
                bad,
                wanted[piece : piece + MAX_RUN],
                observed[piece : piece + MAX_RUN],
            )
        )


def _target(operands: str) -> int | None:
    """The absolute address an operand string names (a branch target, or ``[0x...]``), if any."""
    text = operands.strip("[]")
    if text.startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return None
    return None


def _disassemble(code: bytes, at: int) -> list[tuple[int, int, str, str]] | None:
    """(address, size, mnemonic, operands) of each instruction, RIP-relative operands as ``[absolute]``;
    None when some bytes do not decode."""
    insns = []
    used = 0
    try:
        for insn in _cs.disasm(code, at):
            used += insn.size
            ops = insn.op_str
            for op in insn.operands:
                if op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
                    ops = f"[{(insn.address + insn.size + op.mem.disp) & MASK64:#x}]"
            insns.append((insn.address, insn.size, insn.mnemonic, ops))
    except CsError:
        return None
    return insns if used == len(code) else None
