"""An NT kernel's profile: its types and its symbols (offsets from the image base, as Windows ISF
files keep them), and the identity of the image they describe (the link time stamp and image size
a loaded kernel's PE header repeats, so a profile is matched to a guest's kernel from memory).

Two sources give the same model: a PE file with DWARF (ReactOS, built with GCC), turned into ISF
once and cached by that identity, and a Volatility 3 Windows ISF file (made from Microsoft's PDBs)::

    profile = profile_from_pe("ntoskrnl.exe")          # ~8 s the first time, then from the cache
    profile = profile_from_isf("ntkrnlmp.pdb/3844...-1.json.xz")
    profile.types.member_offset("_EPROCESS", "ActiveProcessLinks"); profile.rva("PsActiveProcessHead")
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsentinel.errors import ProfileError
from vmsentinel.os.types import IsfTypes, load_isf
from vmsentinel.paths import cache_dir, write_atomic


@dataclass(frozen=True)
class ImageIdentity:
    """What ties a profile to a loaded kernel image: its PE header's time stamp and image size."""

    name: str
    timestamp: int
    size_of_image: int
    machine: int = 0x14C  # i386
    #: the entry point and loaded sections (pe_debug.layout_digest): what matches a loaded image
    layout: str = ""

    @property
    def key(self) -> str:
        return f"{Path(self.name).stem.lower()}-{self.timestamp:08x}-{self.size_of_image:x}-{self.layout[:12]}"


@dataclass
class NtProfile:
    types: IsfTypes
    symbols: dict[str, int]
    identity: ImageIdentity
    source: str

    def rva(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise ProfileError(f"the profile of {self.identity.name} has no symbol {name!r}") from None

    @property
    def pointer_size(self) -> int:
        return 8 if self.identity.machine == 0x8664 else 4


def _from_doc(doc: dict[str, Any], source: str, fallback: ImageIdentity | None = None) -> NtProfile:
    symbols: dict[str, int] = {}
    for name, entry in doc.get("symbols", {}).items():
        address = entry.get("address") if isinstance(entry, dict) else None
        if isinstance(address, int) and not isinstance(address, bool) and 0 <= address < 1 << 40:
            symbols[str(name)] = address
    pe = doc.get("metadata", {}).get("windows", {}).get("pe", {})
    try:
        identity = ImageIdentity(
            str(pe.get("file", "ntoskrnl.exe")),
            int(pe["timestamp"]),
            int(pe["size_of_image"]),
            int(pe.get("machine", 0x14C)),
            str(pe.get("layout", "")),
        )
    except (KeyError, TypeError, ValueError):  # a Volatility file says no PE identity, but its PDB's machine
        pdb = doc.get("metadata", {}).get("windows", {}).get("pdb", {})
        machine = pdb.get("machine_type") if isinstance(pdb, dict) else None
        identity = fallback or ImageIdentity(
            "ntoskrnl.exe", 0, 0, machine if isinstance(machine, int) and not isinstance(machine, bool) else 0x14C
        )
    return NtProfile(IsfTypes(doc, source), symbols, identity, source)


def profile_from_pe(path: str | Path, cache: Path | None = None, progress: Callable[[int, int], None] | None = None) -> NtProfile:
    """The profile of a PE kernel image with DWARF debug information (made once, then cached)."""
    from vmsentinel.os.windows.profile.dwarf_isf import isf_from_pe
    from vmsentinel.os.windows.profile.pe_debug import PeDebug

    debug = PeDebug.open(path)
    identity = ImageIdentity(debug.path.name, debug.timestamp, debug.size_of_image, debug.machine, debug.layout)
    folder = cache if cache is not None else cache_dir() / "profiles" / "windows"
    cached = folder / f"{identity.key}.json.xz"
    if cached.is_file():
        try:
            return _from_doc(load_isf(cached), f"DWARF of {debug.path.name} (cached)")
        except ProfileError:
            cached.unlink(missing_ok=True)  # a damaged cache entry is made again
    doc = isf_from_pe(debug, progress)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, lzma.compress(json.dumps(doc, separators=(",", ":")).encode(), preset=1))
    return _from_doc(doc, f"DWARF of {debug.path.name}")


def profile_from_isf(path: str | Path, identity: ImageIdentity | None = None) -> NtProfile:
    """The profile in a Volatility 3 Windows ISF file (symbol addresses are offsets from the image base)."""
    return _from_doc(load_isf(path), f"ISF {Path(path).name}", identity)
