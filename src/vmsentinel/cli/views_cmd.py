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

from vmsentinel.cli.output import err, handle_errors, out, print_json
from vmsentinel.cli.view_records import read_view, view_json
from vmsentinel.os.linux.views.declare import records_table, records_to_json
from vmsentinel.os.linux.views.tasks import Task

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


def _view(view: str, target: str, json: bool, pid: int | None = None, **options: bool) -> None:
    result = read_view(view, target, pid, **options)
    _show(result.records, result.record_type, result.problems, result.title, json)


@handle_errors
def ps(
    target: TARGET,
    json: JSON = False,
    kernel_threads: Annotated[bool, typer.Option("--kernel-threads/--no-kernel-threads", help="Include kernel threads.")] = True,
    scan: SCAN = False,
) -> None:
    """Processes, seen from outside: task list, PID table, thread lists, run queues (and a memory scan)."""
    _view("ps", target, json, kernel_threads=kernel_threads, scan=scan)


@handle_errors
def pstree(target: TARGET, json: JSON = False) -> None:
    """Processes as a tree of parents and children."""
    result = read_view("pstree", target)
    _warn(result.problems)
    if json:
        print_json(view_json("pstree", result))
        return
    tasks: Sequence[Task] = result.records
    by_pid = {t.pid: t for t in tasks}
    children: dict[int, list[Task]] = {}
    for t in tasks:
        children.setdefault(t.ppid if t.ppid in by_pid else 0, []).append(t)
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
    _view("modules", target, json, scan=scan)


@handle_errors
def syscalls(
    target: TARGET,
    json: JSON = False,
    hooked: Annotated[bool, typer.Option("--outside-kernel", help="Only entries outside core kernel text.")] = False,
) -> None:
    """System call tables, each entry resolved to a symbol and its owner."""
    _view("syscalls", target, json, outside_kernel=hooked)


@handle_errors
def idt(target: TARGET, json: JSON = False) -> None:
    """Interrupt descriptor table of each CPU (IDTR from the hypervisor when live), handlers resolved."""
    _view("idt", target, json)


PID = Annotated[int, typer.Argument(help="Process ID in the guest.")]


@handle_errors
def maps(target: TARGET, pid: PID, json: JSON = False) -> None:
    """Memory maps of a process (its VMAs, from the mm's maple tree)."""
    _view("maps", target, json, pid)


@handle_errors
def files(target: TARGET, pid: PID, json: JSON = False) -> None:
    """Open files of a process (fd -> path, socket:[inode], pipe:[inode], anon_inode:...)."""
    _view("files", target, json, pid)


@handle_errors
def sockets(target: TARGET, json: JSON = False) -> None:
    """TCP, UDP (IPv4 and IPv6) and Unix sockets with their owning processes."""
    _view("sockets", target, json)
