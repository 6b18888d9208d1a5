"""The ``vmsentinel`` command line: every command and group, and ``info``."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.table import Table

from vmsentinel.cli import (
    allowlist_cmd,
    demo_cmd,
    detect_cmd,
    fleet_cmd,
    key_cmd,
    lab_cmd,
    policy_cmd,
    profile_cmd,
    service_cmd,
    views_cmd,
)
from vmsentinel.cli.app import App
from vmsentinel.cli.output import out, print_json
from vmsentinel.cli.params import TARGET, TARGET_FORMS
from vmsentinel.cli.status import EXIT_STATUS_HELP, exit_status_help
from vmsentinel.version import __version__

app = App(
    help=f"Watch virtual machines from outside, through their memory.\n\nTARGET, where a command takes one, is {TARGET_FORMS}.",
    epilog=EXIT_STATUS_HELP,
    no_args_is_help=True,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"vmsentinel {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens to stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    connect: Annotated[
        str | None,
        typer.Option(
            "--connect",
            metavar="URI",
            help="The libvirt connection of libvirt: TARGETs that name none (default: $LIBVIRT_DEFAULT_URI, else qemu:///system).",
        ),
    ] = None,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")
    if connect:
        import os

        os.environ["LIBVIRT_DEFAULT_URI"] = connect  # libvirt's own variable: every libvirt: TARGET without ?uri= uses it


def info(
    target: TARGET,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a target's memory, kernel and paging."""
    from vmsentinel.access import open_connector
    from vmsentinel.os.linux.overview import inspect_target

    with open_connector(target) as opened:
        result = inspect_target(opened)
    if json:
        print_json(result.to_json())
        return
    data = result.to_json()
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "target",
        "source_kind",
        "layout_source",
        "banner",
        "kernel_release",
        "paging_levels",
        "page_table_root",
        "registers_source",
    ):
        table.add_row(key, str(data[key]))
    table.add_row("ram_size", f"{result.ram_size:,} bytes ({result.ram_size / 2**20:.0f} MiB)")
    for start, end in result.physical_ranges:
        table.add_row("physical range", f"{start:#014x}-{end - 1:#014x}  ({(end - start) / 2**20:.1f} MiB)")
    for note in result.notes:
        table.add_row("note", note)
    table.add_row("time", f"{result.seconds * 1000:.1f} ms")
    out.print(table)


app.command("info")(info)
app.command("ps")(views_cmd.ps)
app.command("pstree")(views_cmd.pstree)
app.command("modules")(views_cmd.modules)
app.command("syscalls")(views_cmd.syscalls)
app.command("idt")(views_cmd.idt)
app.command("callbacks")(views_cmd.callbacks)
app.command("maps")(views_cmd.maps)
app.command("files")(views_cmd.files)
app.command("sockets")(views_cmd.sockets)
app.command("mounts")(views_cmd.mounts)
app.command("envars")(views_cmd.envars)
app.command("ptrace")(views_cmd.ptrace)
app.command("check", epilog=exit_status_help("no findings", "findings"))(detect_cmd.check)
app.command("watch")(detect_cmd.watch)
app.command("demo")(demo_cmd.demo)
app.command("serve")(service_cmd.serve)
app.add_typer(service_cmd.user_app, name="user")
app.add_typer(service_cmd.token_app, name="token")
app.add_typer(service_cmd.service_app, name="service")
app.add_typer(detect_cmd.alerts_app, name="alerts")
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(profile_cmd.app, name="profile")
app.add_typer(key_cmd.app, name="key")
app.add_typer(policy_cmd.app, name="policy")
app.add_typer(allowlist_cmd.app, name="allowlist")
app.add_typer(fleet_cmd.app, name="fleet")


def main() -> None:
    app()
