"""The watcher: scheduling only. One asyncio task per guest, each on its own
interval, keeps one baseline and the previous snapshot per guest, runs the one
sweep pipeline (``pipeline.sweep_once``) and hands its events to the sinks:
new findings once while they last (again when they come back), responses,
process and module events, and its own sweeps and failures.

Reading a guest is CPU and memory work in Python, and a hypervisor that stops
answering can hold a read for its whole timeout, so each sweep runs in a thread
of its own: a slow or hung guest delays only itself. With ``workers=N`` the
guests live in N worker processes instead (:mod:`.workers`: the GIL no longer
caps a host's guests at one core; a worker that dies is replaced and its guests
opened again with their baselines). A guest that cannot be opened or read is
reported and retried with back-off. The first sweeps of the guests a watch
starts with are spread over one interval, and at most a few baselines are taken
at once. With ``peer_compare`` (the default) the guests are also compared with one
another (``detect/fleet.py``): each one's inventory comes with its first look (and
again when a full sweep sees it changed), and a guest unlike most of its peers is
raised as ``fleet_outlier`` and cleared when it no longer is. ``stop()`` (or
SIGINT/SIGTERM through the CLI) ends every loop after its current sweep, with
everything written.

    watcher = Watcher(["lab:web1", "lab:db1"], interval=1.0, sinks=[OcsfJsonl(p), SqliteStore(db), ConsoleSink(log)],
                      intervals={"lab:db1": 5.0}, workers=2)
    watcher.run(max_sweeps=10)        # or: await watcher.run_async()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vmsentinel.detect.finding import IMPAIR_DEFENSES, Finding, Severity
from vmsentinel.detect.fleet import DETECTOR as FLEET_OUTLIER
from vmsentinel.detect.fleet import FleetChange, FleetComparer
from vmsentinel.errors import VmSentinelError, WorkerLost
from vmsentinel.events import (
    BaselineTaken,
    Event,
    FindingCleared,
    FindingRaised,
    GuestAdded,
    GuestInventory,
    GuestRemoved,
    GuestUnreachable,
    GuestWatched,
    PolicyRejected,
    PolicyReloaded,
    ResponseDone,
    SweepDone,
    SweepMissed,
)
from vmsentinel.os import open_guest as open_any_guest
from vmsentinel.os.guest import Guest
from vmsentinel.pipeline.compiled import CompiledPolicy
from vmsentinel.pipeline.policy import Policy
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks import Sink
from vmsentinel.watch.runtime import GuestRuntime, RecordedBaselines, SweepOutcome

if TYPE_CHECKING:
    from vmsentinel.pipeline.loading import ActivePolicy
    from vmsentinel.sinks.baseline_record import BaselineRecord
    from vmsentinel.sinks.metrics import MetricsSink
    from vmsentinel.trust.allowlist import Allowlist
    from vmsentinel.watch.workers import WorkerPool

POLICY_POLL_SECONDS = 1.0
POLICY_SETTLE_SECONDS = 0.5
#: more sweep threads than this and the guests wait their turn (each thread holds one guest's sweep)
MAX_SWEEP_THREADS = 64


#: baselines taken at once, at most (each reads every text page of a kernel): more guests wait their turn
MAX_BASELINES_AT_ONCE = 2


@dataclass
class GuestState:
    """What the watcher knows of one guest: its schedule, what was reported, its counters. The guest
    itself (reader, baseline, previous snapshot) is a :class:`GuestRuntime`, here or in a worker."""

    target: str
    interval: float = 1.0
    #: a baseline was taken (or taken back): detectors run from the next sweep on
    baselined: bool = False
    #: seconds to wait before the first sweep (the first sweeps of many guests are spread over an interval)
    offset: float = 0.0
    #: shifts which sweeps are full: guests' full sweeps (the costly ones) are spread over the rounds
    full_phase: int = 0
    #: findings reported and still seen, by key; a key leaves when a full sweep no longer finds it
    reported: dict[str, Finding] = field(default_factory=dict)
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
    #: the guest went away for good (its domain stopped or migrated): its loop ends after this sweep
    ended: bool = False
    _wake: asyncio.Event | None = field(default=None, repr=False)


class TargetSource(Protocol):
    """Guests that come and go (every domain of a libvirt connection): the watcher starts watching a
    guest when it starts and stops when it stops, without touching the others."""

    def running(self) -> list[str]:
        """The TARGET strings of the guests running now."""

    def changes(self) -> AsyncIterator[tuple[str, str, str]]:
        """``(kind, target, detail)`` as it happens: kind ``started`` or ``stopped``."""

    def close(self) -> None: ...


class Watcher:
    def __init__(
        self,
        targets: list[str],
        interval: float = 1.0,
        sinks: list[Sink] | None = None,
        scan_every: int = 5,
        policy: Policy | None = None,
        intervals: dict[str, float] | None = None,
        open_guest: Callable[[str], Guest] = open_any_guest,
        allowlist: Allowlist | None = None,
        loader: Callable[[], ActivePolicy] | None = None,
        sources: list[TargetSource] | None = None,
        workers: int = 0,
        baseline_record: BaselineRecord | None = None,
        peer_compare: bool = True,
    ) -> None:
        policy = policy or Policy(interval=interval)
        self._per_guest = {**policy.intervals, **(intervals or {})}
        self.interval = interval
        self.states: list[GuestState] = []
        for target in targets:
            self._new_state(target)
        #: where guests that come and go are learned from (watched until the watch stops)
        self.sources = list(sources or [])
        self.sinks: list[Sink] = list(sinks or [])
        self.scan_every = scan_every
        self.open_guest = open_guest
        #: write Prometheus metrics here (the watcher adds and closes a MetricsSink for it)
        self.metrics_path: Path | None = None
        self._metrics: MetricsSink | None = None
        self.compiled = CompiledPolicy.compile(policy, allowlist)
        self.loader = loader
        #: files whose change triggers a reload (the CLI sets the bundle and its signature)
        self.watched_files: list[Path] = []
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._sink_lock = threading.Lock()  # sweeps of different guests finish in different threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        #: worker processes to sweep in (0: threads of this process, the guests' state in ``runtimes``)
        self.workers = workers
        self.pool: WorkerPool | None = None
        self.runtimes: dict[str, GuestRuntime] = {}
        #: baselines kept in the alert store across watches (None: in memory and the session folder only)
        self.recorded = RecordedBaselines(baseline_record) if baseline_record is not None else None
        self._session: Path | None = None
        self._baselines = threading.BoundedSemaphore(MAX_BASELINES_AT_ONCE)
        #: compare the guests' inventories here (``fleet_outlier``); off where a central service compares
        #: every host's guests instead
        self.peer_compare = peer_compare
        self.fleet = FleetComparer()
        self._fleet_lock = threading.Lock()
        for i, state in enumerate(self.states):  # spread the first sweeps over one interval
            state.offset = state.interval * i / len(self.states)

    def _new_state(self, target: str) -> GuestState:
        state = GuestState(
            target, self._per_guest.get(target, self.interval), log=logging.getLogger(f"vmsentinel.watch.{target}")
        )
        state.full_phase = len(self.states)  # full sweeps of many guests fall in different rounds, not all in one
        self.states.append(state)
        return state

    @property
    def policy(self) -> Policy:
        """The policy in force (the one the compiled rules were built from)."""
        return self.compiled.policy

    def emit(self, events: list[Event]) -> None:
        """Hand one batch of events to every sink, in order (safe from any thread)."""
        if not events:
            return
        with self._sink_lock:
            for sink in self.sinks:
                sink.handle(events)
            if self._metrics is not None:
                self._metrics.handle(events)

    def request_reload(self) -> None:
        """Load the policy again (SIGHUP); safe from signal handlers and other threads."""
        self._reload.set()

    def apply(self, active: ActivePolicy) -> None:
        """Run with a newly loaded (and verified) policy from the next sweep on."""
        self.compiled = CompiledPolicy.compile(active.policy, active.allowlist)
        if self.pool is not None:
            self.pool.set_policy(self.compiled)

    def _reload_policy(self) -> None:
        """Verify and apply the policy again; if it fails, the old one stays and an alert says why."""
        assert self.loader is not None
        try:
            active = self.loader()
            self.apply(active)
            active.remove()
            self.emit([PolicyReloaded(active.description)])
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
            self.emit([PolicyRejected(finding)])

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
        if self.metrics_path is not None and (self._metrics is None or self._metrics.path != self.metrics_path):
            from vmsentinel.sinks.metrics import MetricsSink

            self._metrics = MetricsSink(self.metrics_path)
        if self.workers > 0 and self.pool is None:
            self._start_pool()
        pool = ThreadPoolExecutor(max_workers=MAX_SWEEP_THREADS, thread_name_prefix="sweep")  # threads start as needed
        helpers = []
        if self.loader is not None:
            helpers.append(asyncio.create_task(self._watch_policy(self.watched_files, self._stamp(self.watched_files))))
        loops = {id(state): asyncio.create_task(self._watch(state, pool, max_sweeps)) for state in self.states if not state.ended}
        for source in self.sources:
            for target in source.running():
                if not any(s.target == target and not s.ended for s in self.states):
                    self.emit([GuestAdded(target, "running when the watch began")])
                    state = self._new_state(target)
                    loops[id(state)] = asyncio.create_task(self._watch(state, pool, max_sweeps))
            helpers.append(asyncio.create_task(self._follow(source, pool, max_sweeps, loops)))
        try:
            while True:
                await asyncio.gather(*loops.values())  # a guest added meanwhile adds a loop: look again
                finished = all(task.done() for task in loops.values())
                if finished and (not self.sources or self._stop.is_set() or max_sweeps is not None):
                    break  # with sources and no sweep limit, a watch with no guest waits for one to start
                if self.sources:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 0.5)
        finally:
            for task in helpers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            pool.shutdown(wait=True)  # a sweep in flight finishes and writes what it found
            if self._metrics is not None:
                with self._sink_lock:
                    self._metrics.flush()

    async def _follow(
        self, source: TargetSource, pool: ThreadPoolExecutor, max_sweeps: int | None, loops: dict[int, asyncio.Task[None]]
    ) -> None:
        """Start watching guests as they start, stop as they stop (the others carry on)."""
        async for kind, target, detail in source.changes():
            if self._stop.is_set():
                return
            live = [s for s in self.states if s.target == target and not s.ended]
            if kind == "started" and not live:
                self.emit([GuestAdded(target, detail)])
                state = self._new_state(target)
                loops[id(state)] = asyncio.create_task(self._watch(state, pool, max_sweeps))
            elif kind == "stopped":
                for state in live:
                    state.ended = True
                    if state._wake is not None:
                        state._wake.set()
                    self.emit([GuestRemoved(target, detail)])

    async def _watch(self, state: GuestState, pool: ThreadPoolExecutor, max_sweeps: int | None) -> None:
        assert self._loop is not None and self._wake is not None
        state._wake = asyncio.Event()
        stop_or_end = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(state._wake.wait())]
        last = None if max_sweeps is None else state.rounds + max_sweeps  # rounds count across runs
        if state.offset > 0 and state.rounds == 0:
            await asyncio.wait(stop_or_end, timeout=state.offset, return_when=asyncio.FIRST_COMPLETED)
        try:
            while not self._stop.is_set() and not state.ended and (last is None or state.rounds < last):
                started = self._loop.time()
                await self._loop.run_in_executor(pool, self._sweep, state)
                state.rounds += 1
                if state.ended or (last is not None and state.rounds >= last):
                    break
                took = self._loop.time() - started
                if took > state.interval:
                    overran = int(took // state.interval)  # the guest was not looked at when it was due
                    state.missed += overran
                    self.emit([SweepMissed(state.target, overran)])
                await asyncio.wait(stop_or_end, timeout=max(0.0, state.interval - took), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in stop_or_end:
                waiter.cancel()
            if state.ended:  # gone for good: let go of its memory (and its kept baseline) now
                await self._loop.run_in_executor(pool, self._forget, state.target)

    def _start_pool(self) -> None:
        import os
        import tempfile

        from vmsentinel.paths import state_dir
        from vmsentinel.watch.workers import WorkerPool

        for stale in state_dir().glob("watch-*-*"):  # left by a watch that was killed: its process is gone
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)
        self._session = Path(tempfile.mkdtemp(prefix=f"watch-{os.getpid()}-", dir=state_dir()))
        self.pool = WorkerPool(
            self.workers, self.open_guest, self._session, on_restart=lambda e: self.emit([e]), recorded=self.recorded
        )
        self.pool.start(self.compiled)

    def view(self, target: str, name: str) -> Future[dict[str, object]]:
        """A view of ``target``'s latest snapshot (``about``: the guest itself), wherever the guest lives.
        The answer is a future: a guest busy in a long sweep must not block the asker."""
        if self.pool is not None:
            return self.pool.view(target, name)
        future: Future[dict[str, object]] = Future()
        try:
            runtime = self.runtimes.get(target)
            future.set_result(
                runtime.view(name) if runtime is not None else {"records": [], "problems": [], "note": "not opened yet"}
            )
        except Exception as exc:
            future.set_exception(exc)
        return future

    def act(self, target: str, actions: list[str], key: str) -> list[ResponseRecord]:
        """Responses a person asked for (pause, resume, dump, cut_network), through the guest's own
        hypervisor control; recorded like the policy's, under ``key`` (blocks until done)."""
        records = self._carry_out(target, key, actions, Path(self.compiled.policy.dumps))
        self.emit([ResponseDone(r) for r in records])
        return records

    def _forget(self, target: str) -> None:
        if self.pool is not None:
            self.pool.drop(target)
        elif target in self.runtimes:
            self.runtimes.pop(target).forget()
        if any(s.target == target and not s.ended for s in self.states):
            return  # the guest came back meanwhile: it stays among its peers
        with self._fleet_lock:
            change = self.fleet.remove(target)
        self._emit_fleet(change, self.compiled.policy)

    def _compare_peers(self, inventories: list[GuestInventory], compiled: CompiledPolicy) -> FleetChange:
        """Compare the guests again with the inventories a sweep brought (``fleet_outlier``)."""
        change = FleetChange()
        if not self.peer_compare:
            return change
        with self._fleet_lock:
            if FLEET_OUTLIER not in compiled.enabled:  # disabled by a new policy: what it reported is over
                return self.fleet.clear() if self.fleet.peers else change
            for inventory in inventories:
                more = self.fleet.update(inventory)
                change.raised += more.raised
                change.cleared += more.cleared
        return change

    def _emit_fleet(self, change: FleetChange, policy: Policy) -> None:
        """Say what the comparison of the guests raised and cleared, and respond to what it raised as the
        policy says (the finding's guest may be another than the one just swept)."""
        events: list[Event] = [FindingCleared(f.target, f.key, f.detector, f.title) for f in change.cleared]
        events += [FindingRaised(f) for f in change.raised]
        for f in change.raised:
            for state in self.states:
                if state.target == f.target and not state.ended:
                    state.findings += 1
        self.emit(events)
        responses: list[Event] = [ResponseDone(r) for f in change.raised for r in self._respond_to(f, policy)]
        self.emit(responses)

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.close()
        self.runtimes.clear()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self._session is not None:
            shutil.rmtree(self._session, ignore_errors=True)
            self._session = None
        for source in self.sources:
            source.close()

    def _run_sweep(self, state: GuestState, compiled: CompiledPolicy, full: bool) -> SweepOutcome:
        """One sweep of ``state``'s guest, where the guest lives (blocks this thread until done)."""
        reported = set(state.reported)
        if self.pool is not None:
            return self.pool.sweep(state.target, state.interval, full, reported).result()
        return self._runtime(state.target).sweep(compiled, full, reported)

    def _runtime(self, target: str) -> GuestRuntime:
        """The guest's state in this process (no worker pool), made on first use."""
        if target not in self.runtimes:
            self.runtimes[target] = GuestRuntime(target, self.open_guest, self.recorded)
        return self.runtimes[target]

    def _sweep(self, state: GuestState) -> None:
        """One sweep of one guest and what follows from it (in a thread of the watcher's)."""
        now = time.monotonic()
        if now < state.next_try:
            state.missed += 1
            self.emit([SweepMissed(state.target)])
            return
        compiled = self.compiled  # one policy for the whole sweep, even if a reload swaps it meanwhile
        full = state.sweeps == 0 or (state.sweeps + state.full_phase) % self.scan_every == 0
        # a baseline reads every text page of a kernel: a few at a time (a hung one holds its turn only so long)
        turn = not state.baselined and self._baselines.acquire(timeout=max(1.0, 2 * state.interval))
        try:
            outcome = self._run_sweep(state, compiled, full)
        except WorkerLost:  # the pool has started another worker: the guest is opened again next round
            state.missed += 1
            self.emit([SweepMissed(state.target)])
            return
        finally:
            if turn:
                self._baselines.release()
        if outcome.opened is not None:
            self.emit([GuestWatched(state.target, outcome.opened, outcome.access)])
        if outcome.error is not None:
            state.failures += 1
            delay = min(60.0, state.interval * 2 ** min(state.failures, 6))
            state.next_try = now + delay
            self.emit([GuestUnreachable(state.target, outcome.error, delay)])
            return
        state.sweeps += 1
        state.sweep_seconds.append(outcome.seconds)
        del state.sweep_seconds[:-1000]
        state.problems += outcome.problems
        for name, seconds in outcome.timings.items():
            state.detector_seconds[name] = state.detector_seconds.get(name, 0.0) + seconds
        done = SweepDone(state.target, outcome.seconds, outcome.full, len(outcome.new), outcome.problems, outcome.timings)
        if outcome.took_baseline:  # a first look: what it found is reported like any sweep's findings
            self.emit([BaselineTaken(state.target, outcome.seconds)])
        state.baselined = True  # taken now, or taken back after the guest was opened again
        # never report one finding twice, whatever the worker knew (one restarted knows nothing)
        events: list[Event] = [
            e for e in outcome.events if not (isinstance(e, FindingRaised) and e.finding.key in state.reported)
        ]
        if outcome.full:  # what a full sweep no longer finds is over: if it comes back, it is reported again
            for key in [k for k in state.reported if k not in outcome.found]:
                gone = state.reported.pop(key)
                events.append(FindingCleared(state.target, key, gone.detector, gone.title))
        new = [f for f in outcome.new if f.key not in state.reported]
        state.reported.update((f.key, f) for f in new)
        state.findings += len(new)
        self.emit(events)  # the findings are on disk before any response runs
        responses: list[Event] = [ResponseDone(r) for f in new for r in self._respond(state, f, compiled.policy)]
        self.emit(responses)
        inventories = [e for e in outcome.events if isinstance(e, GuestInventory)]
        if inventories or (self.peer_compare and self.fleet.peers and FLEET_OUTLIER not in compiled.enabled):
            self._emit_fleet(self._compare_peers(inventories, compiled), compiled.policy)
        self.emit([done])
        state.failures = 0

    def _respond(self, state: GuestState, finding: Finding, policy: Policy) -> list[ResponseRecord]:
        return self._carry_out(state.target, finding, policy.actions_for(finding), Path(policy.dumps))

    def _respond_to(self, finding: Finding, policy: Policy) -> list[ResponseRecord]:
        """The policy's actions for a finding about any guest of the watch (the fleet's are about one
        guest, found while sweeping another)."""
        return self._carry_out(finding.target, finding, policy.actions_for(finding), Path(policy.dumps))

    def _carry_out(self, target: str, finding: Finding | str, actions: list[str], dumps: Path) -> list[ResponseRecord]:
        """``actions`` for a finding (or, asked by a person, a key) where the guest lives; a worker lost
        meanwhile, or a request that failed in it, makes each one a failure on record, not an exception."""
        if self.pool is not None:
            try:
                return self.pool.respond(target, finding, actions, dumps).result()
            except (WorkerLost, RuntimeError) as exc:  # RuntimeError: the worker answered "failed"
                key = finding if isinstance(finding, str) else finding.key
                return [ResponseRecord(time.time(), target, key, a, False, str(exc)) for a in actions]
        return self._runtime(target).respond(finding, actions, dumps)
