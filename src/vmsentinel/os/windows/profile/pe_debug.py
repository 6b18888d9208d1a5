"""What a PE file carries for a debugger: its sections (with COFF long names such as
``.debug_info``, stored as ``/4`` plus an offset into the string table), its COFF symbol table
(functions and variables with their section-relative values) and the identity that ties it to a
loaded image (the link time stamp and the image size, which a loaded image's header repeats).

pefile parses the headers; the symbol table and long section names are read here, bounded by the
file's size. A file from a build is not the guest, but it is still input: nothing in it may make
this read past the file or loop.

    debug = PeDebug.open("ntoskrnl.exe")
    debug.section(".debug_info"); debug.symbols["KeServiceDescriptorTable"]   # an RVA
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vmsentinel.errors import ProfileError

SYMBOL = struct.Struct("<8sIhHBB")
#: storage classes kept: external and static definitions
EXTERNAL, STATIC = 2, 3
MAX_SYMBOLS = 4_000_000
_STDCALL = re.compile(r"^[_@]?([A-Za-z_?$][\w?$@]*?)(@\d+)?$")


def undecorate(name: str) -> str:
    """``_NtClose@4`` -> ``NtClose``, ``@KfAcquireSpinLock@4`` -> ``KfAcquireSpinLock``, ``_KiServiceTable`` ->
    ``KiServiceTable`` (i386 C names carry a leading underscore; stdcall and fastcall add ``@bytes``)."""
    m = _STDCALL.match(name)
    return m.group(1) if m else name


#: sections a debug file or a loaded image may have that the other has not
_NOT_LOADED = (".debug_", ".rossym", ".gnu_debuglink")


def layout_digest(pe: object, names: list[str] | None = None) -> str:
    """What a kernel image and its debug file share even when they were linked a second apart (the
    time stamps differ by one on ReactOS's split debug files): the entry point and every loaded
    section's name (as stored: a long one is ``/N``), place and size. ``pe`` is a ``pefile.PE`` (of a
    file, or of a header read from guest memory); ``names``: the sections' long names where the file's
    string table gives them, to leave its debug sections out."""
    import hashlib

    parts = [f"entry {pe.OPTIONAL_HEADER.AddressOfEntryPoint:x}"]  # type: ignore[attr-defined]
    for index, section in enumerate(pe.sections):  # type: ignore[attr-defined]
        name = section.Name.rstrip(b"\0").decode("latin-1")
        full = names[index] if names is not None and index < len(names) else name
        if full.startswith(_NOT_LOADED):
            continue
        parts.append(f"{name} {section.VirtualAddress:x} {section.Misc_VirtualSize:x}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@dataclass
class PeDebug:
    path: Path
    image_base: int
    size_of_image: int
    timestamp: int
    machine: int
    sections: dict[str, tuple[int, int, int, int]]  # name -> (rva, virtual size, file offset, raw size)
    data: bytes = field(repr=False)
    #: undecorated name -> RVA (the first definition of a name wins)
    symbols: dict[str, int] = field(default_factory=dict)
    #: :func:`layout_digest` of the file
    layout: str = ""

    @classmethod
    def open(cls, path: str | Path) -> PeDebug:
        import pefile

        file = Path(path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ProfileError(f"cannot read {file}: {exc.strerror}") from exc
        try:
            pe = pefile.PE(data=data, fast_load=True)
        except pefile.PEFormatError as exc:
            raise ProfileError(f"{file}: not a PE file ({exc})") from None
        fh, oh = pe.FILE_HEADER, pe.OPTIONAL_HEADER
        strtab = fh.PointerToSymbolTable + fh.NumberOfSymbols * SYMBOL.size if fh.PointerToSymbolTable else None
        sections = {}
        names = []
        for s in pe.sections:
            name = s.Name.rstrip(b"\0")
            if name.startswith(b"/") and name[1:].isdigit() and strtab is not None:
                name = _string(data, strtab + int(name[1:]))
            names.append(name.decode("latin-1"))
            sections[names[-1]] = (s.VirtualAddress, s.Misc_VirtualSize, s.PointerToRawData, s.SizeOfRawData)
        layout = layout_digest(pe, names)
        debug = cls(file, oh.ImageBase, oh.SizeOfImage, fh.TimeDateStamp, fh.Machine, sections, data, layout=layout)
        if strtab is not None:
            debug._read_symbols(fh.PointerToSymbolTable, min(fh.NumberOfSymbols, MAX_SYMBOLS), strtab)
        return debug

    def section(self, name: str) -> bytes | None:
        """A section's bytes as stored in the file (None when it has none)."""
        found = self.sections.get(name)
        if found is None or not found[3]:
            return None
        _, vsize, offset, raw = found
        size = min(raw, vsize) if vsize else raw
        if offset + size > len(self.data):
            raise ProfileError(f"{self.path}: section {name} runs past the end of the file")
        return self.data[offset : offset + size]

    def _read_symbols(self, at: int, count: int, strtab: int) -> None:
        rvas = [rva for rva, _, _, _ in self.sections.values()]
        index = 0
        while index < count and at + (index + 1) * SYMBOL.size <= len(self.data):
            raw, value, section, _type, storage, aux = SYMBOL.unpack_from(self.data, at + index * SYMBOL.size)
            index += 1 + aux
            if storage not in (EXTERNAL, STATIC) or not 0 < section <= len(rvas):
                continue
            name = _string(self.data, strtab + int.from_bytes(raw[4:], "little")) if raw[:4] == b"\0\0\0\0" else raw.rstrip(b"\0")
            text = undecorate(name.decode("latin-1"))
            if text and not text.startswith("."):
                self.symbols.setdefault(text, rvas[section - 1] + value)


def _string(data: bytes, at: int) -> bytes:
    if not 0 <= at < len(data):
        return b""
    end = data.find(b"\0", at, at + 4096)
    return data[at : end if end >= 0 else at + 4096]
