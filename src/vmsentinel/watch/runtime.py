"""One watched guest's working state, wherever it lives: the opened guest (its
reader, profile and caches), its baseline and its previous snapshot. The
watcher keeps one per guest in its own process (``--workers 0``) or a worker
process keeps those of the guests it was given; either way a sweep comes back
as one :class:`SweepOutcome`, plain data that crosses a process boundary.

A worker that dies loses its runtimes, not the guests' baselines: each baseline
is kept as it is taken (hashes and the places the kernel patches itself; the
page bytes that explain a change go to a shared
:class:`~vmsentinel.watch.page_store.PageStore`), and a runtime that opens a
guest again takes it back instead of trusting the guest anew. Where they are
kept: in the alert store, signed and chained, for as long as the guest's kernel
boot lasts (:class:`RecordedBaselines`: a restarted sentinel carries on), or in
the watch's session folder, for this watch only (:class:`BaselineFiles`).

    runtime = GuestRuntime("lab:web1", Guest.open, session)
    outcome = runtime.sweep(compiled, full=True, reported=set())
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.errors import VmSentinelError
from vmsentinel.events import BaselineRestored, CodeTracking, Event
from vmsentinel.os.records import PageBytes
from vmsentinel.pipeline.sweep import sweep_once
from vmsentinel.respond.actions import ResponseRecord, respond
from vmsentinel.watch import heap

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.detect.finding import Finding
    from vmsentinel.os.guest import Guest
    from vmsentinel.os.snapshot import GuestSnapshot
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.sinks.baseline_record import BaselineRecord, StoredBaseline
    from vmsentinel.watch.page_store import PageStore


@dataclass
class SweepOutcome:
    """What one sweep of one guest gave, as plain data (it travels from a worker process)."""

    target: str
    #: the kernel release when this sweep (re)opened the guest, else None
    opened: str | None = None
    #: how the guest's memory is read, when this sweep (re)opened it
    access: str = ""
    took_baseline: bool = False
    #: the baseline was taken back from the session folder (the guest was opened again)
    restored: bool = False
    seconds: float = 0.0
    full: bool = False
    new: list[Finding] = field(default_factory=list)
    #: the keys of every finding this sweep saw (reported before or not)
    found: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    problems: int = 0
    #: the sweep failed: why (the guest is closed and opened again on the next try)
    error: str | None = None
    #: the failure was no VmSentinelError or OSError (a bug: the worker logged its traceback)
    unexpected: bool = False
    #: seconds of CPU this sweep cost (the pool balances guests by it)
    cpu: float = 0.0


class BaselineFiles:
    """Baselines of one watch, one file per guest in the session folder: a guest opened again (its
    worker restarted, the guest moved to another worker, the guest unreachable for a while) keeps
    the baseline it had. They belong to this watch only and go with its session folder."""

    def __init__(self, folder: Path, pages: PageStore | None = None) -> None:
        self.folder = folder
        self.pages = pages
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, target: str) -> Path:
        return self.folder / (hashlib.sha256(target.encode()).hexdigest()[:32] + ".baseline")

    def save(self, target: str, identity: tuple[str, ...], baseline: Baseline) -> Baseline:
        """Keep ``baseline`` (its page bytes into the page store when there is one); the compact
        baseline to hold in memory from now on."""
        from vmsentinel.paths import write_atomic

        if self.pages is not None:
            baseline.page_bytes = self.pages.keep(baseline)
        write_atomic(self._path(target), pickle.dumps((identity, baseline), protocol=pickle.HIGHEST_PROTOCOL))
        return baseline

    def load(self, target: str, identity: tuple[str, ...]) -> tuple[Baseline | None, StoredBaseline | None]:
        """The baseline kept for ``target`` if it was taken of the same kernel boot (same build, same place
        in memory, same boot id): a guest that rebooted needs a new one. (No record row: a session file
        is this watch's own.)"""
        try:
            kept_identity, baseline = pickle.loads(self._path(target).read_bytes())  # our own file, written by this watch
        except (OSError, pickle.UnpicklingError, EOFError, ValueError):
            return None, None
        if kept_identity != identity:
            return None, None
        if self.pages is not None and not baseline.page_bytes:  # in the store (bytes the store refused stay in the file)
            baseline.page_bytes = self.pages.view(baseline)
        return baseline, None

    def forget(self, target: str) -> None:
        self._path(target).unlink(missing_ok=True)


class RecordedBaselines:
    """Baselines kept in the alert store (:mod:`vmsentinel.sinks.baseline_record`), their page bytes by
    content in the same file: they outlive the watch, so a restarted sentinel compares each guest with
    what it saw before. Plain data, like the record: it travels to worker processes."""

    def __init__(self, record: BaselineRecord) -> None:
        self.record = record
        self._pages: PageStore | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"record": self.record}

    def __setstate__(self, state: dict[str, BaselineRecord]) -> None:
        self.__init__(state["record"])  # type: ignore[misc]

    @property
    def pages(self) -> PageStore:
        from vmsentinel.watch.page_store import PageStore

        if self._pages is None:
            self._pages = PageStore(self.record.path, table="baseline_pages", durable=True)
        return self._pages

    def save(self, target: str, identity: tuple[str, ...], baseline: Baseline) -> Baseline:
        from vmsentinel.watch.page_store import StoredPages

        kept = self.pages.keep(baseline)
        if isinstance(kept, StoredPages):
            baseline.page_bytes = kept
            self.record.save(target, identity, baseline)
        else:  # the store took no pages: record the rest, keep the bytes in memory for this watch
            baseline.page_bytes = {}
            try:
                self.record.save(target, identity, baseline)
            finally:
                baseline.page_bytes = kept
        return baseline

    def load(self, target: str, identity: tuple[str, ...]) -> tuple[Baseline | None, StoredBaseline | None]:
        baseline, row = self.record.load(target, identity)
        if baseline is not None:
            baseline.page_bytes = self.pages.view(baseline)
        return baseline, row

    def forget(self, target: str) -> None:
        """Nothing: the guest may come back in this boot, and the record keeps its history."""


Keeper = BaselineFiles | RecordedBaselines


class GuestRuntime:
    """A guest being watched: opened on its first sweep and again after a failure."""

    def __init__(
        self,
        target: str,
        open_guest: Callable[[str], Guest],
        baselines: Keeper | None = None,
    ) -> None:
        self.target = target
        self.open_guest = open_guest
        self.baselines = baselines
        self.guest: Guest | None = None
        self.baseline: Baseline | None = None
        self.previous: GuestSnapshot | None = None
        self._tracking_said: tuple[bool, str] | None = None

    def sweep(self, compiled: CompiledPolicy, full: bool, reported: Collection[str]) -> SweepOutcome:
        """One sweep; never raises for the guest's sake: a failure is an outcome with ``error``."""
        outcome = SweepOutcome(self.target, full=full)
        cpu = time.thread_time()  # this sweep's own: other guests' sweeps run in other threads
        try:
            opening = self.guest is None
            if self.guest is None:
                self.guest = self.open_guest(self.target)
                outcome.opened = self.guest.release
                memory = getattr(self.guest.target, "memory", None)  # a stand-in guest may have none
                outcome.access = memory.describe() if memory is not None else ""
                if self.baselines is not None and self.baseline is None:
                    self.baseline, row = self.baselines.load(self.target, self.guest.identity())
                    outcome.restored = self.baseline is not None
                    if row is not None:  # from the store: said, and why when it was refused
                        outcome.events.append(BaselineRestored(self.target, row.time, row.seq, "; ".join(row.problems)))
            result = sweep_once(
                self.guest,
                compiled,
                self.previous,
                self.baseline,
                target=self.target,
                full=full,
                reported=reported,
                take_baseline=True,
                # the watcher compares its guests (or a central service, the fleet's); a guest opened again
                # with its baseline (a worker restarted, a watch started again) makes its inventory on its
                # next full sweep, not this one: the first sweep after a restart must be quick, and its
                # peers are compared with the inventory it sent before meanwhile
                inventory=not (opening and self.baseline is not None),
            )
            snap = result.snapshot
            outcome.seconds, outcome.full = snap.seconds, snap.full
            outcome.problems, outcome.timings = result.problems, result.timings
            outcome.events += result.events
            outcome.new, outcome.found = result.new, {f.key for f in result.found}
            if result.took_baseline:
                assert result.baseline is not None
                baseline = result.baseline
                baseline.first_look = set(outcome.found)
                if self.baselines is not None:
                    baseline = self.baselines.save(self.target, self.guest.identity(), baseline)
                self.baseline, outcome.took_baseline = baseline, True
                if snap.code is not None:  # the baseline has them (or the page store); the next sweep needs only hashes
                    snap.code.page_bytes = PageBytes()
                snap.patch_sites = None  # the baseline holds them compactly (tens of thousands of sites)
            elif self.baseline is not None:
                outcome.found |= self.baseline.first_look
            self.previous = snap
            forget = getattr(self.guest, "forget_sweep", None)  # an OS view without per-sweep caches has none
            if forget is not None:
                forget()
            tracking = getattr(self.guest, "code_tracking", None)  # an OS without host tracking has none
            if tracking is not None and tracking != self._tracking_said:  # said once, and again when it changes
                outcome.events.append(CodeTracking(self.target, *tracking))
                self._tracking_said = tracking
        except Exception as exc:  # the guest's failure, reported as such; the watch goes on
            outcome.error = str(exc) if isinstance(exc, VmSentinelError | OSError) else f"{type(exc).__name__}: {exc}"
            outcome.unexpected = not isinstance(exc, VmSentinelError | OSError)
            if outcome.unexpected:
                import logging

                logging.getLogger(f"vmsentinel.watch.{self.target}").exception("unexpected failure while sweeping")
            self.close()
        if outcome.took_baseline or outcome.full:
            from vmsentinel.os.linux.vendor.locate import forget_idle

            forget_idle()  # a vendor image (~60 MB) is kept only while guests of its build are starting
            heap.release()  # a baseline's pages and a full sweep's maps leave holes in the heap
        outcome.cpu = time.thread_time() - cpu
        return outcome

    def respond(self, finding: Finding | str, actions: list[str], dumps: Path) -> list[ResponseRecord]:
        """Carry out the policy's actions (or a person's: ``finding`` is then a key) through this guest's
        hypervisor control."""
        if self.guest is None and any(a != "alert" for a in actions):
            try:  # the guest moved here after the sweep that found this (or its worker was restarted)
                self.guest = self.open_guest(self.target)
            except Exception:  # each action is then recorded as failed, with no control
                self.guest = None
        control = self.guest.target.control if self.guest is not None else None
        return respond(self.target, control, finding, actions, dumps)

    def view(self, name: str) -> dict[str, object]:
        """A view of the latest snapshot (what the last sweep saw), as JSON records; ``about`` describes
        the guest itself. Nothing is read from the guest: a hung guest cannot hang the asker."""
        from vmsentinel.watch.snapshot_views import about, snapshot_view

        if name == "about":
            return about(self.target, self.guest, self.previous)
        if self.previous is None:
            return {"records": [], "problems": [], "note": "no sweep of this guest yet"}
        return snapshot_view(self.previous, name)

    def close(self) -> None:
        """Let go of the guest (its memory, its monitor); the baseline stays for when it is opened again."""
        if self.guest is not None:
            guest, self.guest = self.guest, None
            guest.close()

    def forget(self) -> None:
        """The guest left the watch for good: close it and drop its kept baseline."""
        self.close()
        self.baseline = None
        if self.baselines is not None:
            self.baselines.forget(self.target)
