"""The guest views on the command line: ``ps``, ``pstree``, ``modules``.

Each prints a table, or with ``--json`` one JSON array of records whose keys
come from the view's declaration. Problems met while reading the guest go to
stderr as warnings; the exit status is 0 when the view was read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.tree import Tree

from ..linux.guest import LinuxGuest
from ..linux.views.declare import records_table, records_to_json
from ..linux.views.modules import Module
from ..linux.views.tasks import Task
from .output import err, handle_errors, out, print_json

TARGET = Annotated[str, typer.Argument(help="A memory image, qemu:RAM_PATH[,qmp=SOCKET], or lab:NAME.")]
JSON = Annotated[bool, typer.Option("--json", help="Print one JSON array of records.")]
SCAN = Annotated[bool, typer.Option("--scan", help="Also scan memory for the objects (finds unlinked ones; slower).")]


def _show(records: Sequence[Any], record_type: type, problems: list[str], title: str, json: bool) -> None:
    """Warnings to stderr, then the records as JSON or as the view's table."""
    _warn(problems)
    if json:
        print_json(records_to_json(records))
    else:
        out.print(records_table(records, record_type, title=title))


def _warn(problems: list[str]) -> None:
    for p in problems[:20]:
        err.print(f"[yellow]warning:[/] {p}", highlight=False)
    if len(problems) > 20:
        err.print(f"[yellow]warning:[/] … and {len(problems) - 20} more")


@handle_errors
def ps(
    target: TARGET,
    json: JSON = False,
    kernel_threads: Annotated[bool, typer.Option("--kernel-threads/--no-kernel-threads", help="Include kernel threads.")] = True,
    scan: SCAN = False,
) -> None:
    """Processes, seen from outside: task list, PID table, thread lists, run queues (and a memory scan)."""
    with LinuxGuest.open(target) as guest:
        sweep = guest.tasks(scan=scan)
    tasks = [t for t in sweep.tasks if kernel_threads or not t.kernel_thread]
    _warn(sweep.problems)
    if json:
        print_json(records_to_json(tasks))
    else:
        out.print(records_table(tasks, Task, title=f"{len(tasks)} processes in {target}"))


@handle_errors
def pstree(target: TARGET, json: JSON = False) -> None:
    """Processes as a tree of parents and children."""
    with LinuxGuest.open(target) as guest:
        sweep = guest.tasks()
    _warn(sweep.problems)
    by_pid = {t.pid: t for t in sweep.tasks}
    children: dict[int, list[Task]] = {}
    for t in sweep.tasks:
        children.setdefault(t.ppid if t.ppid in by_pid else 0, []).append(t)
    if json:

        def node(t: Task, depth: int) -> dict[str, object]:
            kids = children.get(t.pid, []) if depth < 256 else []
            return {"pid": t.pid, "name": t.name, "children": [node(c, depth + 1) for c in kids]}

        print_json([node(t, 0) for t in children.get(0, [])])
        return
    root = Tree(f"{target}")
    stack = [(root, t, 0) for t in reversed(children.get(0, []))]
    while stack:
        parent, t, depth = stack.pop()
        label = f"{t.name} ({t.pid})" + (f"  {t.args}" if t.args else "")
        branch = parent.add(label)
        if depth < 256:
            stack.extend((branch, c, depth + 1) for c in reversed(children.get(t.pid, [])))
    out.print(root)


@handle_errors
def modules(target: TARGET, json: JSON = False, scan: SCAN = False) -> None:
    """Kernel modules, from the module list and from sysfs kobjects (and a scan of module memory)."""
    with LinuxGuest.open(target) as guest:
        sweep = guest.modules(scan=scan)
    _show(sweep.modules, Module, sweep.problems, f"{len(sweep.modules)} modules in {target}", json)


@handle_errors
def syscalls(
    target: TARGET,
    json: JSON = False,
    hooked: Annotated[bool, typer.Option("--outside-kernel", help="Only entries outside core kernel text.")] = False,
) -> None:
    """System call tables, each entry resolved to a symbol and its owner."""
    from ..linux.views.hooks import SyscallEntry

    with LinuxGuest.open(target) as guest:
        sweep = guest.syscalls()
    _warn(sweep.problems)
    entries = [e for e in sweep.syscalls if not hooked or e.owner != "kernel"]
    if json:
        print_json(records_to_json(entries))
    else:
        out.print(records_table(entries, SyscallEntry, title=f"{len(entries)} system call table entries in {target}"))


@handle_errors
def idt(target: TARGET, json: JSON = False) -> None:
    """Interrupt descriptor table of each CPU (IDTR from the hypervisor when live), handlers resolved."""
    from ..linux.views.hooks import IdtEntry

    with LinuxGuest.open(target) as guest:
        sweep = guest.idt()
    _show(sweep.idt, IdtEntry, sweep.problems, f"{len(sweep.idt)} IDT entries in {target}", json)


PID = Annotated[int, typer.Argument(help="Process ID in the guest.")]


@handle_errors
def maps(target: TARGET, pid: PID, json: JSON = False) -> None:
    """Memory maps of a process (its VMAs, from the mm's maple tree)."""
    from ..linux.views.memory_maps import MapEntry

    with LinuxGuest.open(target) as guest:
        sweep = guest.maps(pid)
    _show(sweep.maps, MapEntry, sweep.problems, f"memory maps of pid {pid} in {target}", json)


@handle_errors
def files(target: TARGET, pid: PID, json: JSON = False) -> None:
    """Open files of a process (fd -> path, socket:[inode], pipe:[inode], anon_inode:...)."""
    from ..linux.views.files import OpenFile

    with LinuxGuest.open(target) as guest:
        sweep = guest.files(pid)
    _show(sweep.files, OpenFile, sweep.problems, f"open files of pid {pid} in {target}", json)


@handle_errors
def sockets(target: TARGET, json: JSON = False) -> None:
    """TCP, UDP (IPv4 and IPv6) and Unix sockets with their owning processes."""
    from ..linux.views.sockets import Socket

    with LinuxGuest.open(target) as guest:
        sweep = guest.sockets()
    _show(sweep.sockets, Socket, sweep.problems, f"{len(sweep.sockets)} sockets in {target}", json)
