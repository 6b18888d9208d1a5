"""One sentinel, many guests: ``watch`` (worker processes, the built-in policy) over N guests at one
sweep per second, for each N given, and per N the median and p99 sweep time, missed sweeps, CPU per
guest sweep and the anonymous memory of the whole sentinel (the watcher and its workers; the
highest sampled once a second, and per process at the end).

The guests are live lab guests (``--live-guests``, booted for the run, half 6.1 and half 6.12; or
running ones named with ``--live``) plus a memory image of a real lab guest (6.1, a crowd of
processes) reached through as many names as N needs (symlinks: one page cache, N readers, N
baselines). Ratios are printed against N = the first value of ``--guests`` measured in the same
run, and a PNG plot of sweep time and memory against N is written (``--plot``).

    python benchmarks/bench_scale.py --guests 1,10,25,50 --seconds 120
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._lab import image_of_lab_guest, lab_guest, scratch

from vmsentinel import lab
from vmsentinel.events import Event, SweepDone, SweepMissed
from vmsentinel.watch.watcher import Watcher


class Times:
    def __init__(self) -> None:
        self.sweeps: list[float] = []
        self.missed = 0
        #: (seconds into the run, guest, sweeps missed): says which guests fell behind, and when
        self.misses: list[tuple[float, str, int]] = []
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def handle(self, events: Sequence[Event]) -> None:
        with self.lock:
            for e in events:
                if isinstance(e, SweepDone):
                    self.sweeps.append(e.seconds)
                elif isinstance(e, SweepMissed):
                    self.missed += e.count
                    self.misses.append((time.monotonic() - self.started, e.target, e.count))

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
    begun, startup_peak = time.monotonic(), 0.0
    while watcher.pool is None or not all(s.baselined for s in watcher.states):
        time.sleep(0.2)
        if watcher.pool is not None:
            with contextlib.suppress(OSError):  # a worker starting or restarting
                startup_peak = max(startup_peak, sum(_anon_kib(p) for p in [os.getpid(), *watcher.pool.pids()]) / 1024)
    baselines = time.monotonic() - begun
    # the steady state starts one interval on: the last baseline sweeps' overruns (the time each guest
    # waited for its first look) are said just after the guests count as baselined
    time.sleep(2.0)
    with times.lock:
        startup_missed = times.missed
    print(
        f"       start-up: every guest's baseline taken after {baselines:.1f} s"
        f" ({startup_missed} intervals passed while guests waited for theirs), anonymous memory at most {startup_peak:.0f} MB",
        flush=True,
    )
    pids = [os.getpid(), *watcher.pool.pids()]
    with times.lock:
        times.sweeps.clear()
        times.missed = 0
        times.misses.clear()
        times.started = time.monotonic()
    cpu0 = [_cpu_seconds(p) for p in pids]
    peak = 0.0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        time.sleep(min(1.0, max(0.0, ends - time.monotonic())))
        peak = max(peak, sum(_anon_kib(p) for p in pids) / 1024)
    per_process = [_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    cpu = sum(per_process)
    anon = [_anon_kib(p) / 1024 for p in pids]
    cpus, mbs = [round(c, 1) for c in per_process], [round(a) for a in anon]
    print(f"       per process (watcher, workers): CPU s {cpus}, anonymous MB {mbs}", flush=True)
    watcher.stop()
    runner.join()
    watcher.close()
    with times.lock:
        sweeps = sorted(times.sweeps)
        missed = times.missed
        if times.misses:
            where = ", ".join(f"{at:.0f}s {Path(target).name} x{count}" for at, target, count in times.misses[:12])
            more = f" and {len(times.misses) - 12} more" if len(times.misses) > 12 else ""
            print(f"       missed: {where}{more}", flush=True)
            by_second: dict[int, list[int]] = {}
            for at, _, count in times.misses:
                by_second.setdefault(int(at), []).append(count)
            when = ", ".join(f"{t}s: {len(c)} guests, {sum(c)}" for t, c in sorted(by_second.items()))
            print(f"       missed by second of the window: {when}", flush=True)
    return {
        "median_ms": statistics.median(sweeps) * 1000,
        "p99_ms": sweeps[min(len(sweeps) - 1, int(len(sweeps) * 0.99))] * 1000,
        "missed": missed,
        "sweeps": len(sweeps),
        "cpu_ms_per_sweep": cpu / max(1, len(sweeps)) * 1000,
        "cpu_percent": cpu / seconds * 100,
        "anon_mb": max(peak, sum(anon)),
    }


def plot(rows: list[tuple[int, dict[str, float]]], path: Path) -> None:
    """Sweep time (median, p99) and the sentinel's memory against N, one PNG."""
    try:
        import matplotlib
    except ImportError:
        print("plot: not written, matplotlib is not installed (.venv/bin/pip install -e '.[bench]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [n for n, _ in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(ns, [r["median_ms"] for _, r in rows], "o-", label="median")
    left.plot(ns, [r["p99_ms"] for _, r in rows], "s--", label="p99")
    left.axhline(1000, color="grey", linewidth=0.8, linestyle=":", label="interval (1 s)")
    left.set(xlabel="guests watched", ylabel="sweep time per guest (ms)", title="Sweep time", yscale="log")
    left.legend()
    right.plot(ns, [r["anon_mb"] for _, r in rows], "o-", color="tab:green", label="whole sentinel")
    right.axhline(300, color="grey", linewidth=0.8, linestyle=":", label="target at 50 guests")
    right.set(xlabel="guests watched", ylabel="anonymous memory (MB)", title="Memory", ylim=(0, None))
    right.legend()
    fig.suptitle("vmsentinel watch at 1 Hz, 2 workers (benchmarks/bench_scale.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guests", default="1,10,25,50", help="numbers of guests, comma-separated")
    parser.add_argument("--seconds", type=float, default=120.0, help="steady-state seconds measured per N")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--live-guests", type=int, default=4, help="lab guests to boot for the run (half 6.1, half 6.12)")
    parser.add_argument("--live", action="append", default=[], help="a running lab guest to use instead (repeatable)")
    parser.add_argument("--processes", type=int, default=200, help="processes in the imaged guest")
    parser.add_argument("--image", type=Path, help="an existing memory image to use instead of imaging a lab guest")
    parser.add_argument("--plot", type=Path, default=Path(__file__).parents[1] / "docs" / "bench_scale.png")
    args = parser.parse_args()
    counts = [int(n) for n in args.guests.split(",")]
    with scratch() as folder, contextlib.ExitStack() as running:
        core = args.image.resolve() if args.image else image_of_lab_guest(folder / "guest.core", args.processes, "bench-scale")
        names = list(args.live)
        if not names:
            for i in range(args.live_guests):
                kernel = "6.1" if i % 2 == 0 else "6.12"
                names.append(running.enter_context(lab_guest(lab.LabSpec(f"bench-scale-{i}", kernel=kernel))).name)
        live = [f"lab:{name}" for name in names]
        first: dict[str, float] | None = None
        rows: list[tuple[int, dict[str, float]]] = []
        print(f"{len(live)} live lab guests, the rest copies of a {core.stat().st_size >> 20} MiB image; {args.workers} workers")
        header = f"{'N':>4} {'median ms':>10} {'p99 ms':>8} {'missed':>7} {'CPU ms/sweep':>13} {'CPU %':>6} {'anon MB':>8}"
        print(f"{header}  ratios to N={counts[0]}", flush=True)
        for n in counts:
            images = []
            for i in range(max(0, n - len(live))):
                link = folder / f"img{i}.core"
                if not link.exists():
                    link.symlink_to(core)
                images.append(str(link))
            result = measure([*live[:n], *images], args.seconds, args.workers)
            rows.append((n, result))
            first = first or result
            ratio = f"sweep {result['median_ms'] / first['median_ms']:.2f}x, memory {result['anon_mb'] / first['anon_mb']:.2f}x"
            print(
                f"{n:>4} {result['median_ms']:>10.1f} {result['p99_ms']:>8.1f} {int(result['missed']):>7} "
                f"{result['cpu_ms_per_sweep']:>13.1f} {result['cpu_percent']:>6.0f} {result['anon_mb']:>8.0f}  {ratio}",
                flush=True,
            )
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
