"""PE images in kernel memory: their sections as the loader mapped them (what kernel code hashing
covers: every executable section of the kernel and of each driver).

A header read from the guest is hostile: pefile parses only the first page, and section counts and
sizes are bounded by the image size.

    sections = image_sections(space, module.base)       # [Section(".text", 0x80401000, 0x1a2000, True)]
"""

from __future__ import annotations

from dataclasses import dataclass

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.errors import TranslationError

IMAGE_SCN_MEM_EXECUTE = 0x20000000
#: larger than any kernel-mode image (ntoskrnl is a few MB)
MAX_IMAGE = 64 << 20
MAX_SECTIONS = 96


@dataclass(frozen=True)
class Section:
    name: str
    start: int
    size: int
    executable: bool


def image_sections(space: VirtualReads, base: int) -> list[Section]:
    """The sections of the image at ``base`` (empty when its header cannot be read or is malformed)."""
    import pefile

    try:
        head = space.read(base, 0x1000)
        pe = pefile.PE(data=head, fast_load=True)
    except (TranslationError, pefile.PEFormatError):
        return []
    size = min(pe.OPTIONAL_HEADER.SizeOfImage, MAX_IMAGE)
    out = []
    for section in pe.sections[:MAX_SECTIONS]:
        rva, length = section.VirtualAddress, section.Misc_VirtualSize or section.SizeOfRawData
        if not 0 < rva < size or length <= 0:
            continue
        name = section.Name.rstrip(b"\0").decode("latin-1", "replace")
        out.append(Section(name, base + rva, min(length, size - rva), bool(section.Characteristics & IMAGE_SCN_MEM_EXECUTE)))
    return out
