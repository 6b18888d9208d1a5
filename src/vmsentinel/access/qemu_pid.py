"""``qemu-pid:PID[,qmp=SOCKET]``: any running QEMU process, as it was started (no shared RAM
file, no monitor needed). Its RAM is read from the process (:mod:`.qemu_process`); the QMP socket
given, or the first ``-qmp unix:PATH,server`` / ``-mon mode=control`` socket of its command line,
gives QEMU's own layout and makes the connector live. QEMU serves one QMP client per socket: a
busy one is left alone and the layout comes from the command line::

    with open_connector("qemu-pid:4242") as guest:
        guest.memory.kind, guest.layout_source    # ('process_vm_readv', 'command line + /proc/4242/maps')
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from vmsentinel.access.connector import Connector
from vmsentinel.access.dirty_log import SoftDirtyLog
from vmsentinel.access.qemu_process import qemu_process_memory, read_cmdline
from vmsentinel.access.registry import register_scheme
from vmsentinel.errors import HypervisorError, TargetError

if TYPE_CHECKING:  # QMP (and asyncio under it) is imported only when there is a socket to try
    from vmsentinel.access.qmp import Qmp

PREFIX = "qemu-pid:"
USAGE = "qemu-pid:PID[,qmp=SOCKET]"
#: how long a QMP socket may take to greet us before it counts as busy (another client holds it)
QMP_GREETING_TIMEOUT = 2.0
#: how long to wait before asking a QMP socket that refused us again (within QMP_GREETING_TIMEOUT in all)
REFUSED_RETRY_SECONDS = 0.1


def open_qemu_pid(spec: str) -> Connector:
    head, *rest = spec[len(PREFIX) :].split(",")
    if not head.isdigit():
        raise TargetError(f"{spec}: {head!r} is no process id; the form is {USAGE}")
    pid = int(head)
    opts = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key != "qmp" or not value:
            raise TargetError(f"{spec}: unknown option {item!r} (know: qmp=SOCKET)")
        opts[key] = value
    config = read_cmdline(pid, spec)
    explicit = opts.get("qmp")
    if explicit and not os.path.exists(explicit):
        raise TargetError(f"{spec}: no QMP socket {explicit}")
    sockets = [explicit] if explicit else [_in_process_root(pid, s) for s in config.qmp_sockets()]
    qmp, unusable = _first_usable(sockets)
    try:
        ranges: list[tuple[int, int, int]] = []
        memory, how = qemu_process_memory(pid, spec, qmp.hmp if qmp is not None else None, ranges)
    except BaseException:
        if qmp is not None:
            qmp.close()
        raise
    if unusable:
        how += f" ({'; '.join(unusable)})"
    control = None
    if qmp is not None:
        from vmsentinel.access.qmp_control import QmpControl

        control = QmpControl(qmp)
    return Connector(spec, memory, control, config.name or f"qemu-{pid}", how, SoftDirtyLog(pid, ranges))


def _in_process_root(pid: int, path: str) -> str:
    """A socket path as QEMU sees it: relative to its working folder."""
    return path if os.path.isabs(path) else os.path.join(f"/proc/{pid}/cwd", path)


def _first_usable(sockets: list[str]) -> tuple[Qmp | None, list[str]]:
    """The first QMP socket that greets us, and why those before it would not."""
    unusable = []
    for path in sockets:
        if not os.path.exists(path):
            unusable.append(f"QMP socket {path} does not exist")
            continue
        qmp, why = _greeted(path)
        if qmp is not None:
            return qmp, unusable
        unusable.append(f"QMP socket {path} {why}")
    return None, unusable


def _greeted(path: str) -> tuple[Qmp | None, str]:
    """A QMP connection to ``path``, or why there is none ("busy: ...", "refused us"). A refusal can be for
    a moment: QEMU takes one client at a time and a short backlog, and a monitor just let go still drains
    the connections that queued while it was busy; so a refusal is asked again, within the greeting time."""
    from vmsentinel.access.qmp import Qmp

    deadline = time.monotonic() + QMP_GREETING_TIMEOUT
    while True:
        qmp = Qmp(path, timeout=QMP_GREETING_TIMEOUT)
        try:
            qmp.connect()
        except HypervisorError as exc:
            if "no answer" in str(exc):
                return None, "busy: another client holds it"
            if time.monotonic() >= deadline:
                return None, "refused us"
            time.sleep(REFUSED_RETRY_SECONDS)
            continue
        qmp.timeout = 10.0
        return qmp, ""


register_scheme(PREFIX, open_qemu_pid, USAGE)
