"""Reading a running QEMU from outside, source by source, on the same guest: the shared RAM file
mapped directly (``lab:``), the same RAM through ``/proc/PID/map_files`` (``qemu-pid:``), and the
same RAM read out of the QEMU process with ``process_vm_readv``, with and without the page cache.

For each: bulk throughput (all RAM in 4 MiB reads, MB/s), scattered 8-byte reads (page-table
entries: µs each, 200 000 in one sweep's cache lifetime) and a warm sweep of every view (median ms)::

    python benchmarks/bench_qemu_pid.py [--kernel 6.12] [--processes 200]
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from _lab import crowd, guest_arguments, lab_guest
from vmsentinel import lab
from vmsentinel.access import Connector, open_connector
from vmsentinel.access.qemu_process import cmdline_blocks, place_blocks, read_cmdline, read_maps
from vmsentinel.memory import PhysicalMemory, Segment
from vmsentinel.memory.process import ProcessMemory
from vmsentinel.os.linux.guest import LinuxGuest


def bulk(memory: PhysicalMemory, rounds: int = 3) -> float:
    chunk, best = 4 << 20, 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        total = 0
        for rng in memory.ranges():
            for pos in range(rng.start, rng.end, chunk):
                total += len(memory.read(pos, min(chunk, rng.end - pos)))
        best = max(best, total / (time.perf_counter() - t0) / 1e6)
    return best


def scattered(memory: PhysicalMemory, count: int = 200_000) -> float:
    """µs per read_u64 at addresses that cluster like page-table walks (a few thousand pages)."""
    rng = random.Random(1)
    size = memory.ranges()[0].length
    pages = [rng.randrange(0, size >> 12) << 12 for _ in range(4000)]
    addresses = [pages[rng.randrange(len(pages))] + (rng.randrange(512) << 3) for _ in range(count)]
    memory.new_sweep()
    read = memory.read_u64
    t0 = time.perf_counter()
    for a in addresses:
        read(a)
    return (time.perf_counter() - t0) / count * 1e6


def sweep(connector: Connector, rounds: int) -> float:
    guest = LinuxGuest.attach(connector)
    guest.snapshot()
    times = [guest.snapshot().seconds for _ in range(rounds)]
    return statistics.median(times) * 1000


def main() -> int:
    args = guest_arguments(__doc__, rounds=20)
    name = "bench-qemu-pid"
    with lab_guest(lab.LabSpec(name=name, kernel=args.kernel)) as running:
        crowd(name, args.processes)
        pid = running.pid
        where = f"qemu-pid:{pid}"
        placed = place_blocks(cmdline_blocks(read_cmdline(pid, where), pid), read_maps(pid, where), pid)
        segments = [Segment(s.phys_start, p.host + s.file_offset, s.length) for p in placed for s in p.block.segments]

        def readv(cache: bool) -> Callable[[], Connector]:
            return lambda: Connector(where, ProcessMemory(pid, segments, f"QEMU pid {pid}", cache=cache), name=name)

        sources: dict[str, Callable[[], Connector]] = {
            "RAM file mmap (lab:)": lambda: open_connector(f"lab:{name}"),
            "map_files mmap (qemu-pid:)": lambda: open_connector(where),
            "process_vm_readv + page cache": readv(True),
            "process_vm_readv, no cache": readv(False),
        }
        print(f"guest {name}: QEMU pid {pid}, {running.memory_mib} MiB, {args.processes}+ processes")
        print(f"{'source':34} {'bulk MB/s':>10} {'read_u64 µs':>12} {'warm sweep ms':>14}   ratios to the RAM file mmap")
        baseline: tuple[float, float, float] | None = None
        for label, open_source in sources.items():
            with open_source() as connector:
                kind = connector.memory.kind
                throughput = bulk(connector.memory)
                per_read = scattered(connector.memory)
            connector = open_source()
            try:
                ms = sweep(connector, args.rounds)
            finally:
                connector.close()
            baseline = baseline or (throughput, per_read, ms)  # the first source, measured in this same run
            ratios = (
                f"bulk {throughput / baseline[0]:.2f}x, read {per_read / baseline[1]:.2f}x as long, sweep {ms / baseline[2]:.2f}x"
            )
            print(f"{label:34} {throughput:10.0f} {per_read:12.2f} {ms:14.1f}   {ratios} ({kind})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
