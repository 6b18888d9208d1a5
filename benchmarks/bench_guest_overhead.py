"""What watching costs the guest: a CPU-bound and a memory-bound workload (``benchmarks/guest/
workload.c``, built static) run inside a lab guest, alternately without and with ``vmsentinel watch``
on that guest at one sweep per second, and the slowdown of each (medians; the guest times its own
work with CLOCK_MONOTONIC).

Runs alternate (without, with, without, ...) so that drift of the host hits both sides alike. The
watch is the command line a user runs (``vmsentinel watch lab:NAME --interval 1``), started before
the runs it covers and left to take its baseline first.

    python benchmarks/bench_guest_overhead.py [--kernel 6.1] [--rounds 7] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._lab import lab_guest, scratch

from vmsentinel import lab

WORKLOAD = Path(__file__).parent / "guest" / "workload.c"


def _run(name: str, command: str) -> float:
    """Run the workload in the guest; the milliseconds it reports."""
    out = lab.run(name, f"/root/programs/workload {command}").stdout.decode().split()
    return float(out[1])


def _calibrated(name: str, kind: str, seconds: float) -> str:
    """Arguments that make ``kind`` take about ``seconds`` in this guest: the difference between a short
    and a longer run is the work alone, without starting the program and setting up its buffer."""
    if kind == "cpu":
        short, longer = _run(name, "cpu 10000000"), _run(name, "cpu 110000000")
        per_round = max(1e-9, (longer - short) / 100_000_000)
        return f"cpu {max(1, round(seconds * 1000 / per_round))}"
    short, longer = _run(name, "mem 32 1"), _run(name, "mem 32 21")
    per_pass = max(0.1, (longer - short) / 20)
    return f"mem 32 {max(1, round(seconds * 1000 / per_pass))}"


def _start_watch(name: str, work: Path) -> subprocess.Popen[bytes]:
    vmsentinel = shutil.which("vmsentinel", path=str(Path(sys.executable).parent)) or "vmsentinel"
    log = (work / "watch.log").open("wb")
    command = [vmsentinel, "watch", f"lab:{name}", "--interval", "1", "--db", str(work / "w.db"), "--ocsf", str(work / "w.jsonl")]
    watch = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while b"baseline" not in (work / "watch.log").read_bytes():
        if watch.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the watch did not take its baseline: {(work / 'watch.log').read_text()[-2000:]}")
        time.sleep(0.2)
    time.sleep(2)  # a few sweeps past the baseline: the steady state is what is measured
    return watch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="6.1")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each workload on each side")
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long one run takes in the guest")
    parser.add_argument("--cpu", help="the CPU workload's arguments instead of calibrating (e.g. 'cpu 546149645')")
    parser.add_argument("--mem", help="the memory workload's arguments instead of calibrating (e.g. 'mem 32 2812')")
    args = parser.parse_args()
    with scratch() as work:
        programs = work / "programs"
        programs.mkdir()
        subprocess.run(["gcc", "-static", "-O2", "-o", str(programs / "workload"), str(WORKLOAD)], check=True)
        spec = lab.LabSpec(name="bench-overhead", kernel=args.kernel, add=((str(programs), "/root/programs"),))
        with lab_guest(spec) as guest:
            workloads = {kind: getattr(args, kind) or _calibrated(guest.name, kind, args.seconds) for kind in ("cpu", "mem")}
            times: dict[tuple[str, bool], list[float]] = {(k, w): [] for k in workloads for w in (False, True)}
            for round_ in range(args.rounds):
                for watched in (False, True):
                    watch = _start_watch(guest.name, work) if watched else None
                    try:
                        for kind, command in workloads.items():
                            times[(kind, watched)].append(_run(guest.name, command))
                    finally:
                        if watch is not None:
                            watch.send_signal(signal.SIGINT)
                            watch.wait(timeout=60)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        host = f"host {os.cpu_count()} cores"
        print(f"lab guest ({args.kernel}, TCG), {args.rounds} runs each, watch at 1 Hz with the built-in policy; {host}")
        for kind, command in workloads.items():
            alone, watched = statistics.median(times[(kind, False)]), statistics.median(times[(kind, True)])
            spread = statistics.pstdev(times[(kind, False)]) / alone * 100
            print(
                f"  {kind:4s} ({command}): {alone:8.1f} ms alone, {watched:8.1f} ms watched: "
                f"slowdown {(watched / alone - 1) * 100:+5.2f}% (run-to-run spread alone {spread:.2f}%)"
            )
            print(f"       alone   {' '.join(f'{t:.0f}' for t in times[(kind, False)])}")
            print(f"       watched {' '.join(f'{t:.0f}' for t in times[(kind, True)])}")


if __name__ == "__main__":
    main()
