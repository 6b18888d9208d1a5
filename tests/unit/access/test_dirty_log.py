"""The soft-dirty log read from a synthetic /proc (a pagemap file of entries, a clear_refs file): which
guest pages were written, where they sit in the QEMU process, what counts as written when the host
cannot tell (swapped out, outside the known RAM, past the end of pagemap), and that a clear writes
"4". The host check itself runs on this machine's kernel for real."""

from __future__ import annotations

import struct
from pathlib import Path

from vmsentinel.access.dirty_log import PAGE, PRESENT, SOFT_DIRTY, SWAPPED, SoftDirtyLog, host_sets_soft_dirty

PID = 4242
HOST = 0x7F00_0000_0000  # where the first RAM block sits in the QEMU process


def fake_proc(tmp_path: Path, entries: dict[int, int], pages: int) -> Path:
    """A /proc with one process whose pagemap covers ``pages`` host pages from HOST."""
    proc = tmp_path / "proc"
    (proc / str(PID)).mkdir(parents=True)
    with open(proc / str(PID) / "pagemap", "wb") as f:  # sparse: only the end is written
        f.truncate(8 * (HOST // PAGE + pages))
        for host_page, entry in entries.items():
            f.seek(8 * host_page)
            f.write(struct.pack("<Q", entry))
    (proc / str(PID) / "clear_refs").write_text("")
    return proc


def test_written_pages_are_found_through_the_host_layout(tmp_path: Path) -> None:
    # RAM: guest [0, 1 MiB) at HOST, guest [4 GiB, 4 GiB + 1 MiB) right after it in QEMU
    first = HOST // PAGE
    entries = {first + 3: PRESENT | SOFT_DIRTY, first + 5: PRESENT, first + 256 + 1: PRESENT | SOFT_DIRTY, first + 7: SWAPPED}
    proc = fake_proc(tmp_path, entries, 512)
    log = SoftDirtyLog(PID, [(0, HOST, 1 << 20), (1 << 32, HOST + (1 << 20), 1 << 20)], proc=str(proc))
    asked = [3 * PAGE, 5 * PAGE, 7 * PAGE, (1 << 32) + PAGE, (1 << 32) + 2 * PAGE, 0x8000_0000]
    written = log.dirty(asked)
    # dirty ones, a swapped one (cannot tell), and one outside the RAM we know (cannot tell either)
    assert written == {3 * PAGE, 7 * PAGE, (1 << 32) + PAGE, 0x8000_0000}
    assert log.host_address((1 << 32) + PAGE) == HOST + (1 << 20) + PAGE and log.host_address(2 << 20) is None


def test_pages_past_the_end_of_pagemap_count_as_written(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {}, 4)
    log = SoftDirtyLog(PID, [(0, HOST, 64 * PAGE)], proc=str(proc))
    assert log.dirty([PAGE, 10 * PAGE]) == {10 * PAGE}


def test_far_apart_pages_are_read_in_separate_runs(tmp_path: Path) -> None:
    first = HOST // PAGE
    proc = fake_proc(tmp_path, {first: PRESENT | SOFT_DIRTY, first + 4000: PRESENT | SOFT_DIRTY, first + 4001: PRESENT}, 4096)
    log = SoftDirtyLog(PID, [(0, HOST, 4096 * PAGE)], proc=str(proc))
    assert log.dirty([0, 4000 * PAGE, 4001 * PAGE, 2000 * PAGE]) == {0, 4000 * PAGE}


def test_a_clear_writes_4_to_clear_refs(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {}, 1)
    SoftDirtyLog(PID, [(0, HOST, PAGE)], proc=str(proc)).clear()
    assert (proc / str(PID) / "clear_refs").read_text() == "4"


def test_a_host_kernel_without_soft_dirty_is_named_as_the_problem(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {}, 1)
    log = SoftDirtyLog(PID, [(0, HOST, PAGE)], proc=str(proc))
    problem = log.problem()
    if host_sets_soft_dirty():  # this machine's kernel, for real
        assert problem is None or "cannot be" in problem
    else:
        assert problem == "the host kernel sets no soft-dirty bits (built without CONFIG_MEM_SOFT_DIRTY)"
