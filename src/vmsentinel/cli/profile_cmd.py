"""``vmsentinel profile``: kernel profiles with no hand work (BTF + kallsyms),
built from a kernel image or from a guest's memory alone."""

from __future__ import annotations

import json as jsonlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vmsentinel.access import open_connector
from vmsentinel.cli.app import App
from vmsentinel.cli.output import fail, hexaddr, out, print_json, progress
from vmsentinel.cli.params import TARGET, TARGET_HELP
from vmsentinel.errors import TargetError
from vmsentinel.os.linux.kernel_profile import resolve_kernel
from vmsentinel.os.linux.profile.isf import profile_from_isf, write_isf
from vmsentinel.os.linux.profile.profile import KernelProfile, profile_from_image

app = App(
    help="Build and show kernel profiles.\n\n"
    "A profile holds a kernel's types and symbols, from BTF and kallsyms; it reads and writes Volatility ISF too.",
    no_args_is_help=True,
)


def _load_profile_file(path: str) -> KernelProfile:
    p = Path(path)
    if not p.exists():
        raise TargetError(f"no such profile file: {path}")
    with open(p, "rb") as f:
        head = f.read(8)
    return KernelProfile.load(p) if head == b"VMSPROF1" else profile_from_isf(p)


@app.command("build")
def build(
    target: Annotated[str | None, typer.Argument(metavar="TARGET", help=TARGET_HELP + " Omit with --image.")] = None,
    image: Annotated[str | None, typer.Option("--image", metavar="FILE", help="Build from a vmlinuz or vmlinux file.")] = None,
    system_map: Annotated[
        str | None,
        typer.Option("--system-map", metavar="FILE", help="With --image: take the symbols from this System.map."),
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", metavar="FILE", help="Write the profile here (default: the cache).")
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="native (vmsentinel) or isf (Volatility 3 JSON; .xz compresses).")
    ] = "native",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build a kernel profile.

    From a kernel image, or from guest memory alone."""
    if (target is None) == (image is None):
        fail("give either a TARGET or --image FILE")
    if system_map is not None and image is None:
        fail("--system-map goes with --image")
    if format_ not in ("native", "isf"):
        fail("--format takes native or isf")
    started = time.perf_counter()
    with progress() as step:
        if image is not None:
            step(f"reading {image}")
            profile = profile_from_image(image, system_map)
            how = "image"
        else:
            assert target is not None
            step(f"finding the kernel in {target}")
            with open_connector(target) as opened:
                resolved = resolve_kernel(opened.memory, target, use_cache=False)
            profile, how = resolved.profile, "memory"
        step("writing")
        if output is None and format_ == "native":
            from vmsentinel.os.linux.profile.store import ProfileStore

            path = ProfileStore().put(profile)
        elif output is None:
            raise TargetError("--format isf needs -o FILE")
        else:
            path = Path(output)
            if format_ == "isf":
                write_isf(profile, path)
            else:
                profile.save(path)
    result = {
        "path": str(path),
        "format": format_,
        "built_from": how,
        "banner": profile.identity.banner,
        "release": profile.identity.release,
        "build_id": profile.identity.build_id,
        "symbols": len(profile.symbols),
        "types": profile.type_count(),
        "sources": profile.sources,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if json:
        print_json(result)
    else:
        out.print(
            f"profile of {profile.identity.release} ({result['symbols']} symbols, {result['types']} types) "
            f"written to {path} in {result['seconds']} s",
            highlight=False,
        )


@app.command("show")
def show(
    target: TARGET,
    profile_file: Annotated[
        str | None, typer.Option("--profile", metavar="FILE", help="Use this profile (a vmsentinel or ISF file).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore cached profiles; build from memory.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show which kernel runs in a target.

    How it is randomised and paged, and where its profile came from."""
    given = _load_profile_file(profile_file) if profile_file else None
    with open_connector(target) as opened:
        resolved = resolve_kernel(opened.memory, target, profile=given, use_cache=not no_cache)
    loc, prof = resolved.location, resolved.profile
    data: dict[str, object] = {
        "target": target,
        "banner": prof.identity.banner,
        "release": prof.identity.release,
        "build_id": prof.identity.build_id,
        "kaslr_slide": hexaddr(loc.kaslr_slide),
        "physical_slide": hexaddr(loc.physical_slide),
        "kernel_text_physical": hexaddr(loc.text_phys),
        "paging_levels": loc.paging_levels,
        "page_table_root": hexaddr(loc.page_table_root),
        "page_offset_base": hexaddr(loc.page_offset_base),
        "vmalloc_base": hexaddr(loc.vmalloc_base),
        "vmemmap_base": hexaddr(loc.vmemmap_base),
        "symbols": len(prof.symbols),
        "types": prof.type_count(),
        "symbols_from": prof.sources.get("symbols"),
        "types_from": prof.sources.get("types"),
        "profile_from": resolved.how,
        "seconds": round(resolved.seconds, 4),
        "notes": resolved.notes + loc.notes,
    }
    if json:
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        if key == "notes":
            for note in resolved.notes + loc.notes:
                table.add_row("note", note)
        elif key == "seconds":
            table.add_row("time", f"{resolved.seconds * 1000:.1f} ms")
        else:
            table.add_row(key, jsonlib.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)


@app.command("nt")
def nt(
    debug: Annotated[
        str | None,
        typer.Argument(metavar="[FILE]", help="The NT kernel with its debug information (a PE file with DWARF)."),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option("--image", metavar="FILE", help="The kernel file as the guest loads it, to compare its code with."),
    ] = None,
    isf: Annotated[
        str | None,
        typer.Option("--isf", metavar="FILE", help="A Volatility 3 Windows ISF file (made from Microsoft's PDB) instead."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Store an NT kernel's profile (and image).

    From a kernel with DWARF (ReactOS), matched to guests by its sections and entry point; or from a
    Volatility 3 Windows ISF file, matched by the PDB id in the kernel's debug directory. Guests of that
    build are then opened with no more hand work: 'ps', 'check' and 'watch' work on them."""
    from vmsentinel.os.windows.profile.store import add_isf, add_kernel, store_folder

    if (debug is None) == (isf is None):
        fail("give either a kernel FILE with DWARF or --isf FILE")
    for path in (debug, image, isf):
        if path is not None and not Path(path).is_file():
            raise TargetError(f"no such file: {path}")
    started = time.monotonic()
    with progress() as step:
        if isf is not None:
            step(f"reading {isf}")
            profile, kept = add_isf(isf)
            key, where = kept.stem.removesuffix(".json"), str(kept)
        else:
            assert debug is not None
            step(f"reading the DWARF of {debug}")
            profile = add_kernel(debug, image)
            key, where = f"layout {profile.identity.layout[:12]}", str(store_folder())
    result = {
        "kernel": profile.identity.name,
        "key": key,
        "symbols": len(profile.symbols),
        "types": len(profile.types.user_types),
        "pointer_size": profile.pointer_size,
        "image": image,
        "stored": where,
        "seconds": round(time.monotonic() - started, 2),
    }
    if json:
        print_json(result)
        return
    out.print(
        f"profile of {result['kernel']} ({key}, {result['symbols']} symbols, {result['types']} types)"
        f"{' and its image' if image else ''} stored in {where}",
        highlight=False,
    )
