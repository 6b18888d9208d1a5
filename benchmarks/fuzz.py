"""Fuzz every parser and walker: a million hostile inputs, and not one exception of the wrong kind.

Each target (tests/fuzz_targets.py, shared with the short run in the test suite) mutates valid seed
inputs (bit flips, interesting bytes and words, numbers written as text, truncations, splices,
pointers turned back on themselves or sent out of RAM, page tables shared by every entry) and runs
the parser on each. An outcome is ``ok``, ``rejected`` (a VmSentinelError: the input was refused, as
it should be), a ``crash`` (any other exception) or a ``hang`` (longer than the per-case bound)::

    python benchmarks/fuzz.py                          # 1,000,000 cases over every target
    python benchmarks/fuzz.py --target btf --cases 20000 --seed 7
    python benchmarks/fuzz.py --target isf --seed 1 --case 4242 --show   # replay one case

Exit status 1 when anything crashed or hung. Target: 0 crashes, 0 hangs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for the shared targets

from tests.fuzz_targets import TARGETS, Stats, Target, case_input, fuzz, remove_scratch, scratch_file


def plan(targets: list[Target], total: int) -> dict[str, int]:
    """Cases per target, by weight, adding up to ``total`` exactly."""
    weight = sum(t.weight for t in targets)
    counts = {t.name: int(total * t.weight / weight) for t in targets}
    short = total - sum(counts.values())
    for t in targets[:short]:
        counts[t.name] += 1
    return counts


def _work(job: tuple[str, int, int, int, float]) -> Stats:
    name, seed, first, count, timeout = job
    return fuzz(TARGETS[name], count, seed=seed, timeout=timeout, first_case=first)


def run(counts: dict[str, int], seed: int, timeout: float, jobs: int, chunk: int = 5000) -> list[Stats]:
    """Every target's cases, in chunks (over ``jobs`` processes when more than one), merged per target."""
    work = [
        (name, seed, first, min(chunk, count - first), timeout)
        for name, count in counts.items()
        for first in range(0, count, chunk)
    ]
    merged = {name: Stats(name) for name in counts}
    if jobs <= 1:
        results = map(_work, work)
        for stats in results:
            merged[stats.target].merge(stats)
            _progress(merged, counts)
    else:
        with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=50) as pool:
            for stats in pool.imap_unordered(_work, work):
                merged[stats.target].merge(stats)
                _progress(merged, counts)
    print(file=sys.stderr)
    return list(merged.values())


def _progress(merged: dict[str, Stats], counts: dict[str, int]) -> None:
    done = sum(s.cases for s in merged.values())
    bad = sum(s.crashes + s.hangs for s in merged.values())
    print(f"\r{done:>9,} / {sum(counts.values()):,} cases, {bad} crashes or hangs", end="", file=sys.stderr, flush=True)


def table(results: list[Stats], wall: float) -> str:
    head = f"{'target':<16} {'cases':>9} {'ok':>9} {'rejected':>9} {'crashes':>7} {'hangs':>5} {'cases/s':>8} {'slowest':>8}"
    lines = [head, "-" * len(head)]
    for s in results:
        rate = s.cases / s.seconds if s.seconds else 0.0
        counts = f"{s.cases:>9,} {s.ok:>9,} {s.rejected:>9,} {s.crashes:>7} {s.hangs:>5}"
        lines.append(f"{s.target:<16} {counts} {rate:>8,.0f} {s.slowest * 1000:>6.0f}ms")
    total = Stats("total")
    for s in results:
        total.merge(s)
    lines.append("-" * len(head))
    cpu = total.seconds
    lines.append(
        f"{'total':<16} {total.cases:>9,} {total.ok:>9,} {total.rejected:>9,} {total.crashes:>7} {total.hangs:>5} "
        f"{total.cases / wall if wall else 0:>8,.0f} {total.slowest * 1000:>6.0f}ms"
    )
    lines.append(f"wall {wall:.0f} s; {cpu:.0f} s in the cases, summed over processes (the total's cases/s is per wall second)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1_000_000, help="cases in all, shared by weight (default 1,000,000)")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="run only this target (repeatable)")
    ap.add_argument("--seed", type=int, default=1, help="run seed: the same seed makes the same inputs")
    ap.add_argument("--timeout", type=float, default=2.0, help="per-case bound in seconds: longer is a hang (default 2)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (at most 2 on this machine; default 1)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--case", type=int, help="replay one case of one --target (with --seed) and print what it did")
    ap.add_argument("--show", action="store_true", help="with --case: print the input's first bytes")
    ap.add_argument("--save", type=Path, help="write each crashing or hanging input into this folder")
    ap.add_argument("--list", action="store_true", help="list the targets and what each covers")
    args = ap.parse_args()

    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:<16} {t.what}")
        return 0
    targets = [TARGETS[n] for n in args.target] if args.target else list(TARGETS.values())
    if args.case is not None:
        if len(targets) != 1:
            ap.error("--case replays one case of one --target")
        data = case_input(targets[0], args.seed, args.case)
        if args.show:
            print(data[:512].hex(" ", 16))
        stats = fuzz(targets[0], 1, seed=args.seed, timeout=args.timeout, first_case=args.case)
        remove_scratch()
        print(f"{len(data)} bytes: ok={stats.ok} rejected={stats.rejected} crashes={stats.crashes} hangs={stats.hangs}")
        for f in stats.failures:
            print(f"{f.kind}: {f.error}\n{f.trace}")
        return 1 if stats.crashes or stats.hangs else 0

    counts = plan(targets, args.cases)
    command = "python benchmarks/fuzz.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    try:
        scratch_file("probe")  # the run's scratch folder, made before any fork so that workers share it
        results = run(counts, args.seed, args.timeout, max(1, args.jobs))
    finally:
        remove_scratch()
    wall = time.perf_counter() - started
    failures = [f for s in results for f in s.failures]
    seed_problems = [p for s in results for p in s.seed_problems]
    if args.save and failures:
        args.save.mkdir(parents=True, exist_ok=True)
        for f in failures:
            (args.save / f"{f.target}-{f.kind}-{f.case}-{hashlib.sha256(f.data).hexdigest()[:12]}.bin").write_bytes(f.data)
    if args.json:
        print(
            json.dumps(
                {
                    "command": command,
                    "seed": args.seed,
                    "timeout": args.timeout,
                    "wall_seconds": round(wall, 1),
                    "targets": [
                        {
                            "target": s.target,
                            "cases": s.cases,
                            "ok": s.ok,
                            "rejected": s.rejected,
                            "crashes": s.crashes,
                            "hangs": s.hangs,
                            "seconds": round(s.seconds, 2),
                            "slowest_ms": round(s.slowest * 1000, 1),
                            "rejected_by": s.rejected_by,
                        }
                        for s in results
                    ],
                    "failures": [
                        {"target": f.target, "kind": f.kind, "case": f.case, "error": f.error, "where": f.where, "trace": f.trace}
                        for f in failures
                    ],
                    "seed_problems": seed_problems,
                },
                indent=1,
            )
        )
    else:
        print(f"$ {command}  (seed {args.seed}, per-case bound {args.timeout} s, {max(1, args.jobs)} process(es))")
        print(table(results, wall))
        for f in failures:
            print(f"\n{f.kind} in {f.target}, case {f.case} (replay: --target {f.target} --seed {args.seed} --case {f.case})")
            print(f"  {f.error}\n  at {f.where}")
            print("  " + f.trace.rstrip().replace("\n", "\n  "))
        for p in seed_problems:
            print(f"broken target: {p}")
    return 1 if failures or seed_problems or any(s.crashes or s.hangs for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
