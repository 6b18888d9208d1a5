"""Findings as OCSF Detection Finding events (class 2004), one JSON object per
line. A line reported as written has been flushed and fsync'd: a killed
sentinel loses nothing it said it wrote.

The mapping keeps OCSF's required attributes (class, category, activity, type,
severity, time, metadata) and puts the evidence where analysts look for it:
``finding_info`` (title, ATT&CK), ``device`` (the VM), ``evidences`` (the raw
evidence of the detector, unchanged).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..detect.finding import Finding

OCSF_VERSION = "1.1.0"
CLASS_UID = 2004


def to_ocsf(finding: Finding) -> dict[str, Any]:
    a = finding.attack
    return {
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": CLASS_UID * 100 + 1,
        "type_name": "Detection Finding: Create",
        "severity_id": int(finding.severity),
        "severity": finding.severity.name.title(),
        "status_id": 1,
        "status": "New",
        "time": int(finding.time * 1000),
        "message": finding.title,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": finding.key,
            "product": {"name": "vmsentinel", "vendor_name": "vmsentinel", "version": __version__},
        },
        "finding_info": {
            "uid": finding.key,
            "title": finding.title,
            "analytic": {"name": finding.detector, "type_id": 1, "type": "Rule"},
            "attacks": [
                {
                    "technique": {"uid": a.technique_id, "name": a.technique},
                    "tactic": {"uid": a.tactic_id, "name": a.tactic},
                    "version": "v15",
                }
            ],
            "types": [finding.detector],
        },
        "device": {"name": finding.target, "type_id": 6, "type": "Virtual"},
        "evidences": [{"data": finding.evidence, "sources": list(finding.sources)}],
        "unmapped": {"confirmed": finding.confirmed},
    }


class OcsfJsonl:
    """Appends OCSF events to a file, durably."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, findings: list[Finding]) -> None:
        if not findings:
            return
        data = "".join(json.dumps(to_ocsf(f), sort_keys=True) + "\n" for f in findings).encode()
        os.write(self._fd, data)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
