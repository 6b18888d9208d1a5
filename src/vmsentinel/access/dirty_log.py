"""Which guest pages were written since the last look, from the host: the
soft-dirty bits of the QEMU process that holds the guest's RAM.

Writing ``4`` to ``/proc/PID/clear_refs`` clears the soft-dirty bit of every
page of the process and write-protects them; the next write to a page (QEMU's
TCG storing for its guest, or KVM faulting a page in for writing) sets the bit
again, and bit 55 of the page's ``/proc/PID/pagemap`` entry shows it. So a
sweep can hash again only the kernel text pages that were written, instead of
every page.

It is not to be trusted blindly: a host kernel built without
``CONFIG_MEM_SOFT_DIRTY`` accepts the write and never sets a bit (this one
does exactly that), and an accelerator may write guest RAM in a way the host
page tables do not see. So :meth:`SoftDirtyLog.problem` tests the host kernel
first, and the caller validates the log against a page the guest is known to
write all the time (it must come back dirty whenever its bytes changed) before
relying on it, and keeps a periodic full sweep.

The clear costs the guest a minor page fault on its first write to each page
after it (measured by ``benchmarks/bench_guest_overhead.py``), and the bits are
the process's own: another tool clearing them (CRIU, a second watcher on the
same QEMU) steals writes from this log, which the validation then notices.

    log = SoftDirtyLog(pid, [(0, host_address, ram_size)])
    if log.problem() is None:
        log.clear()
        ...                                   # the guest runs
        written = log.dirty(pages)            # guest-physical page addresses written since the clear
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

PAGE = 4096
SOFT_DIRTY = 1 << 55
PRESENT = 1 << 63
SWAPPED = 1 << 62
#: pagemap entries read in one go (8 bytes each: 2 MiB of guest memory per 512)
RUN = 512


@dataclass(frozen=True, order=True)
class HostRange:
    """Guest-physical ``[phys, phys + length)`` is at ``host`` in the QEMU process."""

    phys: int
    host: int
    length: int


class SoftDirtyLog:
    def __init__(self, pid: int, ranges: Iterable[tuple[int, int, int]], proc: str = "/proc") -> None:
        self.pid = pid
        self.ranges = sorted(HostRange(*r) for r in ranges)
        self._starts = [r.phys for r in self.ranges]
        self._proc = proc
        self.pagemap = f"{proc}/{pid}/pagemap"
        self.clear_refs = f"{proc}/{pid}/clear_refs"

    def host_address(self, phys: int) -> int | None:
        i = bisect.bisect_right(self._starts, phys) - 1
        if i < 0:
            return None
        r = self.ranges[i]
        return r.host + phys - r.phys if phys < r.phys + r.length else None

    def problem(self) -> str | None:
        """Why this log cannot be used here, or None: the host kernel must set soft-dirty bits (tested on a
        page of our own), and QEMU's pagemap and clear_refs must be open to us."""
        if not host_sets_soft_dirty(self._proc):
            return "the host kernel sets no soft-dirty bits (built without CONFIG_MEM_SOFT_DIRTY)"
        for path, mode in ((self.pagemap, os.R_OK), (self.clear_refs, os.W_OK)):
            if not os.access(path, mode):
                return f"{path} cannot be {'read' if mode == os.R_OK else 'written'} (needs root or CAP_SYS_ADMIN)"
        return None

    def clear(self) -> None:
        """Start a new interval: every page of the QEMU process clean."""
        with open(self.clear_refs, "w") as f:
            f.write("4")

    def dirty(self, pages: Iterable[int]) -> set[int]:
        """Of the guest-physical page addresses ``pages``, those written since the last :meth:`clear` (a page
        swapped out or outside the RAM we know counts as written: we cannot tell)."""
        wanted: dict[int, int] = {}
        out: set[int] = set()
        for page in pages:
            host = self.host_address(page)
            if host is None:
                out.add(page)
            else:
                wanted[host // PAGE] = page
        if not wanted:
            return out
        numbers = sorted(wanted)
        with open(self.pagemap, "rb", buffering=0) as f:
            i = 0
            while i < len(numbers):  # one read per run of nearby pages
                first, j = numbers[i], i
                while j + 1 < len(numbers) and numbers[j + 1] - first < RUN:
                    j += 1
                f.seek(first * 8)
                data = f.read((numbers[j] - first + 1) * 8)
                count = len(data) // 8
                entries = struct.unpack(f"<{count}Q", data[: count * 8])
                for number in numbers[i : j + 1]:
                    k = number - first
                    entry = entries[k] if k < count else SOFT_DIRTY  # past what pagemap gave: assume written
                    if entry & (SOFT_DIRTY | SWAPPED):
                        out.add(wanted[number])
                i = j + 1
        return out


@functools.cache
def host_sets_soft_dirty(proc: str = "/proc") -> bool:
    """Does this host kernel set soft-dirty bits? Cleared and written on a page of our own process (which
    clears only our own bits); asked once per process, not once per guest."""
    try:
        area = mmap.mmap(-1, PAGE)
    except OSError:
        return False
    try:
        view = ctypes.c_char.from_buffer(area)
        address = ctypes.addressof(view)
        del view  # the mmap can be closed once no ctypes object holds it
        area[0:1] = b"\1"
        with open(f"{proc}/self/clear_refs", "w") as f:
            f.write("4")
        area[0:1] = b"\2"
        with open(f"{proc}/self/pagemap", "rb", buffering=0) as f:
            f.seek(address // PAGE * 8)
            entry = struct.unpack("<Q", f.read(8))[0]
        return bool(entry & SOFT_DIRTY)
    except (OSError, struct.error):
        return False
    finally:
        area.close()
