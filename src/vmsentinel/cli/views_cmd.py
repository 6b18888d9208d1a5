"""The guest views on the command line: ``ps``, ``pstree``, ``modules``.

Each prints a table, or with ``--json`` one JSON array of records whose keys
come from the view's declaration. Problems met while reading the guest go to
stderr as warnings; the exit status is 0 when the view was read, 2 when it
could not be (:mod:`.status`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.tree import Tree

from vmsentinel.cli.output import err, out, print_json
from vmsentinel.cli.params import TARGET
from vmsentinel.cli.view_records import read_view, view_json
from vmsentinel.os.declare import records_table, records_to_json
from vmsentinel.os.records import Task

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


def ps(
    target: TARGET,
    json: JSON = False,
    kernel_threads: Annotated[bool, typer.Option("--kernel-threads/--no-kernel-threads", help="Include kernel threads.")] = True,
    scan: SCAN = False,
) -> None:
    """List the processes.

    Seen from outside: the task list, the PID table, thread lists and run queues (and with --scan, a
    scan of memory)."""
    _view("ps", target, json, kernel_threads=kernel_threads, scan=scan)


def pstree(target: TARGET, json: JSON = False) -> None:
    """Show the processes as a tree of parents and children."""
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


def modules(target: TARGET, json: JSON = False, scan: SCAN = False) -> None:
    """List the kernel modules.

    From the module list and from sysfs kobjects (and with --scan, a scan of module memory)."""
    _view("modules", target, json, scan=scan)


def syscalls(
    target: TARGET,
    json: JSON = False,
    hooked: Annotated[bool, typer.Option("--outside-kernel", help="Only entries outside core kernel text.")] = False,
) -> None:
    """List the system call tables.

    Each entry is resolved to a symbol and its owner."""
    _view("syscalls", target, json, outside_kernel=hooked)


def idt(target: TARGET, json: JSON = False) -> None:
    """List the interrupt descriptor table of each CPU.

    The IDTR comes from the hypervisor when the guest is live; each handler is resolved to a symbol."""
    _view("idt", target, json)


def callbacks(
    target: TARGET,
    json: JSON = False,
    foreign: Annotated[bool, typer.Option("--outside-kernel", help="Only functions outside core kernel text.")] = False,
) -> None:
    """List the functions the kernel calls back.

    Netfilter hooks of every network namespace, tracepoint probes, keyboard notifiers, tty line
    disciplines, the operations of /proc and /proc/net entries, and each kernel thread's function,
    each with its owner (core kernel text, a module, or memory no module owns)."""
    _view("callbacks", target, json, outside_kernel=foreign)


PID = Annotated[int, typer.Argument(metavar="PID", help="Process ID in the guest.", show_default=False)]


def maps(target: TARGET, pid: PID, json: JSON = False) -> None:
    """List the memory maps of a process.

    Its VMAs, from the mm's maple tree."""
    _view("maps", target, json, pid)


def files(target: TARGET, pid: PID, json: JSON = False) -> None:
    """List the open files of a process.

    One line per file descriptor: a path, socket:[inode], pipe:[inode] or anon_inode:NAME."""
    _view("files", target, json, pid)


def sockets(target: TARGET, json: JSON = False) -> None:
    """List the sockets.

    Every family (TCP, UDP and raw over IPv4 and IPv6, Unix, netlink, packet, vsock...), with the
    processes that hold them, their network namespace and any packet filter attached; packet sockets
    that no process holds are listed too."""
    _view("sockets", target, json)


def mounts(target: TARGET, json: JSON = False) -> None:
    """List the mounts of every mount namespace in use.

    Mountpoint, the mount's root inside its filesystem (a bind mount's folder), filesystem type and
    source, per namespace."""
    _view("mounts", target, json)


def envars(target: TARGET, json: JSON = False) -> None:
    """List the environment variables of every process.

    Read from each process's own memory (what it was started with, as /proc/PID/environ shows)."""
    _view("envars", target, json)


def ptrace(target: TARGET, json: JSON = False) -> None:
    """List the threads traced with ptrace, and their tracers."""
    _view("ptrace", target, json)
