"""The store as a host's spool and as the fleet's central record: events queued in the same
transaction as the rows they carry, a cursor that only moves forward, and receipts that keep each
host's event once however often the bus delivers it."""

from __future__ import annotations

import json
from pathlib import Path

from vmsentinel import events as ev
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.sinks.chain import verify_links
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.sinks.wire import from_wire


def finding(i: int, target: str = "lab:a") -> Finding:
    return Finding("syscall_hook", f"hook {i}", Severity.HIGH, ROOTKIT, target, {"nr": i})


def test_spooled_events_are_queued_in_order_with_what_they_carry(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.db", host="h1", spool=True)
    woke = []
    store.on_spooled = lambda: woke.append(1)
    raised = ev.FindingRaised(finding(1))
    store.handle([raised, ev.SweepDone("lab:a", 0.1, False, 1, 0), ev.GuestAdded("lab:a", "start")])
    rows = store.outbox(0, 10)
    assert [r[2] for r in rows] == ["FindingRaised", "GuestAdded"]  # sweep timings are live metrics, not spooled
    assert from_wire(json.loads(rows[0][3])) == raised
    assert woke == [1]
    assert store.findings()[0]["host"] == "h1"
    assert len(store.store_id) == 16


def test_the_cursor_moves_forward_only_and_survives_reopening(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.db", spool=True)
    store.handle([ev.GuestAdded(f"g{i}", "x") for i in range(5)])
    assert store.cursor("bus") == 0
    store.advance("bus", 3)
    store.advance("bus", 2)  # a late acknowledgement never moves it back
    store_id = store.store_id
    store.close()
    again = SqliteStore(tmp_path / "h.db", spool=True)
    assert again.cursor("bus") == 3 and again.store_id == store_id
    assert [r[1] for r in again.outbox(3, 10)] == ["g3", "g4"]


def test_a_store_without_spool_queues_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.handle([ev.FindingRaised(finding(1))])
    assert "outbox" not in {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}


def test_receipts_keep_each_hosts_event_once(tmp_path: Path) -> None:
    central = SqliteStore(tmp_path / "c.db")
    batch = [ev.FindingRaised(finding(1, "h1/lab:a"))]
    assert central.handle_received("h1", "a" * 16, 1, batch)
    assert not central.handle_received("h1", "a" * 16, 1, batch)  # delivered again
    assert central.handle_received("h2", "a" * 16, 1, batch)  # another host's event 1
    assert central.handle_received("h1", "b" * 16, 1, batch)  # the same host with a new store
    rows = central.findings()
    assert [r["host"] for r in rows] == ["h1", "h2", "h1"]
    records, problems = central.read_chain()
    assert not problems and not verify_links(records)[0]


def test_the_host_is_part_of_a_findings_hash(tmp_path: Path) -> None:
    central = SqliteStore(tmp_path / "c.db")
    central.handle_received("h1", "a" * 16, 1, [ev.FindingRaised(finding(1))])
    central.db.execute("UPDATE findings SET host = 'h2'")
    central.db.commit()
    records, _ = central.read_chain()
    assert any("altered" in p for p in verify_links(records)[0])


def test_a_store_from_before_fleets_is_migrated_and_still_verifies(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    store = SqliteStore(path)
    store.write([finding(1)])
    store.close()
    db = sqlite3.connect(path)  # as an old version left it: no host columns
    db.execute("DROP INDEX findings_host")
    for table in ("findings", "responses", "process_events"):
        db.execute(f"ALTER TABLE {table} DROP COLUMN host")
    db.commit()
    db.close()
    old = SqliteStore(path, readonly=True)
    records, problems = old.read_chain()
    assert not problems and not verify_links(records)[0]
    old.db.close()
    store = SqliteStore(path, host="h1")
    store.write([finding(2)])
    records, problems = store.read_chain()
    assert not problems and not verify_links(records)[0]
    assert [r["host"] for r in store.findings()] == ["", "h1"]
