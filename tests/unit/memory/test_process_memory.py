"""Reading another process's memory as guest RAM: process_vm_readv with a page cache per sweep,
holes, short reads and exits; several sources joined; the one-line privilege explanations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fake_qemu import FakeQemu

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.errors import MemoryError_, ProcessMemoryError, UnmappedPhysicalAddress
from vmsentinel.memory import Segment
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.memory.joined import JoinedMemory
from vmsentinel.memory.privileges import (
    CAP_SYS_PTRACE,
    effective_capabilities,
    map_files_refusal,
    ptrace_refusal,
    yama_ptrace_scope,
)
from vmsentinel.memory.process import IOV_MAX, PAGE, ProcessMemory

MiB = 1 << 20


@pytest.fixture
def child(tmp_path: Path) -> Iterator[FakeQemu]:
    with FakeQemu(tmp_path, [], ["anon:4M"]) as proc:
        yield proc


def test_pages_are_cached_until_the_next_sweep(child: FakeQemu) -> None:
    host, data = child.addresses[0], child.data[0]
    # guest-physical 0..1 MiB is the first MiB, a hole, then 16 MiB.. is the rest
    with ProcessMemory(child.pid, [Segment(0, host, MiB), Segment(16 * MiB, host + MiB, 3 * MiB)], "child") as mem:
        assert mem.read(0x10, 8) == data[0x10:0x18]
        assert mem.read_u64(0x18) == int.from_bytes(data[0x18:0x20], "little")
        assert mem.stats["syscalls"] == 1  # both from one page
        child.command("write 0 16 0102030405060708")
        assert mem.read(0x10, 8) == data[0x10:0x18]  # the sweep's copy
        mem.new_sweep()
        assert mem.read(0x10, 8) == bytes(range(1, 9))  # a new sweep reads again
        assert mem.read(16 * MiB + 5, 3) == data[MiB + 5 : MiB + 8]
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(MiB, 8)
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read(MiB - 4, 8)  # runs into the hole
        with pytest.raises(UnmappedPhysicalAddress):
            mem.read_u64(19 * MiB)
        assert [(r.start, r.length) for r in mem.ranges()] == [(0, MiB), (16 * MiB, 3 * MiB)]
        assert mem.is_valid(16 * MiB, 8) and not mem.is_valid(MiB)


def test_cached_pages_expire_on_their_own(child: FakeQemu) -> None:
    with ProcessMemory(child.pid, [Segment(0, child.addresses[0], 4 * MiB)], max_age=0.0) as mem:
        assert mem.read(0, 4) == child.data[0][:4]
        child.command("write 0 0 aabbccdd")
        assert mem.read(0, 4) == bytes.fromhex("aabbccdd")  # a reader that never calls new_sweep still sees news


def test_the_paging_layer_starts_each_sweep_afresh(child: FakeQemu) -> None:
    with ProcessMemory(child.pid, [Segment(0, child.addresses[0], 4 * MiB)]) as mem:
        mem.read(0, 8)
        space = PagingAddressSpace(mem, 0x1000)
        space.new_sweep()
        assert not mem._cache  # the views' new_sweep reaches the memory source


def test_many_pieces_in_few_calls(tmp_path: Path) -> None:
    pages = 2048
    with FakeQemu(tmp_path, [], [f"anon:{pages * PAGE}"]) as proc:
        host, data = proc.addresses[0], proc.data[0]
        # guest pages in reverse host order: one read of them all is 2048 iovecs, two calls of IOV_MAX
        segments = [Segment(i * PAGE, host + (pages - 1 - i) * PAGE, PAGE) for i in range(pages)]
        with ProcessMemory(proc.pid, segments) as mem:
            got = mem.read(0, pages * PAGE)
            assert got == b"".join(data[(pages - 1 - i) * PAGE : (pages - i) * PAGE] for i in range(pages))
            assert mem.stats["syscalls"] == pages // IOV_MAX == 2
            last, before_last = data[(pages - 1) * PAGE : pages * PAGE], data[(pages - 2) * PAGE : (pages - 1) * PAGE]
            assert mem.read(PAGE - 4, 8) == last[-4:] + before_last[:4]  # from two cached pages


def test_short_reads_and_exits_are_errors(child: FakeQemu) -> None:
    host = child.addresses[0]
    with ProcessMemory(child.pid, [Segment(0, host, 4 * MiB)], "QEMU pid X") as mem:
        child.command(f"unmap 0 {2 * MiB} {2 * MiB}")
        assert mem.read(MiB, 8) == child.data[0][MiB : MiB + 8]
        with pytest.raises(ProcessMemoryError, match=r"only 1048576 of 2097152 bytes.*no longer maps its RAM"):
            mem.read(MiB, 2 * MiB)
        with pytest.raises(ProcessMemoryError, match="Bad address"):
            mem.read_u64(3 * MiB)
        child.close()
        with pytest.raises(ProcessMemoryError, match="QEMU pid X has exited"):
            mem.read(0, 8)
        with pytest.raises(ProcessMemoryError, match="has exited"):
            mem.new_sweep()
    with pytest.raises(ProcessMemoryError, match="does not exist"):
        ProcessMemory(child.pid, [Segment(0, host, PAGE)])


def test_overlapping_segments_are_refused(child: FakeQemu) -> None:
    with pytest.raises(MemoryError_, match="overlap"):
        ProcessMemory(child.pid, [Segment(0, 0, 2 * PAGE), Segment(PAGE, 0, PAGE)])


# -- joined sources ------------------------------------------------------------------------------


def test_joined_sources_read_across_their_border() -> None:
    a = BufferMemory({0: bytearray(b"A" * 4090 + b"NEED"[:2] + b"xxxx")})  # 4096 bytes
    b = BufferMemory({4096: bytearray(b"LE" + b"B" * 4094), 1 << 32: bytearray(b"NEEDLE" + bytes(10))})
    joined = JoinedMemory([b, a], "test")
    assert joined.read(4088, 12) == b"AANExxxxLEBB"[0:12]
    assert [(r.start, r.length) for r in joined.ranges()] == [(0, 8192), (1 << 32, 16)]
    assert joined.is_valid(4000, 200) and not joined.is_valid(8190, 4)
    with pytest.raises(UnmappedPhysicalAddress):
        joined.read(8190, 4)
    assert joined.read_u64(4092) == int.from_bytes(b"xxxxLEBB", "little")
    assert list(joined.scan(b"xxLE")) == [4094]
    assert list(joined.scan(b"NEEDLE")) == [1 << 32]
    with pytest.raises(MemoryError_, match="both hold"):
        JoinedMemory([a, BufferMemory({100: bytearray(8)})], "test")


# -- privileges ----------------------------------------------------------------------------------


def test_yama_and_capabilities_are_read(tmp_path: Path) -> None:
    scope = tmp_path / "ptrace_scope"
    scope.write_text("1\n")
    assert yama_ptrace_scope(str(scope)) == 1
    assert yama_ptrace_scope(str(tmp_path / "none")) is None  # Yama not in this kernel
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000080000\n")
    assert effective_capabilities(str(status)) == {CAP_SYS_PTRACE}
    assert effective_capabilities(str(tmp_path / "none")) == set()


@pytest.mark.parametrize(
    ("scope", "caps", "expected"),
    [
        (None, set(), "it needs CAP_SYS_PTRACE, which this process lacks (QEMU runs as uid 0, this process as uid 1000; Yama is"),
        (1, set(), "Yama ptrace_scope is 1 (restricted: without CAP_SYS_PTRACE only an ancestor may read a process"),
        (2, set(), "Yama ptrace_scope is 2 (admin-only: only a process with CAP_SYS_PTRACE may read another)"),
        (3, {CAP_SYS_PTRACE}, "was refused: Yama ptrace_scope is 3 (no attach: nobody may read another process, root included"),
        (0, {CAP_SYS_PTRACE}, "which this process has (QEMU runs as uid 0, this process as uid 1000; Yama ptrace_scope is 0"),
    ],
)
def test_ptrace_refusals_say_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, scope: int | None, caps: set[int], expected: str
) -> None:
    monkeypatch.setattr("vmsentinel.memory.privileges.yama_ptrace_scope", lambda: scope)
    monkeypatch.setattr("vmsentinel.memory.privileges.effective_capabilities", lambda: caps)
    monkeypatch.setattr("vmsentinel.memory.privileges.process_uid", lambda pid: 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    text = ptrace_refusal(4242, "process_vm_readv on QEMU pid 4242")
    assert text.startswith("process_vm_readv on QEMU pid 4242 was refused") and "\n" not in text
    assert expected in text


def test_map_files_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vmsentinel.memory.privileges.effective_capabilities", lambda: set())
    assert map_files_refusal(7, "opening /proc/7/map_files/1000-2000") == (
        "opening /proc/7/map_files/1000-2000 was refused: it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE,"
        " which this process lacks"
    )
