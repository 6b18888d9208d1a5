"""Sigma process_creation rules through pySigma's SQLite backend, over new processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.finding import Severity
from vmsentinel.detect.registry import RuleSet, run_detectors
from vmsentinel.detect.sigma_rules import SigmaRules
from vmsentinel.errors import SigmaError
from vmsentinel.pipeline.policy import load_policy

RULES = Path(__file__).parents[2] / "data" / "sigma"


def test_matching_new_process_is_a_finding_and_old_ones_are_not() -> None:
    rules = RuleSet(sigma=SigmaRules.load([RULES]))
    old = replace(task(10), cmdline=("nc", "-l", "-p", "80"))
    before = snapshot([task(1), old])
    listener = replace(task(11), cmdline=("nc", "-l", "-p", "4444"), exe="/bin/busybox")
    benign = replace(task(12), cmdline=("ncat-helper", "--list"))
    after = snapshot([task(1), old, listener, benign])
    found = run_detectors("t", after, before, None, enabled=["sigma"], rules=rules)
    assert [(f.detector, f.evidence["ProcessId"], f.severity) for f in found] == [("sigma", 11, Severity.HIGH)]
    assert found[0].evidence["rule"] == "Netcat listener started" and found[0].evidence["User"] == "root"
    assert run_detectors("t", after, None, None, enabled=["sigma"], rules=rules) == []  # no history: nothing is new


def test_bad_rules_and_policy_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("title: x\ndetection: {}\n")
    with pytest.raises(SigmaError):
        SigmaRules.load([bad])
    policy = tmp_path / "p.toml"
    policy.write_text('[sigma]\nrules = ["rules"]\n')
    assert load_policy(policy).sigma_rules == [str(tmp_path / "rules")]
