"""A compiled policy narrowed to the detectors that found something reads only what they need."""

from __future__ import annotations

from vmsentinel.detect.registry import specs
from vmsentinel.pipeline.compiled import ALWAYS, CompiledPolicy
from vmsentinel.pipeline.policy import Policy


def test_narrowed_keeps_the_rules_and_reads_only_the_chosen_detectors_facets() -> None:
    compiled = CompiledPolicy.compile(Policy())
    assert "code" in compiled.facets and len(compiled.enabled) > 3
    narrow = compiled.narrowed({"syscall_hook", "not_enabled_anywhere"})
    (spec,) = specs(["syscall_hook"])
    assert narrow.enabled == ["syscall_hook"] and narrow.facets == ALWAYS | spec.facets
    assert "code" not in narrow.facets and narrow.yara is None and narrow.rules is compiled.rules
    assert compiled.narrowed({"kernel_code_modified"}).facets >= {"code"}
    assert compiled.narrowed(set()).facets == ALWAYS and compiled.narrowed(set()).enabled == []
