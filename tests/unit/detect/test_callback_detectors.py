"""What makes a kernel callback a finding: its function's owner. Core kernel text never; memory no module
owns, or a module hidden from the module list, always (critical); a module's function in a table of the
kernel's own image always (it was swapped in at run time); a module registering its own callback only
when the module is unsigned or taints the kernel; a kernel thread only in hidden or unknown code."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.detect.test_detectors import module, snapshot, task

from vmsentinel.detect.finding import Severity
from vmsentinel.detect.registry import run_detectors
from vmsentinel.os.linux.views.callbacks import CallbackSweep, KernelCallback

DETECTORS = ["netfilter_hook", "tracepoint_probe", "keylogger_hook", "proc_hook", "foreign_kthread"]
FN = 0xFFFFFFFFC0001000


def found(
    callbacks: list[KernelCallback], modules: list | None = None, callbacks_read: bool = True
) -> list[tuple[str, Severity]]:  # type: ignore[type-arg]
    snap = replace(snapshot([task(1)], modules or []), callbacks=CallbackSweep(callbacks) if callbacks_read else None)
    return sorted((f.detector, f.severity) for f in run_detectors("lab:a", snap, None, None, enabled=DETECTORS))


def cb(kind: str, owner: str, table_in_kernel: bool = False) -> KernelCallback:
    return KernelCallback(kind, "somewhere", FN, None, owner, 0xFFFF888000001000, table_in_kernel)


def test_the_kernels_own_callbacks_and_signed_modules_registering_theirs_are_not_findings() -> None:
    signed = [module("nf_conntrack"), module("kbd_helper")]
    callbacks = [cb(kind, "kernel") for kind in ("netfilter", "tracepoint", "keyboard", "tty_ldisc", "proc", "kthread")]
    callbacks += [cb("netfilter", "module:nf_conntrack"), cb("keyboard", "module:kbd_helper"), cb("proc", "module:nf_conntrack")]
    assert found(callbacks, signed) == []


def test_unsigned_hidden_and_unknown_owners() -> None:
    mods = [module("rk", sig_ok=False, taints="OE"), module("ghost", sources=("sysfs_kobjects",))]
    assert found([cb("netfilter", "module:rk")], mods) == [("netfilter_hook", Severity.HIGH)]
    assert found([cb("tracepoint", "module:ghost")], mods) == [("tracepoint_probe", Severity.CRITICAL)]
    assert found([cb("keyboard", "unknown")], mods) == [("keylogger_hook", Severity.CRITICAL)]
    assert found([cb("tracepoint", "module:gone")], mods) == [("tracepoint_probe", Severity.CRITICAL)]  # in no module seen


def test_a_module_function_in_a_kernel_table_is_a_hook_even_from_a_signed_module() -> None:
    mods = [module("signed")]
    assert found([cb("tty_ldisc", "module:signed", table_in_kernel=True)], mods) == [("keylogger_hook", Severity.CRITICAL)]
    assert found([cb("proc", "module:signed", table_in_kernel=True)], mods) == [("proc_hook", Severity.CRITICAL)]


def test_kernel_threads_of_visible_modules_are_theirs_hidden_or_unknown_are_not() -> None:
    mods = [module("rk", sig_ok=False, taints="OE"), module("ghost", sources=("memory_scan",))]
    assert found([cb("kthread", "module:rk")], mods) == []
    assert found([cb("kthread", "module:ghost"), cb("kthread", "vmalloc")], mods) == [
        ("foreign_kthread", Severity.CRITICAL),
        ("foreign_kthread", Severity.CRITICAL),
    ]


def test_no_callbacks_read_this_sweep_means_no_findings() -> None:
    assert found([], callbacks_read=False) == []
