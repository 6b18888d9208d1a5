"""``qemu:RAM_PATH[,qmp=SOCKET][,machine=pc|q35]``: a running QEMU whose RAM is
a shared file (``memory-backend-file,share=on``). With a QMP socket the
guest-physical layout is QEMU's own (``info mtree``) and the connector is live;
without one the layout follows the machine type's rule::

    with open_connector("qemu:/dev/shm/vm.ram,qmp=/run/vm.qmp") as guest:
        guest.layout_source               # 'qmp info mtree'
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.access.connector import Connector
from vmsentinel.access.registry import register_scheme
from vmsentinel.errors import HypervisorError, TargetError
from vmsentinel.memory import PhysicalMemory, open_qemu_ram
from vmsentinel.memory.qemu_ram import mtree_layout

if TYPE_CHECKING:  # QMP (and asyncio under it) is imported only for targets that have a QMP socket
    from vmsentinel.access.dirty_log import SoftDirtyLog
    from vmsentinel.access.qmp import Qmp

PREFIX = "qemu:"


def open_qemu_spec(spec: str) -> Connector:
    path, *rest = spec[len(PREFIX) :].split(",")
    opts = _parse_options(spec, rest)
    return open_qemu(spec, path, opts.get("qmp"), opts.get("machine", "pc"), Path(path).stem)


def open_qemu(spec: str, ram_path: str, qmp_socket: str | None, machine: str, name: str, pid: int | None = None) -> Connector:
    """A QEMU's shared RAM file, with its QMP socket as the control when there is one; with the QEMU's
    ``pid``, a dirty log of its mapping of the file."""
    if not Path(ram_path).exists():
        raise TargetError(f"{spec}: RAM file {ram_path} does not exist")
    if not qmp_socket:
        return Connector(
            spec,
            _ram_file(spec, ram_path, lambda: open_qemu_ram(ram_path, machine=machine)),
            None,
            name,
            f"{machine} machine rule",
        )
    from vmsentinel.access.qmp import Qmp
    from vmsentinel.access.qmp_control import QmpControl

    qmp = Qmp(qmp_socket)
    with qmp:  # one connection for the layout questions; later calls connect each for themselves
        memory = _ram_file(spec, ram_path, lambda: qemu_ram_from_qmp(ram_path, qmp))
    return Connector(spec, memory, QmpControl(qmp), name, "qmp info mtree", _dirty_log(pid, ram_path, memory))


def _dirty_log(pid: int | None, ram_path: str, memory: PhysicalMemory) -> SoftDirtyLog | None:
    """The soft-dirty log of QEMU process ``pid``'s mapping of its RAM file (None when unknown)."""
    from vmsentinel.access.dirty_log import SoftDirtyLog
    from vmsentinel.access.qemu_process import read_maps

    segments = getattr(memory, "segments", None)
    if pid is None or segments is None:
        return None
    try:
        maps = [m for m in read_maps(pid, f"QEMU pid {pid}") if m.shared and m.name == str(Path(ram_path).resolve())]
    except TargetError:
        return None
    ranges = []
    for seg in segments:
        for m in maps:
            if m.offset <= seg.file_offset and seg.file_offset + seg.length <= m.offset + m.size:
                ranges.append((seg.phys_start, m.start + seg.file_offset - m.offset, seg.length))
                break
    return SoftDirtyLog(pid, ranges) if ranges else None


def _ram_file(spec: str, ram_path: str, open_it: Callable[[], PhysicalMemory]) -> PhysicalMemory:
    """Open a RAM file, or say in one line why not (it is QEMU's: its user's, or root's)."""
    try:
        return open_it()
    except OSError as exc:
        raise TargetError(f"{spec}: cannot map RAM file {ram_path}: {exc.strerror or exc} (run as QEMU's user or root)") from exc


def qemu_ram_from_qmp(ram_path: str, qmp: Qmp) -> PhysicalMemory:
    """Map a QEMU RAM file with the layout QEMU reports for it."""
    region = None
    for memdev in qmp.command("query-memdev") or []:
        mid = memdev.get("id")
        if not mid:
            continue
        try:
            path = qmp.command("qom-get", path=f"/objects/{mid}", property="mem-path")
        except HypervisorError:
            continue
        if path and Path(str(path)).resolve() == Path(ram_path).resolve():
            region = str(mid)
    segments = mtree_layout(qmp.hmp("info mtree -f"), region)
    if not segments:
        raise TargetError(f"QEMU's 'info mtree -f' shows no RAM region for {ram_path}")
    return open_qemu_ram(ram_path, segments)


def _parse_options(spec: str, items: list[str]) -> dict[str, str]:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("qmp", "machine"):
            raise TargetError(f"{spec}: unknown option {item!r} (know: qmp=SOCKET, machine=pc|q35)")
        opts[key] = value
    return opts


register_scheme(PREFIX, open_qemu_spec, "qemu:RAM_PATH[,qmp=SOCKET][,machine=pc|q35]")
