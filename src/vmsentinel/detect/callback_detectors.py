"""Detectors over the functions the kernel calls back (see
:mod:`vmsentinel.os.linux.views.callbacks`): hooks a rootkit adds through the
kernel's own registration interfaces, or by swapping one function pointer in a
kernel table, without changing a byte of kernel text.

One rule of ownership for all of them: a callback in core kernel text is the
kernel's; one in memory no module owns, or in a module hidden from the module
list, is a rootkit's; one in a module's text that the kernel's own table points
to was put there at run time. A module that registers its own callback through
the proper interface is reported only when it is unsigned or taints the kernel
(the vendor's signed modules register netfilter hooks and tracepoint probes all
the time). The callbacks are read on full sweeps (and first looks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmsentinel.detect.finding import HIDDEN_ARTIFACTS, ROOTKIT, Attack, Finding, Severity
from vmsentinel.detect.registry import register

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.os.linux.views.callbacks import KernelCallback
    from vmsentinel.os.records import Module
    from vmsentinel.os.snapshot import GuestSnapshot

TRAFFIC_SIGNALING = Attack("T1205", "Traffic Signaling", "TA0011", "Command and Control")
KEYLOGGING = Attack("T1056.001", "Input Capture: Keylogging", "TA0006", "Credential Access")


def _judge(cb: KernelCallback, modules: dict[str, Module], signed_ok: bool = True) -> tuple[Severity, str] | None:
    """(severity, whose code it is) when the callback is suspect, else None."""
    if cb.owner == "kernel":
        return None
    if cb.owner.startswith("module:"):
        name = cb.owner.removeprefix("module:")
        module = modules.get(name)
        if module is None or "module_list" not in module.sources:
            return Severity.CRITICAL, f"the hidden module {name}"
        if cb.table_in_kernel:
            return Severity.CRITICAL, f"module {name}, from a table of the kernel's own"
        if not signed_ok or (module.sig_ok and not any(c in module.taints for c in "OE")):
            return None  # a module's own callback, registered the proper way
        return Severity.HIGH, f"the unsigned module {name}"
    return Severity.CRITICAL, f"memory no module owns ({cb.owner})"


def _findings(
    detector: str, kinds: set[str], attack: Attack, target: str, snap: GuestSnapshot, what: str, signed_ok: bool = True
) -> list[Finding]:
    if snap.callbacks is None:
        return []
    modules = {m.name: m for m in snap.modules.modules}
    out = []
    for cb in snap.callbacks.callbacks:
        if cb.kind not in kinds:
            continue
        verdict = _judge(cb, modules, signed_ok)
        if verdict is None:
            continue
        severity, whose = verdict
        out.append(
            Finding(
                detector,
                f"{what} {cb.where} runs {whose}".strip(),
                severity,
                attack,
                target,
                {
                    "kind": cb.kind,
                    "where": cb.where,
                    "handler": f"{cb.handler:#x}",
                    "symbol": cb.symbol,
                    "owner": cb.owner,
                    "table": f"{cb.table:#x}",
                    "kernel_table": cb.table_in_kernel,
                },
            )
        )
    return out


@register("netfilter_hook", facets={"callbacks", "modules"})
def netfilter_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A netfilter hook (in any network namespace) whose function is in a hidden or unsigned module or in
    memory no module owns: a magic-packet backdoor or a packet filter that hides traffic (ATT&CK T1205
    Traffic Signaling)."""
    return _findings("netfilter_hook", {"netfilter"}, TRAFFIC_SIGNALING, target, snap, "netfilter hook")


@register("tracepoint_probe", facets={"callbacks", "modules"})
def tracepoint_probe(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A probe on a kernel tracepoint whose function is in a hidden or unsigned module or in memory no
    module owns: a rootkit watching every exec or system call without eBPF (ATT&CK T1014 Rootkit)."""
    return _findings("tracepoint_probe", {"tracepoint"}, ROOTKIT, target, snap, "probe on tracepoint")


@register("keylogger_hook", facets={"callbacks", "modules"})
def keylogger_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A keyboard notifier, or a tty line discipline's operation, whose function is not the kernel's:
    keystrokes read as they are typed, on the console or on any terminal (ATT&CK T1056.001 Keylogging)."""
    return _findings("keylogger_hook", {"keyboard", "tty_ldisc"}, KEYLOGGING, target, snap, "")


@register("proc_hook", facets={"callbacks", "modules"})
def proc_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """An operation of a ``/proc`` or ``/proc/net`` entry (its proc_ops or seq_operations: ``show`` of
    ``/proc/net/tcp``...) swapped for a function that is not the kernel's: sockets, processes or modules
    hidden from what programs in the guest read (ATT&CK T1564 Hide Artifacts)."""
    return _findings("proc_hook", {"proc"}, HIDDEN_ARTIFACTS, target, snap, "")


@register("foreign_kthread", facets={"callbacks", "modules", "tasks"})
def foreign_kthread(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A kernel thread whose thread function lies in a hidden module or in memory no module owns: code
    that runs on its own in the kernel after its module hid or freed itself (ATT&CK T1014 Rootkit)."""
    return _findings("foreign_kthread", {"kthread"}, ROOTKIT, target, snap, "kernel thread", signed_ok=False)
