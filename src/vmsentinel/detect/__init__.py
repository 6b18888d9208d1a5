"""Detectors: small pure functions from (snapshot, previous, baseline) to findings.

No I/O happens here: the watcher feeds snapshots in, sinks take findings out.
"""

from vmsentinel.detect.engine import DETECTORS, Baseline, run_detectors
from vmsentinel.detect.finding import Finding, Severity

__all__ = ["DETECTORS", "Baseline", "Finding", "Severity", "run_detectors"]
