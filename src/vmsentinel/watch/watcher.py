"""The watcher: sweeps each guest on its interval, keeps one baseline and the
previous snapshot per guest, confirms findings by a second read, and sends new
findings (once per finding) and process events to the sinks.

A guest that cannot be opened or read is reported and retried with back-off;
it never disturbs the others. ``stop()`` (or SIGINT/SIGTERM through the CLI)
ends the loop after the current sweep, with everything written.

    watcher = Watcher(["lab:web1", "lab:db1"], interval=1.0, sinks=[OcsfJsonl(p), SqliteStore(db)])
    watcher.run(max_sweeps=10)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..detect.engine import Baseline, confirm, run_detectors
from ..detect.finding import Finding
from ..detect.sigma_rules import SigmaRules
from ..detect.yara_scan import YaraRules
from ..errors import VmSentinelError
from ..hypervisor.responses import respond
from ..linux.guest import GuestSnapshot, LinuxGuest
from ..policy.config import Policy


class Sink(Protocol):
    def write(self, findings: list[Finding]) -> None: ...


@dataclass
class GuestState:
    target: str
    guest: LinuxGuest | None = None
    baseline: Baseline | None = None
    previous: GuestSnapshot | None = None
    reported: set[str] = field(default_factory=set)
    failures: int = 0
    next_try: float = 0.0
    sweeps: int = 0
    sweep_seconds: list[float] = field(default_factory=list)
    detector_seconds: dict[str, float] = field(default_factory=dict)
    problems: int = 0
    missed: int = 0  # sweeps skipped while the guest was unreachable
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vmsentinel.watch"))


class Watcher:
    def __init__(
        self,
        targets: list[str],
        interval: float = 1.0,
        sinks: list[Sink] | None = None,
        on_event: Callable[[str, str], None] | None = None,
        scan_every: int = 5,
        policy: Policy | None = None,
    ) -> None:
        self.states = [GuestState(t, log=logging.getLogger(f"vmsentinel.watch.{t}")) for t in targets]
        self.interval = interval
        self.sinks = sinks or []
        self.on_event = on_event or (lambda _target, _msg: None)
        self.scan_every = scan_every
        self.policy = policy or Policy(interval=interval)
        self.metrics_path: Path | None = None
        self.extra = [SigmaRules.load(list(self.policy.sigma_rules)).detector()] if self.policy.sigma_rules else []
        self.yara = YaraRules.load(list(self.policy.yara_rules)) if self.policy.yara_rules else None
        if self.yara is not None:
            self.extra.append(self.yara.detector())
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_sweeps: int | None = None) -> None:
        rounds = 0
        while not self._stop.is_set() and (max_sweeps is None or rounds < max_sweeps):
            started = time.monotonic()
            for state in self.states:
                if self._stop.is_set():
                    break
                self._sweep(state)
            rounds += 1
            if self.metrics_path is not None:
                tmp = self.metrics_path.with_suffix(".tmp")
                tmp.write_text(self.metrics())
                tmp.replace(self.metrics_path)
            if max_sweeps is None or rounds < max_sweeps:
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def metrics(self) -> str:
        """The watcher's report on itself, in the Prometheus text format."""
        lines = [
            "# HELP vmsentinel_sweeps_total Sweeps done per guest.",
            "# TYPE vmsentinel_sweeps_total counter",
            *(f'vmsentinel_sweeps_total{{target="{s.target}"}} {s.sweeps}' for s in self.states),
            "# HELP vmsentinel_sweeps_missed_total Sweeps skipped while a guest was unreachable.",
            "# TYPE vmsentinel_sweeps_missed_total counter",
            *(f'vmsentinel_sweeps_missed_total{{target="{s.target}"}} {s.missed}' for s in self.states),
            "# HELP vmsentinel_last_sweep_seconds Duration of the last sweep of each guest.",
            "# TYPE vmsentinel_last_sweep_seconds gauge",
            *(
                f'vmsentinel_last_sweep_seconds{{target="{s.target}"}} {s.sweep_seconds[-1]:.6f}'
                for s in self.states
                if s.sweep_seconds
            ),
            "# HELP vmsentinel_detector_seconds_total Time spent in each detector.",
            "# TYPE vmsentinel_detector_seconds_total counter",
            *(
                f'vmsentinel_detector_seconds_total{{target="{s.target}",detector="{d}"}} {v:.6f}'
                for s in self.states
                for d, v in sorted(s.detector_seconds.items())
            ),
            "# HELP vmsentinel_read_problems_total Things a sweep could not read (unreadable pages, broken lists).",
            "# TYPE vmsentinel_read_problems_total counter",
            *(f'vmsentinel_read_problems_total{{target="{s.target}"}} {s.problems}' for s in self.states),
            "# HELP vmsentinel_findings_total Findings reported per guest.",
            "# TYPE vmsentinel_findings_total counter",
            *(f'vmsentinel_findings_total{{target="{s.target}"}} {len(s.reported)}' for s in self.states),
        ]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        for state in self.states:
            if state.guest is not None:
                state.guest.close()
                state.guest = None

    def _sweep(self, state: GuestState) -> None:
        now = time.monotonic()
        if now < state.next_try:
            state.missed += 1
            return
        try:
            if state.guest is None:
                state.guest = LinuxGuest.open(state.target)
                if state.baseline is not None:
                    state.baseline.rebind(state.guest)
                self.on_event(state.target, f"watching {state.guest.resolved.profile.identity.release}")
            guest = state.guest
            scan = state.sweeps % self.scan_every == 0
            snap = guest.snapshot(with_code=True, scan=scan, yara=self.yara)
            state.sweeps += 1
            state.sweep_seconds.append(snap.seconds)
            state.problems += len(snap.tasks.problems) + len(snap.modules.problems)
            if state.baseline is None:
                state.baseline = Baseline.take(guest, snap)
                state.previous = snap
                self.on_event(state.target, f"baseline taken in {snap.seconds * 1000:.1f} ms")
                return
            enabled = self.policy.detectors
            found = run_detectors(state.target, snap, state.previous, state.baseline, enabled, self.extra, state.detector_seconds)
            fresh = [f for f in found if f.key not in state.reported]
            if fresh:
                again = guest.snapshot(with_code=True, scan=scan, yara=self.yara)
                fresh = confirm(fresh, run_detectors(state.target, again, state.previous, state.baseline, enabled, self.extra))
            for sink in self.sinks:
                sink.write(fresh)
            state.reported.update(f.key for f in fresh)
            for f in fresh:
                self.on_event(state.target, f"FINDING {f.severity.name}: {f.title}")
                self._respond(state, f)
            self._process_events(state, snap)
            state.previous = snap
            state.failures = 0
        except Exception as exc:
            if not isinstance(exc, VmSentinelError | OSError):
                state.log.exception("unexpected failure while sweeping %s", state.target)
            state.failures += 1
            delay = min(60.0, self.interval * 2 ** min(state.failures, 6))
            state.next_try = now + delay
            if state.guest is not None:
                state.guest.close()
                state.guest = None
            self.on_event(state.target, f"unreachable ({exc}); retrying in {delay:.0f} s")

    def _respond(self, state: GuestState, finding: Finding) -> None:
        assert state.guest is not None
        actions = self.policy.actions_for(finding)
        qmp = state.guest.target.qmp() if state.guest.target.qmp_socket is not None else None
        records = respond(state.target, qmp, finding, actions, Path(self.policy.dumps))
        for sink in self.sinks:
            writer = getattr(sink, "write_responses", None)
            if writer is not None:
                writer(records)
        for r in records:
            if r.action != "alert":
                self.on_event(state.target, f"response {r.action}: {'ok' if r.ok else 'FAILED'} ({r.detail})")

    def _process_events(self, state: GuestState, snap: GuestSnapshot) -> None:
        if state.previous is None:
            return
        before = {(t.pid, t.start_time_ns): t for t in state.previous.tasks.tasks}
        after = {(t.pid, t.start_time_ns): t for t in snap.tasks.tasks}
        now = time.time()
        events = [(now, "start", t.pid, t.ppid, t.name, t.exe, t.args, t.uid) for k, t in after.items() if k not in before]
        events += [(now, "stop", t.pid, t.ppid, t.name, t.exe, t.args, t.uid) for k, t in before.items() if k not in after]
        for sink in self.sinks:
            writer = getattr(sink, "write_process_events", None)
            if writer is not None:
                writer(state.target, events)
