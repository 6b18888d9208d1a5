"""Host links and the central hub over a real ``nats-server -js`` (no guests: events written into the
hosts' spools directly). The bus restarts mid-stream, a host republishes everything it already sent
(as after a crash before its cursor moved), the hub restarts: every event is kept exactly once."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.tls import self_signed

from vmsentinel import events as ev
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.fleet.connection import BusOptions
from vmsentinel.fleet.creds import make_fleet
from vmsentinel.fleet.host_link import HostLink
from vmsentinel.fleet.hub import FleetGuests, FleetHub
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks.sqlite_store import SqliteStore


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {seconds:g} s for {what}")


class Server:
    def __init__(self, conf: Path, log: Path) -> None:
        self.conf, self.log = conf, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        before = self.log.read_text().count("Server is ready") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(["nats-server", "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.log.read_text().count("Server is ready") > before, 20, "nats-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[str, Path, Server]]:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed (scripts/setup installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, _, conf = make_fleet(tmp_path / "keys", ["h1", "h2"], listen=f"127.0.0.1:{port}", store_dir=str(tmp_path / "js"))
    server = Server(conf, tmp_path / "nats.log")
    server.start()
    try:
        yield f"nats://127.0.0.1:{port}", tmp_path / "keys", server
    finally:
        server.stop()


class Control:
    """What a watch answers to the central side: one guest, a policy that allows pause only."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.done: list[str] = []

    def guests(self) -> list[dict[str, Any]]:
        return [{"target": "lab:a", "interval": 1.0, "baselined": True, "ended": False, "sweeps": 1}]

    def allowed(self) -> list[str]:
        return ["pause"]

    def act(self, target: str, actions: list[str], key: str) -> list[ResponseRecord]:
        self.done.extend(actions)
        records = [ResponseRecord(time.time(), target, key, a, True, "VM status paused") for a in actions]
        self.store.handle([ev.ResponseDone(r) for r in records])
        return records

    def view(self, target: str, name: str) -> Any:
        from concurrent.futures import Future

        f: Future[dict[str, object]] = Future()
        f.set_result({"records": [{"pid": 1, "name": "init"}], "problems": []})
        return f

    def record(self, records: list[ResponseRecord]) -> None:
        self.store.handle([ev.ResponseDone(r) for r in records])


async def heartbeats_kept(url: str, seed: Path) -> int:
    import nats

    from vmsentinel.fleet.hub import HEARTBEAT_STREAM

    nc = await nats.connect(url, nkeys_seed=str(seed), inbox_prefix=b"_INBOX_central")
    try:
        return int((await nc.jetstream().stream_info(HEARTBEAT_STREAM)).state.messages)
    finally:
        await nc.close()


def finding(host: str, i: int) -> ev.FindingRaised:
    return ev.FindingRaised(Finding("syscall_hook", f"{host} {i}", Severity.HIGH, ROOTKIT, "lab:a", {"nr": i}))


def test_every_event_is_kept_once_through_restarts_and_resends(bus: tuple[str, Path, Server], tmp_path: Path) -> None:
    url, keys, server = bus
    audit: list[tuple[str, str, str]] = []
    central = SqliteStore(tmp_path / "central.db")
    hub = FleetHub(BusOptions(url, keys / "central.nk"), central, audit=lambda *a: audit.append(a))
    hub.start()
    wait_for(hub.ready.is_set, 20, "the hub consuming")
    stores = {h: SqliteStore(tmp_path / f"{h}.db", host=h, spool=True) for h in ("h1", "h2")}
    controls = {h: Control(s) for h, s in stores.items()}
    links = {h: HostLink(BusOptions(url, keys / f"{h}.nk"), h, s, controls[h], heartbeat=0.2) for h, s in stores.items()}
    for link in links.values():
        link.start()
    try:
        for i in range(100):
            for h, s in stores.items():
                s.handle([finding(h, i), ev.ProcessStarted("lab:a", 1000 + i, 1, "sh", "/bin/sh", "sh", 0)])
            if i == 40:
                server.stop()  # the bus goes away mid-stream; the spools fill
            if i == 60:
                server.start()
        wait_for(lambda: hub.stats.received >= 400, 60, "every event at the central side")
        # a host that crashed before its cursor moved sends everything again
        stores["h1"].db.execute("DELETE FROM bus_cursor")
        stores["h1"].db.commit()
        links["h1"].stop()
        links["h1"] = HostLink(BusOptions(url, keys / "h1.nk"), "h1", stores["h1"], controls["h1"], heartbeat=0.2)
        links["h1"].start()
        wait_for(lambda: links["h1"].status.cursor == 200, 30, "h1 republished")
        time.sleep(0.5)
        # and the hub restarts: its durable consumer resumes where it was
        hub.stop()
        for i in range(100, 110):
            stores["h2"].handle([finding("h2", i)])
        hub = FleetHub(BusOptions(url, keys / "central.nk"), central, audit=lambda *a: audit.append(a))
        hub.start()
        wait_for(
            lambda: central.db.execute("SELECT COUNT(*) FROM findings").fetchone()[0] >= 210, 30, "the rest after the restart"
        )
        time.sleep(0.5)
        rows = central.db.execute("SELECT host, title FROM findings").fetchall()
        assert len(rows) == len(set(rows)) == 210
        assert central.db.execute("SELECT COUNT(*) FROM process_events").fetchone()[0] == 200
        assert {r[0] for r in central.db.execute("SELECT DISTINCT target FROM findings")} == {"h1/lab:a", "h2/lab:a"}

        # a response asked centrally: carried out where allowed, refused (and recorded) where not
        wait_for(lambda: {"h1/lab:a", "h2/lab:a"} <= {s.target for s in FleetGuests(hub).states}, 10, "heartbeats")
        guests = FleetGuests(hub)
        done = guests.act("h1/lab:a", ["pause"], "k", by="ana", reason="test")
        assert [r.ok for r in done] == [True] and controls["h1"].done == ["pause"]
        refused = guests.act("h2/lab:a", ["dump"], "k", by="ana", reason="test")
        assert not refused[0].ok and "refused" in refused[0].detail and controls["h2"].done == []
        assert guests.view("h1/lab:a", "processes").result(10)["records"] == [{"pid": 1, "name": "init"}]
        with pytest.raises(ValueError, match="watches no guest"):
            guests.view("h1/lab:nope", "processes").result(10)
        wait_for(
            lambda: central.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2,
            10,
            "both responses recorded centrally",
        )
        assert hub.stats.refused == 0 and not audit
        assert asyncio.run(heartbeats_kept(url, keys / "central.nk")) > 0  # metrics on JetStream too, for an hour
    finally:
        for link in links.values():
            link.stop()
        hub.stop()


def test_over_tls_events_arrive_and_a_client_that_does_not_trust_the_server_is_kept_out(tmp_path: Path) -> None:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed (scripts/setup installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cert, key = self_signed(tmp_path)
    keys = tmp_path / "keys"
    _, _, conf = make_fleet(keys, ["h1"], listen=f"127.0.0.1:{port}", store_dir=str(tmp_path / "js"), tls=(str(cert), str(key)))
    server = Server(conf, tmp_path / "nats.log")
    server.start()
    url = f"tls://127.0.0.1:{port}"
    central = SqliteStore(tmp_path / "central.db")
    hub = FleetHub(BusOptions(url, keys / "central.nk", tls_ca=cert).check(), central)
    store = SqliteStore(tmp_path / "h1.db", host="h1", spool=True)
    link = HostLink(BusOptions(url, keys / "h1.nk", tls_ca=cert).check(), "h1", store)
    untrusting = HostLink(BusOptions(url, keys / "h1.nk").check(), "h1", SqliteStore(tmp_path / "x.db", host="h1", spool=True))
    try:
        hub.start()
        link.start()
        untrusting.start()
        store.handle([finding("h1", i) for i in range(5)])
        wait_for(lambda: hub.stats.received == 5, 30, "the events over TLS")
        wait_for(lambda: untrusting.status.last_error, 30, "the untrusting client's error")
        assert "certificate" in str(untrusting.status.last_error).lower() and not untrusting.status.connected
    finally:
        untrusting.stop()
        link.stop()
        hub.stop()
        server.stop()
