"""``vmsentinel allowlist``: the code allowlist (which file pages may be executable, which modules
may load), built from root filesystems, initramfs images and Debian packages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from vmsentinel.cli.app import App
from vmsentinel.cli.output import err, out, print_json, progress
from vmsentinel.trust.allowlist import load_allowlist, save_allowlist
from vmsentinel.trust.allowlist_build import build_allowlist

app = App(
    help="Build and show code allowlists.\n\nAn allowlist holds the executable pages and kernel modules a guest may run.",
    no_args_is_help=True,
)

SOURCE_HELP = "A root filesystem directory, an initramfs image or a .deb package (repeat to merge several)."


def _keep_on_screen(step: Callable[[str], None]) -> Callable[[str], None]:
    """Source summaries and skipped files stay on screen: on a terminal the spinner alone would overwrite them."""

    def say(message: str) -> None:
        if err.is_terminal:
            err.print(message, highlight=False, markup=False, soft_wrap=True)
        step(message)

    return say


@app.command("build")
def build(
    sources: Annotated[list[str], typer.Option("--from", metavar="SOURCE", help=SOURCE_HELP, show_default=False)],
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="FILE", help="Write the allowlist (JSON) here.", show_default=False)
    ],
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build an allowlist and write it to a file.

    It lists the code of every source: executables, libraries and kernel modules."""
    started = time.perf_counter()
    with progress() as step:
        step(f"reading {len(sources)} source{'s' if len(sources) > 1 else ''}")
        allowlist = build_allowlist(sources, _keep_on_screen(step))
        step(f"writing {output}")
        save_allowlist(allowlist, output)
    counts = allowlist.summary()
    result: dict[str, object] = {
        "path": output,
        **counts,
        "sources": allowlist.sources,
        "created": allowlist.created,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if json:
        print_json(result)
        return
    out.print(
        f"allowlist of {counts['files']} files ({counts['executables']} executables, {counts['libraries']} libraries, "
        f"{counts['modules']} modules, {counts['pages']} pages) written to {output} in {result['seconds']} s",
        highlight=False,
    )


@app.command("show")
def show(
    file: Annotated[str, typer.Argument(metavar="FILE", help="An allowlist file.", show_default=False)],
    json: Annotated[bool, typer.Option("--json", help="Print the whole allowlist as JSON.")] = False,
) -> None:
    """Show what an allowlist holds.

    One row per file, then the kernel modules."""
    allowlist = load_allowlist(file)
    if json:
        print_json(allowlist.to_json())
        return
    counts = allowlist.summary()
    out.print(
        f"{file}: {counts['files']} files ({counts['executables']} executables, {counts['libraries']} libraries), "
        f"{counts['modules']} modules, {counts['pages']} pages; created {allowlist.created}",
        highlight=False,
    )
    for source in allowlist.sources:
        out.print(f"  from {source}", highlight=False)
    table = Table()
    table.add_column("path", overflow="fold")
    table.add_column("kind")
    table.add_column("pages", justify="right")
    table.add_column("sha256")
    for path, entry in sorted(allowlist.files.items()):
        table.add_row(path, entry.kind, str(len(entry.pages)), entry.sha256[:16])
    out.print(table)
    if allowlist.modules:
        modules = Table()
        modules.add_column("module")
        modules.add_column("sha256")
        for name, digest in sorted(allowlist.modules.items()):
            modules.add_row(name, digest[:16])
        out.print(modules)
