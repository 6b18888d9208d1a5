"""Detection latency: from an action inside a guest to the finding on disk.

A watcher (interval 1 s, memory scans every sweep) runs in a thread; the
benchmark repeats each technique N times inside a lab guest and measures the
time until the matching OCSF line is in the file, then prints p50/p99 and the
sweep cost.

    python benchmarks/bench_detection.py --trials 20

Techniques that need a kernel module (hiding, hooks) are one-shot per boot and
are covered by the tests, not repeated here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from vmsentinel import lab
from vmsentinel.errors import LabNotFound
from vmsentinel.policy.config import load_policy
from vmsentinel.sinks.ocsf import OcsfJsonl
from vmsentinel.watch.watcher import Watcher

SIGMA_RULE = """title: Netcat listener
id: 1c2d3e4f-0000-4000-8000-000000000001
status: test
logsource: {category: process_creation, product: linux}
detection:
  sel: {CommandLine|contains|all: ['nc ', ' -l']}
  condition: sel
level: high
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kernel", default=None)
    args = parser.parse_args()
    name = "bench-detect"
    booted = False
    try:
        lab.load(name)
    except LabNotFound:
        print(f"booting lab guest {name!r} ...", file=sys.stderr)
        lab.up(lab.LabSpec(name=name, kernel=args.kernel))
        booted = True
    work = Path(tempfile.mkdtemp(prefix="vms-bench-"))
    try:
        (work / "sigma").mkdir()
        (work / "sigma" / "nc.yml").write_text(SIGMA_RULE)
        (work / "policy.toml").write_text('interval = 1.0\n[sigma]\nrules = ["sigma"]\n')
        jsonl_path = work / "findings.jsonl"
        sink = OcsfJsonl(jsonl_path)
        watcher = Watcher([f"lab:{name}"], 1.0, [sink], policy=load_policy(work / "policy.toml"), scan_every=1)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        while not watcher.states[0].baseline:
            time.sleep(0.1)
        lab.run(name, "cp /bin/busybox /dev/shm/sleep")

        def trial(action: str, needle: str) -> float:
            start = time.monotonic()
            lab.run(name, action)
            while time.monotonic() - start < 30:
                text = jsonl_path.read_text() if jsonl_path.exists() else ""
                if needle in text:
                    return time.monotonic() - start
                time.sleep(0.02)
            raise SystemExit(f"no finding for {action!r} within 30 s")

        results: dict[str, list[float]] = {"exec from /dev/shm": [], "sigma process_creation": []}
        for i in range(args.trials):
            results["exec from /dev/shm"].append(
                trial(f"/dev/shm/sleep {200000 + i} >/dev/null 2>&1 &", f"/dev/shm/sleep {200000 + i}")
            )
            results["sigma process_creation"].append(trial(f"nc -l -p {5000 + i} >/dev/null 2>&1 &", f"nc -l -p {5000 + i}"))
        watcher.stop()
        thread.join(timeout=30)
        watcher.close()
        sink.close()
        lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
        sweeps = sorted(watcher.states[0].sweep_seconds)
        print(f"guest lab:{name}, watcher interval 1.0 s with memory scans every sweep, {args.trials} trials each")
        for technique, values in results.items():
            print(
                f"  {technique:24s} action -> finding on disk: p50 {percentile(values, 0.5) * 1000:6.0f} ms, "
                f"p99 {percentile(values, 0.99) * 1000:6.0f} ms, mean {statistics.mean(values) * 1000:6.0f} ms"
            )
        print(
            f"  sweep cost per guest: median {sweeps[len(sweeps) // 2] * 1000:.1f} ms, "
            f"max {sweeps[-1] * 1000:.1f} ms over {len(sweeps)} sweeps; {len(lines)} findings written"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if booted:
            lab.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
