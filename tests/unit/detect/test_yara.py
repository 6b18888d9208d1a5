"""YARA rule loading and the YARA detector over snapshot matches (scanning itself needs a guest)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.registry import RuleSet, run_detectors
from vmsentinel.detect.yara_rules import YaraMatch, YaraRules
from vmsentinel.errors import YaraError

RULES = Path(__file__).parents[2] / "data" / "yara"


def test_rules_compile_and_matches_become_findings() -> None:
    rules = YaraRules.load([RULES])
    assert rules.sources and rules.sources[0].endswith("marker.yar")
    snap = replace(snapshot([task(5)]), yara=[YaraMatch(5, "sh", "vmsentinel_test_marker", 0x7FFE0000, "[stack]")])
    found = run_detectors("t", snap, None, None, enabled=["yara"], rules=RuleSet(yara=rules))
    assert [(f.detector, f.evidence["pid"], f.evidence["region"]) for f in found] == [("yara", 5, "[stack]")]


def test_broken_rules_are_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yar"
    bad.write_text("rule { strings: $ = condition }")
    with pytest.raises(YaraError):
        YaraRules.load([bad])
