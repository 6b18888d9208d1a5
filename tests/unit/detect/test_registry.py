"""One set of detector names: the registry's. A policy enables and responds by those names (the
rule-driven ones included), an unknown name is refused with the valid ones, a finding carries the
name of the detector that made it, and a compiled policy asks a sweep only for what its detectors read."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.baseline import Baseline
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.detect.registry import REGISTRY, RuleSet, names, run_detectors
from vmsentinel.detect.yara_rules import YaraRules
from vmsentinel.errors import PolicyError
from vmsentinel.os.records import YaraMatch
from vmsentinel.pipeline.compiled import CompiledPolicy
from vmsentinel.pipeline.policy import Policy, load_policy

DATA = Path(__file__).parents[2] / "data"


def test_rule_driven_detectors_are_named_like_the_others(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[detectors]\nenabled = ["yara", "sigma", "code_not_allowlisted", "hidden_process"]\n'
        '[responses.detectors]\nyara = ["pause"]\nsigma = ["dump"]\ncode_not_allowlisted = ["cut_network"]\n'
    )
    loaded = load_policy(policy)
    assert loaded.detectors == ["yara", "sigma", "code_not_allowlisted", "hidden_process"]
    hit = Finding("yara", "YARA rule m matches", Severity.HIGH, ROOTKIT, "t", {})
    assert loaded.actions_for(hit) == ["pause"]
    assert {"yara", "sigma", "code_not_allowlisted"} <= set(names()) and Policy().detectors == names()


@pytest.mark.parametrize(
    "section", ['[detectors]\nenabled = ["hidden_proces"]', '[responses.detectors]\nhidden_proces = ["pause"]']
)
def test_an_unknown_detector_is_refused_with_every_valid_name(tmp_path: Path, section: str) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(section + "\n")
    with pytest.raises(PolicyError, match="hidden_proces") as refused:
        load_policy(policy)
    assert all(name in str(refused.value) for name in names()) and str(policy) in str(refused.value)


def test_each_builtin_is_registered_under_its_functions_name_and_timed_by_it() -> None:
    for name, spec in REGISTRY.items():
        assert spec.facets, name
        if spec.run is not None:
            assert spec.run.__name__ == name and spec.summary
    timings: dict[str, float] = {}
    found = run_detectors(
        "t", snapshot([task(7, sources=("pid_table",))]), None, None, ["hidden_process", "idt_hook"], timings=timings
    )
    assert [f.detector for f in found] == ["hidden_process"] and set(timings) == {"hidden_process", "idt_hook"}


def test_findings_carry_the_name_they_are_enabled_by() -> None:
    rules = RuleSet(yara=YaraRules.load([DATA / "yara"]))
    snap = replace(snapshot([task(5)]), yara=[YaraMatch(5, "sh", "vmsentinel_test_marker", 0x1000, "[heap]")])
    for name in ("yara", "hidden_process"):
        assert all(f.detector == name for f in run_detectors("t", snap, None, None, [name], rules))
    assert run_detectors("t", snap, None, None, ["hidden_process"], rules) == []  # yara not enabled: its matches say nothing


def test_a_detector_runs_only_on_the_oses_it_is_registered_for() -> None:
    """The kernel's taint mask is Linux's: not read on an NT guest; a hidden process is found on both."""
    snap = snapshot([task(7, sources=("pid_table",))])
    snap.taint = 1 << 12  # an out-of-tree module: kernel_taint is Linux's
    base, both = Baseline(syscalls={}, idt={}, code={}, taint=0), ["hidden_process", "kernel_taint"]
    assert {f.detector for f in run_detectors("t", snap, None, base, both, os="linux")} == set(both)
    assert [f.detector for f in run_detectors("t", snap, None, base, both, os="windows")] == ["hidden_process"]
    assert run_detectors("t", snap, None, base, both, os="plan9") == []


def test_a_compiled_policy_asks_only_for_the_facets_its_detectors_read() -> None:
    assert CompiledPolicy.compile(Policy(detectors=["hidden_process"])).facets == {"tasks", "modules"}
    everything = CompiledPolicy.compile(Policy(yara_rules=[str(DATA / "yara")]))
    assert {"code", "regions", "bpf", "idt", "syscalls", "mechanisms", "maps"} <= everything.facets
    assert everything.yara is not None and everything.page_hasher is None  # no allowlist: no code pages hashed
    no_rules = CompiledPolicy.compile(Policy())
    assert "regions" not in no_rules.facets and no_rules.yara is None  # YARA enabled but no rules: nothing to scan
