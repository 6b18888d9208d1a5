"""The service under a large store: the alert queue (page and API) with 100,000 findings, and how
soon a finding written by the watch reaches a connected event stream.

A store is filled with N findings (default 100,000: 12 detectors, 5 severities, 40 guests, over 30
days, a tenth of them triaged), the real app is served by uvicorn on a loopback port, and a client
with a session (logged in through the login form) and one with an API token ask, each ``--rounds``
times:

* ``GET /alerts`` (the queue page, open findings, newest first) and ``GET /api/findings?status=open``,
* the same with filters (a guest and a severity),

against a baseline in the same run: the plain SQLite query of the same page on the store, with no
triage join and no HTTP. Then findings are emitted through the watch's sinks (store first, then the
live feed) while an event-stream client listens: the latency is from the store's write returning
to the event's arrival at the client.

    python benchmarks/bench_service.py [--findings 100000] [--rounds 30] [--events 200]
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn
from benchmarks._lab import scratch

from vmsentinel.detect.finding import HIDDEN_ARTIFACTS, KERNEL_MODULES, PRIV_ESC, ROOTKIT, Finding, Severity
from vmsentinel.events import Event, FindingRaised
from vmsentinel.service.accounts import ServiceDb
from vmsentinel.service.alerts import Alerts, triage
from vmsentinel.service.app import create_app
from vmsentinel.service.context import ServiceContext
from vmsentinel.service.live import LiveFeed
from vmsentinel.sinks.metrics import MetricsSink
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.watch.watcher import Watcher

DETECTORS = [
    ("syscall_hook", ROOTKIT), ("kernel_code_modified", ROOTKIT), ("idt_hook", ROOTKIT), ("mechanism_hook", ROOTKIT),
    ("hidden_process", HIDDEN_ARTIFACTS), ("hidden_module", HIDDEN_ARTIFACTS), ("unsigned_module", KERNEL_MODULES),
    ("root_credentials", PRIV_ESC), ("exec_from_tmp", HIDDEN_ARTIFACTS), ("yara", HIDDEN_ARTIFACTS), ("sigma", HIDDEN_ARTIFACTS),
    ("code_not_allowed", ROOTKIT),
]  # fmt: skip
PASSWORD = "benchmark password 1"


def fill(store: SqliteStore, count: int) -> None:
    rng = random.Random(7)
    now = time.time()
    batch: list[Finding] = []
    for i in range(count):
        name, attack = DETECTORS[i % len(DETECTORS)]
        batch.append(
            Finding(name, f"{name} #{i} on guest {i % 40}", Severity(rng.randint(1, 5)), attack, f"libvirt:vm{i % 40:02d}",
                    {"n": i, "address": f"{0xFFFFFFFF81000000 + i * 16:#x}"}, time=now - 30 * 86400 * (1 - i / count))
        )  # fmt: skip
        if len(batch) == 5000:
            store.write(batch)
            batch = []
            print(f"\r  {i + 1:,} findings written", end="", file=sys.stderr, flush=True)
    store.write(batch)
    print(file=sys.stderr)


def timed(call: Any, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms, p95 {sorted(values)[int(len(values) * 0.95)] * 1000:7.1f} ms"


class Stamped:
    """The store as a sink, noting when each finding's write returned."""

    def __init__(self, store: SqliteStore) -> None:
        self.store, self.written, self.written_wall = store, {}, {}

    def handle(self, events: list[Event]) -> None:
        self.store.handle(events)
        now, wall = time.perf_counter(), time.time()
        for e in events:
            if isinstance(e, FindingRaised):
                self.written[e.finding.key] = now
                self.written_wall[e.finding.key] = wall

    def close(self) -> None:
        pass


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LISTEN_JS = """
window.__arrived = {};
const stream = new EventSource('/api/events');
stream.onopen = () => { window.__open = true; };
stream.addEventListener('FindingRaised', (m) => {
  window.__arrived[JSON.parse(m.data).finding.key] = performance.timeOrigin + performance.now();
});
"""


def browser_latency(base: str, watcher: Watcher, stamped: Stamped, count: int) -> None:
    """The same, to an EventSource in Chromium (signed in through the login page): wall clock of the
    store's write against the browser's clock at the event (one host, one clock)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(base + "/login")
        driver.find_element(By.ID, "username").send_keys("bench")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        driver.get(base + "/live")
        driver.execute_script(LISTEN_JS)
        ends = time.monotonic() + 10
        while not driver.execute_script("return window.__open === true") and time.monotonic() < ends:
            time.sleep(0.05)
        keys = []
        for i in range(count):
            f = Finding("syscall_hook", f"browser #{i}", Severity.HIGH, ROOTKIT, "libvirt:vm02", {"browser": i})
            keys.append(f.key)
            watcher.emit([FindingRaised(f)])
            time.sleep(0.02)
        time.sleep(1.0)
        arrived = driver.execute_script("return window.__arrived")
    finally:
        driver.quit()
    lat = [arrived[k] / 1000 - stamped.written_wall[k] for k in keys if k in arrived]
    worst = max(lat) * 1000 if lat else float("nan")
    print(f"browser (Chromium EventSource): {len(lat)} of {count} arrived; written -> received {ms(lat)}, max {worst:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--no-browser", dest="browser", action="store_false", help="skip the Chromium event-stream measurement")
    args = parser.parse_args()
    with scratch() as folder:
        db, store, live = ServiceDb(folder / "service.db"), SqliteStore(folder / "findings.db"), LiveFeed()
        started = time.perf_counter()
        fill(store, args.findings)
        print(f"store: {args.findings:,} findings in {time.perf_counter() - started:.1f} s", flush=True)
        alerts = Alerts(store.path, db)
        live.locate = alerts.locate
        db.add_user("bench", "analyst", PASSWORD, by="bench")
        token = db.new_token("bench", by="bench")[1]
        triage(db, list(range(1, args.findings + 1, 10)), "acknowledge", "bench", "triaged in bulk")
        stamped = Stamped(store)
        watcher = Watcher([], sinks=[stamped, live])
        ctx = ServiceContext(db, alerts, live, watcher, MetricsSink(None))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
        page = httpx.Client(base_url=base)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.get("/login").text)
        assert csrf is not None
        assert page.post("/login", data={"username": "bench", "password": PASSWORD, "csrf": csrf.group(1)}).status_code == 303

        raw = store.db
        one = "status=open&guest=libvirt:vm07&severity=critical"
        cases = [
            ("open findings", "/alerts?status=open", "/api/findings?status=open", ""),
            (
                "one guest, critical",
                f"/alerts?{one}",
                f"/api/findings?{one}",
                " WHERE target = 'libvirt:vm07' AND severity = 'critical'",
            ),
        ]
        print(f"{'query':22} {'queue page':>36} {'API':>36} {'plain SQLite':>36}  ratios page/API to SQLite")
        for name, page_url, api_url, where in cases:
            page_t = timed(lambda u=page_url: page.get(u).raise_for_status(), args.rounds)
            api_t = timed(lambda u=api_url: api.get(u).raise_for_status(), args.rounds)
            sql = f"SELECT * FROM findings{where} ORDER BY id DESC LIMIT 50"
            raw_t = timed(lambda q=sql: raw.execute(q).fetchall(), args.rounds)
            r = statistics.median(raw_t)
            ratios = f"{statistics.median(page_t) / r:.0f}x / {statistics.median(api_t) / r:.0f}x"
            print(f"{name:22} {ms(page_t):>36} {ms(api_t):>36} {ms(raw_t):>36}  {ratios}")

        arrived: dict[str, float] = {}
        ready = threading.Event()

        def listen() -> None:
            with (
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=None) as client,
                client.stream("GET", "/api/events") as stream,
            ):
                for line in stream.iter_lines():
                    if line.startswith("retry:"):
                        ready.set()
                    m = re.search(r'"key": "([0-9a-f]+)"', line) if line.startswith("data:") else None
                    if m:
                        arrived[m.group(1)] = time.perf_counter()
                        if len(arrived) >= args.events:
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        ready.wait(10)
        time.sleep(0.2)
        for i in range(args.events):
            f = Finding("syscall_hook", f"live #{i}", Severity.HIGH, ROOTKIT, "libvirt:vm01", {"live": i})
            watcher.emit([FindingRaised(f)])
            time.sleep(0.02)
        listener.join(10)
        lat = [arrived[k] - stamped.written[k] for k in stamped.written if k in arrived]
        worst = max(lat) * 1000
        print(f"event stream: {len(lat)} of {args.events} findings arrived; written -> received {ms(lat)}, max {worst:.1f} ms")
        if args.browser and Path(CHROMIUM).exists():
            browser_latency(base, watcher, stamped, args.events)
        server.should_exit = True
        alerts.close()
        store.close()
        db.close()


if __name__ == "__main__":
    main()
