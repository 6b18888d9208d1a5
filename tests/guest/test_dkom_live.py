"""DKOM that defeats two sources at once, on real guests (6.1 and 6.12, KASLR on): a process unlinked
from the task list and taken out of the PID table (gone from /proc and from kill inside the guest) is
still found by ``check`` through the memory scan; a module unlinked from the module list and from sysfs
is found through the scan of module memory alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, Guest, LabPool, guest_sh, vmsentinel
from vmsentinel.lab.kmod import build_module, insert_module

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def victim(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    return lab_pool.fresh(request.param, "dkom")


def _findings(target: str, detector: str) -> list[dict[str, object]]:
    proc = vmsentinel("check", target, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return [f for f in json.loads(proc.stdout) if f["detector"] == detector]


def test_a_process_gone_from_the_task_list_and_the_pid_table_is_found(victim: Guest, tmp_path: Path) -> None:
    pid = int(guest_sh(victim, "/bin/sleep 100011 >/dev/null 2>&1 & echo $!").strip())
    ko = build_module(str(victim.info["kernel_package"]), ROOTKIT, tmp_path)
    params = f"hide_pid={pid} hide_pid_deep=1 tasklist_lock_addr=0x$(sym tasklist_lock) pidmap_lock_addr=0x$(sym pidmap_lock)"
    assert insert_module(victim.name, ko, params) == ""
    try:
        assert f"pid {pid} out of the PID table: yes" in guest_sh(victim, "dmesg | grep vmsrootkit")
        assert "gone" in guest_sh(victim, f"test -d /proc/{pid} || echo gone; kill -0 {pid} 2>/dev/null || echo gone")
        hidden = [f for f in _findings(victim.target, "hidden_process") if f["evidence"]["pid"] == pid]  # type: ignore[index]
        assert len(hidden) == 1, hidden
        sources = set(hidden[0]["sources"])  # type: ignore[arg-type]
        assert "memory_scan" in sources and not sources & {"task_list", "pid_table"}, sources
    finally:
        guest_sh(victim, f"rmmod vmsrootkit; kill {pid}; true")  # back in both, then ended
    assert not [f for f in _findings(victim.target, "hidden_process") if f["evidence"]["pid"] == pid]  # type: ignore[index]


def test_a_module_gone_from_the_module_list_and_sysfs_is_found_by_the_memory_scan(victim: Guest, tmp_path: Path) -> None:
    ko = build_module(str(victim.info["kernel_package"]), ROOTKIT, tmp_path)
    assert insert_module(victim.name, ko, "hide_self=2") == ""  # for good: it cannot be unloaded now
    assert guest_sh(victim, "ls /sys/module | grep -c vmsrootkit; grep -c vmsrootkit /proc/modules; true").split() == ["0", "0"]
    hidden = [f for f in _findings(victim.target, "hidden_module") if f["evidence"]["module"] == "vmsrootkit"]  # type: ignore[index]
    assert len(hidden) == 1 and hidden[0]["sources"] == ["memory_scan"], hidden
