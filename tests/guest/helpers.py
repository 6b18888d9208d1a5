"""Helpers for real-guest tests: pausing a guest, QEMU's own views."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from vmsentinel.access import Connector
from vmsentinel.access.qmp import Qmp
from vmsentinel.access.qmp_control import QmpControl


def qmp_of(target: Connector) -> Qmp:
    """The connector's own QMP connection (QEMU serves one client at a time), for QEMU-only commands."""
    assert isinstance(target.control, QmpControl), f"{target.spec} has no QMP control"
    return target.control.qmp


@contextmanager
def paused(qmp: Qmp) -> Iterator[None]:
    """Freeze the guest so that our reads and QEMU's see the same instant."""
    qmp.stop()
    try:
        yield
    finally:
        qmp.cont()


def qemu_info_mem(qmp: Qmp) -> list[tuple[int, int, bool, bool]]:
    """QEMU's ``info mem``: (start, end, user, writable) ranges."""
    ranges = []
    for line in qmp.hmp("info mem", timeout=120).splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) [0-9a-f]+ ([u-])r([w-])$", line.strip())
        if m:
            ranges.append((int(m[1], 16), int(m[2], 16), m[3] == "u", m[4] == "w"))
    return ranges


def qemu_info_tlb(qmp: Qmp) -> dict[int, tuple[int, str]]:
    """QEMU's ``info tlb``: virtual page -> (physical address, flag letters)."""
    pages = {}
    for line in qmp.hmp("info tlb", timeout=120).splitlines():
        m = re.match(r"([0-9a-f]+): ([0-9a-f]+) (\S+)$", line.strip())
        if m:
            pages[int(m[1], 16)] = (int(m[2], 16), m[3])
    return pages
