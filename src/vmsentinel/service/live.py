"""The service's view of the watch as it runs: a sink that fans events out to every connected
browser (server-sent events) and keeps what the overview shows (each guest's health, recent sweep
times, what the policy did). Sinks are called from the watcher's threads; subscribers live on the
web server's event loop, so events cross over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmsentinel.events import (
    BaselineTaken,
    CodeTracking,
    Event,
    FindingCleared,
    FindingRaised,
    GuestAdded,
    GuestRemoved,
    GuestUnreachable,
    GuestWatched,
    ModuleLoaded,
    ModuleUnloaded,
    PolicyRejected,
    PolicyReloaded,
    ProcessStarted,
    ProcessStopped,
    ResponseDone,
    SweepDone,
    SweepMissed,
    WorkerRestarted,
)

#: sweep times kept per guest for the charts
SWEEP_HISTORY = 300
#: events a slow browser may fall behind before it is dropped (it reconnects and reloads)
QUEUE_LIMIT = 1000


@dataclass
class GuestHealth:
    target: str
    release: str | None = None
    access: str | None = None
    state: str = "starting"  # starting, baselining, watching, unreachable, removed
    last_sweep: float | None = None
    sweeps: int = 0
    missed: int = 0
    problems: int = 0
    findings: int = 0
    last_error: str | None = None
    incremental: bool | None = None
    tracking: str | None = None
    #: (wall time, seconds) of recent sweeps
    times: collections.deque[tuple[float, float]] = field(default_factory=lambda: collections.deque(maxlen=SWEEP_HISTORY))

    def to_json(self) -> dict[str, Any]:
        recent = sorted(s for _, s in self.times)
        return {
            "target": self.target,
            "release": self.release,
            "access": self.access,
            "state": self.state,
            "last_sweep": self.last_sweep,
            "last_sweep_age": None if self.last_sweep is None else round(time.time() - self.last_sweep, 3),
            "sweeps": self.sweeps,
            "missed": self.missed,
            "problems": self.problems,
            "findings": self.findings,
            "last_error": self.last_error,
            "code_tracking": {"incremental": self.incremental, "reason": self.tracking},
            "median_sweep_ms": round(recent[len(recent) // 2] * 1000, 2) if recent else None,
        }


def event_json(event: Event) -> dict[str, Any]:
    """An event as the browser gets it: its kind and its fields (a finding's as stored)."""
    kind = type(event).__name__
    if isinstance(event, FindingRaised | PolicyRejected):
        return {"kind": kind, "target": event.target, "finding": event.finding.to_json()}
    if isinstance(event, ResponseDone):
        r = event.record
        return {"kind": kind, "target": r.target, "action": r.action, "ok": r.ok, "detail": r.detail, "time": r.time}
    from dataclasses import asdict

    return {"kind": kind, **json.loads(json.dumps(asdict(event), default=str))}


class LiveFeed:
    """A sink: guest health for the pages, and every event to the browsers connected now."""

    #: events the live page does not need (a process start is in the guest's views and the store)
    QUIET = (SweepDone, ProcessStarted, ProcessStopped)

    def __init__(self, host: str = "", fleet: bool = False) -> None:
        #: this host's id; a fleet's central feed names guests HOST/GUEST and takes the host from there
        self.host = host
        self.fleet = fleet
        self.lock = threading.Lock()
        self.guests: dict[str, GuestHealth] = {}
        self.policy_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any] | None]]] = set()
        self.started = time.time()
        #: when the policy in force was loaded by a reload, and what it is (None: the one the service started with)
        self.policy_loaded: tuple[float, str] | None = None
        #: the stored id of a finding (key, target), so a browser can link to it; set by the service
        self.locate: Callable[[str, str], int | None] | None = None

    def guest(self, target: str) -> GuestHealth:
        with self.lock:
            if target not in self.guests:
                self.guests[target] = GuestHealth(target)
            return self.guests[target]

    def handle(self, events: Sequence[Event]) -> None:
        out = []
        for event in events:
            self._account(event)
            if isinstance(event, self.QUIET) and not (isinstance(event, SweepDone) and event.findings):
                continue
            data = event_json(event)
            data.setdefault("time", time.time())
            data["host"] = event.target.partition("/")[0] if self.fleet else self.host
            if isinstance(event, FindingRaised) and self.locate is not None:
                data["id"] = self.locate(event.finding.key, event.target)  # the store wrote it before this sink ran
            out.append(data)
        if not out:
            return
        with self.lock:
            self.recent.extend(out)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            for data in out:
                with contextlib.suppress(RuntimeError):  # that loop has closed: the subscriber is gone
                    loop.call_soon_threadsafe(self._offer, queue, data)

    @staticmethod
    def _offer(queue: asyncio.Queue[dict[str, Any] | None], data: dict[str, Any]) -> None:
        if queue.qsize() >= QUEUE_LIMIT:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # too far behind: the stream ends, the page reconnects
            return
        queue.put_nowait(data)

    def _account(self, event: Event) -> None:
        now = time.time()
        match event:
            case GuestAdded() | GuestWatched() | BaselineTaken():
                g = self.guest(event.target)
                if isinstance(event, GuestWatched):
                    g.release, g.access, g.state, g.last_error = event.release, event.access or None, "baselining", None
                elif isinstance(event, BaselineTaken):
                    g.state = "watching"
            case SweepDone():
                g = self.guest(event.target)
                g.sweeps += 1
                g.last_sweep = now
                g.problems += event.problems
                g.times.append((now, event.seconds))
                if g.state in ("starting", "unreachable", "baselining"):
                    g.state = "watching"
            case SweepMissed(count=count):
                self.guest(event.target).missed += count
            case GuestUnreachable(reason=reason):
                g = self.guest(event.target)
                g.state, g.last_error = "unreachable", reason
            case GuestRemoved(reason=reason):
                g = self.guest(event.target)
                g.state, g.last_error = "removed", reason
            case FindingRaised():
                self.guest(event.target).findings += 1
            case CodeTracking(incremental=incremental, reason=reason):
                g = self.guest(event.target)
                g.incremental, g.tracking = incremental, reason
            case PolicyReloaded(description=description):
                self.policy_log.appendleft({"time": now, "event": "reloaded", "detail": description})
                self.policy_loaded = (now, description)
            case PolicyRejected(finding=finding):
                self.policy_log.appendleft({"time": now, "event": "rejected", "detail": finding.title})
            case ResponseDone(record=r) if r.ok and r.action in ("pause", "resume"):
                self.guest(r.target).state = "paused" if r.action == "pause" else "watching"
            case FindingCleared() | ModuleLoaded() | ModuleUnloaded() | ResponseDone() | WorkerRestarted():
                pass
            case _:
                pass

    def close(self) -> None:
        """Every browser's stream ends (the service is stopping)."""
        with self.lock:
            subscribers, self._subscribers = list(self._subscribers), set()
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, None)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of events from now on, for the caller's event loop (pair with :meth:`unsubscribe`)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        with self.lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        with self.lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}
