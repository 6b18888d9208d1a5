"""Memory images (raw, QEMU ELF core, LiME; the format comes from the content):
the TARGET that names no scheme. An image has no hypervisor, so its connector
is not live; an ELF core still gives vCPU registers from its QEMU notes::

    with open_image_connector("guest.core") as guest:
        guest.registers()                 # CpuRegisters(cpu=0, ..., source='elf-core notes')
"""

from __future__ import annotations

from pathlib import Path

from vmsentinel.access.connector import Connector
from vmsentinel.memory import open_image


def open_image_connector(path: str) -> Connector:
    return Connector(path, open_image(path), name=Path(path).stem, layout_source="file")
