"""A watch compares its guests with one another: each guest's inventory comes with its first look
(and again from a full sweep that sees it changed), and a guest unlike the others is raised as
``fleet_outlier`` through the watch's sinks, and cleared when it is like them again; with
``peer_compare=False`` (a host that publishes to a central service) or the detector disabled, not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tests.unit.detect.test_detectors import snapshot, task
from tests.unit.watch.test_watcher import FakeGuest

from vmsentinel.events import Event, FindingCleared, FindingRaised, GuestInventory
from vmsentinel.os.linux.views.inventory import Inventory
from vmsentinel.os.snapshot import GuestSnapshot
from vmsentinel.pipeline.policy import Policy
from vmsentinel.watch.watcher import Watcher


def facets(odd: bool) -> dict[str, dict[str, str]]:
    text = {f"{i * 4096:x}": f"{i:016x}" for i in range(8)}
    if odd:
        text["5000"] = "0badc0de0badc0de"
    return {"kernel_text": text, "taint": {"mask": "0x0"}}


@dataclass
class PeerGuest(FakeGuest):
    """A stand-in guest with an inventory: odd (one text page unlike the others') until sweep ``fixed_at``."""

    odd_until: int = -1
    inventories: int = 0

    def snapshot(
        self, with_code: bool = False, scan: bool = False, since: object = None, page_hasher: object = None, **kw: Any
    ) -> GuestSnapshot:
        self.sweep += 1
        snap = replace(snapshot([task(1)]), full=scan)
        wanted = kw.get("facets") or frozenset()
        if kw.get("inventory") and "inventory" in wanted and (scan or kw.get("first_look")):
            self.inventories += 1
            self._inventory = Inventory("ab" * 20, "6.12-test", facets(self.sweep < self.odd_until))
        if kw.get("inventory") and "inventory" in wanted:
            snap.inventory = getattr(self, "_inventory", None)
        return snap


class Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        pass

    def fleet(self) -> list[tuple[str, str]]:
        out = []
        for e in self.events:
            if isinstance(e, FindingRaised) and e.finding.detector == "fleet_outlier":
                out.append(("raised", e.target))
            elif isinstance(e, FindingCleared) and e.detector == "fleet_outlier":
                out.append(("cleared", e.target))
        return out


def watch(guests: dict[str, PeerGuest], sweeps: int, **options: Any) -> Events:
    sink = Events()
    watcher = Watcher(list(guests), interval=0.01, scan_every=2, sinks=[sink], open_guest=lambda t: guests[t], **options)
    watcher.run(max_sweeps=sweeps)
    watcher.close()
    return sink


def test_the_odd_guest_is_raised_once_then_cleared_when_it_is_like_the_others_again() -> None:
    guests = {f"g{n}": PeerGuest(f"g{n}") for n in range(4)}
    guests["g2"].odd_until = 4  # fixed from its fifth sweep on (seen by the full sweep after it)
    sink = watch(guests, 7)
    assert sink.fleet() == [("raised", "g2"), ("cleared", "g2")]
    (raised,) = [e.finding for e in sink.events if isinstance(e, FindingRaised)]
    assert raised.evidence["facet"] == "kernel_text" and raised.evidence["differences"] == [
        {"item": "5000", "value": "0badc0de0badc0de", "majority": "0000000000000005"}
    ]
    sent = [e for e in sink.events if isinstance(e, GuestInventory)]
    assert {e.target for e in sent} == set(guests) and len(sent) == 5  # first looks, then g2's change only
    assert all(g.inventories >= 3 for g in guests.values())  # first look and full sweeps


def test_without_peer_comparison_the_inventories_still_travel_but_nothing_is_raised() -> None:
    guests = {f"g{n}": PeerGuest(f"g{n}", odd_until=99 if n == 0 else -1) for n in range(4)}
    sink = watch(guests, 2, peer_compare=False)
    assert sink.fleet() == [] and sum(isinstance(e, GuestInventory) for e in sink.events) == 4


def test_with_the_detector_disabled_no_inventory_is_made() -> None:
    guests = {f"g{n}": PeerGuest(f"g{n}", odd_until=99 if n == 0 else -1) for n in range(4)}
    sink = watch(guests, 2, policy=Policy(detectors=["syscall_hook"]))
    assert sink.fleet() == [] and not any(isinstance(e, GuestInventory) for e in sink.events)
    assert all(g.inventories == 0 for g in guests.values())
