"""A fleet on a real bus: one ``nats-server -js`` on loopback, three host sentinels in processes of
their own (two watching live lab guests of 6.12 and 6.1, one a memory image) and one central
``serve --fleet``. Every event each host spooled is kept once centrally, through a restart of the
bus and a ``kill -9`` of a host sentinel; credentials bind each host to its own subjects; a pause
asked for centrally is carried out only where the host's signed policy allows it, and audited."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import Guest, LabPool, vmsentinel
from tests.guest.helpers import paused, qmp_of
from vmsentinel.access import open_connector
from vmsentinel.lab.kmod import build_module, insert_module
from vmsentinel.trust.bundle import pack_bundle
from vmsentinel.trust.signing import new_key, sign_file

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
PASSWORD = "correct horse battery staple"
SPAWNER = "setsid sh -c 'while :; do sleep 0.3; done' </dev/null >/dev/null 2>&1 &"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(check: Callable[[], Any], seconds: float, what: str, logs: list[Path] = ()) -> Any:  # type: ignore[assignment]
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        try:
            value = check()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, OSError, sqlite3.Error):
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in logs if p.exists())
    raise AssertionError(f"waited {seconds:g} s for {what}\n{tails}")


@dataclass
class Process:
    """A vmsentinel or nats-server process with its output in a log file."""

    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self.popen = None
        return code

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmsentinel", *args]


@dataclass
class Fleet:
    root: Path
    nats_port: int
    web_port: int
    keys: Path
    processes: dict[str, Process] = field(default_factory=dict)
    token: str = ""

    @property
    def bus(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def central_db(self) -> Path:
        return self.root / "central" / "findings.db"

    def start_nats(self) -> None:
        self.processes["nats"] = Process(
            ["nats-server", "-c", str(self.keys / "nats-server.conf")], self.root / "nats.log"
        ).start()
        until(lambda: "Server is ready" in self.processes["nats"].text(), 30, "nats-server ready", [self.root / "nats.log"])

    def host(self, name: str, target: str, *extra: str) -> Process:
        process = Process(
            cli(
                "watch",
                target,
                "--bus",
                self.bus,
                "--bus-creds",
                str(self.keys / f"{name}.nk"),
                "--host-id",
                name,
                "--db",
                str(self.root / f"{name}.db"),
                "--ocsf",
                str(self.root / f"{name}.jsonl"),
                "--interval",
                "1",
                "--workers",
                "0",
                *extra,
            ),
            self.root / f"{name}.log",
        ).start()
        self.processes[name] = process
        return process

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        if body is not None:
            request.data = json.dumps(body).encode()
        with urllib.request.urlopen(request, timeout=700) as answer:
            return json.load(answer)

    def logs(self) -> list[Path]:
        return [p.log for p in self.processes.values()]

    def close(self) -> None:
        for name, process in self.processes.items():
            if name != "nats":
                process.stop()
        if "nats" in self.processes:
            self.processes["nats"].stop()


def host_record(db: Path) -> tuple[str, set[int], list[tuple[Any, ...]], int]:
    """(store id, outbox ids, findings as comparable rows, process events) of a host's store."""
    con = sqlite3.connect(db)
    try:
        store = con.execute("SELECT value FROM spool_meta WHERE key = 'store_id'").fetchone()[0]
        ids = {r[0] for r in con.execute("SELECT id FROM outbox")}
        findings = con.execute("SELECT target, detector, title, evidence FROM findings ORDER BY id").fetchall()
        processes = con.execute("SELECT COUNT(*) FROM process_events").fetchone()[0]
        cursor = con.execute("SELECT last_id FROM bus_cursor").fetchone()
        assert cursor is not None and cursor[0] == max(ids), f"{db}: the link stopped before the bus had everything"
    finally:
        con.close()
    return store, ids, findings, processes


@pytest.fixture
def fleet(lab_pool: LabPool, tmp_path: Path) -> Iterator[Fleet]:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed (scripts/setup installs it)")
    fleet = Fleet(tmp_path, free_port(), free_port(), tmp_path / "keys")
    vmsentinel(
        "fleet",
        "creds",
        "h1",
        "h2",
        "h3",
        "-o",
        str(fleet.keys),
        "--listen",
        f"127.0.0.1:{fleet.nats_port}",
        "--store-dir",
        str(tmp_path / "jetstream"),
    )
    state = tmp_path / "central"
    subprocess.run(
        cli("user", "add", "ana", "--role", "admin", "--state-dir", str(state)),
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
    )
    fleet.token = json.loads(vmsentinel("token", "new", "--user", "ana", "--state-dir", str(state), "--json").stdout)["token"]
    try:
        yield fleet
    finally:
        fleet.close()


def load_rootkit(guest: Guest, tmp: Path) -> None:
    ko = build_module(str(guest.info["kernel_package"]), ROOTKIT, tmp)
    insert_module(
        guest.name, ko, "hide_self=1 syscall_table=0x$(sym sys_call_table) syscall_nr=39 patch_addr=0x$(sym __x64_sys_getpid)"
    )


def signed_policy(tmp: Path, remote: list[str]) -> tuple[Path, Path]:
    folder = tmp / f"policy-{'-'.join(remote) or 'none'}"
    folder.mkdir()
    (folder / "policy.toml").write_text(f"interval = 1.0\n[fleet]\nremote_actions = {json.dumps(remote)}\n")
    secret, public = new_key(tmp / f"ops-{folder.name}")
    bundle = tmp / f"{folder.name}.vmspolicy"
    pack_bundle(folder, bundle)
    sign_file(bundle, secret)
    return bundle, public


def guest_status(guest: Guest) -> str:
    with open_connector(guest.target) as target:
        return str(qmp_of(target).command("query-status")["status"])


async def publish_as(bus: str, seed: Path, subject: str, body: bytes) -> list[str]:
    """Publish once with ``seed``'s credentials; the errors the server sent back."""
    import nats

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(bus, nkeys_seed=str(seed), error_cb=on_error, inbox_prefix=b"_INBOX_h1", allow_reconnect=False)
    await nc.publish(subject, body)
    await nc.flush()
    await asyncio.sleep(0.5)
    await nc.close()
    return errors


def test_three_hosts_over_a_bus_that_restarts_lose_nothing_and_keep_each_event_once(
    fleet: Fleet, lab_pool: LabPool, tmp_path: Path
) -> None:
    a, b = lab_pool.fresh("6.12", "fleet"), lab_pool.fresh("6.1", "fleet")
    load_rootkit(b, tmp_path)  # h2 and h3 find it at their first look
    core = tmp_path / "b.core"
    with open_connector(b.target) as target, paused(qmp_of(target)):
        qmp_of(target).dump_guest_memory(str(core))
    for g in (a, b):
        g.sh(SPAWNER)  # processes start and stop all along: events flow while the bus goes away
    allow_pause, public = signed_policy(tmp_path, ["pause", "resume"])

    fleet.start_nats()
    central = Process(
        cli(
            "serve",
            "--fleet",
            "--bus",
            fleet.bus,
            "--bus-creds",
            str(fleet.keys / "central.nk"),
            "--state-dir",
            str(fleet.root / "central"),
            "--listen",
            f"127.0.0.1:{fleet.web_port}",
        ),
        fleet.root / "central.log",
    ).start()
    fleet.processes["central"] = central
    fleet.host("h1", a.target, "--policy", str(allow_pause), "--trusted-key", str(public))
    fleet.host("h2", b.target)
    fleet.host("h3", str(core))

    def hosts() -> dict[str, dict[str, Any]]:
        return {h["host"]: h for h in fleet.api("/api/hosts")["hosts"]}

    until(
        lambda: all(hosts().get(h, {}).get("received") for h in ("h1", "h2", "h3")),
        300,
        "events from all three hosts",
        fleet.logs(),
    )
    until(
        lambda: {"h2", "h3"} <= {f["host"] for f in fleet.api("/api/findings?severity=critical&limit=500")["findings"]},
        300,
        "the rootkit found by h2 (live) and h3 (image)",
        fleet.logs(),
    )

    load_rootkit(a, tmp_path)  # a finding mid-stream on h1
    fleet.processes["nats"].stop()  # the bus goes away with events in flight ...
    time.sleep(6)
    fleet.processes["h2"].stop(signal.SIGKILL)  # ... and a host sentinel dies without a word
    fleet.start_nats()  # the same JetStream store: the stream and the central consumer are still there
    fleet.host("h2", b.target)
    until(
        lambda: "h1" in {f["host"] for f in fleet.api("/api/findings?severity=critical&limit=500")["findings"]},
        300,
        "h1's rootkit finding after the bus came back",
        fleet.logs(),
    )

    # a response from the central dashboard: carried out where the host's policy allows it, refused elsewhere
    until(lambda: {"h1", "h2"} <= set(hosts()), 60, "heartbeats")
    done = fleet.api(f"/api/guests/h1/{a.target}/responses", {"action": "pause", "reason": "fleet test"})
    assert done and all(r["ok"] for r in done) and "paused" in done[0]["detail"], done
    refused = fleet.api(f"/api/guests/h2/{b.target}/responses", {"action": "pause", "reason": "not allowed there"})
    assert refused and not any(r["ok"] for r in refused) and "refused" in refused[0]["detail"], refused
    audit = fleet.api("/api/audit?limit=50")
    for guest in (f"h1/{a.target}", f"h2/{b.target}"):
        entries = [e for e in audit if e["target"] == guest and e["action"] == "response.pause"]
        assert {e["detail"] for e in entries} >= {"requested"} and len(entries) == 2, entries
    until(
        lambda: (
            sqlite3.connect(fleet.central_db).execute("SELECT COUNT(*) FROM responses WHERE host = 'h2' AND ok = 0").fetchone()[0]
        ),
        60,
        "h2's refusal recorded on h2 and carried to the central store",
        fleet.logs(),
    )

    # a host with the wrong key is turned away; a host may not speak for another
    wrong = tmp_path / "wrong.nk"
    from vmsentinel.fleet.creds import new_seed

    wrong.write_bytes(new_seed()[0])
    rogue = subprocess.run(
        cli(
            "watch",
            str(core),
            "--bus",
            fleet.bus,
            "--bus-creds",
            str(wrong),
            "--host-id",
            "h4",
            "--db",
            str(tmp_path / "h4.db"),
            "--sweeps",
            "2",
            "--workers",
            "0",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "authorization violation" in rogue.stderr.lower(), rogue.stderr[-2000:]
    assert "authentication error" in fleet.processes["nats"].text().lower()  # the server's log names the key it refused
    from vmsentinel.fleet.subjects import event_subject

    errors = asyncio.run(publish_as(fleet.bus, fleet.keys / "h1.nk", event_subject("h2", "lab:x", "GuestAdded"), b"{}"))
    assert any("permissions violation" in e.lower() for e in errors), errors
    assert (
        "publish violation" in fleet.processes["nats"].text().lower()
        or "permissions violation" in fleet.processes["nats"].text().lower()
    )
    forged = json.dumps(
        {
            "host": "h2",
            "store": "0" * 16,
            "seq": 1,
            "sent": time.time(),
            "event": {"kind": "GuestAdded", "target": "lab:x", "reason": "forged"},
        }
    ).encode()
    asyncio.run(publish_as(fleet.bus, fleet.keys / "h1.nk", event_subject("h1", "lab:x", "GuestAdded"), forged))
    until(
        lambda: any(
            e["action"] == "bus.refused" and "claims to come from host 'h2'" in e["detail"]
            for e in fleet.api("/api/audit?limit=200")
        ),
        60,
        "the forged event refused and audited",
        fleet.logs(),
    )

    # everything each host spooled is kept centrally, once
    for name in ("h1", "h2", "h3"):
        assert fleet.processes[name].stop() == 0, fleet.processes[name].text()[-3000:]
    con = sqlite3.connect(fleet.central_db)
    for name in ("h1", "h2", "h3"):
        store, ids, findings, process_events = host_record(fleet.root / f"{name}.db")

        def received(name: str = name, store: str = store) -> set[int]:
            rows = con.execute("SELECT seq FROM bus_received WHERE host = ? AND store = ?", (name, store))
            return {r[0] for r in rows}

        until(lambda ids=ids, received=received: received() >= ids, 120, f"{name}'s events at the central side", fleet.logs())
        assert received() == ids  # every one, and nothing it did not send
        assert con.execute("SELECT COUNT(*) FROM bus_received WHERE host = ? AND store != ?", (name, store)).fetchone()[0] == 0
        central_rows = con.execute(
            "SELECT target, detector, title, evidence FROM findings WHERE host = ? ORDER BY id", (name,)
        ).fetchall()
        assert Counter((f"{name}/{t}", d, ti, e) for t, d, ti, e in findings) == Counter(central_rows)  # once each
        assert con.execute("SELECT COUNT(*) FROM process_events WHERE host = ?", (name,)).fetchone()[0] == process_events
        assert fleet.api(f"/api/findings?host={name}&status=open&status=acknowledged&status=closed&status=suppressed&limit=1")[
            "total"
        ] == len(findings)
        if name != "h3":
            assert process_events > 0
    for name in ("h1", "h2", "h3"):
        assert "Traceback" not in fleet.processes[name].text(), name
    # QEMU serves one QMP client at a time: its own word on the pause, now that the sentinels let go
    assert guest_status(a) == "paused" and guest_status(b) == "running"
    with open_connector(a.target) as target:
        qmp_of(target).cont()
