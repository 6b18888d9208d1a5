"""The baseline explains a changed kernel page byte by byte from what the snapshots carry, reading
no memory: a jump-label site holding a NOP or its own jump, an ftrace call into the kernel, and a
site across a page boundary are the kernel's own work; anything else is a change."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.baseline import Baseline
from vmsentinel.os.linux.views.patch_sites import PatchSites
from vmsentinel.os.records import CodeRegion, CodeSweep

TEXT = 0xFFFFFFFF81000000
NOP5 = bytes.fromhex("0f1f440000")


class Owners:
    """Addresses in core text are the kernel's; everything else is user memory."""

    def owner(self, addr: int, _modules: object = ()) -> str:
        return "kernel" if TEXT <= addr < TEXT + 0x10000 else "user"

    def describe(self, addr: int) -> str | None:
        return f"text+{addr - TEXT:#x}" if TEXT <= addr < TEXT + 0x10000 else None


def code_snapshot(pages: list[bytes], kept: dict[int, bytes] | None = None, sites: PatchSites | None = None):  # type: ignore[no-untyped-def]
    region = CodeRegion("kernel", TEXT, len(pages) * 4096, "d", tuple(str(hash(p)) for p in pages), ())
    all_bytes = {TEXT + i * 4096: p for i, p in enumerate(pages)}
    code = CodeSweep([region], page_bytes=all_bytes if kept is None else kept)
    return replace(snapshot([task(1)]), code=code, symbols=Owners(), patch_sites=sites)  # type: ignore[arg-type]


def jmp(site: int, target: int) -> bytes:
    return b"\xe9" + (target - site - 5).to_bytes(4, "little", signed=True)


def test_self_patching_sites_explain_their_bytes_and_nothing_else() -> None:
    jump_site, ftrace_site, straddle = TEXT + 0x100, TEXT + 0x200, TEXT + 0xFFE
    # e9 11 44 00 00 at the straddling site: its last three bytes are the NOP's, in the unchanged page 1
    straddle_target = straddle + 5 + 0x4411
    sites = PatchSites({jump_site: TEXT + 0x800, straddle: straddle_target}, {ftrace_site})
    page0, page1 = bytearray(4096), bytearray(4096)
    page0[0x100:0x105] = page0[0x200:0x205] = NOP5
    page0[0xFFE:0x1000], page1[0:3] = NOP5[:2], NOP5[2:]
    base = Baseline.take(code_snapshot([bytes(page0), bytes(page1)], sites=sites))
    assert not base.problems and base.patch_sites == {jump_site, ftrace_site, straddle}

    later = bytearray(page0)
    later[0x100:0x105] = jmp(jump_site, TEXT + 0x800)  # the kernel enabling a static key
    later[0x200:0x205] = b"\xe8" + (0x1000 - 0x205).to_bytes(4, "little", signed=True)  # ftrace calling into core text
    later[0xFFE:0x1000] = jmp(straddle, straddle_target)[:2]  # read on into page 1, which did not change: its baseline bytes
    later[0x300] = 0xCC  # an inline patch at no site
    kept = {TEXT: bytes(later)}  # only the changed page is in the later snapshot
    snap = code_snapshot([bytes(later), bytes(page1)], kept)
    assert base.changed_bytes(TEXT, snap) == [TEXT + 0x300]
    later[0xFFE:0x1000] = b"\xe9\x12"  # the same site jumping one byte further: not the label's target
    assert base.changed_bytes(TEXT, code_snapshot([bytes(later), bytes(page1)], {TEXT: bytes(later)})) == [
        TEXT + 0x300,
        TEXT + 0xFFE,
        TEXT + 0xFFF,
    ]


def test_a_jump_elsewhere_or_a_call_out_of_the_kernel_is_a_change() -> None:
    jump_site, ftrace_site = TEXT + 0x10, TEXT + 0x40
    page = bytearray(4096)
    page[0x10:0x15] = page[0x40:0x45] = NOP5
    base = Baseline.take(code_snapshot([bytes(page)], sites=PatchSites({jump_site: TEXT + 0x800}, {ftrace_site})))
    later = bytearray(page)
    later[0x10:0x15] = jmp(jump_site, TEXT + 0x804)  # not the label's target
    later[0x40:0x45] = b"\xe8" + (0x7FFF0000).to_bytes(4, "little", signed=True)  # a call out of kernel text
    changed = base.changed_bytes(TEXT, code_snapshot([bytes(later)], {TEXT: bytes(later)}))
    assert changed and {a & ~0xF for a in changed} == {TEXT + 0x10, TEXT + 0x40}


def test_a_baseline_from_a_snapshot_without_bytes_or_sites_says_so() -> None:
    base = Baseline.take(code_snapshot([bytes(4096)], kept={}))
    assert any("bytes not in the snapshot" in p for p in base.problems)
    assert any("no patch sites" in p for p in base.problems)
    assert base.changed_bytes(TEXT, code_snapshot([b"\x01" * 4096])) == []  # nothing to compare with: nothing claimed
