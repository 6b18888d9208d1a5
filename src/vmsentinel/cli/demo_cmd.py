"""``vmsentinel demo``: boot a lab guest and show what the sentinel sees in it
from outside, without the guest's help."""

from __future__ import annotations

import secrets
import time
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from .output import err, handle_errors, out, print_json, progress


@handle_errors
def demo(
    name: Annotated[str, typer.Option(help="Name of the demo lab guest.")] = "demo",
    kernel: Annotated[str | None, typer.Option(help="Kernel series or package (default: Debian's current).")] = None,
    paging: Annotated[int, typer.Option(help="4- or 5-level paging in the guest.")] = 4,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the guest running afterwards.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Boot a real lab guest and show, from outside, its kernel, memory layout and paging."""
    from .. import lab
    from ..arch.x86_64 import coalesce_by_rights
    from ..errors import LabNotFound
    from ..inspect import inspect_target
    from ..lab.machine import LabSpec
    from ..targets import open_target

    with progress() as step:
        try:
            guest = lab.load(name)
            if not guest.alive:
                lab.down(name)
                raise LabNotFound(name)
            step(f"using running lab guest {name}")
        except LabNotFound:
            guest = lab.up(LabSpec(name=name, kernel=kernel, paging_levels=paging), step)
        step("planting a secret inside the guest (through the lab console)")
        secret = f"vmsentinel-demo-{secrets.token_hex(8)}"
        lab.run(name, f"echo {secret} > /tmp/secret.txt")
        step("looking from outside")
        with open_target(guest.target) as target:
            info = inspect_target(target)
            t0 = time.perf_counter()
            found = list(target.memory.scan(secret.encode()))
            scan_ms = (time.perf_counter() - t0) * 1000
            space = target.address_space()
            t0 = time.perf_counter()
            walk = space.walk_mappings()
            walk_ms = (time.perf_counter() - t0) * 1000
    found_at = [f"{a:#x}" for a in found]
    mapped_bytes = sum(m.size for m in walk.mappings)
    kernel_ranges = sum(1 for m in coalesce_by_rights(walk.mappings) if not m[2])
    user_ranges = sum(1 for m in coalesce_by_rights(walk.mappings) if m[2])
    result = {
        **info.to_json(),
        "lab": guest.name,
        "secret_found_at": found_at,
        "secret_scan_ms": round(scan_ms, 2),
        "mapped_bytes": mapped_bytes,
        "kernel_ranges": kernel_ranges,
        "user_ranges": user_ranges,
        "page_tables_read": walk.tables_visited,
        "walk_ms": round(walk_ms, 2),
        "walk_problems": walk.problems,
    }
    if not keep:
        lab.down(name)
    if json:
        print_json(result)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("guest", f"{guest.target}  (QEMU pid {guest.pid}, RAM file {guest.ram_path})")
    table.add_row("kernel banner", str(info.banner))
    table.add_row("memory", f"{info.ram_size / 2**20:.0f} MiB from {info.source_kind}, layout from {info.layout_source}")
    for start, end in info.physical_ranges:
        table.add_row("", f"{start:#014x}-{end - 1:#014x}")
    table.add_row(
        "paging",
        f"{info.paging_levels}-level, page-table root {info.page_table_root:#x}"
        if info.page_table_root is not None
        else "unknown",
    )
    table.add_row(
        "address space",
        f"{kernel_ranges} kernel and {user_ranges} user ranges, "
        f"{mapped_bytes / 2**20:.0f} MiB mapped, {walk.tables_visited} page tables read "
        f"in {walk_ms:.1f} ms",
    )
    table.add_row(
        "secret",
        f"{secret!r} written inside the guest, found from outside at {', '.join(found_at) or 'nowhere'} ({scan_ms:.1f} ms scan)",
    )
    out.print(Panel(table, title="vmsentinel: what the sentinel sees from outside", expand=False))
    if keep:
        err.print(f"the guest keeps running: 'vmsentinel lab down {name}' stops it")
