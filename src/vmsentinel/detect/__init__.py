"""Detectors: small pure functions from (snapshot, previous, baseline) to findings,
each registered by the one name a policy, a response rule and its findings use.

No I/O happens here: the pipeline feeds snapshots in, sinks take findings out.
"""

from vmsentinel.detect.baseline import Baseline
from vmsentinel.detect.finding import Finding, Severity
from vmsentinel.detect.registry import REGISTRY, DetectorSpec, RuleSet, names, register, run_detectors

__all__ = ["REGISTRY", "Baseline", "DetectorSpec", "Finding", "RuleSet", "Severity", "names", "register", "run_detectors"]
