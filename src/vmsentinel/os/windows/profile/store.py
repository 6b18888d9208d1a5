"""Where NT kernel profiles and kernel images are kept, found again by the kernel a guest runs.

A kernel found in guest memory says only its PE header. What ties it to a profile is the header's
*layout* (entry point and loaded sections, :func:`pe_debug.layout_digest`), which the image on the
guest's disk and the debug file of the same build share even when their time stamps differ by a
second. So profiles are cached under a name ending in the layout, and the kernel image (the file the
loaded kernel's code is compared with) under the layout alone::

    add_kernel("ntoskrnl.exe (with DWARF)", image="ntoskrnl.exe (as shipped)")   # once per build
    profile_for(layout); image_for(layout)                                      # when a guest is opened
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path

from vmsentinel.errors import ProfileError
from vmsentinel.os.windows.profile.profile import NtProfile, profile_from_isf, profile_from_pe
from vmsentinel.paths import cache_dir, write_atomic

#: a profile file name ends in this many characters of its layout digest (``ImageIdentity.key``)
KEY_CHARS = 12


def store_folder() -> Path:
    return cache_dir() / "profiles" / "windows"


def profile_for(layout: str, folder: Path | None = None) -> NtProfile | None:
    """The stored profile of the kernel whose header has ``layout``, or None."""
    where = folder or store_folder()
    if len(layout) < KEY_CHARS or not where.is_dir():
        return None
    for path in sorted(where.glob(f"*-{layout[:KEY_CHARS]}.json.xz")):
        try:
            profile = profile_from_isf(path)
        except ProfileError:
            continue  # a damaged entry: made again by the next add
        if profile.identity.layout == layout:
            profile.source = f"{path.name} (made from the DWARF of {profile.identity.name})"
            return profile
    return None


def profile_for_pdb(pdb: str, pdb_id: str, folders: list[Path] | None = None) -> NtProfile | None:
    """The ISF made from Microsoft's symbols for the kernel linked with ``pdb`` (``ntkrnlmp.pdb``) whose
    CodeView record says ``pdb_id`` (``GUID-age``), laid out as Volatility 3 keeps them
    (``PDB/GUID-AGE.json.xz``) in the store's ``isf`` folder or a folder of ``$VMSENTINEL_NT_SYMBOLS``
    (colon-separated; a Volatility ``symbols/windows`` folder works as it is)."""
    if not pdb or not pdb_id or "/" in pdb or "/" in pdb_id or pdb.startswith("."):
        return None
    for folder in folders if folders is not None else symbol_folders():
        for suffix in (".json.xz", ".json"):
            path = folder / pdb / f"{pdb_id}{suffix}"
            if path.is_file():
                try:
                    return profile_from_isf(path)
                except ProfileError:
                    continue
    return None


def symbol_folders() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("VMSENTINEL_NT_SYMBOLS", "").split(":") if p]
    return [store_folder() / "isf", *extra]


def add_isf(path: str | Path, folder: Path | None = None) -> tuple[NtProfile, Path]:
    """Keep a Volatility 3 Windows ISF file under the PDB and id its metadata names, where
    :func:`profile_for_pdb` finds it."""
    from vmsentinel.os.types import load_isf

    doc = load_isf(path)
    pdb = doc.get("metadata", {}).get("windows", {}).get("pdb", {})
    try:
        name, guid, age = str(pdb["database"]), str(pdb["GUID"]).upper(), int(pdb["age"])
    except (KeyError, TypeError, ValueError):
        raise ProfileError(f"{path}: not a Windows ISF (no metadata.windows.pdb with database, GUID and age)") from None
    if "/" in name or name.startswith(".") or not guid.isalnum():
        raise ProfileError(f"{path}: its PDB name {name!r} or GUID {guid!r} is not one a file can be kept under")
    target = (folder or store_folder() / "isf") / name / f"{guid}-{age}.json.xz"
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = Path(path).read_bytes()
    write_atomic(target, raw if raw[:6] == b"\xfd7zXZ\x00" else lzma.compress(raw, preset=1))
    return profile_from_isf(target), target


def image_for(layout: str, folder: Path | None = None) -> Path | None:
    """The stored image file of the kernel whose header has ``layout``, or None."""
    path = (folder or store_folder()) / "images" / f"{layout[:32]}.exe"
    return path if path.is_file() and len(layout) >= KEY_CHARS else None


def add_kernel(debug: str | Path, image: str | Path | None = None, folder: Path | None = None) -> NtProfile:
    """Make (or find) the profile of the kernel in ``debug`` and keep ``image`` beside it; the image
    must be of the same build (its layout equal to the profile's)."""
    where = folder or store_folder()
    profile = profile_from_pe(debug, cache=where)
    if image is not None:
        from vmsentinel.os.windows.profile.pe_debug import PeDebug

        found = PeDebug.open(image).layout
        if found != profile.identity.layout:
            raise ProfileError(
                f"{image} is not the kernel {debug} describes (its sections and entry point differ: layout {found[:12]}"
                f" against {profile.identity.layout[:12]})"
            )
        target = where / "images" / f"{found[:32]}.exe"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, Path(image).read_bytes())
    return profile
