"""YARA rules (through YARA-X) over the memory of guest processes, read from
outside through each process's own page tables. A match names the rule, the
process, the virtual address and the mapping it falls in.

    rules = YaraRules.load(["rules/malware.yar"])
    matches = rules.scan_guest(guest, pids)     # on scanning sweeps
    detector = rules.detector()                 # findings from snapshot.yara
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TranslationError, UnmappedPhysicalAddress, VmSentinelError
from .finding import INJECTION, Finding, Severity

if TYPE_CHECKING:
    from ..linux.guest import GuestSnapshot, LinuxGuest
    from .engine import Baseline, Detector

MAX_BYTES_PER_PROCESS = 64 << 20
CHUNK = 1 << 20


class YaraError(VmSentinelError):
    """A YARA rule file does not compile."""


@dataclass(frozen=True)
class YaraMatch:
    pid: int
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

    def scan_guest(self, guest: LinuxGuest, pids: set[int] | None = None) -> list[YaraMatch]:
        """Scan the readable, present pages of each process's mappings (capped per process)."""
        import yara_x

        scanner = yara_x.Scanner(self.rules)  # type: ignore[arg-type]
        matches: list[YaraMatch] = []
        tasks = guest.tasks(with_paths=False).tasks
        for t in tasks:
            if t.kernel_thread or (pids is not None and t.pid not in pids):
                continue
            try:
                maps = guest.maps(t.pid).maps
                mm = guest.reader.pointer(t.address + guest.reader.off("task_struct", "mm"))
                space = guest.task_reader().user_space(mm) if mm else None
            except VmSentinelError:
                continue
            if space is None:
                continue
            budget = MAX_BYTES_PER_PROCESS
            for m in maps:
                if "r" not in m.perms or m.path in ("[vsyscall]", "[vvar]") or budget <= 0:
                    continue
                for start in range(m.start, min(m.end, m.start + budget), CHUNK):
                    data = bytearray()
                    for page in range(start, min(start + CHUNK, m.end), 4096):
                        try:
                            data += space.read(page, 4096)
                        except (TranslationError, UnmappedPhysicalAddress):
                            data += bytes(4096)  # not present: zeros keep offsets right, match nothing
                    budget -= len(data)
                    result = scanner.scan(bytes(data))
                    for rule in result.matching_rules:
                        offsets = [mt.offset for p in rule.patterns for mt in p.matches] or [0]
                        matches.append(YaraMatch(t.pid, t.name, rule.identifier, start + min(offsets), m.path or "anonymous"))
        return matches

    def detector(self) -> Detector:
        def yara_process_memory(
            target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None
        ) -> list[Finding]:
            """Process memory matching the policy's YARA rules (mapped to ATT&CK T1055 as injected or
            loaded malicious code)."""
            return [
                Finding(
                    "yara",
                    f"YARA rule {m.rule} matches process {m.pid} ({m.name}) at {m.address:#x}",
                    Severity.HIGH,
                    INJECTION,
                    target,
                    {"rule": m.rule, "pid": m.pid, "name": m.name, "address": f"{m.address:#x}", "region": m.region},
                )
                for m in (snap.yara or [])
            ]

        return yara_process_memory
