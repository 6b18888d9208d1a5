"""qemu-pid: the guest-physical layout of a running QEMU from its monitor or from its command line
and /proc/PID/maps, the refusals when that is not certain, and reading a process that looks like
QEMU from outside (tests/fake_qemu.py) with process_vm_readv and through map_files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.fake_qemu import FakeQemu
from tests.privileges import SETPRIV, skip_unless_reachable

from vmsentinel.access import open_connector
from vmsentinel.access import qemu_pid as qemu_pid_scheme
from vmsentinel.access.qemu_cmdline import Backend, parse_cmdline
from vmsentinel.access.qemu_process import (
    RamBlock,
    cmdline_blocks,
    monitor_blocks,
    parse_info_memdev,
    parse_maps,
    place_blocks,
    qemu_process_memory,
)
from vmsentinel.errors import HypervisorError, LayoutUnknown, ProcessMemoryError, TargetError, UnmappedPhysicalAddress
from vmsentinel.memory import Segment

HERE = Path(__file__).parent / "qemu"
MiB, GiB = 1 << 20, 1 << 30
SRC = str(Path(__file__).parents[3] / "src")


def capture(name: str) -> dict[str, object]:
    """A QEMU 7.2 started paused (-S) here: its command line, /proc/PID/maps and monitor answers."""
    data: dict[str, object] = json.loads((HERE / f"{name}.json").read_text())
    return data


def placed_summary(placed: list) -> list[tuple[str, list[tuple[int, int, int]], int]]:  # type: ignore[type-arg]
    return [(p.block.name, [(s.phys_start, s.file_offset, s.length) for s in p.block.segments], p.host) for p in placed]


def both_ways(name: str) -> tuple[list, list | LayoutUnknown]:  # type: ignore[type-arg]
    data = capture(name)
    maps = parse_maps(str(data["maps"]))
    answers: dict[str, str] = data["hmp"]  # type: ignore[assignment]
    monitor = monitor_blocks(answers.__getitem__, maps, 7)
    try:
        cmdline: list | LayoutUnknown = place_blocks(cmdline_blocks(parse_cmdline(data["argv"]), 7), maps, 7)  # type: ignore[arg-type]
    except LayoutUnknown as exc:
        cmdline = exc
    return monitor, cmdline


# -- /proc/PID/maps -----------------------------------------------------------------------------


def test_maps_lines() -> None:
    maps = parse_maps(str(capture("q35_memfd_512m")["maps"]))
    ram = [m for m in maps if m.name == "/memfd:memory-backend-memfd"]
    assert len(ram) == 1 and ram[0].size == 512 * MiB and ram[0].shared and ram[0].path.endswith("(deleted)")
    assert next(m for m in maps if m.start == ram[0].end).guard  # QEMU's guard page follows each RAM block
    tcg = max(maps, key=lambda m: m.size)
    assert tcg.perms == "rwxp" and tcg.size > 512 * MiB  # TCG's translation buffer: the largest, and no RAM
    assert parse_maps("garbage\n") == []


# -- the layout, both ways, on real QEMU 7.2 processes ------------------------------------------


def test_memfd_q35_monitor_and_command_line_agree() -> None:
    monitor, cmdline = both_ways("q35_memfd_512m")
    assert not isinstance(cmdline, LayoutUnknown)
    (mon,), (cmd,) = monitor, cmdline
    assert mon.host == cmd.host and mon.mapping == cmd.mapping
    # the monitor knows finer: the firmware window below 1 MiB is ROM, not the RAM under it
    assert [(s.phys_start, s.length) for s in cmd.block.segments] == [(0, 512 * MiB)]
    assert all(s.phys_start >= 0 and s.phys_end <= 512 * MiB for s in mon.block.segments)
    assert {s.phys_start - s.file_offset for s in mon.block.segments} == {0}


def test_ram_above_4g_monitor_and_command_line_agree() -> None:
    monitor, cmdline = both_ways("q35_anon_4608m")
    assert not isinstance(cmdline, LayoutUnknown)
    assert placed_summary(cmdline)[0][1] == [(0, 0, 2 * GiB), (4 * GiB, 2 * GiB, 2560 * MiB)]
    assert monitor[0].host == cmdline[0].host
    assert placed_summary(monitor)[0][1][-1] == (4 * GiB, 2 * GiB, 2560 * MiB)


def test_two_numa_nodes_of_one_size_need_the_monitor() -> None:
    monitor, cmdline = both_ways("pc_numa_2x256m")
    assert isinstance(cmdline, LayoutUnknown)
    assert "cannot tell which mapping holds memory-backend-ram 'n0' (256 MiB, share=off)" in str(cmdline)
    assert "2 candidates for 2 block(s)" in str(cmdline) and "QEMU pid 7" in str(cmdline)
    summary = placed_summary(monitor)
    assert [(name, segs[-1]) for name, segs, _ in summary] == [
        ("n0", (0x100000, 0x100000, 255 * MiB)),
        ("n1", (256 * MiB, 0, 256 * MiB)),
    ]
    assert summary[0][2] != summary[1][2]


def test_a_hot_pluggable_dimm_needs_the_monitor() -> None:
    monitor, cmdline = both_ways("pc_dimm")
    assert isinstance(cmdline, LayoutUnknown) and "pc-dimm dimm0" in str(cmdline)
    by_name = {name: segs for name, segs, _ in placed_summary(monitor)}
    assert by_name["d0"] == [(4 * GiB, 0, 256 * MiB)]  # QEMU put it at the start of device memory
    assert sorted(by_name) == ["d0", "pc.ram"]  # pc.bios, pc.rom, the ACPI tables are no RAM


def test_info_memdev() -> None:
    answers: dict[str, str] = capture("pc_numa_2x256m")["hmp"]  # type: ignore[assignment]
    assert parse_info_memdev(answers["info memdev"]) == {"n0": (256 * MiB, False), "n1": (256 * MiB, False)}
    assert parse_info_memdev(answers["info memdev"].replace("\n", "\r\n")) == {"n0": (256 * MiB, False), "n1": (256 * MiB, False)}


def test_monitor_answers_that_do_not_fit_the_maps_are_refused() -> None:
    data = capture("q35_memfd_512m")
    answers: dict[str, str] = dict(data["hmp"])  # type: ignore[call-overload]
    maps = parse_maps(str(data["maps"]))
    wrong = dict(answers, **{"gpa2hva 0x0": "Host virtual address for 0x0 (m) is 0x1000"})
    with pytest.raises(LayoutUnknown, match="no mapping that holds it"):
        monitor_blocks(wrong.__getitem__, maps, 7)
    other = dict(answers, **{"gpa2hva 0x0": "Host virtual address for 0x0 (pc.bios) is 0x7f0000000000"})
    with pytest.raises(LayoutUnknown, match="not m"):
        monitor_blocks(other.__getitem__, maps, 7)


# -- placing blocks in maps ----------------------------------------------------------------------

RAM_512 = "7f6143e00000-7f6163e00000 rw-p 00000000 00:00 0 \n7f6163e00000-7f6163e01000 ---p 00000000 00:00 0 \n"
TCG_1G = "7f6164000000-7f61a3fff000 rwxp 00000000 00:00 0 \n7f61a3fff000-7f61a4000000 ---p 00000000 00:00 0 \n"


def ram(size: int, kind: str = "ram", share: bool = False, path: str | None = None) -> RamBlock:
    return RamBlock(Backend("pc.ram", f"memory-backend-{kind}", size, share, path), (Segment(0, 0, size),))


def test_the_largest_mapping_is_not_taken_for_ram() -> None:
    (placed,) = place_blocks([ram(512 * MiB)], parse_maps(TCG_1G + RAM_512), 7)
    assert placed.host == 0x7F6143E00000
    with pytest.raises(LayoutUnknown, match=r"no mapping in /proc/7/maps fits memory-backend-ram 'pc.ram' \(1 GiB"):
        place_blocks([ram(GiB)], parse_maps(TCG_1G + RAM_512), 7)  # 1 GiB of RAM would be the TCG buffer: refused


def test_of_two_candidates_the_guarded_one_wins_and_two_guarded_are_refused() -> None:
    unguarded = "7f0000000000-7f0020000000 rw-p 00000000 00:00 0 \n"
    (placed,) = place_blocks([ram(512 * MiB)], parse_maps(unguarded + RAM_512), 7)
    assert placed.host == 0x7F6143E00000
    twice = RAM_512 + RAM_512.replace("7f61", "7f71")
    with pytest.raises(LayoutUnknown, match="2 candidates for 1 block"):
        place_blocks([ram(512 * MiB)], parse_maps(twice), 7)


def test_kinds_must_match() -> None:
    memfd = "7fa88bfff000-7fa8abfff000 rw-s 00000000 00:01 45 /memfd:memory-backend-memfd (deleted)\n"
    assert place_blocks([ram(512 * MiB, "memfd", True)], parse_maps(memfd + RAM_512), 7)[0].mapping.shared
    with pytest.raises(LayoutUnknown, match="share=off"):
        place_blocks([ram(512 * MiB, "memfd", False)], parse_maps(memfd), 7)  # a private memfd maps rw-p
    zero = "7fa88bfff000-7fa8abfff000 rw-s 00000000 00:01 1031 /dev/zero (deleted)\n"
    assert place_blocks([ram(512 * MiB, "ram", True)], parse_maps(zero + RAM_512), 7)[0].mapping.path.startswith("/dev/zero")
    hugetlb = "7f0000000000-7f0020000000 rw-s 00000000 00:2f 9 /dev/hugepages/qemu_back_mem.pc.ram.AbCd12 (deleted)\n"
    placed = place_blocks([ram(512 * MiB, "file", True, "/dev/hugepages")], parse_maps(hugetlb + RAM_512), 7)
    assert placed[0].host == 0x7F0000000000
    with pytest.raises(LayoutUnknown):
        place_blocks([ram(512 * MiB, "file", True, "/srv/elsewhere")], parse_maps(hugetlb), 7)


def test_two_blocks_cannot_share_one_mapping() -> None:
    a = RamBlock(Backend("a", "memory-backend-memfd", 512 * MiB, True), (Segment(0, 0, 512 * MiB),))
    b = RamBlock(Backend("b", "memory-backend-memfd", 512 * MiB, True), (Segment(512 * MiB, 0, 512 * MiB),))
    memfd = "7fa88bfff000-7fa8abfff000 rw-s 00000000 00:01 45 /memfd:memory-backend-memfd (deleted)\n"
    with pytest.raises(LayoutUnknown, match="both fit only"):
        place_blocks([a, b], parse_maps(memfd), 7)


# -- a process that looks like QEMU --------------------------------------------------------------


@pytest.fixture
def anon_qemu(tmp_path: Path) -> Iterator[FakeQemu]:
    with FakeQemu(tmp_path, ["-machine", "pc-i440fx-7.2", "-m", "6M"], ["anon:6M"]) as qemu:
        yield qemu


def test_anonymous_ram_is_read_with_process_vm_readv(anon_qemu: FakeQemu) -> None:
    memory, how = qemu_process_memory(anon_qemu.pid, f"qemu-pid:{anon_qemu.pid}")
    with memory:
        assert memory.kind == "process_vm_readv" and how == f"command line + /proc/{anon_qemu.pid}/maps"
        data = anon_qemu.data[0]
        assert memory.read(0, 64) == data[:64]
        assert memory.read(0x1FFC, 8) == data[0x1FFC:0x2004]  # across a page
        assert memory.read(MiB, 3 * MiB) == data[MiB : 4 * MiB]  # a large read, straight from the process
        assert memory.read_u64(0x3000) == int.from_bytes(data[0x3000:0x3008], "little")
        assert list(memory.scan(data[5 * MiB + 17 : 5 * MiB + 49])) == [5 * MiB + 17]
        with pytest.raises(UnmappedPhysicalAddress):
            memory.read(6 * MiB - 4, 8)  # past the end of RAM


def test_a_process_that_unmaps_its_ram_or_exits_gives_errors_not_bytes(anon_qemu: FakeQemu) -> None:
    memory, _ = qemu_process_memory(anon_qemu.pid, f"qemu-pid:{anon_qemu.pid}")
    with memory:
        assert memory.read(4 * MiB, 16) == anon_qemu.data[0][4 * MiB : 4 * MiB + 16]
        anon_qemu.command(f"unmap 0 {4 * MiB} {MiB}")
        memory.new_sweep()
        with pytest.raises(ProcessMemoryError, match="no longer maps its RAM"):
            memory.read(4 * MiB, 16)
        with pytest.raises(ProcessMemoryError, match="no longer maps its RAM"):
            memory.read(3 * MiB, 2 * MiB)  # a short read: the first MiB is still there
        assert memory.read(0, 16) == anon_qemu.data[0][:16]
        anon_qemu.close()
        with pytest.raises(ProcessMemoryError, match=f"QEMU pid {anon_qemu.pid} has exited"):
            memory.new_sweep()
        with pytest.raises(ProcessMemoryError, match="has exited"):
            memory.read(2 * MiB, 16)


def test_memfd_ram_is_mapped_through_map_files(tmp_path: Path) -> None:
    args = ["-machine", "q35,memory-backend=m", "-object", "memory-backend-memfd,id=m,size=6M", "-m", "6M"]
    with FakeQemu(tmp_path, args, ["memfd:6M"]) as qemu:
        memory, _ = qemu_process_memory(qemu.pid, f"qemu-pid:{qemu.pid}")
        with memory:
            assert memory.kind == "map_files"
            assert f"/proc/{qemu.pid}/map_files/{qemu.addresses[0]:x}-" in memory.describe()
            assert memory.read(0x2000, 32) == qemu.data[0][0x2000:0x2020]
            qemu.command("write 0 8192 feedface")
            assert memory.read(0x2000, 4) == bytes.fromhex("feedface")  # zero-copy: the live pages themselves
            qemu.close()
            with pytest.raises(ProcessMemoryError, match="has exited"):
                memory.new_sweep()  # the memfd outlives QEMU in our mapping: a sweep must not read a dead guest


def test_numa_nodes_of_two_kinds_are_joined(tmp_path: Path) -> None:
    args = [
        "-m", "6M", "-object", "memory-backend-ram,id=n0,size=4M", "-numa", "node,nodeid=0,memdev=n0",
        "-object", "memory-backend-memfd,id=n1,size=2M", "-numa", "node,nodeid=1,memdev=n1",
    ]  # fmt: skip
    with FakeQemu(tmp_path, args, ["anon:4M", "memfd:2M"]) as qemu:
        memory, _ = qemu_process_memory(qemu.pid, f"qemu-pid:{qemu.pid}")
        with memory:
            assert memory.kind == "map_files+process_vm_readv"
            assert [(r.start, r.length) for r in memory.ranges()] == [(0, 6 * MiB)]
            n0, n1 = qemu.data
            assert memory.read(4 * MiB - 8, 16) == n0[-8:] + n1[:8]  # node 0's last bytes, node 1's first
            assert list(memory.scan(n0[-3:] + n1[:5])) == [4 * MiB - 3]


def test_a_private_file_mapping_is_read_from_the_process_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ram.img"
    args = ["-m", "6M", "-machine", "memory-backend=f", "-object", f"memory-backend-file,id=f,size=6M,mem-path={path}"]
    with FakeQemu(tmp_path, args, [f"file:6M:{path}"]) as qemu:
        memory, _ = qemu_process_memory(qemu.pid, f"qemu-pid:{qemu.pid}")
        with memory:
            # the guest's writes to a MAP_PRIVATE file are copies in QEMU's memory: the file has zeros
            assert memory.kind == "process_vm_readv"
            assert memory.read(0, 64) == qemu.data[0][:64]
            assert path.read_bytes()[:64] == bytes(64)


def test_shared_file_and_shared_anonymous_ram_are_mapped(tmp_path: Path) -> None:
    path = tmp_path / "shared.ram"
    args = [
        "-m", "6M", "-object", "memory-backend-file,id=a,size=4M,share=on,mem-path=shared.ram", "-numa", "node,memdev=a",
        "-object", "memory-backend-ram,id=b,size=2M,share=on", "-numa", "node,memdev=b",
    ]  # fmt: skip
    with FakeQemu(tmp_path, args, [f"shared-file:4M:{path}", "shared-anon:2M"]) as qemu:
        # mem-path is relative: QEMU's working folder (the test's) resolves it
        memory, _ = qemu_process_memory(qemu.pid, f"qemu-pid:{qemu.pid}")
        with memory:
            assert memory.kind == "map_files"
            assert memory.read(4 * MiB, 32) == qemu.data[1][:32] and memory.read(0, 32) == qemu.data[0][:32]


def fake_monitor(qemu: FakeQemu, size: int = 6 * MiB) -> Callable[[str], str]:
    """A monitor that answers as QEMU 7.2 would for a fake QEMU with one RAM block, pc.ram."""
    answers = {
        "info memdev": f"memory backend: pc.ram\r\n  size:  {size}\r\n  share: false\r\n",
        "info mtree -f": 'FlatView #0\n AS "memory", root: system\n Root memory region: system\n'
        f"  0000000000000000-{size - 1:016x} (prio 0, ram): pc.ram\n",
        "gpa2hva 0x0": f"Host virtual address for 0x0 (pc.ram) is {qemu.addresses[0]:#x}\r\n",
    }
    return answers.__getitem__


def test_the_monitor_layout_on_a_live_process(anon_qemu: FakeQemu) -> None:
    memory, how = qemu_process_memory(anon_qemu.pid, f"qemu-pid:{anon_qemu.pid}", fake_monitor(anon_qemu))
    with memory:
        assert how == "monitor: info mtree" and memory.kind == "process_vm_readv"
        assert memory.read(5 * MiB, 64) == anon_qemu.data[0][5 * MiB : 5 * MiB + 64]


def test_a_monitor_that_fails_or_misleads_leaves_the_command_line(anon_qemu: FakeQemu) -> None:
    def dead(command: str) -> str:
        raise HypervisorError("QMP human-monitor-command on /run/q.sock: no answer within 10 s")

    spec = f"qemu-pid:{anon_qemu.pid}"
    memory, how = qemu_process_memory(anon_qemu.pid, spec, dead)
    memory.close()
    cmdline = f"command line + /proc/{anon_qemu.pid}/maps"
    assert how == f"{cmdline} (the monitor failed: QMP human-monitor-command on /run/q.sock: no answer within 10 s)"
    memory, how = qemu_process_memory(anon_qemu.pid, spec, fake_monitor(anon_qemu, size=8 * MiB))  # bigger than its mapping
    memory.close()
    assert how.startswith(f"{cmdline} (the monitor failed: the monitor puts memory backend 'pc.ram' (8 MiB) at host address")


def test_hot_pluggable_memory_is_said(tmp_path: Path) -> None:
    with FakeQemu(tmp_path, ["-m", "6M,slots=2,maxmem=1G"], ["anon:6M"]) as qemu:
        memory, how = qemu_process_memory(qemu.pid, f"qemu-pid:{qemu.pid}")
        memory.close()
        assert how.endswith("(-m maxmem= allows DIMMs plugged at run time, which only the monitor shows)")


def test_what_is_no_qemu_or_no_process() -> None:
    with pytest.raises(TargetError, match="not a QEMU"):
        qemu_process_memory(os.getpid(), "qemu-pid:self")
    with pytest.raises(TargetError, match="no process"):
        qemu_process_memory(2**22 + 1, "qemu-pid:4194305")


# -- the scheme ----------------------------------------------------------------------------------


def test_scheme_opens_a_connector(anon_qemu: FakeQemu) -> None:
    with open_connector(f"qemu-pid:{anon_qemu.pid}") as guest:
        assert not guest.live and guest.name == f"qemu-{anon_qemu.pid}"
        assert guest.memory.read(0, 8) == anon_qemu.data[0][:8]
        assert guest.layout_source == f"command line + /proc/{anon_qemu.pid}/maps"
    for bad, why in (
        ("qemu-pid:abc", "no process id"),
        ("qemu-pid:1,qmp", "unknown option"),
        ("qemu-pid:1,x=y", "unknown option"),
    ):
        with pytest.raises(TargetError, match=why):
            open_connector(bad)
    with pytest.raises(TargetError, match="no QMP socket /nonexistent"):
        open_connector(f"qemu-pid:{anon_qemu.pid},qmp=/nonexistent")


def test_a_busy_qmp_socket_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a socket that accepts and never greets: what QEMU's QMP is to a second client
    path = tmp_path / "qmp.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    monkeypatch.setattr(qemu_pid_scheme, "QMP_GREETING_TIMEOUT", 0.3)
    try:
        args = ["-m", "6M", "-qmp", f"unix:{path},server=on,wait=off"]
        with FakeQemu(tmp_path, args, ["anon:6M"]) as qemu, open_connector(f"qemu-pid:{qemu.pid}") as guest:
            assert not guest.live
            busy = f"(QMP socket {path} busy: another client holds it)"
            assert guest.layout_source == f"command line + /proc/{qemu.pid}/maps {busy}"
            assert guest.memory.read(0, 8) == qemu.data[0][:8]
    finally:
        server.close()


# -- privileges, for real: another user, and root without CAP_SYS_ADMIN --------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to drop privileges")
OPEN = (
    "import sys; sys.path.insert(0, {src!r}); from vmsentinel.access import open_connector;"
    " g = open_connector({spec!r}); print(g.memory.kind, '|', g.layout_source)"
)


def _open_as(setpriv_args: list[str], spec: str) -> subprocess.CompletedProcess[str]:
    skip_unless_reachable(setpriv_args)
    assert SETPRIV is not None
    code = OPEN.format(src=SRC, spec=spec)
    return subprocess.run([SETPRIV, *setpriv_args, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@needs_root
def test_another_user_is_told_what_it_lacks(anon_qemu: FakeQemu) -> None:
    proc = _open_as(["--reuid=nobody", "--regid=nogroup", "--clear-groups"], f"qemu-pid:{anon_qemu.pid}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vmsentinel.errors.AccessDenied: ")
    assert f"reading /proc/{anon_qemu.pid}/maps was refused: it needs the same user as QEMU or CAP_SYS_PTRACE" in last
    assert "QEMU runs as uid 0, this process as uid 65534" in last


@needs_root
def test_root_without_cap_sys_admin_reads_a_memfd_with_process_vm_readv(tmp_path: Path) -> None:
    args = ["-machine", "q35,memory-backend=m", "-object", "memory-backend-memfd,id=m,size=6M", "-m", "6M"]
    drop = ["--inh-caps=-sys_admin,-checkpoint_restore", "--bounding-set=-sys_admin,-checkpoint_restore"]
    with FakeQemu(tmp_path, args, ["memfd:6M"]) as qemu:
        proc = _open_as(drop, f"qemu-pid:{qemu.pid}")
        assert proc.returncode == 0, proc.stderr
        kind, how = proc.stdout.strip().split(" | ")
        assert kind == "process_vm_readv"
        assert (
            "needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, which this process lacks: read with process_vm_readv instead" in how
        )


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (scripts/setup installs it)")
def test_a_monitor_that_refuses_for_a_moment_is_asked_again(tmp_path: Path) -> None:
    """A real QEMU's QMP socket with one client and its backlog full refuses a connection outright; once
    the client lets go, QEMU drains the queue and greets the next one: that next one is ours, not a
    'refused us' and a layout from the command line instead of QEMU's own."""
    import threading

    from vmsentinel.access.qmp import Qmp

    assert QEMU is not None
    path = tmp_path / "qmp.sock"
    qemu = subprocess.Popen([QEMU, "-machine", "none", "-display", "none", "-qmp", f"unix:{path},server=on,wait=off"])
    queued: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and qemu.poll() is None, "QEMU did not open its QMP socket"
            time.sleep(0.05)
        holder = Qmp(str(path), timeout=5.0)
        holder.connect()
        for _ in range(16):  # queue connections until the backlog is full and a connect is refused
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except OSError:
                s.close()
                break
            queued.append(s)
        else:
            pytest.fail("QEMU's QMP backlog never filled")

        def let_go() -> None:
            for s in queued:
                s.close()
            holder.close()

        threading.Timer(0.5, let_go).start()
        qmp, unusable = qemu_pid_scheme._first_usable([str(path)])
        assert qmp is not None, unusable
        assert qmp.command("query-status")["status"] in ("running", "prelaunch")
        qmp.close()
    finally:
        qemu.kill()
        qemu.wait()
