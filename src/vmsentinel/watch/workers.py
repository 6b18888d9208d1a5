"""Worker processes for a watch: sweeping is CPU work in Python, so one process
can use one core at most (the GIL); a host's guests are spread over a pool of
processes, by default one per core.

Each guest belongs to one worker, which keeps its reader, profile, baseline and
previous snapshot (:mod:`.worker_main`); the parent keeps the schedule, what was
reported, and the sinks. A guest goes to the worker with the least load, load
being the CPU its guests' sweeps cost per second (measured, not guessed), and
every little while the busiest worker hands one guest to the idlest when that
evens them out. A worker that dies is started again at once: its guests are
opened again there on their next sweep, each with the baseline it had (kept in
the session folder), and nothing already reported is reported twice (the
parent holds that).

    pool = WorkerPool(2, open_guest, session, on_restart=print)
    pool.start(compiled)
    outcome = pool.sweep("lab:web1", 1.0, full=True, reported=set()).result()
    pool.close()
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmsentinel.errors import WorkerLost
from vmsentinel.events import WorkerRestarted
from vmsentinel.watch.runtime import RecordedBaselines, SweepOutcome

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from vmsentinel.detect.finding import Finding
    from vmsentinel.os.guest import Guest
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.respond.actions import ResponseRecord

#: look at the balance this often (seconds)
REBALANCE_EVERY = 10.0
#: move a guest only when the busiest worker's load exceeds the idlest's by this much (CPU seconds per second)
REBALANCE_MARGIN = 0.05
#: how long the pool waits at start for its workers to be ready (they go on starting after that)
READY_TIMEOUT = 30.0
#: a new measurement counts this much in a guest's cost (an exponential moving average)
COST_WEIGHT = 0.3


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    pending: dict[int, Future[Any]] = field(default_factory=dict)
    guests: set[str] = field(default_factory=set)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    #: this worker was stopped on purpose (no restart)
    retired: bool = False
    #: its pipe closed: requests to it fail at once (its successor takes them)
    dead: bool = False
    #: set when the process has started and loaded what a sweep needs
    ready: threading.Event = field(default_factory=threading.Event)


def _ending(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class WorkerPool:
    def __init__(
        self,
        count: int,
        open_guest: Callable[[str], Guest],
        session: Path,
        on_restart: Callable[[WorkerRestarted], None] | None = None,
        recorded: RecordedBaselines | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.count = count
        self.open_guest = open_guest
        self.session = session
        self.on_restart = on_restart
        #: baselines kept in the alert store (else in the session folder, for this watch only)
        self.recorded = recorded
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._workers: list[_Worker] = []
        self._lock = threading.RLock()
        self._ids = itertools.count()
        self._policy: CompiledPolicy | None = None
        #: guest -> its worker's index
        self.placement: dict[str, int] = {}
        #: guest -> CPU seconds its sweeps cost per second of watch (an average)
        self.cost: dict[str, float] = {}
        self._rebalanced = time.monotonic()
        self._closed = False
        self.restarts = 0

    # -- the processes ----------------------------------------------------------------------------

    def start(self, compiled: CompiledPolicy) -> None:
        from vmsentinel.watch.page_store import PageStore

        self._policy = compiled
        self.session.mkdir(parents=True, exist_ok=True)
        PageStore(self.session / "pages.sqlite")  # made here, once: the workers only open it
        with self._lock:
            for index in range(self.count):
                self._workers.append(self._spawn(index))
        deadline = time.monotonic() + READY_TIMEOUT
        for worker in self._workers:  # started in parallel: the first sweeps are not slowed by imports
            worker.ready.wait(max(0.0, deadline - time.monotonic()))

    def _spawn(self, index: int) -> _Worker:
        from vmsentinel.watch.worker_main import serve

        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve,
            args=(theirs, self.open_guest, self.session, self.recorded),
            name=f"vmsentinel-worker-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        worker = _Worker(index, process, ours)
        if self._policy is not None:
            self._send(worker, ("policy", self._policy))
        threading.Thread(target=self._read, args=(worker,), name=f"worker-{index}-replies", daemon=True).start()
        return worker

    def _send(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        with worker.send_lock:
            worker.conn.send(message)

    def _read(self, worker: _Worker) -> None:
        """Replies of one worker, until its pipe closes (it died, or was stopped)."""
        while True:
            try:
                kind, rid, value = worker.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                worker.ready.set()
                continue
            with self._lock:
                future = worker.pending.pop(rid, None)
            if future is None:
                continue
            if kind == "done":
                future.set_result(value)
            else:
                future.set_exception(RuntimeError(f"worker {worker.index}: {value}"))
        self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        """A worker's pipe closed: fail what it had in flight and, unless we stopped it, start another."""
        if not worker.retired:  # one stopped on purpose is joined by close(), in one thread only
            worker.process.join(timeout=5)
        how = _ending(worker.process)
        with self._lock:
            worker.dead = True
            pending, worker.pending = worker.pending, {}
            restart = not worker.retired and not self._closed
            if restart:
                fresh = self._spawn(worker.index)
                fresh.guests = worker.guests
                self._workers[worker.index] = fresh
                self.restarts += 1
        for future in pending.values():
            future.set_exception(WorkerLost(f"worker {worker.index} {how} during this request"))
        with contextlib.suppress(OSError):
            worker.conn.close()
        if restart and self.on_restart is not None:
            self.on_restart(WorkerRestarted(worker.index, how, fresh.process.pid or 0, tuple(sorted(fresh.guests))))

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid or 0 for w in self._workers]

    def close(self) -> None:
        """Stop every worker (each closes its guests first)."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            for worker in workers:
                worker.retired = True
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                self._send(worker, ("stop",))
        for worker in workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)

    # -- requests ----------------------------------------------------------------------------------

    def set_policy(self, compiled: CompiledPolicy) -> None:
        """Every worker sweeps with ``compiled`` from its next sweep on."""
        with self._lock:
            self._policy = compiled
            workers = list(self._workers)
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):  # a dead one gets it when it is started again
                self._send(worker, ("policy", compiled))

    def _request(self, worker: _Worker, message: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        rid = next(self._ids)
        with self._lock:
            if worker.dead:
                future.set_exception(WorkerLost(f"worker {worker.index} died; it is being started again"))
                return future
            worker.pending[rid] = future
        try:
            self._send(worker, (message[0], rid, *message[1:]))
        except (OSError, ValueError) as exc:  # it is dying: the reader fails the future, or we do
            with self._lock:
                worker.pending.pop(rid, None)
            if not future.done():
                future.set_exception(WorkerLost(f"worker {worker.index} cannot be reached: {exc}"))
        return future

    def sweep(self, target: str, interval: float, full: bool, reported: Collection[str]) -> Future[SweepOutcome]:
        """Sweep ``target`` in its worker (placing it first if it has none)."""
        worker = self._worker_for(target)
        future = self._request(worker, ("sweep", target, full, set(reported)))
        future.add_done_callback(lambda f: self._measured(target, interval, f))
        return future

    def respond(self, target: str, finding: Finding | str, actions: list[str], dumps: Path) -> Future[list[ResponseRecord]]:
        return self._request(self._worker_for(target), ("respond", target, finding, actions, dumps))

    def view(self, target: str, name: str) -> Future[dict[str, object]]:
        """A view of ``target``'s latest snapshot, from the worker that holds it."""
        return self._request(self._worker_for(target), ("view", target, name))

    def drop(self, target: str) -> None:
        """``target`` left the watch: its worker closes it and forgets its baseline."""
        with self._lock:
            index = self.placement.pop(target, None)
            self.cost.pop(target, None)
            worker = self._workers[index] if index is not None else None
            if worker is not None:
                worker.guests.discard(target)
        if worker is not None:
            with contextlib.suppress(OSError, ValueError):
                self._send(worker, ("drop", target, True))

    # -- placement ---------------------------------------------------------------------------------

    def loads(self) -> list[float]:
        """Each worker's load: the CPU seconds per second its guests' sweeps cost."""
        with self._lock:
            known = list(self.cost.values())
            default = sum(known) / len(known) if known else 0.0
            return [sum(self.cost.get(g, default) for g in w.guests) for w in self._workers]

    def _worker_for(self, target: str) -> _Worker:
        with self._lock:
            index = self.placement.get(target)
            if index is None:
                loads = self.loads()
                index = min(range(len(loads)), key=lambda i: (loads[i], len(self._workers[i].guests)))
                self.placement[target] = index
                self._workers[index].guests.add(target)
            return self._workers[index]

    def _measured(self, target: str, interval: float, future: Future[SweepOutcome]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        outcome = future.result()
        per_second = outcome.cpu / max(interval, 1e-3)
        with self._lock:
            if target not in self.placement:
                return
            old = self.cost.get(target)
            self.cost[target] = per_second if old is None else old + COST_WEIGHT * (per_second - old)
        self._rebalance(target)

    def _rebalance(self, just_swept: str) -> None:
        """Move ``just_swept`` (between its sweeps, so nothing of it is in flight) from the busiest worker
        to the idlest when that narrows the gap; at most once every REBALANCE_EVERY seconds."""
        now = time.monotonic()
        with self._lock:
            if now - self._rebalanced < REBALANCE_EVERY or len(self._workers) < 2:
                return
            loads = self.loads()
            busiest = max(range(len(loads)), key=loads.__getitem__)
            idlest = min(range(len(loads)), key=loads.__getitem__)
            cost = self.cost.get(just_swept, 0.0)
            gap = loads[busiest] - loads[idlest]
            if self.placement.get(just_swept) != busiest or gap < REBALANCE_MARGIN or not 0 < cost < gap:
                return
            self._rebalanced = now
            old, new = self._workers[busiest], self._workers[idlest]
            old.guests.discard(just_swept)
            new.guests.add(just_swept)
            self.placement[just_swept] = idlest
        with contextlib.suppress(OSError, ValueError):
            self._send(old, ("drop", just_swept, False))  # closed there; opened here with the baseline it had
