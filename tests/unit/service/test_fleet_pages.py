"""The central service of a fleet (``serve --fleet``): guests come from the hosts' heartbeats and are
named HOST/GUEST, every finding carries its host, and the API, the alert queue and the overview show
the host as a column and take it as a filter. No bus here: the hub is fed as its consumer would be."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.unit.service.test_api import _login as log_in

from vmsentinel import events as ev
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.fleet.connection import BusOptions
from vmsentinel.fleet.hub import FleetGuests, FleetHub, HostState, qualify
from vmsentinel.service.accounts import ServiceDb
from vmsentinel.service.alerts import Alerts
from vmsentinel.service.app import create_app
from vmsentinel.service.context import ServiceContext
from vmsentinel.service.live import LiveFeed
from vmsentinel.sinks.metrics import MetricsSink
from vmsentinel.sinks.sqlite_store import SqliteStore

PASSWORD = "a long enough password"


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], FleetHub]]:
    db = ServiceDb(tmp_path / "service.db")
    store = SqliteStore(tmp_path / "findings.db")
    live = LiveFeed(fleet=True)
    alerts = Alerts(store.path, db)
    live.locate = alerts.locate
    hub = FleetHub(BusOptions("nats://127.0.0.1:1"), store, [live], audit=lambda a, o, d: db.audit("bus", a, o, d))
    now = time.time()
    for host, guests in (("h1", ["lab:a", "lab:b"]), ("h2", ["lab:a"])):
        hub.hosts[host] = HostState(
            host, now, "0.1", [{"target": g, "interval": 1.0, "baselined": True, "ended": False} for g in guests]
        )
    for seq, (host, guest, severity) in enumerate(
        [("h1", "lab:a", Severity.CRITICAL), ("h1", "lab:b", Severity.HIGH), ("h2", "lab:a", Severity.CRITICAL)], start=1
    ):
        f = ev.FindingRaised(Finding("hidden_module", f"hidden on {host}", severity, ROOTKIT, guest, {"host": host}))
        central_event = qualify(host, f)
        store.handle_received(host, "0" * 16, seq, [central_event])
        live.handle([central_event])
    ctx = ServiceContext(db, alerts, live, FleetGuests(hub), MetricsSink(None), policy={"source": None, "loaded": now})
    db.add_user("ana", "admin", PASSWORD, by="test")
    headers = {"Authorization": f"Bearer {db.new_token('ana', by='test')[1]}"}
    with TestClient(create_app(ctx)) as client:
        yield client, headers, hub
    alerts.close()
    store.close()
    db.close()


def test_guests_and_findings_carry_their_host_and_filter_by_it(central: tuple[TestClient, dict[str, str], FleetHub]) -> None:
    client, headers, _ = central
    guests = client.get("/api/guests", headers=headers).json()
    assert [(g["host"], g["target"]) for g in guests] == [("h1", "h1/lab:a"), ("h1", "h1/lab:b"), ("h2", "h2/lab:a")]
    assert {g["target"]: g["findings"] for g in guests} == {"h1/lab:a": 1, "h1/lab:b": 1, "h2/lab:a": 1}
    h1 = client.get("/api/findings?host=h1", headers=headers).json()
    assert h1["total"] == 2 and {f["host"] for f in h1["findings"]} == {"h1"}
    assert client.get("/api/findings?host=h2&severity=critical", headers=headers).json()["total"] == 1
    hosts = client.get("/api/hosts", headers=headers).json()
    assert hosts["fleet"] and [h["host"] for h in hosts["hosts"]] == ["h1", "h2"] and not hosts["hosts"][0]["silent"]


def test_the_pages_show_the_host_column_and_filter(central: tuple[TestClient, dict[str, str], FleetHub]) -> None:
    client, _headers, _ = central
    login = log_in(client, "ana", PASSWORD)
    assert login.status_code in (302, 303), login.text
    queue = client.get("/alerts?host=h2&status=").text
    assert "<th>Host</th>" in queue and "hidden on h2" in queue and "hidden on h1" not in queue
    assert "<option selected>h2</option>" in queue.replace("selected >", "selected>")
    overview = client.get("/").text
    assert "<th>Host</th>" in overview and "h1/lab:b" in overview


def test_a_response_to_a_host_not_on_the_bus_fails_and_is_audited(central: tuple[TestClient, dict[str, str], FleetHub]) -> None:
    client, headers, _ = central
    answer = client.post("/api/guests/h1/lab:a/responses", headers=headers, json={"action": "pause", "reason": "testing"})
    assert answer.status_code == 200
    assert answer.json()[0]["ok"] is False and "not connected" in answer.json()[0]["detail"]
    audit = client.get("/api/audit", headers=headers).json()
    assert next(e["detail"] for e in audit if e["action"] == "response.pause").startswith("failed: not carried out")
    assert (
        client.post("/api/guests/h9/lab:a/responses", headers=headers, json={"action": "pause", "reason": "x" * 5}).status_code
        == 404
    )
