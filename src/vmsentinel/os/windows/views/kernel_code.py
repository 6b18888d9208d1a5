"""The NT kernel's code against its own image file: the executable sections of the loaded kernel,
byte for byte, against the same file relocated to where the kernel was loaded (pefile applies its
``.reloc`` table). The one byte the kernel patches itself is explained by name: ``RtlPrefetchMemoryNonTemporal``
starts with ``ret`` in the file and becomes ``nop`` when the CPU has the prefetch instruction. Any
other difference (an inline hook, a patched function) is reported with the function it lies in.

    check = compare_kernel_code(kernel_space, kernel_base, "ntoskrnl.exe", symbols)
    check.compared, check.differences
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.errors import ProfileError, TranslationError
from vmsentinel.os.windows.views.services import KernelSymbols

IMAGE_SCN_MEM_EXECUTE = 0x20000000
#: the section NT frees after boot (its code ran once)
DISCARDED_AFTER_BOOT = "INIT"
#: the kernel's own patches, by function and offset: (byte in the file, byte it may hold when loaded)
KERNEL_PATCHES: dict[str, dict[int, tuple[int, int]]] = {"RtlPrefetchMemoryNonTemporal": {0: (0xC3, 0x90)}}


@dataclass(frozen=True)
class CodeDifference:
    address: int
    section: str
    function: str | None  # nt!NAME+OFFSET
    expected: bytes
    found: bytes


@dataclass
class KernelCodeCheck:
    compared: int = 0
    explained: int = 0
    differences: list[CodeDifference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def compare_kernel_code(space: VirtualReads, kernel_base: int, image: str | Path, symbols: dict[str, int]) -> KernelCodeCheck:
    """``symbols``: the profile's RVAs. Runs of differing bytes are reported as one difference each."""
    import pefile

    check = KernelCodeCheck()
    try:
        pe = pefile.PE(str(image))
    except (OSError, pefile.PEFormatError) as exc:
        raise ProfileError(f"{image}: cannot read the kernel's image ({exc})") from None
    pe.relocate_image(kernel_base)
    mapped = pe.get_memory_mapped_image(ImageBase=kernel_base)
    names = KernelSymbols(symbols, kernel_base)
    patches = {
        symbols[name] + off: bytes_ for name, offs in KERNEL_PATCHES.items() if name in symbols for off, bytes_ in offs.items()
    }

    absent: dict[str, int] = {}  # section -> its pages not in memory
    for section in pe.sections:
        if not section.Characteristics & IMAGE_SCN_MEM_EXECUTE:
            continue
        name = section.Name.rstrip(b"\0").decode("latin-1")
        rva, size = section.VirtualAddress, section.Misc_VirtualSize
        for offset in range(0, size, 0x1000):
            length = min(0x1000, size - offset)
            try:
                live = space.read(kernel_base + rva + offset, length)
            except TranslationError:  # paged out or discarded (INIT after boot): nothing to compare
                absent[name] = absent.get(name, 0) + 1
                continue
            reference = mapped[rva + offset : rva + offset + length]
            check.compared += length
            if live == reference:
                continue
            i = 0
            while i < length:
                if live[i] == reference[i]:
                    i += 1
                    continue
                at = rva + offset + i
                if patches.get(at) == (reference[i], live[i]):
                    check.explained += 1
                    i += 1
                    continue
                end = i
                while end < length and live[end] != reference[end]:
                    end += 1
                check.differences.append(
                    CodeDifference(
                        kernel_base + at, name, names.describe(kernel_base + at), bytes(reference[i:end]), bytes(live[i:end])
                    )
                )
                i = end
    for name, pages in absent.items():  # INIT is freed once the kernel has started: expected, not a problem
        if name != DISCARDED_AFTER_BOOT:
            check.problems.append(f"{pages} page{'s' if pages > 1 else ''} of {name} not in memory (paged out): not compared")
    return check
