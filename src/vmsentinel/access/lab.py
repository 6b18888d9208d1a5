"""``lab:NAME``: a lab guest (``vmsentinel lab up``), reached like any QEMU
through its shared RAM file and QMP socket. The lab code loads only for these
targets::

    with open_connector("lab:web1") as guest:
        guest.live                        # True: a QMP control
"""

from __future__ import annotations

from vmsentinel.access.connector import Connector
from vmsentinel.access.qemu import open_qemu
from vmsentinel.access.registry import register_scheme
from vmsentinel.errors import TargetError

PREFIX = "lab:"


def open_lab(spec: str) -> Connector:
    from vmsentinel.lab.machine import load

    guest = load(spec[len(PREFIX) :])
    if not guest.alive:
        raise TargetError(f"lab guest {guest.name!r} is not running; 'vmsentinel lab down {guest.name}' cleans up")
    return open_qemu(spec, guest.ram_path, guest.qmp_socket, guest.machine, guest.name, guest.pid)


register_scheme(PREFIX, open_lab, "lab:NAME")
