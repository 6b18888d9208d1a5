"""The worker's sweep gate: one sweep at a time, first come first served, and a sweep stuck past the
stall time (a hung hypervisor) does not keep the others waiting."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from vmsentinel.watch.gate import Gate


def test_sweeps_pass_one_at_a_time_in_the_order_they_came() -> None:
    gate = Gate(stall=5.0)
    inside, peak, order = [0], [0], []
    lock = threading.Lock()
    first_in = threading.Event()
    release_first = threading.Event()

    def sweep(n: int) -> int:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            order.append(n)
        if n == 0:
            first_in.set()
            release_first.wait(5)
        time.sleep(0.002)
        with lock:
            inside[0] -= 1
        return n

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(gate.run, lambda: sweep(0))]
        assert first_in.wait(5)
        for n in range(1, 20):  # queued in this order behind the first
            futures.append(pool.submit(gate.run, lambda n=n: sweep(n)))
            time.sleep(0.01)
        release_first.set()
        assert [f.result(10) for f in futures] == list(range(20))
    assert peak[0] == 1
    assert order[:8] == list(range(8))  # the pool's eight threads took them in order and the gate kept it


def test_a_stuck_sweep_lets_the_next_one_in_after_the_stall_time() -> None:
    gate = Gate(stall=0.2)
    hung = threading.Event()
    done_at: dict[str, float] = {}
    started = time.monotonic()

    def stuck() -> None:
        hung.wait(10)  # a read that never returns (until the test ends it)
        done_at["stuck"] = time.monotonic() - started

    def quick(name: str) -> None:
        done_at[name] = time.monotonic() - started

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(gate.run, stuck)
        time.sleep(0.05)
        others = [pool.submit(gate.run, lambda n=n: quick(f"q{n}")) for n in range(3)]
        for f in others:
            f.result(5)  # they finish although the first never left
        hung.set()
        first.result(5)
    assert all(0.15 < done_at[f"q{n}"] < 2.0 for n in range(3)), done_at
    assert done_at["stuck"] > max(done_at[f"q{n}"] for n in range(3))


def test_a_failing_sweep_leaves_the_gate() -> None:
    gate = Gate(stall=5.0)

    def boom() -> None:
        raise RuntimeError("bug")

    with ThreadPoolExecutor(2) as pool:
        failed = pool.submit(gate.run, boom)
        assert isinstance(failed.exception(5), RuntimeError)
        assert pool.submit(gate.run, lambda: 42).result(1) == 42  # not 5 s: the failed one left


def test_baselines_wait_until_no_other_sweep_does() -> None:
    gate = Gate(stall=5.0)
    order: list[str] = []
    first_in, release_first = threading.Event(), threading.Event()

    def first() -> None:
        first_in.set()
        release_first.wait(5)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(gate.run, first)]
        assert first_in.wait(5)
        for name, bulk in (("baseline-a", True), ("sweep-1", False), ("baseline-b", True), ("sweep-2", False)):
            futures.append(pool.submit(gate.run, lambda name=name: order.append(name), bulk))
            time.sleep(0.02)
        release_first.set()
        for f in futures:
            f.result(5)
    assert order == ["sweep-1", "sweep-2", "baseline-a", "baseline-b"]


def test_a_long_baseline_lets_sweeps_past_after_the_stall_but_not_another_baseline() -> None:
    """A first look that takes longer than the stall time: the sweeps of guests already watched go in
    beside it, the next first look waits for it to end (or for the bulk stall time)."""
    gate = Gate(stall=0.05, bulk_stall=5.0)
    finish_first = threading.Event()
    entered: dict[str, float] = {}
    started = time.monotonic()

    def baseline(name: str) -> None:
        entered[name] = time.monotonic() - started
        if name == "first look 1":
            finish_first.wait(5)

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(gate.run, lambda: baseline("first look 1"), True)
        time.sleep(0.02)
        second = pool.submit(gate.run, lambda: baseline("first look 2"), True)
        sweep = pool.submit(gate.run, lambda: entered.setdefault("sweep", time.monotonic() - started))
        sweep.result(5)
        time.sleep(0.3)  # well past the stall time: the second first look still waits
        assert "first look 2" not in entered
        finish_first.set()
        first.result(5)
        second.result(5)
    assert entered["sweep"] < entered["first look 2"]


def test_a_hung_baseline_lets_the_next_baseline_in_after_the_bulk_stall_time() -> None:
    gate = Gate(stall=0.02, bulk_stall=0.2)
    hung = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(gate.run, lambda: hung.wait(5), True)
        time.sleep(0.02)
        started = time.monotonic()
        pool.submit(gate.run, lambda: None, True).result(5)
        waited = time.monotonic() - started
        hung.set()
    assert 0.1 < waited < 2.0
