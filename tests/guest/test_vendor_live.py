"""The first look against the vendor's image, on real guests (6.1 and 6.12, KASLR on): a clean guest's
core kernel text and read-only data differ from the relocated Debian vmlinuz of its build only where
the kernel patches itself, on 4- and 5-level paging and with one and two vCPUs; a syscall dispatcher
patched by the test rootkit before anyone looked is found by ``check`` on first sight, against the
vendor image, by the dispatcher's own calls and as a branch out of kernel text, and gone once the module
is unloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, STATE, Guest, LabPool, guest_sh, vmsentinel
from vmsentinel.lab.kmod import build_module, insert_module
from vmsentinel.os.linux.guest import LinuxGuest

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
#: every Debian 6.1 and 6.12 kernel has more core text and read-only data than this
AT_LEAST = 16 << 20


def _assert_clean(target: str) -> None:
    with LinuxGuest.open(target) as guest:
        check = guest.vendor_check()
    assert check.vendor, check.problems  # the lab's kernel package holds the image of this build
    assert check.problems == []
    assert check.compared > AT_LEAST
    assert check.differences == [] and check.more == 0, [
        (hex(d.address), d.where, d.kind, d.expected.hex(), d.observed.hex()) for d in check.differences[:10]
    ]
    assert check.explained.get("return", 0) > 1000 and check.explained.get("ftrace", 0) > 1000


def test_a_clean_guest_differs_from_its_vendor_image_only_where_the_kernel_patches_itself(paged_guest: Guest) -> None:
    _assert_clean(paged_guest.target)


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def two_cpu_guest(request: pytest.FixtureRequest, lab_pool: LabPool) -> Iterator[Guest]:
    name = f"t{os.getpid()}-smp2-{request.param.replace('.', '')}"
    proc = vmsentinel("lab", "up", name, "--kernel", request.param, "--smp", "2", "--json")
    yield Guest(name, request.param, 4, json.loads(proc.stdout))
    vmsentinel("lab", "down", name, check=False)


def test_with_two_vcpus_too(two_cpu_guest: Guest) -> None:
    _assert_clean(two_cpu_guest.target)


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def patched(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    return lab_pool.fresh(request.param, "vendor")


def test_a_dispatcher_patched_before_the_first_look_is_found_on_first_sight(patched: Guest, tmp_path: Path) -> None:
    clean = json.loads(vmsentinel("check", patched.target, "--json").stdout)
    assert [f for f in clean if f["detector"] == "kernel_code_unlike_vendor"] == []
    ko = build_module(str(patched.info["kernel_package"]), ROOTKIT, tmp_path)
    assert insert_module(patched.name, ko, "dispatch_addr=0x$(sym x64_sys_call) dispatch_from=0x$(sym __x64_sys_getpid)") == ""
    try:
        assert "dispatcher call patched" in guest_sh(patched, "dmesg | grep vmsrootkit")
        proc = vmsentinel("check", patched.target, "--json", check=False)
        assert proc.returncode == 1, proc.stderr
        found = [f for f in json.loads(proc.stdout) if f["detector"] == "kernel_code_unlike_vendor"]
        assert [f["evidence"]["symbol"] for f in found] == ["x64_sys_call"], found
        assert found[0]["evidence"]["site"] is None and found[0]["severity"] == "critical"
        assert found[0]["evidence"]["vendor_image"].endswith(str(patched.info["kernel_release"]))
        # and without the vendor image: the dispatcher calls the module's function, no syscall function
        hooks = [f["evidence"] for f in json.loads(proc.stdout) if f["detector"] == "dispatcher_hook"]
        assert [(h["dispatcher"], h["lands_in"]) for h in hooks] == [("x64_sys_call", "module:vmsrootkit")]
        # and by the branches out of kernel text: the dispatcher now calls or jumps into the module
        branches = [f["evidence"] for f in json.loads(proc.stdout) if f["detector"] == "kernel_branch_out"]
        assert [(b["symbol"].split("+")[0], b["owner"]) for b in branches] == [("x64_sys_call", "module:vmsrootkit")], branches
        # a watch started now: its baseline sweep is a first look too, and what it found stands through
        # the later full sweeps (which do not repeat the first look), neither blessed nor called over
        jsonl = tmp_path / "watch.jsonl"
        env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"], "COLUMNS": "400"}
        watched = subprocess.run(
            [sys.executable, "-m", "vmsentinel", "watch", patched.target, "--interval", "0.5", "--sweeps", "12",
             "--ocsf", str(jsonl), "--db", str(tmp_path / "watch.db")],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert watched.returncode == 0, watched.stderr
        assert f"{patched.target}: first look: kernel compared with " in watched.stderr, watched.stderr
        records = jsonl.read_text()
        assert records.count("kernel_code_unlike_vendor") >= 1 and records.count('"dispatcher_hook"') >= 1, records[:2000]
        raised = [r for r in map(json.loads, records.splitlines()) if r["activity_name"] == "Create"]
        assert len(raised) == len({r["finding_info"]["uid"] for r in raised})  # each finding once
        assert "cleared:" not in watched.stderr, watched.stderr
    finally:
        guest_sh(patched, "rmmod vmsrootkit; true")
    again = json.loads(vmsentinel("check", patched.target, "--json").stdout)
    assert [f for f in again if f["detector"] in ("kernel_code_unlike_vendor", "dispatcher_hook", "kernel_branch_out")] == []
