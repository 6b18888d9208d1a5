"""The policy-driven detectors: their names, what they read, and how each is made
from the policy's compiled rules. Registered here, apart from the rule engines,
so that naming them (in a policy, in ``--help``) loads neither YARA nor pySigma."""

from __future__ import annotations

from vmsentinel.detect.registry import Detector, RuleSet, register_rules


def _sigma(rules: RuleSet) -> Detector | None:
    return rules.sigma.detector() if rules.sigma is not None else None


def _yara(rules: RuleSet) -> Detector | None:
    return rules.yara.detector() if rules.yara is not None else None


def _allowlist(rules: RuleSet) -> Detector | None:
    if rules.allowlist is None:
        return None
    from vmsentinel.detect.allowlist_check import allowlist_detector

    return allowlist_detector(rules.allowlist)


register_rules(
    "yara", "Process, kernel or module memory matching the policy's YARA rules.", {"regions"}, _yara, ("linux", "windows")
)
register_rules("sigma", "New processes matching the policy's Sigma process_creation rules.", {"tasks"}, _sigma)
register_rules(
    "code_not_allowlisted",
    "Executable file pages and kernel modules that the signed allowlist does not hold.",
    {"tasks", "modules", "maps", "exec_pages"},
    _allowlist,
)
