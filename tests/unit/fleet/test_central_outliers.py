"""The fleet as a detector on the central side: inventories of one build from several hosts meet in the
hub, and the guest unlike the majority is flagged fleet_outlier, kept as its own host's finding; the
hosts' guests named HOST/GUEST so that equal guest names on two hosts are two peers."""

from __future__ import annotations

import json
from pathlib import Path

from vmsentinel import events as ev
from vmsentinel.fleet.connection import BusOptions
from vmsentinel.fleet.hub import FleetHub
from vmsentinel.fleet.outliers import FleetComparison
from vmsentinel.fleet.subjects import event_subject
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.sinks.wire import to_wire

BUILD = "c0ffee" * 6


def inventory(guest: str, hooked: bool = False) -> ev.GuestInventory:
    syscalls = {f"x64:{n}": f"__x64_sys_{n}" for n in range(40)}
    if hooked:
        syscalls["x64:39"] = "outside:module:vmsrootkit"
    return ev.GuestInventory(guest, BUILD, "6.12.0", {"syscalls": syscalls, "taint": {"mask": "0x0"}})


def message(host: str, seq: int, event: ev.Event) -> tuple[str, bytes]:
    body = {"host": host, "store": "ab" * 8, "seq": seq, "sent": 1.0, "event": to_wire(event)}
    return event_subject(host, event.target, type(event).__name__), json.dumps(body).encode()


class Seen:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def handle(self, events: list[ev.Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        pass


def test_the_guest_unlike_its_peers_on_other_hosts_is_flagged_as_its_hosts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "central.db")
    seen = Seen()
    hub = FleetHub(BusOptions("nats://127.0.0.1:1"), store, [seen], compare=FleetComparison())
    guests = [
        ("h1", "lab:a", False),
        ("h1", "lab:b", False),
        ("h2", "lab:a", True),
        ("h3", "lab:a", False),
        ("h3", "lab:c", False),
    ]
    hub._take([message(host, i + 1, inventory(guest, hooked)) for i, (host, guest, hooked) in enumerate(guests)])
    rows = store.db.execute("SELECT host, target, detector, evidence FROM findings").fetchall()
    assert [(h, t, d) for h, t, d, _ in rows] == [("h2", "h2/lab:a", "fleet_outlier")]
    evidence = json.loads(rows[0][3])
    assert "x64:39" in json.dumps(evidence) and "outside:module:vmsrootkit" in json.dumps(evidence)
    assert any(isinstance(e, ev.FindingRaised) and e.finding.detector == "fleet_outlier" for e in seen.events)

    # the guest is rebuilt clean: its next inventory clears the finding
    hub._take([message("h2", 9, inventory("lab:a"))])
    cleared = [e for e in seen.events if isinstance(e, ev.FindingCleared)]
    assert [(e.target, e.detector) for e in cleared] == [("h2/lab:a", "fleet_outlier")]


def test_two_against_two_says_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "central.db")
    seen = Seen()
    comparison = FleetComparison()
    hub = FleetHub(BusOptions("nats://127.0.0.1:1"), store, [seen], compare=comparison)
    four = [("h1", "lab:a", False), ("h2", "lab:a", False), ("h3", "lab:a", True), ("h4", "lab:a", True)]
    hub._take([message(host, i + 1, inventory(guest, hooked)) for i, (host, guest, hooked) in enumerate(four)])
    # the third inventory made h3 the odd one of three; the fourth makes it two against two: cleared
    raised = [e.finding.target for e in seen.events if isinstance(e, ev.FindingRaised)]
    cleared = [e.target for e in seen.events if isinstance(e, ev.FindingCleared)]
    assert raised == cleared == ["h3/lab:a"]
    assert not comparison.comparer.reported


def test_a_clear_after_a_hub_restart_names_the_central_key_found_from_the_store(tmp_path: Path) -> None:
    from vmsentinel.detect.finding import ROOTKIT, Finding, Severity

    store = SqliteStore(tmp_path / "central.db")
    raised = ev.FindingRaised(Finding("hidden_module", "hidden", Severity.HIGH, ROOTKIT, "lab:a", {"name": "rk"}))
    FleetHub(BusOptions("nats://127.0.0.1:1"), store)._take([message("h1", 1, raised)])
    central_key = store.db.execute("SELECT key FROM findings").fetchone()[0]
    assert central_key != raised.finding.key  # keyed by HOST/GUEST here
    seen = Seen()
    restarted = FleetHub(BusOptions("nats://127.0.0.1:1"), store, [seen])  # knows no keys from memory
    restarted._take([message("h1", 2, ev.FindingCleared("lab:a", raised.finding.key, "hidden_module", "hidden"))])
    assert [(e.target, e.key) for e in seen.events] == [("h1/lab:a", central_key)]
