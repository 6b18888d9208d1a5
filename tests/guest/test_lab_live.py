"""The lab through its CLI, on real guests: up/exec/ls/down, --add, KASLR,
errors (name in use, guest that never comes up, QEMU that died)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.guest.conftest import ADDED_FILE_TEXT, Guest, LabPool, guest_sh, vmsentinel
from vmsentinel.paths import cache_dir

pytestmark = pytest.mark.guest


def test_up_json_has_the_promised_keys(guest: Guest) -> None:
    for key in ("name", "target", "ram_path", "qmp_socket", "kernel_release", "pid"):
        assert key in guest.info
    assert guest.info["target"] == f"lab:{guest.name}"
    assert str(guest.info["kernel_release"]).startswith(guest.series + ".")
    assert os.path.exists(str(guest.info["ram_path"])) and os.path.exists(str(guest.info["qmp_socket"]))


def test_exec_relays_stdout_and_exit_status(guest: Guest) -> None:
    assert guest_sh(guest, "uname -r").strip() == guest.info["kernel_release"]
    proc = vmsentinel("lab", "exec", guest.name, "--", "sh", "-c", "echo out; echo err >&2; exit 42", check=False)
    assert proc.returncode == 42 and proc.stdout == "out\n" and "err" in proc.stderr
    assert guest_sh(guest, "id -u").strip() == "0"
    assert guest_sh(guest, "cat /root/added.txt") == ADDED_FILE_TEXT
    big = guest_sh(guest, "head -c 300000 /proc/kallsyms | wc -c")
    assert big.strip() == "300000"


def test_kaslr_is_on_and_modules_are_loaded(guest: Guest) -> None:
    assert "nokaslr" not in guest_sh(guest, "cat /proc/cmdline")
    text_base = guest_sh(guest, "grep -m1 ' _text$' /proc/kallsyms").split()[0]
    assert int(text_base, 16) != 0xFFFFFFFF81000000  # the unrandomised base
    assert "virtio_net" in guest_sh(guest, "cat /proc/modules")


def test_ls_shows_running_guests_and_up_refuses_a_used_name(guest: Guest) -> None:
    listed = {g["name"]: g for g in json.loads(vmsentinel("lab", "ls", "--json").stdout)}
    assert listed[guest.name]["status"] == "running"
    proc = vmsentinel("lab", "up", guest.name, check=False)
    assert proc.returncode == 2 and "already running" in proc.stderr


def test_guest_that_does_not_come_up_shows_its_console(lab_pool: LabPool) -> None:
    proc = vmsentinel("lab", "up", f"t{os.getpid()}-slow", "--timeout", "2", check=False)
    assert proc.returncode == 2
    assert "did not come up within 2 s" in proc.stderr and "console tail" in proc.stderr
    listed = json.loads(vmsentinel("lab", "ls", "--json").stdout)
    assert f"t{os.getpid()}-slow" not in [g["name"] for g in listed]


def test_unknown_series_lists_what_the_archive_has(lab_pool: LabPool) -> None:
    proc = vmsentinel("lab", "up", f"t{os.getpid()}-x", "--kernel", "5.10", check=False)
    assert proc.returncode == 2
    assert "unknown kernel series '5.10'" in proc.stderr and "6.1" in proc.stderr and "6.12" in proc.stderr


def test_dead_qemu_is_reported_and_cleaned_up(lab_pool: LabPool) -> None:
    name = f"t{os.getpid()}-doomed"
    package = str(lab_pool.get("6.1").info["kernel_package"])  # an exact package name works as --kernel
    info = json.loads(vmsentinel("lab", "up", name, "--kernel", package, "--json").stdout)
    assert info["kernel_package"] == package
    os.kill(int(info["pid"]), signal.SIGKILL)
    for _ in range(100):
        listed = {g["name"]: g for g in json.loads(vmsentinel("lab", "ls", "--json").stdout)}
        if listed[name]["status"] == "dead":
            break
        time.sleep(0.1)
    assert listed[name]["status"] == "dead"
    proc = vmsentinel("lab", "exec", name, "--", "true", check=False)
    assert proc.returncode == 2 and "not running" in proc.stderr
    vmsentinel("lab", "down", name)
    assert not os.path.exists(str(info["ram_path"]))
    assert name not in [g["name"] for g in json.loads(vmsentinel("lab", "ls", "--json").stdout)]


def test_info_on_a_live_guest(paged_guest: Guest) -> None:
    data = json.loads(vmsentinel("info", paged_guest.target, "--json").stdout)
    assert data["kernel_release"] == paged_guest.info["kernel_release"]
    assert data["banner"].startswith(f"Linux version {paged_guest.info['kernel_release']} ")
    assert data["paging_levels"] == paged_guest.paging
    assert data["source_kind"] == "qemu-ram" and data["layout_source"] == "qmp info mtree"
    assert int(data["page_table_root"], 16) > 0


def test_qemu_targets_with_and_without_qmp(guest: Guest) -> None:
    ram, qmp = str(guest.info["ram_path"]), str(guest.info["qmp_socket"])
    with_qmp = json.loads(vmsentinel("info", f"qemu:{ram},qmp={qmp}", "--json").stdout)
    assert with_qmp["layout_source"] == "qmp info mtree" and with_qmp["paging_levels"] == 4
    without = json.loads(vmsentinel("info", f"qemu:{ram},machine=q35", "--json").stdout)
    assert without["layout_source"] == "q35 machine rule"
    # no registers without QMP: the paging mode and root come from the kernel found in memory
    assert without["paging_levels"] == 4 and without["registers_source"] == "init_top_pgt found from memory"
    assert without["kernel_release"] == with_qmp["kernel_release"]
    assert without["ram_size"] == with_qmp["ram_size"]


@pytest.fixture
def demo_name() -> Iterator[str]:
    """The demo guest's name; the memory dump its response writes into the cache goes with the test."""
    name = f"t{os.getpid()}-demo"
    yield name
    for dump in (cache_dir() / "demo" / "dumps").glob(f"lab_{name}-*.core"):
        dump.unlink(missing_ok=True)


def test_demo_shows_the_guest_from_outside(lab_pool: LabPool, demo_name: str) -> None:
    data = json.loads(vmsentinel("demo", "--name", demo_name, "--json").stdout)
    assert data["secret_found_at"], "the demo's secret was not found from outside"
    assert data["kernel_release"] and data["paging_levels"] == 4
    assert data["kernel_ranges"] > 0 and data["user_ranges"] >= 0 and not data["walk_problems"]
    # the attack story: every trick of the rootkit found, and the responses carried out
    assert data["attack"]["rootkit_loaded"] and data["attack"]["module_in_proc_modules"] == "0"
    assert {f["detector"] for f in data["findings"]} == {
        "hidden_process",
        "hidden_module",
        "syscall_hook",
        "kernel_code_modified",
        "privilege_escalation",
        "unsigned_module",
        "kernel_taint",
        "code_not_allowlisted",
    }
    # the signed allowlist of the guest's own initramfs: only the rootkit is not on it
    assert data["allowlist"]["files"] > 0 and data["allowlist"]["modules"] > 0
    unlisted = [f["evidence"] for f in data["findings"] if f["detector"] == "code_not_allowlisted"]
    assert [u.get("module") for u in unlisted] == ["vmsrootkit"]
    assert [(r["action"], r["ok"]) for r in data["responses"]] == [("dump", True), ("pause", True)]
