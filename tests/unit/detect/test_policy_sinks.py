"""Policy files, the OCSF mapping and the SQLite store, without a guest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.errors import PolicyError
from vmsentinel.pipeline.policy import load_policy
from vmsentinel.respond.actions import respond
from vmsentinel.sinks.ocsf import OcsfJsonl, to_ocsf
from vmsentinel.sinks.sqlite_store import SqliteStore

FINDING = Finding(
    "hidden_module", "kernel module evil is hidden", Severity.CRITICAL, ROOTKIT, "lab:x", {"module": "evil"}, ("sysfs_kobjects",)
)


def test_policy_defaults_and_overrides(tmp_path: Path) -> None:
    assert load_policy(None).actions_for(FINDING) == ["alert"]
    path = tmp_path / "p.toml"
    path.write_text(
        'interval = 0.5\n[detectors]\nenabled = ["hidden_module"]\n'
        '[responses]\ncritical = ["dump", "pause"]\n[responses.detectors]\nhidden_module = ["cut_network"]\n'
    )
    policy = load_policy(path)
    assert policy.interval == 0.5 and policy.detectors == ["hidden_module"]
    assert policy.actions_for(FINDING) == ["cut_network"]  # the detector's own list wins over severity


@pytest.mark.parametrize(
    "text",
    ['[responses]\ncritical = ["reboot"]', '[detectors]\nenabled = ["nope"]', "interval = -1", "[bogus]\nx = 1", "not toml ["],
)
def test_bad_policies_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PolicyError):
        load_policy(path)


def test_ocsf_detection_finding_shape(tmp_path: Path) -> None:
    event = to_ocsf(FINDING)
    assert event["class_uid"] == 2004 and event["type_uid"] == 200401 and event["severity_id"] == 5
    assert event["finding_info"]["attacks"][0]["technique"]["uid"] == "T1014"
    assert event["device"]["name"] == "lab:x" and event["evidences"][0]["data"] == {"module": "evil"}
    sink = OcsfJsonl(tmp_path / "f.jsonl")
    sink.write([FINDING, FINDING])
    sink.close()
    lines = (tmp_path / "f.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["finding_info"]["uid"] == FINDING.key


def test_sqlite_store_findings_and_responses(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.write([FINDING])
    store.write_responses(respond("lab:x", None, FINDING, ["pause", "alert"], tmp_path))
    rows, responses = store.findings(), store.responses()
    store.close()
    assert rows[0]["detector"] == "hidden_module" and json.loads(str(rows[0]["evidence"])) == {"module": "evil"}
    assert [(r["action"], r["ok"]) for r in responses] == [("alert", 1), ("pause", 0)]  # no hypervisor: recorded
    mode = sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
