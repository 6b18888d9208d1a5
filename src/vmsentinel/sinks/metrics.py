"""The sentinel's report on itself in the Prometheus text format (through
``prometheus_client``), written to a file that node_exporter's textfile
collector or a scrape proxy can serve: sweeps done and missed, the last sweep's
time, time spent per detector, what could not be read, findings per guest.

    sink = MetricsSink("/var/lib/node_exporter/vmsentinel.prom")   # written atomically
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

from vmsentinel.events import (
    CodeTracking,
    Event,
    FindingRaised,
    GuestAdded,
    GuestUnreachable,
    GuestWatched,
    SweepDone,
    SweepMissed,
)

#: the file is rewritten at most this often while events arrive (and always on close)
WRITE_EVERY_SECONDS = 1.0


class MetricsSink:
    def __init__(self, path: str | Path | None) -> None:
        """``path`` None: nothing is written, the service serves :meth:`text` at ``/metrics``."""
        self.path = Path(path) if path is not None else None
        self.registry = CollectorRegistry()
        r = self.registry
        self.sweeps = Counter("vmsentinel_sweeps", "Sweeps done per guest.", ["target"], registry=r)
        self.missed = Counter("vmsentinel_sweeps_missed", "Sweeps skipped while a guest was unreachable.", ["target"], registry=r)
        self.last = Gauge("vmsentinel_last_sweep_seconds", "Duration of the last sweep of each guest.", ["target"], registry=r)
        self.detector = Counter("vmsentinel_detector_seconds", "Time spent in each detector.", ["target", "detector"], registry=r)
        self.problems = Counter(
            "vmsentinel_read_problems", "Things a sweep could not read (unreadable pages, broken lists).", ["target"], registry=r
        )
        self.findings = Counter("vmsentinel_findings", "Findings reported per guest.", ["target"], registry=r)
        self.incremental = Gauge(
            "vmsentinel_code_tracking_incremental",
            "1 when only the kernel text pages the host saw written are hashed again, 0 when every page is.",
            ["target"],
            registry=r,
        )
        self._written = 0.0

    def _guest(self, target: str) -> None:
        """Name a guest in every per-guest series as soon as it is known (a dead guest shows zeros)."""
        for metric in (self.sweeps, self.missed, self.problems, self.findings):
            metric.labels(target).inc(0)

    def handle(self, events: Sequence[Event]) -> None:
        for event in events:
            match event:
                case SweepDone():
                    self._guest(event.target)
                    self.sweeps.labels(event.target).inc()
                    self.last.labels(event.target).set(event.seconds)
                    self.problems.labels(event.target).inc(event.problems)
                    for name, seconds in event.detector_seconds.items():
                        self.detector.labels(event.target, name).inc(seconds)
                case SweepMissed(count=count):
                    self._guest(event.target)
                    self.missed.labels(event.target).inc(count)
                case FindingRaised():
                    self._guest(event.target)
                    self.findings.labels(event.target).inc()
                case CodeTracking(incremental=incremental):
                    self.incremental.labels(event.target).set(1 if incremental else 0)
                case GuestWatched() | GuestUnreachable() | GuestAdded():
                    self._guest(event.target)
        if events and time.monotonic() - self._written >= WRITE_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.path), self.registry)
        self._written = time.monotonic()

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        self.flush()
