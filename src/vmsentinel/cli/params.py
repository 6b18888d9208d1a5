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

KERNEL_IMAGES = Annotated[
    list[str] | None,
    typer.Option(
        "--kernel-images",
        metavar="DIR",
        help="A folder of vendor kernel images (vmlinuz files, or unpacked kernel packages): a first look compares each"
        " guest's kernel with the image of its build. Repeatable; the lab's kernels and /boot are searched too.",
    ),
]


def use_kernel_images(folders: list[str] | None) -> None:
    """Search these folders for vendor kernel images, in this process and the workers it starts."""
    import os
    from pathlib import Path

    from vmsentinel.cli.output import fail
    from vmsentinel.os.linux.vendor.locate import ENVIRONMENT

    if not folders:
        return
    for folder in folders:
        if not Path(folder).is_dir():
            fail(f"--kernel-images {folder}: no such folder")
    known = [p for p in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if p]
    os.environ[ENVIRONMENT] = os.pathsep.join([*(str(Path(f).resolve()) for f in folders), *known])


BUS = Annotated[
    str | None,
    typer.Option(
        "--bus",
        metavar="URL",
        help="A NATS JetStream server to publish every event to (nats://HOST:PORT on this host, tls://HOST:PORT"
        " elsewhere); with serve --fleet, the bus to read every host's events from.",
    ),
]
BUS_CREDS = Annotated[
    str | None,
    typer.Option(
        "--bus-creds",
        metavar="FILE",
        help="This host's bus credentials: an NKey seed file (vmsentinel fleet creds) or a NATS .creds file.",
    ),
]
BUS_TLS_CA = Annotated[
    str | None, typer.Option("--bus-tls-ca", metavar="FILE", help="CA certificates to verify the bus's TLS certificate with.")
]
HOST_ID = Annotated[
    str | None,
    typer.Option(
        "--host-id",
        metavar="NAME",
        help="This host's name in the fleet (default: the host name); the bus lets its credentials publish only under it.",
    ),
]


def bus_options(bus: str | None, creds: str | None, tls_ca: str | None) -> object | None:
    """The checked bus settings (a :class:`~vmsentinel.fleet.connection.BusOptions`), None without ``--bus``."""
    from pathlib import Path

    from vmsentinel.cli.output import fail

    if bus is None:
        if creds or tls_ca:
            fail("--bus-creds and --bus-tls-ca need --bus URL")
        return None
    from vmsentinel.fleet.connection import BusOptions

    return BusOptions(bus, Path(creds) if creds else None, Path(tls_ca) if tls_ca else None).check()


def host_id_of(name: str | None) -> str:
    from vmsentinel.fleet.subjects import check_host_id, default_host_id

    return check_host_id(name) if name is not None else default_host_id()
