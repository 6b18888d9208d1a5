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
from typing import TYPE_CHECKING, Protocol

from vmsentinel.detect.engine import Baseline, confirm, run_detectors
from vmsentinel.detect.finding import IMPAIR_DEFENSES, Finding, Severity
from vmsentinel.detect.sigma_rules import SigmaRules
from vmsentinel.detect.yara_rules import YaraRules
from vmsentinel.errors import VmSentinelError
from vmsentinel.os.linux.guest import GuestSnapshot, LinuxGuest
from vmsentinel.pipeline.policy import Policy
from vmsentinel.respond.actions import respond

if TYPE_CHECKING:
    from vmsentinel.detect.engine import Detector
    from vmsentinel.pipeline.loading import ActivePolicy
    from vmsentinel.trust.allowlist import Allowlist

POLICY_POLL_SECONDS = 1.0
POLICY_SETTLE_SECONDS = 0.5
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


@dataclass(frozen=True)
class Rules:
    """A policy made ready to run: its rule sets compiled, its allowlist's detector built."""

    policy: Policy
    extra: list[Detector]
    yara: YaraRules | None
    page_hasher: Callable[[bytes], str] | None

    @classmethod
    def build(cls, policy: Policy, allowlist: Allowlist | None = None) -> Rules:
        extra = [SigmaRules.load(list(policy.sigma_rules)).detector()] if policy.sigma_rules else []
        yara = YaraRules.load(list(policy.yara_rules)) if policy.yara_rules else None
        if yara is not None:
            extra.append(yara.detector())
        hasher = None
        if allowlist is not None:
            from vmsentinel.detect.allowlist_check import allowlist_detector
            from vmsentinel.trust.allowlist import page_hash

            extra.append(allowlist_detector(allowlist))
            hasher = page_hash
        return cls(policy, extra, yara, hasher)

    def snapshot(self, guest: LinuxGuest, scan: bool, since: GuestSnapshot | None) -> GuestSnapshot:
        return guest.snapshot(with_code=True, scan=scan, yara=self.yara, since=since, page_hasher=self.page_hasher)


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
        allowlist: Allowlist | None = None,
        loader: Callable[[], ActivePolicy] | None = None,
    ) -> None:
        policy = policy or Policy(interval=interval)
        per_guest = {**policy.intervals, **(intervals or {})}
        self.states = [GuestState(t, per_guest.get(t, interval), log=logging.getLogger(f"vmsentinel.watch.{t}")) for t in targets]
        self.interval = interval
        self.sinks = sinks or []
        self.on_event = on_event or (lambda _target, _msg: None)
        self.scan_every = scan_every
        self.open_guest = open_guest
        self.metrics_path: Path | None = None
        self.rules = Rules.build(policy, allowlist)
        self.loader = loader
        #: files whose change triggers a reload (the CLI sets the bundle and its signature)
        self.watched_files: list[Path] = []
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._sink_lock = threading.Lock()  # sweeps of different guests finish in different threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    @property
    def policy(self) -> Policy:
        """The policy in force (the one the current rules were built from)."""
        return self.rules.policy

    def request_reload(self) -> None:
        """Load the policy again (SIGHUP); safe from signal handlers and other threads."""
        self._reload.set()

    def apply(self, active: ActivePolicy) -> None:
        """Run with a newly loaded (and verified) policy from the next sweep on."""
        self.rules = Rules.build(active.policy, active.allowlist)

    def _reload_policy(self) -> None:
        """Verify and apply the policy again; if it fails, the old one stays and an alert says why."""
        assert self.loader is not None
        try:
            active = self.loader()
            self.apply(active)
            active.remove()
            self.on_event("sentinel", f"policy reloaded: {active.description}")
        except Exception as exc:  # whatever is wrong with the new policy, the sentinel keeps watching
            reason = str(exc) if isinstance(exc, VmSentinelError) else f"{type(exc).__name__}: {exc}"
            finding = Finding(
                "policy_rejected",
                f"a new policy was refused; the previous one stays active: {reason}",
                Severity.HIGH,
                IMPAIR_DEFENSES,
                "sentinel",
                {"reason": reason},
            )
            with self._sink_lock:
                for sink in self.sinks:
                    sink.write([finding])
            self.on_event("sentinel", f"FINDING {finding.severity.name}: {finding.title}")

    @staticmethod
    def _stamp(watched: list[Path]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for p in watched:
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return out

    async def _watch_policy(self, watched: list[Path], seen: list[tuple[int, int] | None]) -> None:
        """Reload on SIGHUP or when a watched file (the bundle, its signature) changes from ``seen``."""
        assert self._loop is not None and self._wake is not None

        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLICY_POLL_SECONDS)
            if self._stop.is_set():
                return
            now = self._stamp(watched)
            if self._reload.is_set() or now != seen:
                if now != seen:  # let a writer finish (bundle, then signature) before reading
                    await asyncio.sleep(POLICY_SETTLE_SECONDS)
                    now = self._stamp(watched)
                self._reload.clear()
                seen = now
                await self._loop.run_in_executor(None, self._reload_policy)

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
        policy_task = None
        if self.loader is not None:
            policy_task = asyncio.create_task(self._watch_policy(self.watched_files, self._stamp(self.watched_files)))
        try:
            await asyncio.gather(*(self._watch(state, pool, max_sweeps) for state in self.states))
        finally:
            if policy_task is not None:
                policy_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await policy_task
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
            rules = self.rules  # one policy for the whole sweep, even if a reload swaps it meanwhile
            scan = state.sweeps % self.scan_every == 0
            snap = rules.snapshot(guest, scan, state.previous)
            state.sweeps += 1
            state.sweep_seconds.append(snap.seconds)
            del state.sweep_seconds[:-1000]
            state.problems += len(snap.tasks.problems) + len(snap.modules.problems)
            if state.baseline is None:
                state.baseline = Baseline.take(guest, snap)
                state.previous = snap
                self.on_event(state.target, f"baseline taken in {snap.seconds * 1000:.1f} ms")
                return
            enabled = rules.policy.detectors
            timings = state.detector_seconds
            found = run_detectors(state.target, snap, state.previous, state.baseline, enabled, rules.extra, timings)
            fresh = [f for f in found if f.key not in state.reported]
            if fresh:
                again = rules.snapshot(guest, scan, state.previous)
                fresh = confirm(fresh, run_detectors(state.target, again, state.previous, state.baseline, enabled, rules.extra))
            with self._sink_lock:
                for sink in self.sinks:
                    sink.write(fresh)
            if snap.full:  # what a full sweep no longer finds is over: if it comes back, it is reported again
                state.reported &= {f.key for f in found}
            state.reported.update(f.key for f in fresh)
            state.findings += len(fresh)
            for f in fresh:
                self.on_event(state.target, f"FINDING {f.severity.name}: {f.title}")
                self._respond(state, f, rules.policy)
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

    def _respond(self, state: GuestState, finding: Finding, policy: Policy) -> None:
        assert state.guest is not None
        actions = policy.actions_for(finding)
        records = respond(state.target, state.guest.target.control, finding, actions, Path(policy.dumps))
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
