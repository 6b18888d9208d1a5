"""What each view command reads, apart from how it is printed.

The Typer commands (tables or JSON) and the quick JSON entry (:mod:`.entry`)
both call :func:`read_view`, so the two paths cannot drift apart. Nothing here
imports Typer or Rich.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: the views, in the order ``--help`` lists them
VIEWS = ("ps", "pstree", "modules", "syscalls", "idt", "callbacks", "maps", "files", "sockets", "mounts", "envars", "ptrace")
#: views every guest OS has (the rest are Linux's)
CROSS_OS_VIEWS = ("ps", "pstree", "modules", "syscalls", "idt")
#: views that take a PID after the target
PID_VIEWS = frozenset({"maps", "files"})
#: options each view takes besides ``--json``: option -> (keyword, value)
VIEW_FLAGS: dict[str, dict[str, tuple[str, bool]]] = {
    "ps": {
        "--kernel-threads": ("kernel_threads", True),
        "--no-kernel-threads": ("kernel_threads", False),
        "--scan": ("scan", True),
    },
    "modules": {"--scan": ("scan", True)},
    "syscalls": {"--outside-kernel": ("outside_kernel", True)},
    "callbacks": {"--outside-kernel": ("outside_kernel", True)},
}


@dataclass
class ViewResult:
    records: Sequence[Any]
    record_type: type
    problems: list[str]
    title: str


def read_view(
    view: str,
    target: str,
    pid: int | None = None,
    *,
    kernel_threads: bool = True,
    scan: bool = False,
    outside_kernel: bool = False,
) -> ViewResult:
    """Open ``target``, read one view, close it."""
    from vmsentinel.errors import TargetError
    from vmsentinel.os import open_guest  # here, so that the entry can check argv without loading it

    with open_guest(target) as guest:
        if guest.os != "linux" and view not in CROSS_OS_VIEWS:
            raise TargetError(f"{target}: the {view} view is Linux's; an {guest.os} guest has {', '.join(CROSS_OS_VIEWS)}")
        if view in ("ps", "pstree"):
            from vmsentinel.os.records import Task

            sweep = guest.tasks(scan=scan)
            tasks = [t for t in sweep.tasks if kernel_threads or not t.kernel_thread]
            return ViewResult(tasks, Task, sweep.problems, f"{len(tasks)} processes in {target}")
        if view == "modules":
            from vmsentinel.os.records import Module

            mods = guest.modules(scan=scan)
            return ViewResult(mods.modules, Module, mods.problems, f"{len(mods.modules)} modules in {target}")
        if view == "syscalls":
            from vmsentinel.os.records import SyscallEntry

            hooks = guest.syscalls()
            entries = [e for e in hooks.syscalls if not outside_kernel or e.owner != "kernel"]
            return ViewResult(entries, SyscallEntry, hooks.problems, f"{len(entries)} system call table entries in {target}")
        if view == "idt":
            from vmsentinel.os.records import IdtEntry

            hooks = guest.idt()
            return ViewResult(hooks.idt, IdtEntry, hooks.problems, f"{len(hooks.idt)} IDT entries in {target}")
        if view == "callbacks":
            from vmsentinel.os.linux.views.callbacks import KernelCallback

            found = guest.callbacks(guest.module_text(), guest.tasks())
            calls = [c for c in found.callbacks if not outside_kernel or c.owner != "kernel"]
            return ViewResult(calls, KernelCallback, found.problems, f"{len(calls)} kernel callbacks in {target}")
        if view == "maps" and pid is not None:
            from vmsentinel.os.linux.views.memory_maps import MapEntry

            vmas = guest.maps(pid)
            return ViewResult(vmas.maps, MapEntry, vmas.problems, f"memory maps of pid {pid} in {target}")
        if view == "files" and pid is not None:
            from vmsentinel.os.linux.views.files import OpenFile

            fds = guest.files(pid)
            return ViewResult(fds.files, OpenFile, fds.problems, f"open files of pid {pid} in {target}")
        if view == "sockets":
            from vmsentinel.os.linux.views.sockets import Socket

            socks = guest.sockets()
            return ViewResult(socks.sockets, Socket, socks.problems, f"{len(socks.sockets)} sockets in {target}")
        if view == "mounts":
            from vmsentinel.os.linux.views.mounts import Mount

            mounted = guest.mounts()
            return ViewResult(mounted.mounts, Mount, mounted.problems, f"{len(mounted.mounts)} mounts in {target}")
        if view == "envars":
            from vmsentinel.os.linux.views.environ import EnvVar

            env = guest.environ()
            records = env.records()
            title = f"{len(records)} environment variables of {len(env.environ)} processes in {target}"
            return ViewResult(records, EnvVar, env.problems, title)
        if view == "ptrace":
            from vmsentinel.os.linux.views.ptrace import PtraceLink

            traced = guest.ptrace()
            return ViewResult(traced.links, PtraceLink, traced.problems, f"{len(traced.links)} traced threads in {target}")
    raise ValueError(f"no view {view!r} (or it needs a pid)")


def pstree_json(tasks: Sequence[Any]) -> list[dict[str, object]]:
    """Processes as nested ``{pid, name, children}``; roots are tasks whose parent is not listed."""
    by_pid = {t.pid: t for t in tasks}
    children: dict[int, list[Any]] = {}
    for t in tasks:
        children.setdefault(t.ppid if t.ppid in by_pid else 0, []).append(t)

    def node(t: Any, depth: int) -> dict[str, object]:
        kids = children.get(t.pid, []) if depth < 256 else []
        return {"pid": t.pid, "name": t.name, "children": [node(c, depth + 1) for c in kids]}

    return [node(t, 0) for t in children.get(0, [])]


def view_json(view: str, result: ViewResult) -> Any:
    """The JSON document a view prints."""
    from vmsentinel.os.declare import records_to_json

    return pstree_json(result.records) if view == "pstree" else records_to_json(result.records)
