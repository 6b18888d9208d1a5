"""YARA rules (through YARA-X): compiled once from the policy's files, run over
bytes the pipeline reads from guest memory (each process's mappings through its
own page tables, kernel text and read-only data, every module's memory), and
turned into findings. A match names the rule, the process or module, the
virtual address and the region it falls in.

    rules = YaraRules.load(["rules/malware.yar"])    # YaraError names the file and line of a bad rule
    rules.scan(data)                                 # [(rule, offset of its first match)]
    detector = rules.detector()                      # findings from snapshot.yara
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.detect.finding import INJECTION, ROOTKIT, Finding, Severity
from vmsentinel.errors import YaraError
from vmsentinel.os.records import YaraMatch

__all__ = ["YaraMatch", "YaraRules"]

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.detect.registry import Detector
    from vmsentinel.os.snapshot import GuestSnapshot


class YaraRules:
    def __init__(self, rules: object, sources: list[str]) -> None:
        self.rules = rules
        self.sources = sources

    def __getstate__(self) -> dict[str, object]:
        """Compiled rules travel to worker processes in YARA-X's own serialized form."""
        import io

        buffer = io.BytesIO()
        self.rules.serialize_into(buffer)  # type: ignore[attr-defined]
        return {"rules": buffer.getvalue(), "sources": self.sources}

    def __setstate__(self, state: dict[str, object]) -> None:
        import io

        import yara_x

        data = state["rules"]
        assert isinstance(data, bytes)
        self.rules = yara_x.Rules.deserialize_from(io.BytesIO(data))
        self.sources = list(state["sources"])  # type: ignore[call-overload]

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
            except OSError as exc:
                raise YaraError(f"YARA rules {f}: cannot read: {exc.strerror}") from exc
            except yara_x.CompileError as exc:
                raise YaraError(_where(f, str(exc))) from exc
        return cls(compiler.build(), [str(f) for f in files])

    def scanner(self) -> object:
        """A YARA-X scanner of these rules, to reuse across many :meth:`scan` calls of one thread."""
        import yara_x

        return yara_x.Scanner(self.rules)  # type: ignore[arg-type]

    def scan(self, data: bytes, scanner: object | None = None) -> list[tuple[str, int]]:
        """(rule, offset of its first match) for each rule matching ``data`` (with ``scanner`` when given)."""
        scanner = scanner if scanner is not None else self.scanner()
        found = []
        for rule in scanner.scan(data).matching_rules:  # type: ignore[attr-defined]
            offsets = [mt.offset for p in rule.patterns for mt in p.matches] or [0]
            found.append((rule.identifier, min(offsets)))
        return found

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


def _where(path: Path, message: str) -> str:
    """``FILE:LINE: what`` from YARA-X's report (``error[E025]: ... --> FILE:LINE:COL``)."""
    import re

    headline = message.strip().splitlines()[0] if message.strip() else "does not compile"
    at = re.search(r"-->\s*(.+?):(\d+):(\d+)", message)
    line = f":{at.group(2)}" if at else ""
    return f"YARA rule {path}{line}: {headline}"
