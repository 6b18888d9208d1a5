"""One sentinel, many guests: ``watch`` (worker processes, the built-in policy) over N guests at one
sweep per second, for each N given, and per N the median and p99 sweep time, missed sweeps, CPU per
guest sweep and the anonymous memory of the whole sentinel (the watcher and its workers).

The guests are a memory image of a real lab guest (6.1, a crowd of processes), reached through N
names (symlinks: one page cache, N readers, N baselines) plus the live lab guests given with
``--live NAME`` (each one ``lab:NAME``). Ratios are printed against N = the first value of ``--guests``
measured in the same run.

    python benchmarks/bench_scale.py --guests 1,10,25,50 --seconds 120 --live b1 --live b2 --live b3 --live b4

Not done yet (issue 12): the PNG plot (matplotlib is not a dependency), booting the live guests itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._lab import crowd, lab_guest, scratch

from vmsentinel import lab
from vmsentinel.events import Event, SweepDone, SweepMissed
from vmsentinel.watch.watcher import Watcher


class Times:
    def __init__(self) -> None:
        self.sweeps: list[float] = []
        self.missed = 0
        self.lock = threading.Lock()

    def handle(self, events: Sequence[Event]) -> None:
        with self.lock:
            for e in events:
                if isinstance(e, SweepDone):
                    self.sweeps.append(e.seconds)
                elif isinstance(e, SweepMissed):
                    self.missed += e.count

    def close(self) -> None:
        pass


def _anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(targets: list[str], seconds: float, workers: int) -> dict[str, float]:
    times = Times()
    watcher = Watcher(targets, interval=1.0, sinks=[times], workers=workers)
    runner = threading.Thread(target=watcher.run)
    runner.start()
    while watcher.pool is None or not all(s.baselined for s in watcher.states):
        time.sleep(0.2)
    pids = [os.getpid(), *watcher.pool.pids()]
    with times.lock:
        times.sweeps.clear()
        times.missed = 0
    cpu0 = [_cpu_seconds(p) for p in pids]
    time.sleep(seconds)
    per_process = [_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    cpu = sum(per_process)
    print("CPU s per process (watcher first):", [round(c, 1) for c in per_process], file=sys.stderr)
    anon = sum(_anon_kib(p) for p in pids) / 1024
    print("anon MB per process (watcher first):", [round(_anon_kib(p) / 1024) for p in pids], file=sys.stderr)
    watcher.stop()
    runner.join()
    watcher.close()
    with times.lock:
        sweeps = sorted(times.sweeps)
        missed = times.missed
    return {
        "median_ms": statistics.median(sweeps) * 1000,
        "p99_ms": sweeps[min(len(sweeps) - 1, int(len(sweeps) * 0.99))] * 1000,
        "missed": missed,
        "sweeps": len(sweeps),
        "cpu_ms_per_sweep": cpu / max(1, len(sweeps)) * 1000,
        "cpu_percent": cpu / seconds * 100,
        "anon_mb": anon,
    }


def image_of_lab_guest(core: Path, processes: int) -> Path:
    """A memory image of a lab guest (6.1) running ``processes`` sleepers."""
    from vmsentinel.access import open_connector

    with lab_guest(lab.LabSpec("bench-scale", kernel="6.1")) as guest:
        crowd(guest.name, processes)
        with open_connector(f"lab:{guest.name}") as target:
            assert target.control is not None
            target.control.dump(core)
    return core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guests", default="1,10,25,50", help="numbers of guests, comma-separated")
    parser.add_argument("--seconds", type=float, default=120.0, help="steady-state seconds measured per N")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--live", action="append", default=[], help="a running lab guest to add (repeatable)")
    parser.add_argument("--processes", type=int, default=200, help="processes in the imaged guest")
    parser.add_argument("--image", type=Path, help="an existing memory image to use instead of imaging a lab guest")
    args = parser.parse_args()
    counts = [int(n) for n in args.guests.split(",")]
    with scratch() as folder:
        core = args.image.resolve() if args.image else image_of_lab_guest(folder / "guest.core", args.processes)
        live = [f"lab:{name}" for name in args.live]
        first: dict[str, float] | None = None
        header = f"{'N':>4} {'median ms':>10} {'p99 ms':>8} {'missed':>7} {'CPU ms/sweep':>13} {'CPU %':>6} {'anon MB':>8}"
        print(f"{header}  ratios to N={counts[0]}")
        for n in counts:
            images = []
            for i in range(max(0, n - len(live))):
                link = folder / f"img{i}.core"
                if not link.exists():
                    link.symlink_to(core)
                images.append(str(link))
            result = measure([*live[:n], *images], args.seconds, args.workers)
            first = first or result
            ratio = f"sweep {result['median_ms'] / first['median_ms']:.2f}x, memory {result['anon_mb'] / first['anon_mb']:.2f}x"
            print(
                f"{n:>4} {result['median_ms']:>10.1f} {result['p99_ms']:>8.1f} {int(result['missed']):>7} "
                f"{result['cpu_ms_per_sweep']:>13.1f} {result['cpu_percent']:>6.0f} {result['anon_mb']:>8.0f}  {ratio}",
                flush=True,
            )


if __name__ == "__main__":
    main()
