"""Callbacks the kernel makes, on real guests (6.1 and 6.12, KASLR on): a clean guest's netfilter hooks,
tracepoint probes, keyboard notifiers, line disciplines, /proc operations and kernel threads are all the
kernel's and give no finding; the test rootkit's netfilter hook, tracepoint probe, keyboard notifier,
swapped N_TTY receive_buf and swapped /proc/net/tcp show are each found by ``check`` on first sight (and
its ftrace callback with the function it covers, and its kernel socket listening on a port that no
process holds), all gone once it is unloaded; and a kernel thread left
running in a module that hid itself is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, Guest, LabPool, guest_sh, vmsentinel
from vmsentinel.lab.kmod import build_module, insert_module

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
CALLBACK_DETECTORS = {"netfilter_hook", "tracepoint_probe", "keylogger_hook", "proc_hook", "foreign_kthread"}


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def hooked(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    return lab_pool.fresh(request.param, "callbacks")


def _check(target: str) -> list[dict[str, object]]:
    proc = vmsentinel("check", target, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_callbacks_registered_or_swapped_by_a_module_are_found_on_first_sight(hooked: Guest, tmp_path: Path) -> None:
    listed = json.loads(vmsentinel("callbacks", hooked.target, "--json").stdout)
    kinds = {c["kind"] for c in listed}
    assert {"netfilter", "proc", "kthread", "tty_ldisc"} <= kinds, kinds
    assert {c["owner"] for c in listed} == {"kernel"}, [c for c in listed if c["owner"] != "kernel"][:5]
    assert not [f for f in _check(hooked.target) if f["detector"] in CALLBACK_DETECTORS]

    ko = build_module(str(hooked.info["kernel_package"]), ROOTKIT, tmp_path)
    hooks = ["netfilter_hook=1", "tp_hook=1", "kbd_hook=1", "ftrace_hook=1", "ksock_port=31337"]
    swaps = ["tty_ldiscs_addr=0x$(sym tty_ldiscs)", "seq_ops_addr=0x$(sym tcp4_seq_ops)"]
    params = " ".join(hooks + swaps)
    assert insert_module(hooked.name, ko, params) == ""
    try:
        assert "netfilter 1 tracepoint 1 keyboard 1 kthread 0 ldisc 1 seq 1" in guest_sh(hooked, "dmesg | grep vmsrootkit")
        assert "local_address" in guest_sh(hooked, "cat /proc/net/tcp")  # the swapped show passes lines on
        findings = _check(hooked.target)
        by = {(f["detector"], f["evidence"]["where"]): f for f in findings if f["detector"] in CALLBACK_DETECTORS}  # type: ignore[index]
        assert set(by) == {
            ("netfilter_hook", "ipv4 PRE_ROUTING netns 4026531840"),
            ("tracepoint_probe", "sched_process_exec"),
            ("keylogger_hook", "keyboard notifier"),
            ("keylogger_hook", "tty line discipline 0 receive_buf"),
            ("proc_hook", "/proc/net (netns 4026531840)/tcp show"),
        }, sorted(by)
        assert all(f["evidence"]["owner"] == "module:vmsrootkit" for f in by.values())  # type: ignore[index]
        assert by[("keylogger_hook", "tty line discipline 0 receive_buf")]["severity"] == "critical"
        assert by[("netfilter_hook", "ipv4 PRE_ROUTING netns 4026531840")]["severity"] == "high"  # an unsigned module's
        ftrace = [f["evidence"] for f in findings if f["detector"] == "mechanism_hook" and f["evidence"]["mechanism"] == "ftrace"]  # type: ignore[index]
        assert len(ftrace) == 1 and [c.split("+")[0] for c in ftrace[0]["covers"]] == ["vfs_getattr"], ftrace  # type: ignore[index]
        # ftrace's own trampolines now call its list function: the kernel's doing, not a difference
        unlike = [f["evidence"]["symbol"] for f in findings if f["detector"] == "kernel_code_unlike_vendor"]  # type: ignore[index]
        assert all(str(s).startswith("tcp4_seq_ops") for s in unlike), unlike  # only the swapped show, in rodata
        # and the module's kernel socket: a listener no process holds
        listeners = [f["evidence"] for f in findings if f["detector"] == "kernel_listener"]
        assert [(e["protocol"], e["port"]) for e in listeners] == [("tcp", 31337)], listeners  # type: ignore[index]
    finally:
        guest_sh(hooked, "rmmod vmsrootkit; true")
    assert not [f for f in _check(hooked.target) if f["detector"] in CALLBACK_DETECTORS | {"mechanism_hook", "kernel_listener"}]

    assert insert_module(hooked.name, ko, "kthread_hook=1 hide_self=1") == ""  # for good: it cannot be unloaded now
    found = {f["detector"]: f for f in _check(hooked.target)}
    assert found["foreign_kthread"]["evidence"]["where"].startswith("vms_kthread (pid ")  # type: ignore[index]
    assert found["foreign_kthread"]["evidence"]["owner"] == "module:vmsrootkit"  # type: ignore[index]
    assert found["foreign_kthread"]["severity"] == "critical" and "hidden_module" in found
