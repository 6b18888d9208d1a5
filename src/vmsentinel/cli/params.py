"""Arguments that several commands take, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

#: what a TARGET may be, in full (the root help) and short (each command's)
TARGET_FORMS = (
    "a memory image (raw, QEMU ELF core, LiME), qemu:RAM_PATH[,qmp=SOCKET][,machine=pc|q35], qemu-pid:PID[,qmp=SOCKET],"
    " lab:NAME, or libvirt:DOMAIN[,monitor=yes][?uri=URI] (default qemu:///system; monitor=yes lets libvirt run QEMU"
    " monitor commands for live vCPU registers, and libvirt then marks the domain 'tainted: custom-monitor')"
)
TARGET_HELP = "A memory image, qemu:RAM_PATH[,qmp=SOCKET], qemu-pid:PID, lab:NAME, or libvirt:DOMAIN[,monitor=yes][?uri=URI]."
TARGET = Annotated[str, typer.Argument(metavar="TARGET", help=TARGET_HELP, show_default=False)]
