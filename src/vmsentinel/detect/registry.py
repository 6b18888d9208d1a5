"""Every detector by its one name: the name a policy enables it by, responds to it
by, and the name on its findings and in its timings.

A detector is a pure function of (target, snapshot, previous snapshot or None,
baseline or None) returning findings. Built-ins register themselves with
:func:`register`; the policy-driven ones (YARA, Sigma, the allowlist) are made
from the policy's compiled rules by a ``make`` function and exist only when the
policy has such rules. Each names the snapshot facets it reads (so a sweep can
leave out what no enabled detector looks at) and the guest OS it applies to.

    @register("hidden_thing", facets={"tasks"})
    def hidden_thing(target, snap, prev, base): ...

    run_detectors("lab:web1", snap, prev, baseline, enabled=["hidden_thing"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmsentinel.detect.finding import Finding
from vmsentinel.errors import PolicyError

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.detect.sigma_rules import SigmaRules
    from vmsentinel.detect.yara_rules import YaraRules
    from vmsentinel.os.snapshot import GuestSnapshot
    from vmsentinel.trust.allowlist import Allowlist

Detector = Callable[[str, "GuestSnapshot", "GuestSnapshot | None", "Baseline | None"], list[Finding]]


@dataclass(frozen=True)
class RuleSet:
    """The policy's compiled rules, from which the policy-driven detectors are made."""

    sigma: SigmaRules | None = None
    yara: YaraRules | None = None
    allowlist: Allowlist | None = None


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    summary: str
    facets: frozenset[str]
    #: the guest OSes it applies to
    os: frozenset[str] = frozenset({"linux"})
    #: a built-in's function; None for a policy-driven detector
    run: Detector | None = field(default=None, repr=False)
    #: a policy-driven detector's maker: its function for these rules, or None when the policy has none
    make: Callable[[RuleSet], Detector | None] | None = field(default=None, repr=False)

    def detector(self, rules: RuleSet) -> Detector | None:
        return self.run if self.make is None else self.make(rules)


REGISTRY: dict[str, DetectorSpec] = {}


def register(name: str, facets: Iterable[str], os: Iterable[str] = ("linux",)) -> Callable[[Any], Any]:
    """Register a built-in detector under ``name`` (its findings carry the same name) for the guest OSes ``os``."""

    def add(fn: Detector) -> Detector:
        summary = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        _add(DetectorSpec(name, " ".join(summary.split()), frozenset(facets), frozenset(os), run=fn))
        return fn

    return add


def register_rules(
    name: str, summary: str, facets: Iterable[str], make: Callable[[RuleSet], Detector | None], os: Iterable[str] = ("linux",)
) -> None:
    """Register a detector made from the policy's rules, for the guest OSes ``os``."""
    _add(DetectorSpec(name, summary, frozenset(facets), frozenset(os), make=make))


def _add(spec: DetectorSpec) -> None:
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise ValueError(f"two detectors named {spec.name!r}")
    REGISTRY[spec.name] = spec


def names() -> list[str]:
    """Every detector name, built-ins first in the order they were registered."""
    _load_builtins()
    return list(REGISTRY)


def check_names(requested: Iterable[str], where: str) -> list[str]:
    """``requested`` as a list, or a :class:`PolicyError` naming the unknown ones and every valid name."""
    known = names()
    requested = list(requested)
    bad = [n for n in requested if n not in known]
    if bad:
        raise PolicyError(f"{where}: unknown detector(s) {', '.join(bad)} (valid: {', '.join(known)})")
    return requested


def specs(enabled: Iterable[str] | None = None, os: str | None = None) -> list[DetectorSpec]:
    """The specs of ``enabled`` (default: every detector) for guests running ``os`` (default: any),
    in registry order."""
    _load_builtins()
    chosen = None if enabled is None else set(enabled)
    return [s for n, s in REGISTRY.items() if (chosen is None or n in chosen) and (os is None or os in s.os)]


def run_detectors(
    target: str,
    snap: GuestSnapshot,
    prev: GuestSnapshot | None,
    base: Baseline | None,
    enabled: Iterable[str] | None = None,
    rules: RuleSet | None = None,
    timings: dict[str, float] | None = None,
    os: str = "linux",
) -> list[Finding]:
    """Run every enabled detector (default: all) for ``os`` that exists for these ``rules``.

    ``timings``, when given, receives the seconds each detector took, by detector name."""
    findings: list[Finding] = []
    for spec in specs(enabled, os):
        detector = spec.detector(rules or RuleSet())
        if detector is None:
            continue
        started = time.perf_counter()
        findings.extend(detector(target, snap, prev, base))
        if timings is not None:
            timings[spec.name] = timings.get(spec.name, 0.0) + time.perf_counter() - started
    return findings


def _load_builtins() -> None:
    """The modules whose import registers the detectors (kept light: rule engines load when made)."""
    from vmsentinel.detect import callback_detectors, detectors, fleet, process_detectors, rule_detectors

    del callback_detectors, detectors, fleet, process_detectors, rule_detectors
