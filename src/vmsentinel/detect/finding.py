"""What a detector reports: one finding, with its evidence and ATT&CK mapping.

Keys of the JSON form never change within a major version: sinks (OCSF, SQLite)
and users build on them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    """OCSF severity ids."""

    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5


@dataclass(frozen=True)
class Attack:
    technique_id: str
    technique: str
    tactic_id: str
    tactic: str


ROOTKIT = Attack("T1014", "Rootkit", "TA0005", "Defense Evasion")
KERNEL_MODULES = Attack("T1547.006", "Kernel Modules and Extensions", "TA0003", "Persistence")
PRIV_ESC = Attack("T1068", "Exploitation for Privilege Escalation", "TA0004", "Privilege Escalation")
INJECTION = Attack("T1055", "Process Injection", "TA0005", "Defense Evasion")
HIDDEN_ARTIFACTS = Attack("T1564", "Hide Artifacts", "TA0005", "Defense Evasion")
MALICIOUS_FILE = Attack("T1204.002", "User Execution: Malicious File", "TA0002", "Execution")
IMPAIR_DEFENSES = Attack("T1562.001", "Impair Defenses: Disable or Modify Tools", "TA0005", "Defense Evasion")


def finding_key(detector: str, target: str, evidence: Any) -> str:
    """The key of a finding of ``detector`` on ``target`` with ``evidence`` (what :attr:`Finding.key` is)."""
    blob = json.dumps([detector, target, evidence], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Finding:
    detector: str
    title: str
    severity: Severity
    attack: Attack
    target: str
    evidence: dict[str, Any]
    sources: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)
    confirmed: bool = False

    @functools.cached_property
    def key(self) -> str:
        """Stable identity of what was found (not when), to de-duplicate across sweeps (worked out once:
        every sink and the watcher ask for it)."""
        return finding_key(self.detector, self.target, self.evidence)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.name.lower()
        data["key"] = self.key
        return data
