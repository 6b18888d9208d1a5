"""The worker's allocator settings take (on glibc, as on every host vmsentinel runs) and giving free
pages back leaves a process with less resident memory than it had after freeing a burst of buffers."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import os
from vmsentinel.watch import heap
assert heap.tune()
def anon():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
pages = [bytes([i % 251]) * 4096 for i in range(20000)]  # a baseline's worth of page copies
keep = pages[::1000]
del pages
before = anon()
heap.release()
print(before, anon())
"""


def test_tune_takes_and_release_gives_back_freed_pages() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert after < before - 40_000, (before, after)  # most of the ~80 MB freed is given back


CYCLES = """
import gc, time, weakref
from vmsentinel.watch import heap
heap.collect_on_a_timer(0.2)
assert not gc.isenabled()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
assert gone() is not None  # a cycle: reference counting alone does not free it
deadline = time.monotonic() + 5
while gone() is not None and time.monotonic() < deadline:
    time.sleep(0.05)
print(gone() is None)
"""


def test_without_the_automatic_collector_a_cycle_is_still_freed_by_the_timed_collection() -> None:
    out = subprocess.run([sys.executable, "-c", CYCLES], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
