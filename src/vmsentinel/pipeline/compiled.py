"""A policy made ready to run: its rule files compiled, its allowlist's page hasher
chosen, and the snapshot facets its enabled detectors read.

Compiling is also how a policy is checked: ``policy verify``, ``check``, ``watch``
and a reload all compile the same way, so a rule that does not compile is
refused before anything runs, with its file and line.

    compiled = CompiledPolicy.compile(policy, allowlist)
    compiled.facets          # what a sweep must collect
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vmsentinel.detect.registry import RuleSet, specs
from vmsentinel.pipeline.policy import Policy

if TYPE_CHECKING:
    from vmsentinel.detect.yara_rules import YaraRules
    from vmsentinel.trust.allowlist import Allowlist

#: every sweep reads these: process and module events come from them
ALWAYS = frozenset({"tasks", "modules"})


def _facets(detectors: list[str], rules: RuleSet) -> frozenset[str]:
    """What a sweep must collect for ``detectors`` (those with something to run under ``rules``)."""
    return ALWAYS.union(*(s.facets for s in specs(detectors) if s.detector(rules) is not None))


@dataclass(frozen=True)
class CompiledPolicy:
    policy: Policy
    rules: RuleSet
    #: the allowlist's page hash, when code must be checked against it; else None
    page_hasher: Callable[[bytes], str] | None
    facets: frozenset[str]

    @classmethod
    def compile(cls, policy: Policy, allowlist: Allowlist | None = None) -> CompiledPolicy:
        """Compile every rule the policy names (a bad one raises ``RuleError`` naming file and line)."""
        sigma = yara = None
        if policy.sigma_rules:
            from vmsentinel.detect.sigma_rules import SigmaRules

            sigma = SigmaRules.load(list(policy.sigma_rules))
        if policy.yara_rules:
            from vmsentinel.detect.yara_rules import YaraRules

            yara = YaraRules.load(list(policy.yara_rules))
        rules = RuleSet(sigma, yara, allowlist)
        facets = _facets(policy.detectors, rules)
        hasher = None
        if "exec_pages" in facets and allowlist is not None:
            from vmsentinel.trust.allowlist import page_hash

            hasher = page_hash
        return cls(policy, rules, hasher, facets)

    def narrowed(self, detectors: Iterable[str]) -> CompiledPolicy:
        """The same policy and rules with only ``detectors`` enabled, collecting only what they read: a
        confirming read looks again where something was found, not at everything (it is on the path
        from an attack to its alert)."""
        wanted = set(detectors)
        chosen = [n for n in self.enabled if n in wanted]
        facets = _facets(chosen, self.rules)
        hasher = self.page_hasher if "exec_pages" in facets else None
        return CompiledPolicy(replace(self.policy, detectors=chosen), self.rules, hasher, facets)

    @property
    def enabled(self) -> list[str]:
        return self.policy.detectors

    @property
    def yara(self) -> YaraRules | None:
        """The YARA rules to scan memory with (None when no YARA detector runs)."""
        return self.rules.yara if "regions" in self.facets else None
