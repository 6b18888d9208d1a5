"""Translation-and-read throughput against a plain mmap copy of the same bytes.

Reads kernel memory of a guest through its page tables (4 KiB at a time, the
way views read guest structures) and compares with copying the same physical
bytes straight out of the mapped RAM file, in the same run:

    python benchmarks/bench_translate.py                 # boots lab guest 'bench'
    python benchmarks/bench_translate.py --target lab:web1 --mib 64
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import random
import sys
import time
from collections.abc import Callable

from _lab import lab_guest
from vmsentinel import lab
from vmsentinel.access import open_connector
from vmsentinel.arch.x86_64 import PAGE_SIZE
from vmsentinel.memory.mapped_file import MappedFileMemory


def best_of(n: int, fn: Callable[[], int]) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="TARGET to read (default: boot lab guest 'bench')")
    parser.add_argument("--mib", type=int, default=32, help="MiB of guest memory to read per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    target_spec = args.target or "lab:bench"
    guest = lab_guest(lab.LabSpec(name="bench")) if args.target is None else contextlib.nullcontext()
    with guest, open_connector(target_spec) as target:
        mem = target.memory
        assert isinstance(mem, MappedFileMemory), "the benchmark needs a mapped file source"
        space = target.address_space()
        # 4 KiB pages of mapped kernel memory that sit in RAM, in virtual order
        pages: list[tuple[int, int]] = []
        want = args.mib * 256
        for m in space.walk_mappings(start=1 << 63).mappings:
            for off in range(0, m.size, PAGE_SIZE):
                if mem.is_valid(m.paddr + off, PAGE_SIZE):
                    pages.append((m.vaddr + off, m.paddr + off))
                if len(pages) >= want:
                    break
            if len(pages) >= want:
                break
        random.Random(1).shuffle(pages)  # scattered, like walking kernel lists
        nbytes = len(pages) * PAGE_SIZE
        fd = os.open(mem.path, os.O_RDONLY)
        raw = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        os.close(fd)
        offsets = [mem._find(p).file_offset + p - mem._find(p).phys_start for _, p in pages]  # type: ignore[union-attr]

        def plain_copy() -> int:
            return sum(len(raw[o : o + PAGE_SIZE]) for o in offsets)

        def cold() -> int:
            space.new_sweep()
            return sum(len(space.read(v, PAGE_SIZE)) for v, _ in pages)

        def warm() -> int:
            return sum(len(space.read(v, PAGE_SIZE)) for v, _ in pages)

        def translate_only() -> int:
            space.new_sweep()
            return sum(1 for v, _ in pages if space.translate(v) >= 0)

        t_plain, n1 = best_of(args.rounds, plain_copy)
        t_cold, n2 = best_of(args.rounds, cold)
        t_warm, n3 = best_of(args.rounds, warm)
        t_tr, _ = best_of(args.rounds, translate_only)
        assert n1 == n2 == n3 == nbytes
        raw.close()
        mib = nbytes / 2**20
        print(f"target {target_spec}: {len(pages)} scattered 4 KiB kernel pages ({mib:.0f} MiB), best of {args.rounds}")
        print(f"  plain mmap copy           {mib / t_plain:9.0f} MiB/s   (baseline)")
        print(f"  translate+read, cold      {mib / t_cold:9.0f} MiB/s   ratio {t_plain / t_cold:.2f}")
        print(f"  translate+read, warm      {mib / t_warm:9.0f} MiB/s   ratio {t_plain / t_warm:.2f}")
        print(f"  page walks (cold)         {len(pages) / t_tr / 1e6:9.2f} M translations/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
