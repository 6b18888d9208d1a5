"""The asyncio watcher with stand-in guests: per-guest intervals, a guest that cannot be opened
is retried without holding up the others, a hung sweep delays only its own guest, findings are
reported once while they last and again when they come back, and stop() ends it promptly."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.finding import Finding
from vmsentinel.errors import TargetError
from vmsentinel.events import Event, FindingRaised, PolicyRejected
from vmsentinel.os.records import SyscallEntry
from vmsentinel.os.snapshot import GuestSnapshot
from vmsentinel.pipeline.policy import Policy
from vmsentinel.sinks.console import ConsoleSink
from vmsentinel.watch.watcher import Watcher

KERNEL = 0xFFFFFFFF81000000
HOOK = 0xFFFFFFFFC0000000


class NoKernel:
    """A kernel reader with nothing behind it: the baseline finds no patch sites to learn."""

    def has_symbol(self, _name: str) -> bool:
        return False

    def has(self, _struct: str, _member: str) -> bool:
        return False

    def size(self, _struct: str) -> int:
        return 16

    def read(self, addr: int, _length: int) -> bytes:
        raise TargetError(f"nothing at {addr:#x}")


@dataclass
class FakeGuest:
    """Looks like a LinuxGuest to the watcher: snapshots from a script, no memory behind them."""

    name: str
    hooked: list[bool] = field(default_factory=list)  # per sweep: is syscall 0 hooked?
    delay: float = 0.0
    snapshots: int = 0
    sweep: int = -1
    _since: object = None
    target: Any = None
    release: str = "6.1-test"
    os: str = "linux"

    def __post_init__(self) -> None:
        self.reader = NoKernel()
        self.resolver = type("S", (), {"describe": staticmethod(lambda _a: None), "owner": staticmethod(lambda _a: "kernel")})()
        self.target = type("T", (), {"control": None, "live": False, "spec": self.name})()

    def identity(self) -> tuple[str, ...]:
        return (self.release, "", f"{KERNEL:x}", "")

    def about(self) -> dict[str, object]:
        return {"os": self.os, "release": self.release}

    def snapshot(
        self, with_code: bool = False, scan: bool = False, since: object = None, page_hasher: object = None, **_facets: object
    ) -> GuestSnapshot:
        time.sleep(self.delay)
        if self.snapshots == 0 or since is not self._since:  # a new sweep (a confirming read repeats `since`)
            self.sweep += 1
            self._since = since
        self.snapshots += 1
        hooked = self.hooked[min(self.sweep, len(self.hooked) - 1)] if self.hooked else False
        handler, owner = (HOOK, "module:evil") if hooked else (KERNEL, "kernel")
        snap = snapshot([task(1)], syscalls=[SyscallEntry("x64", 0, handler, "read", owner)])
        return replace(snap, full=True)

    def close(self) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def handle(self, events: Sequence[Event]) -> None:
        self.findings.extend(e.finding for e in events if isinstance(e, FindingRaised | PolicyRejected))

    def close(self) -> None:
        pass


def test_each_guest_keeps_its_own_interval_and_a_dead_one_is_retried_apart() -> None:
    guests = {"fast": FakeGuest("fast"), "slow": FakeGuest("slow")}
    events: list[tuple[str, str]] = []

    def open_guest(target: str) -> Any:
        if target == "dead":
            raise TargetError("no such guest")
        return guests[target]

    watcher = Watcher(
        ["fast", "slow", "dead"],
        interval=0.05,
        intervals={"slow": 0.4},
        open_guest=open_guest,
        sinks=[ConsoleSink(lambda t, m: events.append((t, m)))],
    )
    threading.Timer(1.2, watcher.stop).start()
    started = time.monotonic()
    watcher.run()
    assert time.monotonic() - started < 2.5, "stop() ends the watch after the current sweeps"
    fast, slow, dead = watcher.states
    assert fast.sweeps >= 3 * slow.sweeps > 0
    assert dead.sweeps == 0 and dead.failures >= 2 and dead.missed >= 1
    assert any(t == "dead" and "unreachable (no such guest)" in m for t, m in events)


def test_a_hung_guest_does_not_hold_up_the_others() -> None:
    guests = {"hung": FakeGuest("hung", delay=1.5), "ok": FakeGuest("ok")}
    watcher = Watcher(["hung", "ok"], interval=0.05, open_guest=lambda t: guests[t])
    threading.Timer(1.0, watcher.stop).start()
    watcher.run()
    hung, ok = watcher.states
    assert hung.sweeps <= 1 and ok.sweeps >= 8


def test_a_finding_is_reported_once_while_it_lasts_and_again_when_it_returns() -> None:
    # sweeps: baseline, hooked, hooked, clean, hooked
    guest = FakeGuest("g", hooked=[False, True, True, False, True])
    sink = ListSink()
    watcher = Watcher(["g"], interval=0.01, sinks=[sink], open_guest=lambda _t: guest, policy=Policy(detectors=["syscall_hook"]))
    watcher.run(max_sweeps=5)
    assert [f.detector for f in sink.findings] == ["syscall_hook", "syscall_hook"]
    assert all(f.confirmed for f in sink.findings)
    assert watcher.states[0].findings == 2


def test_metrics_name_every_guest(tmp_path: Any) -> None:
    guest = FakeGuest("g")
    watcher = Watcher(["g"], interval=0.01, open_guest=lambda _t: guest)
    watcher.metrics_path = tmp_path / "metrics.prom"
    watcher.run(max_sweeps=3)
    text = watcher.metrics_path.read_text()
    assert 'vmsentinel_sweeps_total{target="g"} 3' in text and "vmsentinel_last_sweep_seconds" in text


def test_each_run_does_max_sweeps_more_rounds() -> None:
    guest = FakeGuest("g")
    watcher = Watcher(["g"], interval=0.01, open_guest=lambda _t: guest)
    watcher.run(max_sweeps=1)
    watcher.run(max_sweeps=2)
    assert watcher.states[0].sweeps == 3


def test_a_policy_that_fails_to_verify_at_reload_leaves_the_old_one_and_raises_an_alert(tmp_path: Any) -> None:
    from vmsentinel.errors import PolicyRefused
    from vmsentinel.pipeline.loading import ActivePolicy

    bundle = tmp_path / "p.vmspolicy"
    bundle.write_bytes(b"v1")
    outcomes: list[object] = [PolicyRefused("policy bundle p.vmspolicy refused: signature does not match"), "ok"]

    def loader() -> ActivePolicy:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return ActivePolicy(Policy(detectors=["syscall_hook"], interval=0.05), None, "signed v2", True)

    guest, sink = FakeGuest("g"), ListSink()
    watcher = Watcher(["g"], interval=0.05, sinks=[sink], open_guest=lambda _t: guest, loader=loader)
    watcher.watched_files = [bundle]
    first_rules = watcher.compiled

    def until(condition: Any) -> None:
        deadline = time.monotonic() + 20
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    def tamper_then_fix() -> None:
        until(lambda: watcher.states[0].sweeps > 0)
        bundle.write_bytes(b"v2 tampered")  # file change: reload, refused
        until(lambda: any(f.detector == "policy_rejected" for f in sink.findings))
        watcher.request_reload()  # SIGHUP: reload, accepted
        until(lambda: watcher.compiled is not first_rules)
        watcher.stop()

    threading.Thread(target=tamper_then_fix).start()
    watcher.run()
    rejected = [f for f in sink.findings if f.detector == "policy_rejected"]
    assert len(rejected) == 1 and "signature does not match" in rejected[0].title and rejected[0].target == "sentinel"
    assert watcher.compiled is not first_rules and watcher.policy.detectors == ["syscall_hook"] and outcomes == []


class FakeDomains:
    """A source of guests that come and go: 'b' starts after 0.3 s, 'a' stops after 0.6 s."""

    def __init__(self) -> None:
        self.closed = False

    def running(self) -> list[str]:
        return ["a"]

    async def changes(self) -> Any:
        import asyncio

        await asyncio.sleep(0.3)
        yield ("started", "b", "booted")
        await asyncio.sleep(0.3)
        yield ("stopped", "a", "destroyed")

    def close(self) -> None:
        self.closed = True


def test_guests_that_start_are_watched_and_guests_that_stop_leave_without_the_others() -> None:
    guests = {"a": FakeGuest("a"), "b": FakeGuest("b"), "c": FakeGuest("c")}
    events: list[tuple[str, str]] = []
    closed: list[str] = []
    for name, g in guests.items():
        g.close = lambda name=name: closed.append(name)  # type: ignore[method-assign]
    watcher = Watcher(
        ["c"],
        interval=0.05,
        sources=[FakeDomains()],
        open_guest=lambda t: guests[t],
        sinks=[ConsoleSink(lambda t, m: events.append((t, m)))],
    )
    threading.Timer(1.5, watcher.stop).start()
    watcher.run()
    a, b, c = (next(s for s in watcher.states if s.target == n) for n in "abc")
    assert a.ended and not b.ended and not c.ended
    assert b.sweeps >= 5 and c.sweeps > a.sweeps >= 3  # b joined at 0.3 s; a left at 0.6 s; c ran all along
    assert "a" in closed  # a's memory was let go as it left
    assert ("b", "added to the watch (booted)") in events and ("a", "left the watch (destroyed)") in events
    assert ("a", "added to the watch (running when the watch began)") in events
