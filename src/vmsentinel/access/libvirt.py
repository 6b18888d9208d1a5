"""``libvirt:DOMAIN``: reserved. Reaching a libvirt domain (its memory and its
control through libvirt rather than a QMP socket) is not written yet; until it
is, the scheme says so and names what works today::

    open_connector("libvirt:web1")        # TargetError: ... not supported yet ...
"""

from __future__ import annotations

from vmsentinel.access.connector import Connector
from vmsentinel.access.registry import register_scheme
from vmsentinel.errors import TargetError


def open_libvirt(spec: str) -> Connector:
    raise TargetError(f"{spec}: libvirt targets are not supported yet; use qemu:RAM_PATH,qmp=SOCKET")


register_scheme("libvirt:", open_libvirt, "libvirt:DOMAIN (not supported yet)")
