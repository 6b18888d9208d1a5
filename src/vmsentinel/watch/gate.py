"""One sweep at a time in a worker, unless the one running is stuck.

A worker sweeps each guest in a thread of its own so that a hung hypervisor (a
read or a monitor that never answers) holds up only its own guest. But sweeping
is Python under one interpreter lock: eight sweeps at once take turns every few
milliseconds and each runs slower (about a fifth more CPU per sweep at 25 guests,
from the lock's hand-offs and the caches they thrash). So sweeps pass a gate,
first come first served, one at a time; a sweep that has held the gate longer
than ``stall`` seconds no longer counts (it is blocked or very slow), and the next
one goes in beside it. Baselines (a guest's first sweep, which reads all of its
kernel text) are bulk: they wait until no other sweep does, so fifty guests
starting at once do not make the guests already watched late; and one bulk sweep
at a time (for up to ``bulk_stall`` seconds): a first look holds tens of MB of
buffers for seconds, and eight of them side by side left a worker's heap at
their sum for good.

    gate = Gate(stall=0.25)
    outcome = gate.run(lambda: runtime.sweep(...))
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: seconds after which a sweep holding the gate stops keeping the others out
STALL = 0.25
#: seconds after which a bulk sweep (a baseline) stops keeping the other bulk sweeps out
BULK_STALL = 30.0


class Gate:
    def __init__(self, stall: float = STALL, bulk_stall: float = BULK_STALL) -> None:
        self.stall = stall
        self.bulk_stall = bulk_stall
        self._lock = threading.Lock()
        self._inside: dict[int, tuple[float, bool]] = {}  # ticket -> when it went in, whether bulk
        self._queue: deque[threading.Event] = deque()  # one per waiting sweep: only the head is woken
        self._bulk: deque[threading.Event] = deque()  # baselines: they go in when no other sweep waits
        self._tickets = 0

    def _blocking(self, now: float, bulk: bool) -> float | None:
        """Seconds until the sweeps inside stop keeping this one out (None: none does). A bulk sweep is
        kept out by another bulk sweep for ``bulk_stall`` seconds, by any other for ``stall``."""
        live = []
        for since, inside_bulk in self._inside.values():
            stall = self.bulk_stall if bulk and inside_bulk else self.stall
            if now - since < stall:
                live.append(stall - (now - since))
        return max(live) if live else None

    def _head(self) -> deque[threading.Event] | None:
        """The line whose first sweep goes in next."""
        return self._queue if self._queue else self._bulk if self._bulk else None

    def enter(self, bulk: bool = False) -> int:
        """Wait for this sweep's turn (``bulk``: behind every sweep that is not); the ticket to leave with."""
        me = threading.Event()
        line = self._bulk if bulk else self._queue
        with self._lock:
            line.append(me)
        while True:
            wait: float | None = None
            with self._lock:
                if self._head() is line and line[0] is me:
                    now = time.monotonic()
                    wait = self._blocking(now, bulk)
                    if wait is None:
                        line.popleft()
                        ticket = self._tickets
                        self._tickets += 1
                        self._inside[ticket] = (now, bulk)
                        self._wake_head()  # the next in line starts its own wait for a stall
                        return ticket
                me.clear()
            me.wait(timeout=wait)

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None:
            head[0].set()

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._inside.pop(ticket, None)
            self._wake_head()

    def run(self, job: Callable[[], T], bulk: bool = False) -> T:
        """``job()`` once through the gate."""
        ticket = self.enter(bulk)
        try:
            return job()
        finally:
            self.leave(ticket)
