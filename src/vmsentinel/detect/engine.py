"""Running detectors over snapshots, the baseline they compare against, and
confirmation by a second read.

    baseline = Baseline.take(guest, snap)            # trust on first sight
    findings = run_detectors("lab:web1", snap, prev, baseline)

The baseline keeps every kernel and module text page as first seen, and the
places the kernel patches in itself at run time (jump labels and ftrace call
sites, from its own tables), so a changed page is explained byte by byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import detectors
from .finding import Finding

if TYPE_CHECKING:
    from ..linux.guest import GuestSnapshot, LinuxGuest
    from ..linux.views.kernel_code import CodeRegion

Detector = Callable[[str, "GuestSnapshot", "GuestSnapshot | None", "Baseline | None"], list[Finding]]

DETECTORS: dict[str, Detector] = {
    "hidden_process": detectors.hidden_process,
    "hidden_module": detectors.hidden_module,
    "syscall_hook": detectors.syscall_hook,
    "idt_hook": detectors.idt_hook,
    "kernel_code_modified": detectors.kernel_code_modified,
    "privilege_escalation": detectors.privilege_escalation,
    "injected_code": detectors.injected_code,
    "unsigned_module": detectors.unsigned_module,
}
PATCH_SITE_BYTES = 5  # a jump label or ftrace site is one 5-byte (or 2-byte) instruction
MAX_SITES = 1 << 20


@dataclass
class Baseline:
    """What the guest looked like when first seen."""

    syscalls: dict[str, int]
    idt: dict[str, int]
    code: dict[tuple[str, int], CodeRegion]
    page_bytes: dict[int, bytes] = field(repr=False, default_factory=dict)
    patch_sites: set[int] = field(repr=False, default_factory=set)
    read_page: Callable[[int], bytes] | None = field(repr=False, default=None)
    describe: Callable[[int], str | None] = field(repr=False, default=lambda _a: None)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def take(cls, guest: LinuxGuest, snap: GuestSnapshot) -> Baseline:
        code = {(r.owner, r.start): r for r in (snap.code.regions if snap.code else [])}
        base = cls(
            syscalls={f"{e.table}:{e.index}": e.handler for e in snap.syscalls.syscalls},
            idt={f"cpu{e.cpu}:{e.vector}": e.handler for e in snap.idt.idt},
            code=code,
            read_page=lambda page: guest.reader.read(page, 4096),
            describe=guest.resolver.describe,
        )
        for region in code.values():
            for i in range(len(region.page_hashes)):
                page = region.start + i * 4096
                try:
                    base.page_bytes[page] = guest.reader.read(page, 4096)
                except Exception as exc:
                    base.problems.append(f"baseline page {page:#x}: {exc}")
        base.patch_sites = _patch_sites(guest, base.problems)
        return base

    def changed_bytes(self, page: int, snap: GuestSnapshot) -> list[int]:
        """Addresses of bytes that differ from the baseline, outside known self-patching sites."""
        old = self.page_bytes.get(page)
        if old is None or self.read_page is None:
            return []
        try:
            new = self.read_page(page)
        except Exception:
            return []
        diffs = [page + i for i in range(4096) if old[i] != new[i]]
        return [a for a in diffs if not any(a - k in self.patch_sites for k in range(PATCH_SITE_BYTES))]


def _patch_sites(guest: LinuxGuest, problems: list[str]) -> set[int]:
    """Where the kernel patches its own text: jump label sites and ftrace call sites."""
    r = guest.reader
    sites: set[int] = set()
    if r.has_symbol("__start___jump_table") and r.has_symbol("__stop___jump_table"):
        start, stop = r.symbol("__start___jump_table"), r.symbol("__stop___jump_table")
        size = r.size("jump_entry")
        count = min(max(0, (stop - start) // size), MAX_SITES)
        try:
            raw = r.read(start, count * size)
            for i in range(count):
                (rel,) = struct.unpack_from("<i", raw, i * size)
                sites.add((start + i * size + rel) & ((1 << 64) - 1))
        except Exception as exc:
            problems.append(f"jump table: {exc}")
    if r.has_symbol("ftrace_pages_start"):
        try:
            page = r.u64(r.symbol("ftrace_pages_start"))
            rec_size = r.size("dyn_ftrace")
            for _ in range(1 << 14):
                if not page:
                    break
                records = r.u64(page + r.off("ftrace_page", "records"))
                index = r.s32(page + r.off("ftrace_page", "index"))
                if 0 < index <= 1 << 16:
                    raw = r.read(records, index * rec_size)
                    sites.update(struct.unpack_from("<Q", raw, i * rec_size)[0] for i in range(index))
                page = r.u64(page + r.off("ftrace_page", "next"))
        except Exception as exc:
            problems.append(f"ftrace pages: {exc}")
    return sites


def run_detectors(
    target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None, enabled: list[str] | None = None
) -> list[Finding]:
    findings: list[Finding] = []
    for name, detector in DETECTORS.items():
        if enabled is None or name in enabled:
            findings.extend(detector(target, snap, prev, base))
    return findings


def confirm(first: list[Finding], second: list[Finding]) -> list[Finding]:
    """Findings seen in two consecutive reads: a race with the running guest is not a finding."""
    again = {f.key for f in second}
    from dataclasses import replace

    return [replace(f, confirmed=True) for f in first if f.key in again]
