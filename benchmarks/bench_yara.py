"""YARA-X over guest memory on the sweep path, against the same rules run by command-line scanners
over the same bytes, in the same run.

The memory is what a full sweep scans: every process's mappings (read through its own page tables)
and the kernel's text, read-only data and module memory of a lab guest's image (6.1, a crowd of
processes). The sweep path is :func:`vmsentinel.pipeline.memory_scan.scan_regions`, timed in CPU
seconds of its thread; it scans a process's region once per distinct physical layout (a library's
frames mapped by every process are one scan), so its figure counts every byte it covers. The same
bytes are then written to one file and scanned by

* YARA-X in this process, the whole buffer at once (the engine alone: the sweep path's ceiling),
* ``yr scan`` (YARA-X's command line) when it is on PATH,
* ``yara`` (YARA 4, Debian's ``yara`` package) when it is on PATH,

each timed in CPU seconds (user + system of the child). Throughput is per core: bytes / CPU seconds.

    python benchmarks/bench_yara.py [--image CORE] [--rules benchmarks/data/linux_threats.yar] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._lab import image_of_lab_guest, scratch

from vmsentinel.detect.yara_rules import YaraRules
from vmsentinel.os.linux.guest import LinuxGuest
from vmsentinel.os.records import MemoryRegion
from vmsentinel.pipeline.memory_scan import read_or_zeros, scan_regions

RULES = Path(__file__).parent / "data" / "linux_threats.yar"
#: two plain-string rules (vmsentinel's test rules): the engine at its fastest, the sweep path's own cost shows
SMALL = Path(__file__).parents[1] / "tests" / "data" / "yara"


def _child_cpu(command: list[str]) -> tuple[float, str]:
    """CPU seconds (user + system) a command took, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def _best(rounds: int, run: object) -> float:
    assert callable(run)
    return min(run() for _ in range(rounds))


def measure(rules_path: Path, regions: list[MemoryRegion], same_bytes: Path, rounds: int) -> None:
    """One rule set over the regions: the sweep path, then each scanner over the same bytes."""
    total = sum(r.size for r in regions)
    rules = YaraRules.load([rules_path])

    def sweep_path() -> float:
        started = time.thread_time()
        scan_regions(rules, regions)
        return time.thread_time() - started

    sweep_cpu = _best(rounds, sweep_path)
    data = [same_bytes.read_bytes()]  # one buffer, dropped once measured
    scanner = rules.scanner()

    def engine() -> float:
        started = time.thread_time()
        rules.scan(data[0], scanner)
        return time.thread_time() - started

    engine_cpu = _best(rounds, engine)
    data.clear()
    print(f"rules {rules_path}:")
    rows = [("sweep path (scan_regions)", sweep_cpu), ("YARA-X engine, one buffer", engine_cpu)]
    files = [str(f) for f in sorted(rules_path.glob("*.yar"))] if rules_path.is_dir() else [str(rules_path)]
    for tool, command in (
        ("yr", ["yr", "scan", str(rules_path), str(same_bytes)]),
        ("yara", ["yara", *files, str(same_bytes)]),
    ):
        if shutil.which(tool) is None:
            print(f"  {tool}: not on PATH, not measured")
            continue
        rows.append((f"{tool} (command line)", _best(rounds, lambda c=command: _child_cpu(c)[0])))
    for label, cpu in rows:
        print(f"  {label:28s} {total / cpu / 1e9:6.2f} GB/s per core   sweep path takes {sweep_cpu / cpu:4.2f}x its CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="a memory image to use instead of imaging a lab guest")
    parser.add_argument(
        "--rules", type=Path, action="append", help=f"a rule file or folder (repeatable; default {RULES.name} and {SMALL.name})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="each measurement's best of this many")
    parser.add_argument("--processes", type=int, default=200)
    args = parser.parse_args()
    with scratch() as folder:
        core = args.image.resolve() if args.image else image_of_lab_guest(folder / "guest.core", args.processes, "bench-yara")
        guest = LinuxGuest.open(str(core))
        regions = guest.snapshot(scan=True, regions=True).regions or []
        same_bytes = folder / "regions.bin"
        with same_bytes.open("wb") as out:
            for r in regions:
                out.write(read_or_zeros(r.read, r.start, r.size))
        total = sum(r.size for r in regions)
        print(f"{len(regions)} regions, {total / 1e6:.0f} MB: every process's mappings and the kernel's memory of {core.name}")
        layouts = {r.runs(r.start, r.size): r.size for r in regions if r.runs is not None}
        distinct = sum(layouts.values()) + sum(r.size for r in regions if r.runs is None)
        print(
            f"  {distinct / 1e6:.0f} MB of them on distinct physical frames: the sweep path scans those once "
            "(shared libraries and executables); the scanners below scan all of it"
        )
        for rules_path in args.rules or [RULES, SMALL]:
            measure(rules_path, regions, same_bytes, args.rounds)


if __name__ == "__main__":
    main()
