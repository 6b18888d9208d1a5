"""The body of one worker process of a watch: it owns the guests the pool gave it
(their readers, profiles, baselines, previous snapshots) and sweeps one when the
parent asks, answering with plain data over its pipe. Sweeps of different guests
run in threads of their own, so a hung hypervisor delays only its guest.

Messages from the parent, in order (the pipe keeps it)::

    ("policy", compiled)                               run with this policy from now on
    ("sweep", rid, target, full, reported)             -> ("done", rid, SweepOutcome)
    ("respond", rid, target, finding, actions, dumps)  -> ("done", rid, [ResponseRecord])
    ("view", rid, target, name)                        -> ("done", rid, view of the latest snapshot)
    ("drop", target, forget)                           close the guest (forget: its baseline too)
    ("stop",)                                          close every guest and exit

A request that raises answers ``("failed", rid, text)``. The parent going away
(its end of the pipe closes) ends the worker too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmsentinel.watch import heap
from vmsentinel.watch.gate import Gate
from vmsentinel.watch.page_store import PageStore
from vmsentinel.watch.runtime import BaselineFiles, GuestRuntime, Keeper, RecordedBaselines

if TYPE_CHECKING:
    from vmsentinel.os.guest import Guest
    from vmsentinel.pipeline.compiled import CompiledPolicy

#: sweeps one worker has in hand at once (each guest has at most one in flight); they pass the gate one at
#: a time, but a guest whose sweep hangs holds only its own thread
MAX_THREADS = 8
#: the request id of the worker's first message: it has started and is ready for work
READY = -1


def serve(conn: Connection, open_guest: Callable[[str], Guest], session: Path, recorded: RecordedBaselines | None = None) -> None:
    """Run until told to stop or until the parent goes away. Baselines are kept in ``recorded`` (the alert
    store) when given, else in the session folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    heap.tune()  # before any sweeping thread has an arena
    heap.collect_on_a_timer()
    baselines: Keeper = recorded or BaselineFiles(session / "baselines", PageStore(session / "pages.sqlite"))
    runtimes: dict[str, GuestRuntime] = {}
    compiled: CompiledPolicy | None = None
    send_lock = threading.Lock()
    threads = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="sweep")
    gate = Gate()  # the threads keep a hung guest from holding up the others; the gate keeps them from racing
    from vmsentinel.pipeline import sweep  # noqa: F401 - what every sweep needs, loaded before saying ready

    conn.send(("ready", READY, None))

    def answer(message: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):  # the parent is gone: nobody to tell
            conn.send(message)

    def run(rid: int, job: Callable[[], object]) -> None:
        try:
            answer(("done", rid, job()))
        except BaseException as exc:  # a bug in a request must not take the worker's other guests down
            answer(("failed", rid, f"{type(exc).__name__}: {exc}"))

    def runtime(target: str) -> GuestRuntime:
        if target not in runtimes:
            runtimes[target] = GuestRuntime(target, open_guest, baselines)
        return runtimes[target]

    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent died: so do we
            kind = message[0]
            if kind == "policy":
                compiled = message[1]
            elif kind == "sweep":
                _, rid, target, full, reported = message
                assert compiled is not None, "a sweep before any policy"
                guest = runtime(target)
                job = partial(guest.sweep, compiled, full, reported)
                threads.submit(run, rid, partial(gate.run, job, bulk=guest.baseline is None))
            elif kind == "respond":
                _, rid, target, finding, actions, dumps = message
                threads.submit(run, rid, partial(runtime(target).respond, finding, actions, dumps))
            elif kind == "view":
                _, rid, target, name = message
                threads.submit(run, rid, partial(runtime(target).view, name))
            elif kind == "drop":
                _, target, forget = message
                dropped = runtimes.pop(target, None)
                if dropped is not None:
                    threads.submit(dropped.forget if forget else dropped.close)
                elif forget:
                    baselines.forget(target)
            elif kind == "stop":
                return
    finally:
        threads.shutdown(wait=True)
        for guest in runtimes.values():
            with contextlib.suppress(Exception):
                guest.close()
        conn.close()
