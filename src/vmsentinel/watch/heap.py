"""Keep the C heap of a long-running sweeper small (glibc's allocator; elsewhere these do nothing).

A sweep allocates big short-lived buffers (a baseline keeps thousands of page copies until they are
stored, a full sweep reads every process's maps). glibc then keeps the freed memory: each sweeping
thread gets its own arena, and after a big buffer is freed the size above which buffers are mapped
(and given back on free) grows to it. A worker holding 25 guests ends up resident at its high-water
mark times its threads. So a worker caps its arenas and fixes that threshold at start, and gives
free pages back after the sweeps that made the holes.

    heap.tune()      # once, before any thread allocates
    heap.release()   # after a baseline or a full sweep

The Python heap too: a worker holds every guest's latest snapshot, replaced at each sweep, so the
automatic cycle collector keeps promoting and re-scanning objects that reference counting frees
anyway (about 2 ms of every 20 ms sweep at 25 guests). Sweeps make no reference cycles, so a worker
turns the automatic collector off and collects on a slow timer instead, in case one ever does.

    heap.collect_on_a_timer()
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from typing import Any

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: buffers from this size up are mapped, and unmapped when freed
MMAP_THRESHOLD = 256 << 10
ARENAS = 2
#: seconds between cycle collections in a worker
COLLECT_EVERY = 30.0

_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _libc = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def tune() -> bool:
    """Cap the arenas and fix the mapping threshold; whether it could (glibc)."""
    libc = _glibc()
    if not libc:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release() -> None:
    """Give the heap's free pages back to the system."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def collect_on_a_timer(every: float = COLLECT_EVERY) -> threading.Thread:
    """Turn the automatic cycle collector off; a daemon thread collects every ``every`` seconds."""
    gc.disable()

    def collect() -> None:
        while True:
            time.sleep(every)
            gc.collect()

    collector = threading.Thread(target=collect, name="cycle-collector", daemon=True)
    collector.start()
    return collector
