"""Sigma ``process_creation`` rules over the processes that appeared since the
previous sweep, through pySigma and its SQLite backend: each rule becomes one
SQL query run against a table of new processes with the Sigma field names
(``Image``, ``CommandLine``, ``ParentImage``, ``ParentCommandLine``, ``User``,
``ProcessId``, ``ParentProcessId``).

    rules = SigmaRules.load(["rules/linux/process_creation"])
    detector = rules.detector()          # a detector like the others, for run_detectors(extra=...)
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.detect.finding import Attack, Finding, Severity
from vmsentinel.errors import SigmaError

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.detect.registry import Detector
    from vmsentinel.os.snapshot import GuestSnapshot

SIGMA_EXECUTION = Attack("T1059", "Command and Scripting Interpreter", "TA0002", "Execution")
LEVELS = {
    "informational": Severity.INFORMATIONAL,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
COLUMNS = ("Image", "CommandLine", "ParentImage", "ParentCommandLine", "User", "ProcessId", "ParentProcessId")


@dataclass(frozen=True)
class SigmaRule:
    title: str
    rule_id: str
    level: Severity
    query: str
    source: str


class SigmaRules:
    def __init__(self, rules: list[SigmaRule]) -> None:
        self.rules = rules

    @classmethod
    def load(cls, paths: list[str | Path]) -> SigmaRules:
        from sigma.backends.sqlite import sqliteBackend
        from sigma.collection import SigmaCollection
        from sigma.exceptions import SigmaError as PySigmaError

        files: list[Path] = []
        for p in map(Path, paths):
            files.extend(sorted(p.rglob("*.yml")) + sorted(p.rglob("*.yaml")) if p.is_dir() else [p])
        backend = sqliteBackend()
        rules: list[SigmaRule] = []
        import yaml

        for f in files:
            try:
                text = f.read_text()
            except OSError as exc:
                raise SigmaError(f"Sigma rule {f}: cannot read: {exc.strerror}") from exc
            try:
                collection = SigmaCollection.from_yaml(text)
                for rule in collection.rules:
                    if getattr(getattr(rule, "logsource", None), "category", None) != "process_creation":
                        continue
                    for query in backend.convert_rule(rule):
                        level = LEVELS.get(str(rule.level.name).lower() if rule.level else "medium", Severity.MEDIUM)
                        rules.append(SigmaRule(rule.title, str(rule.id or ""), level, str(query), str(f)))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f":{mark.line + 1}" if mark is not None else ""
                raise SigmaError(f"Sigma rule {f}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
            except PySigmaError as exc:
                raise SigmaError(f"Sigma rule {f}:{_line_of(text, str(exc))}: {exc}") from exc
        return cls(rules)

    def match(self, rows: list[dict[str, object]]) -> list[tuple[SigmaRule, dict[str, object]]]:
        """(rule, row) for every new process a rule matches."""
        if not rows or not self.rules:
            return []
        db = sqlite3.connect(":memory:")
        db.execute(f"CREATE TABLE logs ({', '.join(COLUMNS)})")
        db.executemany(
            f"INSERT INTO logs VALUES ({', '.join('?' for _ in COLUMNS)})", [tuple(r.get(c) for c in COLUMNS) for r in rows]
        )
        out: list[tuple[SigmaRule, dict[str, object]]] = []
        for rule in self.rules:
            cur = db.execute(rule.query)
            names = [c[0] for c in cur.description]
            out.extend((rule, dict(zip(names, row, strict=True))) for row in cur.fetchall())
        db.close()
        return out

    def detector(self) -> Detector:
        rules = self

        def sigma_process_creation(
            target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None
        ) -> list[Finding]:
            """New processes matching Sigma process_creation rules (the rule's own ATT&CK tags are in its
            file; findings map to T1059)."""
            if prev is None:
                return []
            seen = {(t.pid, t.start_time_ns) for t in prev.tasks.tasks}
            by_pid = {t.pid: t for t in snap.tasks.tasks}
            rows: list[dict[str, object]] = []
            for t in snap.tasks.tasks:
                if (t.pid, t.start_time_ns) in seen or t.kernel_thread:
                    continue
                parent = by_pid.get(t.ppid)
                rows.append(
                    {
                        "Image": t.exe,
                        "CommandLine": t.args,
                        "ParentImage": parent.exe if parent else None,
                        "ParentCommandLine": parent.args if parent else None,
                        "User": "root" if t.uid == 0 else str(t.uid),
                        "ProcessId": t.pid,
                        "ParentProcessId": t.ppid,
                    }
                )
            return [
                Finding(
                    "sigma",
                    f"Sigma: {rule.title} (pid {row['ProcessId']})",
                    rule.level,
                    SIGMA_EXECUTION,
                    target,
                    {"rule": rule.title, "rule_id": rule.rule_id, "rule_file": rule.source, **row},
                )
                for rule, row in rules.match(rows)
            ]

        return sigma_process_creation


def _line_of(text: str, message: str) -> int:
    """The line a pySigma error is about: the first line naming what the message quotes (pySigma says
    which name is wrong, not where), else the ``detection:`` line, else 1."""
    import re

    lines = text.splitlines()
    for quoted in re.findall(r"'([^']+)'", message):
        for n, line in enumerate(lines, 1):
            if re.search(rf"(?<![\w-]){re.escape(quoted)}(?![\w-])", line):
                return n
    return next((n for n, line in enumerate(lines, 1) if line.startswith("detection:")), 1)
