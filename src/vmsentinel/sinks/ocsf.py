"""Findings as OCSF Detection Finding events (class 2004), one JSON object per
line. A line reported as written has been flushed and fsync'd: a killed
sentinel loses nothing it said it wrote.

The mapping keeps OCSF's required attributes (class, category, activity, type,
severity, time, metadata) and puts the evidence where analysts look for it:
``finding_info`` (title, ATT&CK), ``device`` (the VM), ``evidences`` (the raw
evidence of the detector, unchanged).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmsentinel.detect.finding import Finding
from vmsentinel.events import Event, FindingRaised, PolicyRejected
from vmsentinel.sinks.chain import Chain, ChainRecord, HeadSigner, SignedHead, Signer, canonical
from vmsentinel.version import __version__

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
    """Appends OCSF events to a file, durably, each linked into the file's hash chain
    (``unmapped.vmsentinel_chain``); with a ``signer``, the head is signed now and then into
    ``FILE.heads``."""

    def __init__(self, path: str | Path, signer: Signer | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.heads_path = Path(str(self.path) + ".heads")
        self.chain = _resume(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.heads = HeadSigner(self.path.name, signer)

    def handle(self, events: Sequence[Event]) -> None:
        """Keep the findings among ``events`` (a refused policy is a finding too)."""
        self.write([e.finding for e in events if isinstance(e, FindingRaised | PolicyRejected)])

    def write(self, findings: list[Finding]) -> None:
        if not findings:
            return
        lines = []
        for f in findings:
            event = to_ocsf(f)
            link: dict[str, Any] = {}
            event["unmapped"]["vmsentinel_chain"] = link

            def body(seq: int, prev: str, event: dict[str, Any] = event, link: dict[str, Any] = link) -> bytes:
                link.update(seq=seq, prev=prev)
                return canonical(event)

            link["hash"] = self.chain.append(body)[2]
            lines.append(json.dumps(event, sort_keys=True) + "\n")
        os.write(self._fd, "".join(lines).encode())
        os.fsync(self._fd)
        if self.heads.due(len(findings)):
            self.sign_head()

    def sign_head(self) -> None:
        """Sign the current head into ``FILE.heads`` (no-op without a signer or new records)."""
        head = self.heads.sign(self.chain)
        if head is None:
            return
        line = {"seq": head.seq, "hash": head.digest, "time": head.time, "signature": base64.b64encode(head.signature).decode()}
        with open(self.heads_path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.sign_head()
        os.close(self._fd)


def _resume(path: Path) -> Chain:
    """The chain state after the last whole, chained line of an existing file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
    except FileNotFoundError:
        return Chain()
    for line in reversed(tail.splitlines()):
        try:
            link = json.loads(line)["unmapped"]["vmsentinel_chain"]
            return Chain(int(link["seq"]), str(link["hash"]))
        except (ValueError, KeyError, TypeError):
            continue
    return Chain()


def read_chain(path: str | Path) -> tuple[list[ChainRecord], list[str]]:
    """The chained records of a JSON lines file, and lines that are not records at all."""
    records, problems = [], []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                link = event["unmapped"]["vmsentinel_chain"]
                digest = link.pop("hash")
                records.append(ChainRecord(f"line {number}", int(link["seq"]), str(link["prev"]), str(digest), canonical(event)))
            except (ValueError, KeyError, TypeError, AttributeError):
                problems.append(f"line {number}: not a chained OCSF record (edited or truncated)")
    return records, problems


def read_heads(path: str | Path) -> tuple[list[SignedHead], list[str]]:
    heads, problems = [], []
    try:
        with open(path, "rb") as f:
            lines = f.read(64 << 20).splitlines()
    except FileNotFoundError:
        return [], []
    for number, line in enumerate(lines, 1):
        try:
            h = json.loads(line)
            heads.append(
                SignedHead(int(h["seq"]), str(h["hash"]), base64.b64decode(h["signature"], validate=True), float(h["time"]))
            )
        except (ValueError, KeyError, TypeError):
            problems.append(f"{Path(path).name} line {number}: not a signed head")
    return heads, problems
