"""YARA rules (through YARA-X) over guest memory read from outside: each
process's mappings through its own page tables, and the kernel's text and
read-only data and every module's memory through the kernel's. A match names
the rule, the process or module, the virtual address and the region it falls in.

    rules = YaraRules.load(["rules/malware.yar"])
    rules.scan_processes(tasks, maps, spaces) + rules.scan_kernel(guest, modules, core_kernel=True)
    detector = rules.detector()                 # findings from snapshot.yara
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.detect.finding import INJECTION, ROOTKIT, Finding, Severity
from vmsentinel.errors import TranslationError, UnmappedPhysicalAddress, VmSentinelError, YaraError

if TYPE_CHECKING:
    from vmsentinel.arch.x86_64 import PagingAddressSpace
    from vmsentinel.detect.engine import Baseline, Detector
    from vmsentinel.os.linux.guest import GuestSnapshot, LinuxGuest
    from vmsentinel.os.linux.views.memory_maps import MapSweep
    from vmsentinel.os.linux.views.modules import Module
    from vmsentinel.os.linux.views.tasks import Task

MAX_BYTES_PER_PROCESS = 64 << 20
MAX_KERNEL_REGION = 64 << 20
CHUNK = 1 << 20
#: a match this close to a chunk's end is looked for again across the boundary
OVERLAP = 4096


@dataclass(frozen=True)
class YaraMatch:
    """A rule matched in a process (``pid``) or in kernel memory (``pid`` None, ``name`` the module
    or ``kernel``)."""

    pid: int | None
    name: str
    rule: str
    address: int
    region: str


class YaraRules:
    def __init__(self, rules: object, sources: list[str]) -> None:
        self.rules = rules
        self.sources = sources

    @classmethod
    def load(cls, paths: list[str | Path]) -> YaraRules:
        import yara_x

        compiler = yara_x.Compiler()
        files: list[Path] = []
        for p in map(Path, paths):
            files.extend(sorted(p.rglob("*.yar")) + sorted(p.rglob("*.yara")) if p.is_dir() else [p])
        for f in files:
            try:
                compiler.add_source(f.read_text(), origin=str(f))
            except (OSError, yara_x.CompileError) as exc:
                raise YaraError(f"YARA rules {f}: {exc}") from exc
        return cls(compiler.build(), [str(f) for f in files])

    def scan_processes(
        self, tasks: list[Task], maps: dict[int, MapSweep], spaces: dict[int, PagingAddressSpace]
    ) -> list[YaraMatch]:
        """Scan the readable, present pages of each process's mappings (capped per process), through
        the process's own address space."""
        matches: list[YaraMatch] = []
        for t in tasks:
            space = spaces.get(t.pid)
            if t.kernel_thread or space is None or t.pid not in maps:
                continue
            budget = MAX_BYTES_PER_PROCESS
            for m in maps[t.pid].maps:
                if "r" not in m.perms or m.path in ("[vsyscall]", "[vvar]") or budget <= 0:
                    continue
                size = min(m.end - m.start, budget)
                budget -= size
                for rule, address in self._scan_range(space.read, m.start, size):
                    matches.append(YaraMatch(t.pid, t.name, rule, address, m.path or "anonymous"))
        return matches

    def scan_kernel(self, guest: LinuxGuest, modules: list[Module], core_kernel: bool) -> list[YaraMatch]:
        """Scan the memory of ``modules`` and, with ``core_kernel``, the kernel's text and read-only data."""
        regions: list[tuple[str, str, int, int]] = []
        if core_kernel:
            regions += [("kernel", label, start, size) for label, start, size in guest.kernel_memory()]
        for m in modules:
            try:
                regions += [(m.name, f"module {m.name}", start, size) for start, size in guest.module_memory(m)]
            except VmSentinelError:
                continue  # the module went away while we looked
        matches = []
        for owner, label, start, size in regions:
            for rule, address in self._scan_range(guest.reader.read, start, min(size, MAX_KERNEL_REGION)):
                matches.append(YaraMatch(None, owner, rule, address, label))
        return matches

    def _scan_range(self, read: Callable[[int, int], bytes], start: int, size: int) -> list[tuple[str, int]]:
        """(rule, address of its first match) for each rule matching ``[start, start + size)``, read in
        chunks that overlap a little so a string across a chunk boundary is still seen; pages that
        cannot be read are zeros (they keep offsets right and match nothing)."""
        import yara_x

        scanner = yara_x.Scanner(self.rules)  # type: ignore[arg-type]
        found: dict[str, int] = {}
        end = start + size
        for chunk in range(start, end, CHUNK):
            data = bytearray()
            for page in range(chunk, min(chunk + CHUNK + OVERLAP, end), 4096):
                try:
                    data += read(page, min(4096, end - page))
                except (VmSentinelError, TranslationError, UnmappedPhysicalAddress):
                    data += bytes(min(4096, end - page))
            for rule in scanner.scan(bytes(data)).matching_rules:
                offsets = [mt.offset for p in rule.patterns for mt in p.matches] or [0]
                found.setdefault(rule.identifier, chunk + min(offsets))
        return sorted(found.items(), key=lambda item: item[1])

    def detector(self) -> Detector:
        def yara_memory(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
            """Process, kernel or module memory matching the policy's YARA rules: loaded or injected
            malicious code (ATT&CK T1055 in a process, T1014 Rootkit in the kernel)."""
            out = []
            for m in snap.yara or []:
                if m.pid is None:
                    title, technique = f"YARA rule {m.rule} matches {m.region} at {m.address:#x}", ROOTKIT
                else:
                    title, technique = f"YARA rule {m.rule} matches process {m.pid} ({m.name}) at {m.address:#x}", INJECTION
                evidence = {"rule": m.rule, "pid": m.pid, "name": m.name, "address": f"{m.address:#x}", "region": m.region}
                out.append(Finding("yara", title, Severity.HIGH, technique, target, evidence))
            return out

        return yara_memory
