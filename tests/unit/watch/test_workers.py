"""The watcher's worker processes (real spawned processes, stand-in guests): guests spread over the
workers by their cost, a worker killed with SIGKILL is replaced within moments and its guests are
swept again there with the baselines they had, and nothing reported before the kill is reported
again."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.unit.watch.pool_guests import open_pool_guest

from vmsentinel.events import BaselineTaken, Event, FindingRaised, GuestWatched, SweepDone, WorkerRestarted
from vmsentinel.pipeline.policy import Policy
from vmsentinel.watch.watcher import Watcher

E = TypeVar("E")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.lock = threading.Lock()

    def handle(self, events: Sequence[Event]) -> None:
        with self.lock:
            self.events.extend((time.monotonic(), e) for e in events)

    def close(self) -> None:
        pass

    def of(self, kind: type[E], after: float = 0.0) -> list[E]:
        with self.lock:
            return [e for at, e in self.events if isinstance(e, kind) and at >= after]


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMSENTINEL_STATE", str(tmp_path))
    return tmp_path


def test_a_killed_worker_is_replaced_and_its_guests_keep_their_baselines(state: Path) -> None:
    targets = ["hooked-a", "hooked-b", "clean-c", "clean-d"]
    rec = Recorder()
    watcher = Watcher(
        targets, interval=0.1, sinks=[rec], open_guest=open_pool_guest, workers=2, policy=Policy(detectors=["syscall_hook"])
    )
    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        until(lambda: {e.target for e in rec.of(FindingRaised)} == {"hooked-a", "hooked-b"})
        assert watcher.pool is not None
        placement = dict(watcher.pool.placement)
        # both workers have guests (how many each depends on what their first looks cost: the hooked
        # guests' findings are read twice)
        assert len(placement) == 4 and set(placement.values()) == {0, 1}
        victim = watcher.pool.pids()[0]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        until(lambda: bool(rec.of(WorkerRestarted)))
        restarted = rec.of(WorkerRestarted)[0]
        assert isinstance(restarted, WorkerRestarted)
        assert restarted.worker == 0 and restarted.how == "was killed by SIGKILL" and restarted.pid not in (0, victim)
        moved = {t for t, w in placement.items() if w == 0}
        assert set(restarted.guests) == moved

        # each of its guests is opened again in the new worker and swept within 2 s of the kill
        def back(target: str) -> float | None:
            """When ``target`` was first swept after being opened again in the new worker."""
            with rec.lock:
                opened = [at for at, e in rec.events if isinstance(e, GuestWatched) and e.target == target and at >= killed]
                swept = [
                    at for at, e in rec.events if isinstance(e, SweepDone) and e.target == target and opened and at >= opened[0]
                ]
            return swept[0] if swept else None

        until(lambda: all(back(t) is not None for t in moved), 10)
        assert max(back(t) or 0.0 for t in moved) - killed < 2.0
        time.sleep(0.5)  # a few more sweeps in the new worker, findings still there
    finally:
        watcher.stop()
        runner.join(timeout=30)
        watcher.close()
    # the baselines were taken back, not taken again; each finding was reported once
    assert sorted(e.target for e in rec.of(BaselineTaken)) == sorted(targets)
    raised = [e.finding.key for e in rec.of(FindingRaised)]
    assert len(raised) == 2 == len(set(raised))
    assert not list(state.glob("watch-*")), "the session folder is removed when the watch ends"


def test_a_worker_pool_spreads_guests_by_their_measured_cost(state: Path) -> None:
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.watch.workers import WorkerPool

    opener: Any = open_pool_guest  # a stand-in for LinuxGuest.open
    pool = WorkerPool(2, opener, state / "session")
    pool.start(CompiledPolicy.compile(Policy(detectors=["syscall_hook"])))
    try:
        pool.cost.update({"heavy": 0.5, "light-1": 0.05, "light-2": 0.05})
        for target in ("heavy", "light-1", "light-2", "light-3"):
            pool.sweep(target, 1.0, True, set()).result(timeout=30)
        assert pool.placement["heavy"] != pool.placement["light-1"]
        assert pool.placement["light-2"] == pool.placement["light-1"]  # the lighter worker takes the light ones
        assert pool.placement["light-3"] == pool.placement["light-1"]
    finally:
        pool.close()
    ended = [(w.process.is_alive(), w.process.exitcode, w.retired) for w in pool._workers]
    assert ended == [(False, 0, True), (False, 0, True)], ended


@pytest.mark.parametrize("workers", [0, 1])
def test_a_restarted_watch_compares_with_the_stored_baseline_of_this_boot(state: Path, workers: int) -> None:
    """The guest's kernel is tainted after the first watch's baseline (while no sentinel runs): a second
    watch with the same store finds it; one without the store would bless it; a reboot starts over."""
    from vmsentinel.events import BaselineRestored
    from vmsentinel.sinks.baseline_record import BaselineRecord

    record = BaselineRecord(state / "store.db")

    def watch(with_record: bool, sweeps: int) -> Recorder:
        rec = Recorder()
        watcher = Watcher(
            ["tainted-a"],
            interval=0.05,
            sinks=[rec],
            open_guest=open_pool_guest,
            workers=workers,
            policy=Policy(detectors=["kernel_taint"]),
            baseline_record=record if with_record else None,
        )
        try:
            watcher.run(max_sweeps=sweeps)
        finally:
            watcher.close()
        return rec

    first = watch(True, 1)
    assert len(first.of(BaselineTaken)) == 1 and not first.of(FindingRaised) and not first.of(BaselineRestored)

    again = watch(True, 2)
    restored = again.of(BaselineRestored)
    assert len(restored) == 1 and restored[0].seq == 1 and not restored[0].refused
    assert not again.of(BaselineTaken)
    assert [e.finding.detector for e in again.of(FindingRaised)] == ["kernel_taint"]

    blessed = watch(False, 2)  # trust on first use: the tainted kernel becomes the baseline
    assert len(blessed.of(BaselineTaken)) == 1 and not blessed.of(FindingRaised)

    (state / "tainted-a.boot").write_text("boot-2")  # the guest rebooted: its old baseline does not apply
    rebooted = watch(True, 1)
    assert len(rebooted.of(BaselineTaken)) == 1 and not rebooted.of(BaselineRestored)


def test_a_response_that_fails_in_its_worker_is_a_failure_on_record(state: Path) -> None:
    """A person's pause that raises where the guest lives comes back as a failed response with the
    worker's words (the service shows and audits it), not as an exception out of the watcher."""
    rec = Recorder()
    watcher = Watcher(["broken-a"], interval=0.1, sinks=[rec], open_guest=open_pool_guest, workers=1)
    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        until(lambda: bool(rec.of(SweepDone)))
        records = watcher.act("broken-a", ["pause"], "manual-1-ana")
    finally:
        watcher.stop()
        runner.join(timeout=30)
        watcher.close()
    assert [(r.action, r.ok, r.finding_key) for r in records] == [("pause", False, "manual-1-ana")]
    assert "worker 0" in records[0].detail and "event loop is already running" in records[0].detail
