"""The watcher: one asyncio task per guest, each on its own interval, keeps one
baseline and the previous snapshot per guest, confirms findings by a second
read, and sends new findings (once while they last) and process events to the
sinks.

Reading a guest is CPU and memory work in Python, and a hypervisor that stops
answering can hold a read for its whole timeout, so each sweep runs in a worker
thread of its own: a slow or hung guest delays only itself. A guest that cannot
be opened or read is reported and retried with back-off. ``stop()`` (or
SIGINT/SIGTERM through the CLI) ends every loop after its current sweep, with
everything written.

    watcher = Watcher(["lab:web1", "lab:db1"], interval=1.0, sinks=[OcsfJsonl(p), SqliteStore(db)],
                      intervals={"lab:db1": 5.0})
    watcher.run(max_sweeps=10)        # or: await watcher.run_async()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

#: more sweep threads than this and the guests wait their turn (each thread holds one guest's sweep)
MAX_SWEEP_THREADS = 64


class Sink(Protocol):
    def write(self, findings: list[Finding]) -> None: ...


@dataclass
class GuestState:
    target: str
    interval: float = 1.0
    guest: LinuxGuest | None = None
    baseline: Baseline | None = None
    previous: GuestSnapshot | None = None
    #: keys of findings reported and still seen; a key leaves when a full sweep no longer finds it
    reported: set[str] = field(default_factory=set)
    findings: int = 0
    failures: int = 0
    next_try: float = 0.0
    rounds: int = 0
    sweeps: int = 0
    sweep_seconds: list[float] = field(default_factory=list)
    detector_seconds: dict[str, float] = field(default_factory=dict)
    problems: int = 0
    missed: int = 0  # sweeps skipped while the guest was unreachable, or because the last one overran
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
        intervals: dict[str, float] | None = None,
        open_guest: Callable[[str], LinuxGuest] = LinuxGuest.open,
    ) -> None:
        self.policy = policy or Policy(interval=interval)
        per_guest = {**self.policy.intervals, **(intervals or {})}
        self.states = [GuestState(t, per_guest.get(t, interval), log=logging.getLogger(f"vmsentinel.watch.{t}")) for t in targets]
        self.interval = interval
        self.sinks = sinks or []
        self.on_event = on_event or (lambda _target, _msg: None)
        self.scan_every = scan_every
        self.open_guest = open_guest
        self.metrics_path: Path | None = None
        self.extra = [SigmaRules.load(list(self.policy.sigma_rules)).detector()] if self.policy.sigma_rules else []
        self.yara = YaraRules.load(list(self.policy.yara_rules)) if self.policy.yara_rules else None
        if self.yara is not None:
            self.extra.append(self.yara.detector())
        self._stop = threading.Event()
        self._sink_lock = threading.Lock()  # sweeps of different guests finish in different threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def stop(self) -> None:
        """End every guest's loop after its current sweep (safe from signal handlers and other threads)."""
        self._stop.set()
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have finished already
                self._loop.call_soon_threadsafe(self._wake.set)

    def run(self, max_sweeps: int | None = None) -> None:
        """Watch until stopped, or until every guest had ``max_sweeps`` more rounds."""
        asyncio.run(self.run_async(max_sweeps))

    async def run_async(self, max_sweeps: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._stop.is_set():
            self._wake.set()
        pool = ThreadPoolExecutor(max_workers=min(MAX_SWEEP_THREADS, max(1, len(self.states))), thread_name_prefix="sweep")
        try:
            await asyncio.gather(*(self._watch(state, pool, max_sweeps) for state in self.states))
        finally:
            pool.shutdown(wait=True)  # a sweep in flight finishes and writes what it found
            self._write_metrics()

    async def _watch(self, state: GuestState, pool: ThreadPoolExecutor, max_sweeps: int | None) -> None:
        assert self._loop is not None and self._wake is not None
        last = None if max_sweeps is None else state.rounds + max_sweeps  # rounds count across runs
        while not self._stop.is_set() and (last is None or state.rounds < last):
            started = self._loop.time()
            await self._loop.run_in_executor(pool, self._sweep, state)
            state.rounds += 1
            self._write_metrics()
            if last is not None and state.rounds >= last:
                break
            took = self._loop.time() - started
            if took > state.interval:
                state.missed += int(took // state.interval)  # the guest was not looked at when it was due
            with contextlib.suppress(TimeoutError):  # the interval passed without a stop
                await asyncio.wait_for(self._wake.wait(), max(0.0, state.interval - took))

    def _write_metrics(self) -> None:
        if self.metrics_path is None:
            return
        with self._sink_lock:
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text(self.metrics())
            tmp.replace(self.metrics_path)

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
            *(f'vmsentinel_findings_total{{target="{s.target}"}} {s.findings}' for s in self.states),
        ]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        for state in self.states:
            if state.guest is not None:
                state.guest.close()
                state.guest = None

    def _sweep(self, state: GuestState) -> None:
        """One sweep of one guest (in a worker thread)."""
        now = time.monotonic()
        if now < state.next_try:
            state.missed += 1
            return
        try:
            if state.guest is None:
                state.guest = self.open_guest(state.target)
                if state.baseline is not None:
                    state.baseline.rebind(state.guest)
                self.on_event(state.target, f"watching {state.guest.resolved.profile.identity.release}")
            guest = state.guest
            scan = state.sweeps % self.scan_every == 0
            snap = guest.snapshot(with_code=True, scan=scan, yara=self.yara, since=state.previous)
            state.sweeps += 1
            state.sweep_seconds.append(snap.seconds)
            del state.sweep_seconds[:-1000]
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
                again = guest.snapshot(with_code=True, scan=scan, yara=self.yara, since=state.previous)
                fresh = confirm(fresh, run_detectors(state.target, again, state.previous, state.baseline, enabled, self.extra))
            with self._sink_lock:
                for sink in self.sinks:
                    sink.write(fresh)
            if snap.full:  # what a full sweep no longer finds is over: if it comes back, it is reported again
                state.reported &= {f.key for f in found}
            state.reported.update(f.key for f in fresh)
            state.findings += len(fresh)
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
            delay = min(60.0, state.interval * 2 ** min(state.failures, 6))
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
        with self._sink_lock:
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
        with self._sink_lock:
            for sink in self.sinks:
                writer = getattr(sink, "write_process_events", None)
                if writer is not None:
                    writer(state.target, events)
