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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmsentinel.detect import detectors
from vmsentinel.detect.finding import Finding

if TYPE_CHECKING:
    from vmsentinel.os.linux.guest import GuestSnapshot, LinuxGuest
    from vmsentinel.os.linux.views.kernel_code import CodeRegion

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
    "mechanism_hook": detectors.mechanism_hook,
    "anonymous_exec_memory": detectors.anonymous_exec_memory,
    "kernel_taint": detectors.kernel_taint,
    "bpf_program": detectors.bpf_program,
}
PATCH_SITE_BYTES = 5  # a jump label or ftrace site is one 5-byte (or 2-byte) instruction
MAX_SITES = 1 << 20
MASK = (1 << 64) - 1
#: x86 NOPs the kernel writes at patch sites (5-byte and 2-byte forms)
NOPS5 = {bytes.fromhex("0f1f440000")}  # BYTES_NOP5
NOPS2 = {bytes.fromhex("6690")}  # BYTES_NOP2


@dataclass
class Baseline:
    """What the guest looked like when first seen."""

    syscalls: dict[str, int]
    idt: dict[str, int]
    code: dict[tuple[str, int], CodeRegion]
    page_bytes: dict[int, bytes] = field(repr=False, default_factory=dict)
    #: jump label sites -> their jump target; ftrace call sites (the kernel rewrites both at run time)
    jump_sites: dict[int, int] = field(repr=False, default_factory=dict)
    ftrace_sites: set[int] = field(repr=False, default_factory=set)
    read: Callable[[int, int], bytes] | None = field(repr=False, default=None)
    owner: Callable[[int], str] = field(repr=False, default=lambda _a: "unknown")
    describe: Callable[[int], str | None] = field(repr=False, default=lambda _a: None)
    problems: list[str] = field(default_factory=list)
    #: the kernel's taint mask and the eBPF programs (id, tag) present at first sight
    taint: int | None = None
    bpf: set[tuple[int, str]] = field(default_factory=set)

    @classmethod
    def take(cls, guest: LinuxGuest, snap: GuestSnapshot) -> Baseline:
        code = {(r.owner, r.start): r for r in (snap.code.regions if snap.code else [])}
        base = cls(
            syscalls={f"{e.table}:{e.index}": e.handler for e in snap.syscalls.syscalls},
            idt={f"cpu{e.cpu}:{e.vector}": e.handler for e in snap.idt.idt},
            code=code,
            read=guest.reader.read,
            describe=guest.resolver.describe,
            owner=guest.resolver.owner,
            taint=snap.taint,
            bpf={(p.id, p.tag) for p in snap.bpf.programs} if snap.bpf else set(),
        )
        for region in code.values():
            for i in range(len(region.page_hashes)):
                page = region.start + i * 4096
                try:
                    base.page_bytes[page] = guest.reader.read(page, 4096)
                except Exception as exc:
                    base.problems.append(f"baseline page {page:#x}: {exc}")
        base.jump_sites, base.ftrace_sites = _patch_sites(guest, snap, base.problems)
        return base

    def rebind(self, guest: LinuxGuest) -> None:
        """Read through a reopened guest (the baseline outlives a lost connection)."""
        self.read = guest.reader.read
        self.describe = guest.resolver.describe
        self.owner = guest.resolver.owner

    @property
    def patch_sites(self) -> set[int]:
        return set(self.jump_sites) | self.ftrace_sites

    def _site_ok(self, site: int) -> bool:
        """Does this self-patching site hold only what the kernel itself would write there?"""
        if self.read is None:
            return False
        try:
            code = self.read(site, 5)
        except Exception:
            return False
        if code in NOPS5 or code[:2] in NOPS2:
            return True
        if site in self.jump_sites:
            target = self.jump_sites[site]
            if code[0] == 0xE9:
                return (site + 5 + int.from_bytes(code[1:5], "little", signed=True)) & MASK == target
            if code[0] == 0xEB:
                return (site + 2 + int.from_bytes(code[1:2], "little", signed=True)) & MASK == target
        if site in self.ftrace_sites and code[0] == 0xE8:  # call into ftrace (core text or a trampoline)
            dest = (site + 5 + int.from_bytes(code[1:5], "little", signed=True)) & MASK
            return self.owner(dest) in ("kernel", "modules-area")
        return False

    def changed_bytes(self, page: int, snap: GuestSnapshot) -> list[int]:
        """Addresses of bytes that differ from the baseline, outside known self-patching sites."""
        old = self.page_bytes.get(page)
        if old is None or self.read is None:
            return []
        try:
            new = self.read(page, 4096)
        except Exception:
            return []
        diffs = [page + i for i in range(4096) if old[i] != new[i]]
        unexplained = []
        for a in diffs:
            sites = [a - k for k in range(PATCH_SITE_BYTES) if a - k in self.jump_sites or a - k in self.ftrace_sites]
            if not any(self._site_ok(site) for site in sites):
                unexplained.append(a)
        return unexplained


def _patch_sites(guest: LinuxGuest, snap: GuestSnapshot, problems: list[str]) -> tuple[dict[int, int], set[int]]:
    """Where the kernel patches its own text: jump label sites (core and modules) and ftrace call sites."""
    r = guest.reader
    jumps: dict[int, int] = {}
    tables: list[tuple[int, int]] = []
    if r.has_symbol("__start___jump_table") and r.has_symbol("__stop___jump_table"):
        start, stop = r.symbol("__start___jump_table"), r.symbol("__stop___jump_table")
        tables.append((start, (stop - start) // max(1, r.size("jump_entry"))))
    if r.has("module", "jump_entries"):
        for m in snap.modules.modules:
            try:
                entries = r.u64(m.address + r.off("module", "jump_entries"))
                count = r.u32(m.address + r.off("module", "num_jump_entries"))
                if entries and count:
                    tables.append((entries, count))
            except Exception as exc:
                problems.append(f"jump table of {m.name}: {exc}")
    size = r.size("jump_entry")
    for start, count in tables:
        count = min(count, MAX_SITES)
        try:
            raw = r.read(start, count * size)
        except Exception as exc:
            problems.append(f"jump table at {start:#x}: {exc}")
            continue
        for i in range(count):
            code_rel, target_rel = struct.unpack_from("<ii", raw, i * size)
            entry = start + i * size
            jumps[(entry + code_rel) & MASK] = (entry + 4 + target_rel) & MASK
    ftrace: set[int] = set()
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
                    ftrace.update(struct.unpack_from("<Q", raw, i * rec_size)[0] for i in range(index))
                page = r.u64(page + r.off("ftrace_page", "next"))
        except Exception as exc:
            problems.append(f"ftrace pages: {exc}")
    return jumps, ftrace


def run_detectors(
    target: str,
    snap: GuestSnapshot,
    prev: GuestSnapshot | None,
    base: Baseline | None,
    enabled: list[str] | None = None,
    extra: list[Detector] | None = None,
    timings: dict[str, float] | None = None,
) -> list[Finding]:
    """Run the built-in detectors (all, or those ``enabled``) and ``extra`` ones (rules from the policy).

    ``timings``, when given, receives the seconds each detector took (the watcher reports them)."""
    findings: list[Finding] = []
    chosen = [d for name, d in DETECTORS.items() if enabled is None or name in enabled] + list(extra or [])
    for detector in chosen:
        started = time.perf_counter()
        findings.extend(detector(target, snap, prev, base))
        if timings is not None:
            name = getattr(detector, "__name__", "rule")
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
    return findings


def confirm(first: list[Finding], second: list[Finding]) -> list[Finding]:
    """Findings seen in two consecutive reads: a race with the running guest is not a finding."""
    again = {f.key for f in second}
    from dataclasses import replace

    return [replace(f, confirmed=True) for f in first if f.key in again]
