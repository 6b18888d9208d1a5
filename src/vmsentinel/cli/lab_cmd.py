"""``vmsentinel lab``: disposable real guests to watch, attack and try rules on."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer
from rich.table import Table

from vmsentinel import lab
from vmsentinel.cli.app import App
from vmsentinel.cli.output import err, fail, out, print_json, progress
from vmsentinel.cli.status import EXIT_ERROR
from vmsentinel.lab.initramfs import DEFAULT_MODULES
from vmsentinel.lab.machine import LabSpec, parse_add_option

app = App(
    help="Boot and run disposable lab guests.\n\nA lab guest is a Debian kernel with a busybox initramfs, under QEMU (TCG).",
    no_args_is_help=True,
)
NAME = Annotated[str, typer.Argument(metavar="NAME", help="The lab guest's name.")]


@app.command("up")
def up_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A name for the guest (letters, digits, - and _).")],
    kernel: Annotated[
        str | None,
        typer.Option(
            metavar="KERNEL",
            help="A kernel series (6.1, 6.12) or package (linux-image-6.1.0-56-amd64); default: the one "
            "linux-image-amd64 depends on.",
        ),
    ] = None,
    memory: Annotated[int, typer.Option(metavar="MIB", help="Guest RAM in MiB.")] = 512,
    smp: Annotated[int, typer.Option(metavar="N", help="Number of vCPUs.")] = 1,
    no_kaslr: Annotated[bool, typer.Option("--no-kaslr", help="Boot with nokaslr (KASLR is on by default).")] = False,
    paging: Annotated[int, typer.Option(metavar="LEVELS", help="4- or 5-level paging (5 needs -cpu max with la57).")] = 4,
    add: Annotated[
        list[str] | None,
        typer.Option(
            metavar="HOST_PATH[:GUEST_PATH]",
            help="Put a file or folder in the initramfs (default guest path: /root/NAME). Repeatable.",
        ),
    ] = None,
    modules: Annotated[
        str, typer.Option(metavar="LIST", help="Comma-separated kernel modules to pack and load at boot, or 'all'.")
    ] = ",".join(DEFAULT_MODULES),
    accel: Annotated[
        str, typer.Option(metavar="ACCEL", help="QEMU accelerator: tcg, or kvm where /dev/kvm runs a guest.")
    ] = "tcg",
    machine: Annotated[str, typer.Option(metavar="TYPE", help="QEMU machine type: q35 or pc.")] = "q35",
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="How long to wait for the guest to come up.")] = 180.0,
    guest_os: Annotated[
        str,
        typer.Option(
            "--os",
            metavar="OS",
            help="linux (a Debian kernel and busybox) or reactos (the ReactOS live CD, an NT-family kernel, i386;"
            " $VMSENTINEL_REACTOS names its folder).",
        ),
    ] = "linux",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Boot a lab guest and return once it is ready."""
    spec = LabSpec(
        name=name,
        kernel=kernel,
        memory_mib=memory,
        smp=smp,
        kaslr=not no_kaslr,
        paging_levels=paging,
        accel=accel,
        machine="pc" if guest_os == "reactos" else machine,  # the live CD boots on the i440FX machine
        add=tuple(parse_add_option(a) for a in add or []),
        modules=tuple(m for m in modules.split(",") if m),
        timeout=timeout,
        os=guest_os,
    )
    with progress() as step:
        if guest_os == "reactos":  # where an opened guest finds its kernel's profile and image by their layout
            from vmsentinel.lab.reactos import kernel_debug_file, kernel_image_file
            from vmsentinel.os.windows.profile.store import add_kernel

            step("storing the ReactOS kernel's profile and image (made once, then cached)")
            add_kernel(kernel_debug_file(), kernel_image_file())
        guest = lab.up(spec, step)
    info = guest.public()
    if json:
        print_json(info)
        return
    for key in ("name", "target", "ram_path", "qmp_socket", "kernel_release", "pid"):
        out.print(f"{key:15} {info[key]}", highlight=False)


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
    epilog=f"Exit status: the command's own; {EXIT_ERROR} when it could not be run.",
)
def exec_cmd(
    name: NAME,
    command: Annotated[list[str], typer.Argument(metavar="COMMAND", help="The command to run as root (after --).")],
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="How long to wait for the command.")] = 300.0,
) -> None:
    """Run a command as root in a lab guest.

    It runs over the guest's control console; its output and exit status are relayed."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        fail("give a command after --")
    script = command[0] if len(command) == 1 else shlex.join(command)
    result = lab.run(name, script, timeout=timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    raise typer.Exit(result.status)


@app.command("ls")
def ls_cmd(json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False) -> None:
    """List the lab guests.

    A guest whose QEMU died shows as dead."""
    guests = [g.public() for g in lab.list_labs()]
    if json:
        print_json(guests)
        return
    if not guests:
        err.print("no lab guests (start one with 'vmsentinel lab up NAME')")
        return
    table = Table("name", "status", "kernel", "paging", "memory", "pid", "target")
    for g in guests:
        table.add_row(
            str(g["name"]),
            str(g["status"]),
            str(g["kernel_release"]),
            f"{g['paging_levels']}-level",
            f"{g['memory_mib']} MiB",
            str(g["pid"]),
            str(g["target"]),
        )
    out.print(table)


@app.command("down")
def down_cmd(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="The lab guest to stop.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every lab guest.")] = False,
) -> None:
    """Stop a lab guest.

    Its RAM file and state are removed; a dead guest is cleaned up the same way."""
    if all_ == (name is not None):
        fail("give a NAME or --all")
    names = [g.name for g in lab.list_labs()] if all_ else [name]
    for n in names:
        assert n is not None
        guest = lab.down(n)
        err.print(f"{n}: down (pid {guest.pid})")
