"""``qemu-pid:PID`` on QEMUs started the plain way (tests/guest/plain_qemu.py), on 6.1 and 6.12:

* ``-m 512`` and no monitor at all (anonymous RAM, read with process_vm_readv): ``vmsentinel ps``
  equals the processes /proc shows inside;
* a memfd-backed QEMU is mapped through /proc/PID/map_files;
* a 4.5 GiB guest: pages a program inside fills (``physpages`` tells where they are, from
  /proc/self/pagemap) read right above 4 GiB with the layout from the command line (while the test
  holds QEMU's one QMP connection) and from the monitor, and equal QEMU's own ``pmemsave``;
* two NUMA nodes: the second node's pages read right; with two nodes of one size the command line
  cannot tell them apart (refused), the monitor can;
* privileges, for real: another user is told what it lacks; CAP_SYS_PTRACE alone is enough for
  process_vm_readv; without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE a memfd is read with it too.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, build_programs, vmsentinel
from tests.guest.helpers import INSIDE, parse_inside
from tests.guest.plain_qemu import PlainQemu
from tests.privileges import NOBODY, SETPRIV, skip_unless_reachable
from vmsentinel.access import open_connector
from vmsentinel.access.qmp import Qmp
from vmsentinel.access.qmp_control import QmpControl
from vmsentinel.memory.qemu_ram import FOUR_GIB, GiB

pytestmark = pytest.mark.guest

MiB = 1 << 20
SEED = 0x5EED_0F_0DD
_K = [(j * 0x9E3779B97F4A7C15) & (2**64 - 1) for j in range(512)]


def pattern(seed: int, index: int) -> bytes:
    """What physpages writes into its page ``index``."""
    base = seed ^ (index << 20)
    return struct.pack("<512Q", *(base ^ k for k in _K))


def physpages(vm: PlainQemu, mib: int, seed: int, cpu: int | None = None) -> list[tuple[int, int]]:
    """Start physpages in the guest; return (page index, guest-physical address) of its pages."""
    where = f"/tmp/pp-{seed:x}.txt"
    vm.sh(f"/root/programs/physpages {mib} {seed} {'' if cpu is None else cpu} > {where} 2>&1 &")
    deadline = time.monotonic() + 120
    while True:
        out = vm.sh(f"cat {where}")
        if out.rstrip().endswith("READY"):
            break
        assert time.monotonic() < deadline, f"physpages did not get ready: {out[-300:]}"
        time.sleep(0.5)
    pages = [tuple(int(x) for x in line.split()) for line in out.splitlines()[:-1]]
    assert len(pages) == mib * 256, "some pages are not present"
    return [(i, pfn << 12) for i, pfn in pages]


def check_pages(memory: object, pages: list[tuple[int, int]], seed: int) -> None:
    read = memory.read  # type: ignore[attr-defined]
    wrong = [(i, hex(addr)) for i, addr in pages if read(addr, 4096) != pattern(seed, i)]
    assert not wrong, f"{len(wrong)} of {len(pages)} pages read wrong, e.g. {wrong[:5]}"


def info(target: str, check: bool = True) -> dict[str, object]:
    proc = vmsentinel("info", target, "--json", check=check)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr, "status": proc.returncode}


def ranges(data: dict[str, object]) -> list[tuple[int, int]]:
    return [(int(r["start"], 16), int(r["size"])) for r in data["physical_ranges"]]  # type: ignore[attr-defined,index]


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_programs(tmp_path_factory.mktemp("programs"))


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def series(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def anon_vm(series: str, programs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainQemu]:
    """``-m 512`` and nothing else: anonymous RAM, no monitor of any kind."""
    with PlainQemu(series, tmp_path_factory.mktemp(f"anon-{series}"), ["-m", "512"], programs) as vm:
        yield vm


@pytest.fixture(scope="module")
def memfd_vm(series: str, programs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainQemu]:
    args = ["-machine", "q35,memory-backend=m", "-object", "memory-backend-memfd,id=m,size=512M", "-m", "512M"]
    with PlainQemu(series, tmp_path_factory.mktemp(f"memfd-{series}"), args, programs) as vm:
        yield vm


# -- no monitor at all -------------------------------------------------------------------------


def test_ps_of_a_plain_qemu_equals_the_inside_view(anon_vm: PlainQemu) -> None:
    assert not any(a.startswith(("-qmp", "-mon", "-monitor")) for a in anon_vm.command)
    anon_vm.sh(
        "for i in $(seq 1 40); do sleep 10000 & done; /root/programs/threads 3 & "
        "su -s /bin/sh nobody -c 'exec sleep 10003' & sleep 0.5"
    )
    before = parse_inside(anon_vm.sh(INSIDE))
    ours = {p["pid"]: p for p in json.loads(vmsentinel("ps", anon_vm.target, "--json").stdout)}
    after = parse_inside(anon_vm.sh(INSIDE))
    stable = {pid for pid in before.keys() & after.keys() if before[pid] == after[pid]}
    assert len(stable) > 60
    assert set(ours) <= before.keys() | after.keys(), "the outside view has processes the guest never had"
    for pid in sorted(stable):
        assert pid in ours, f"pid {pid} {before[pid]} missing from the outside view"
        ppid, uid, comm, args, exe, threads = before[pid]
        p = ours[pid]
        assert (p["ppid"], p["uid"], tuple(p["threads"]), p["exe"]) == (ppid, uid, threads, exe), pid
        if not comm.startswith("kworker/"):  # a workqueue worker's /proc name follows its current work
            assert p["name"] == comm, pid
        if args is not None:
            assert tuple(p["cmdline"] or ()) == args, pid
    assert any(p["uid"] == 65534 for p in ours.values()) and any(len(p["threads"]) == 4 for p in ours.values())
    data = info(anon_vm.target)
    assert data["source_kind"] == "process_vm_readv"
    assert data["layout_source"] == f"command line + /proc/{anon_vm.pid}/maps"
    assert ranges(data) == [(0, 512 * MiB)] and data["kernel_release"] == anon_vm.release


# -- memfd ---------------------------------------------------------------------------------------


def test_memfd_ram_is_read_through_map_files(memfd_vm: PlainQemu) -> None:
    data = info(memfd_vm.target)
    assert data["source_kind"] == "map_files" and data["kernel_release"] == memfd_vm.release
    secret = os.urandom(32).hex()
    memfd_vm.sh(f"echo {secret} > /tmp/secret")
    with open_connector(memfd_vm.target) as guest:
        assert guest.memory.kind == "map_files"
        assert f"/proc/{memfd_vm.pid}/map_files/" in guest.memory.describe()
        assert list(guest.memory.scan(secret.encode()))
    ps = json.loads(vmsentinel("ps", memfd_vm.target, "--json").stdout)
    assert {1, 2} <= {p["pid"] for p in ps}


# -- above 4 GiB ---------------------------------------------------------------------------------


def test_ram_above_4g_from_the_command_line_and_from_the_monitor(series: str, programs: Path, tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    args = ["-m", "4608", "-qmp", f"unix:{sock},server=on,wait=off"]  # pc: 3 GiB below 4 GiB, 1.5 GiB above
    with PlainQemu(series, tmp_path / "vm", args, programs) as vm:
        pages = physpages(vm, 64, SEED)
        high = [(i, a) for i, a in pages if a >= FOUR_GIB]
        assert len(high) > 1000, f"only {len(high)} of the program's pages above 4 GiB"
        with Qmp(str(sock)) as qmp:  # QEMU serves one QMP client: ours, so qemu-pid must do without
            data = info(vm.target)
            assert (
                data["layout_source"] == f"command line + /proc/{vm.pid}/maps (QMP socket {sock} busy: another client holds it)"
            )
            assert ranges(data) == [(0, 3 * GiB), (FOUR_GIB, 1536 * MiB)]
            with open_connector(vm.target) as guest:
                assert not guest.live and guest.memory.kind == "process_vm_readv"
                check_pages(guest.memory, pages, SEED)
                qmp.stop()
                try:
                    start = high[0][1] & ~(2 * MiB - 1)
                    raw = tmp_path / "high.raw"
                    qmp.command("pmemsave", val=start, size=2 * MiB, filename=str(raw))
                    assert guest.memory.read(start, 2 * MiB) == raw.read_bytes()
                finally:
                    qmp.cont()
        with open_connector(vm.target) as guest:  # the socket is free: QEMU's own layout now
            assert isinstance(guest.control, QmpControl) and guest.layout_source == "monitor: info mtree"
            assert [(r.start, r.length) for r in guest.memory.ranges()][-1] == (FOUR_GIB, 1536 * MiB)
            check_pages(guest.memory, high, SEED)
            assert guest.registers() is not None  # and the vCPUs' registers come with it


# -- NUMA ----------------------------------------------------------------------------------------


def test_the_second_numa_node_from_the_command_line(series: str, programs: Path, tmp_path: Path) -> None:
    args = [
        "-m", "512", "-smp", "2",
        "-object", "memory-backend-ram,id=n0,size=320M", "-numa", "node,nodeid=0,cpus=0,memdev=n0",
        "-object", "memory-backend-ram,id=n1,size=192M", "-numa", "node,nodeid=1,cpus=1,memdev=n1",
    ]  # fmt: skip
    with PlainQemu(series, tmp_path / "vm", args, programs) as vm:
        assert vm.sh("cat /sys/devices/system/node/node1/meminfo | grep MemTotal")
        pages = physpages(vm, 32, SEED + 1, cpu=1)
        on_node1 = [(i, a) for i, a in pages if 320 * MiB <= a < 512 * MiB]
        assert len(on_node1) > len(pages) // 2, "the pages of a program on CPU 1 should come from node 1"
        data = info(vm.target)
        assert data["layout_source"] == f"command line + /proc/{vm.pid}/maps" and ranges(data) == [(0, 512 * MiB)]
        with open_connector(vm.target) as guest:
            check_pages(guest.memory, pages, SEED + 1)
            # node 0's last page and node 1's first, in one read, from two host mappings
            assert guest.memory.read(320 * MiB - 8, 16) == guest.memory.read(320 * MiB - 8, 8) + guest.memory.read(320 * MiB, 8)


def test_numa_nodes_of_one_size_need_the_monitor(series: str, programs: Path, tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    args = [
        "-m", "512", "-smp", "2", "-qmp", f"unix:{sock},server=on,wait=off",
        "-object", "memory-backend-ram,id=n0,size=256M", "-numa", "node,nodeid=0,cpus=0,memdev=n0",
        "-object", "memory-backend-ram,id=n1,size=256M", "-numa", "node,nodeid=1,cpus=1,memdev=n1",
    ]  # fmt: skip
    with PlainQemu(series, tmp_path / "vm", args, programs) as vm:
        pages = physpages(vm, 32, SEED + 2, cpu=1)
        assert sum(1 for _, a in pages if a >= 256 * MiB) > len(pages) // 2
        with Qmp(str(sock)):
            refused = info(vm.target, check=False)
        assert refused["status"] == 2
        lines = str(refused["error"]).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: qemu-pid:{vm.pid}: cannot tell which mapping holds")
        assert "2 candidates for 2 block(s)" in lines[0] and "give qmp=SOCKET" in lines[0]
        with open_connector(f"{vm.target},qmp={sock}") as guest:
            assert guest.layout_source == "monitor: info mtree"
            check_pages(guest.memory, pages, SEED + 2)


# -- privileges, for real ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")


def as_user(setpriv: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with fewer privileges, with a cache and state of its own that it may write (pytest's
    temporary folders are root's alone)."""
    skip_unless_reachable(setpriv)
    home = Path(tempfile.mkdtemp(prefix="vms-qemu-pid-"))
    try:
        home.chmod(0o777)
        env = {**os.environ, "VMSENTINEL_CACHE": str(home / "cache"), "VMSENTINEL_STATE": str(home / "state"), "HOME": str(home)}
        assert SETPRIV is not None
        cmd = [SETPRIV, *setpriv, sys.executable, "-m", "vmsentinel", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@needs_root
def test_another_user_is_told_in_one_line_what_it_lacks(anon_vm: PlainQemu) -> None:
    proc = as_user(NOBODY, "ps", anon_vm.target, "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: qemu-pid:{anon_vm.pid}: reading /proc/{anon_vm.pid}/maps was refused:")
    assert "it needs the same user as QEMU or CAP_SYS_PTRACE, which this process lacks" in proc.stderr
    assert "QEMU runs as uid 0, this process as uid 65534" in proc.stderr


@needs_root
def test_cap_sys_ptrace_is_enough_for_process_vm_readv(anon_vm: PlainQemu) -> None:
    ptrace = [*NOBODY, "--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace"]
    proc = as_user(ptrace, "info", anon_vm.target, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["source_kind"] == "process_vm_readv" and data["kernel_release"] == anon_vm.release


@needs_root
def test_without_cap_sys_admin_a_memfd_is_read_with_process_vm_readv(memfd_vm: PlainQemu) -> None:
    drop = ["--inh-caps=-sys_admin,-checkpoint_restore", "--bounding-set=-sys_admin,-checkpoint_restore"]
    for setpriv in (drop, [*NOBODY, "--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace"]):
        proc = as_user(setpriv, "info", memfd_vm.target, "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["source_kind"] == "process_vm_readv" and data["kernel_release"] == memfd_vm.release
        assert "needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, which this process lacks" in str(data["layout_source"])
