"""A fleet's bus: events per second from host sentinels' spools to the central store, and the latency
from a finding written on a host to the central dashboard's event stream (``/api/events``).

A real ``nats-server -js`` (credentials from ``vmsentinel fleet creds``), a real central
``vmsentinel serve --fleet`` in its own process and N host links in this one, each publishing from
its own spool (a SQLite store with an outbox, as ``watch --bus`` keeps it). Baselines measured in
the same run: writing the same batches into the spool alone (what a host pays without a bus), and
a bare NATS publish-to-subscriber round trip on the same server (what any design over this bus pays).

    python benchmarks/bench_fleet.py --events 20000 --hosts 3 --samples 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.events import FindingRaised
from vmsentinel.fleet.connection import BusOptions
from vmsentinel.fleet.creds import make_fleet
from vmsentinel.fleet.host_link import HostLink
from vmsentinel.sinks.sqlite_store import SqliteStore

BATCH = 20  # events per sweep's batch, as a watch hands them to its store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "vmsentinel", *args], input=stdin, capture_output=True, text=True, check=True)
    return proc.stdout


def finding(host: str, i: int) -> Finding:
    return Finding("bench", f"{host} event {i}", Severity.LOW, ROOTKIT, "lab:bench", {"i": i, "host": host})


class Stream:
    """The central dashboard's event stream, read as a browser does; arrival time per finding title."""

    def __init__(self, url: str, token: str) -> None:
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        self.response = urllib.request.urlopen(request, timeout=600)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = ""
        self.ready.set()
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "FindingRaised":
                data = json.loads(line[6:])
                self.arrived[data["finding"]["title"]] = time.time()


def spool_baseline(folder: Path, events: int) -> float:
    """Events per second written into a spool with no bus: the host's own cost."""
    store = SqliteStore(folder / "baseline.db", host="b", spool=True)
    started = time.perf_counter()
    for start in range(0, events, BATCH):
        store.handle([FindingRaised(finding("b", i)) for i in range(start, min(events, start + BATCH))])
    seconds = time.perf_counter() - started
    store.close()
    return events / seconds


async def bare_round_trips(url: str, keys: Path, samples: int) -> list[float]:
    """Seconds from a core NATS publish by a host to a subscriber on the central key, on the same server
    (measured before the central service runs, so nothing else reads the subject)."""
    import nats

    host = await nats.connect(url, nkeys_seed=str(keys / "h1.nk"), inbox_prefix=b"_INBOX_h1")
    central = await nats.connect(url, nkeys_seed=str(keys / "central.nk"), inbox_prefix=b"_INBOX_central")
    times: list[float] = []
    got = asyncio.Event()

    async def on_msg(_msg: Any) -> None:
        got.set()

    await central.subscribe("vms.hb.h1", cb=on_msg)
    await central.flush()
    for _ in range(samples):
        got.clear()
        started = time.perf_counter()
        await host.publish("vms.hb.h1", b"x")
        await host.flush()
        await got.wait()
        times.append(time.perf_counter() - started)
    await host.close()
    await central.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events in the throughput run (all hosts together)")
    parser.add_argument("--hosts", type=int, default=3, help="host links publishing at once")
    parser.add_argument("--samples", type=int, default=300, help="findings timed one by one for the latency")
    args = parser.parse_args()
    if shutil.which("nats-server") is None:
        sys.exit("nats-server is not installed (apt-get install nats-server)")
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    nats_port, web_port = free_port(), free_port()
    hosts = [f"h{i + 1}" for i in range(args.hosts)]
    _, central_id, conf = make_fleet(root / "keys", hosts, listen=f"127.0.0.1:{nats_port}", store_dir=str(root / "js"))
    url = f"nats://127.0.0.1:{nats_port}"
    state = root / "central"
    processes: list[subprocess.Popen[bytes]] = []
    links: list[HostLink] = []
    try:
        processes.append(subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        bare = asyncio.run(bare_round_trips(url, root / "keys", args.samples))
        cli("user", "add", "bench", "--role", "viewer", "--state-dir", str(state), stdin="a long enough password\n")
        token = json.loads(cli("token", "new", "--user", "bench", "--state-dir", str(state), "--json"))["token"]
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmsentinel",
                    "serve",
                    "--fleet",
                    "--bus",
                    url,
                    "--bus-creds",
                    str(central_id.seed_file),
                    "--state-dir",
                    str(state),
                    "--listen",
                    f"127.0.0.1:{web_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        base = f"http://127.0.0.1:{web_port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        stream = Stream(base + "/api/events", token)
        stream.ready.wait(10)

        def received() -> int:
            request = urllib.request.Request(base + "/api/hosts", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                return int(json.load(answer)["received"])

        stores = [SqliteStore(root / f"{h}.db", host=h, spool=True) for h in hosts]
        for h, store in zip(hosts, stores, strict=True):
            link = HostLink(BusOptions(url, root / "keys" / f"{h}.nk").check(), h, store)
            link.start()
            links.append(link)
        # warm up: every link connected and through the stream once
        for h, store in zip(hosts, stores, strict=True):
            store.handle([FindingRaised(finding(h, -1))])
        while received() < len(hosts):
            time.sleep(0.2)

        baseline_rate = spool_baseline(root, args.events)
        per_host = args.events // len(hosts)
        before = received()
        started = time.perf_counter()

        def produce(h: str, store: SqliteStore) -> None:
            for start in range(0, per_host, BATCH):
                store.handle([FindingRaised(finding(h, i)) for i in range(start, min(per_host, start + BATCH))])

        producers = [threading.Thread(target=produce, args=(h, s)) for h, s in zip(hosts, stores, strict=True)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        written = time.perf_counter() - started
        total = per_host * len(hosts)
        while received() - before < total:
            time.sleep(0.05)
        through = time.perf_counter() - started
        rate = total / through

        latencies = []
        first = stores[0]
        for i in range(args.samples):
            f = finding(hosts[0], 10_000_000 + i)
            first.handle([FindingRaised(f)])
            deadline = time.time() + 30
            while f.title not in stream.arrived and time.time() < deadline:
                time.sleep(0.0005)
            if f.title in stream.arrived:
                latencies.append(stream.arrived[f.title] - f.time)
            time.sleep(0.02)

        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        median, p99 = statistics.median(latencies) * 1000, pct(latencies, 0.99) * 1000
        bare_median, bare_p99 = statistics.median(bare) * 1000, pct(bare, 0.99) * 1000
        print(f"hosts: {len(hosts)}, events: {total} (batches of {BATCH}), nats-server {url}")
        print(f"spool alone (baseline):          {baseline_rate:10.0f} events/s")
        print(f"hosts' spools written in         {written:10.2f} s")
        print(f"through the bus to the central:  {rate:10.0f} events/s   ratio to spool alone {rate / baseline_rate:.2f}")
        print(
            f"finding -> dashboard stream:     median {median:7.2f} ms  p99 {p99:7.2f} ms  ({len(latencies)} of {args.samples})"
        )
        print(f"bare NATS publish -> subscriber: median {bare_median:7.2f} ms  p99 {bare_p99:7.2f} ms  (baseline)")
        print(f"latency ratio to the bare bus:   median {median / bare_median:.1f}x  p99 {p99 / bare_p99:.1f}x")
    finally:
        for link in links:
            link.stop()
        for p in reversed(processes):
            p.terminate()
            p.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
