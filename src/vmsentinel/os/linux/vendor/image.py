"""A vendor kernel image (the ``vmlinuz`` of the guest's kernel package) opened as a reference: its
bytes, its own symbols and types (kallsyms and BTF inside it: nothing from the guest), and the
relocation table the boot code applies when KASLR moves the kernel.

    vendor = VendorKernel.open("/boot/vmlinuz-6.1.0-57-amd64")
    vendor.expected(vendor.symbol("_text"), vendor.symbol("_etext"), slide)   # bytes as booted at slide

Everything here is at link-time addresses; a guest address is a link address plus the slide.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from vmsentinel.errors import KernelImageError, ProfileError
from vmsentinel.os.linux.profile.kernel_image import KernelImage, Relocations
from vmsentinel.os.linux.profile.profile import KernelProfile, profile_from_kernel_image
from vmsentinel.paths import cache_dir, write_atomic

MASK64 = (1 << 64) - 1
#: where decompressed vendor kernels are kept (under the cache folder), one file per image file
CACHE_FOLDER = "vendor-elf"
MASK32 = (1 << 32) - 1


@dataclass
class VendorKernel:
    path: str
    image: KernelImage
    profile: KernelProfile
    relocations: Relocations

    @classmethod
    def open(cls, path: str | Path) -> VendorKernel:
        """Raises KernelImageError (or ProfileError) naming the file when it is no usable reference."""
        image = uncompressed(Path(path))
        try:
            profile = profile_from_kernel_image(image, path)
        except ProfileError as exc:
            raise KernelImageError(f"{path}: {exc}") from exc
        return cls(str(path), image, profile, image.relocations())

    @property
    def build_id(self) -> str | None:
        return self.profile.identity.build_id

    def symbol(self, name: str) -> int:
        return self.profile.symbols.address(name)

    def has_symbol(self, name: str) -> bool:
        return name in self.profile.symbols

    def raw(self, start: int, length: int) -> bytes:
        """Link-time bytes, as in the file (not relocated)."""
        return self.image.read_virtual(start, length)

    def expected(self, start: int, end: int, slide: int) -> bytes:
        """The bytes of ``[start, end)`` as the boot code leaves them when KASLR moved the kernel by
        ``slide``: every relocated field inside the range gets the slide (fields across the range's
        edges are left as they are: the caller compares whole sections)."""
        data = bytearray(self.raw(start, end - start))
        rel = self.relocations
        for addresses, width, sign in ((rel.add32, 4, 1), (rel.sub32, 4, -1), (rel.add64, 8, 1)):
            first, last = bisect_left(addresses, start), bisect_left(addresses, end)
            fmt, mask = ("<Q", MASK64) if width == 8 else ("<I", MASK32)
            for address in addresses[first:last]:
                at = address - start
                if at + width > len(data):
                    continue
                (value,) = struct.unpack_from(fmt, data, at)
                struct.pack_into(fmt, data, at, (value + sign * slide) & mask)
        return bytes(data)


def uncompressed(path: Path) -> KernelImage:
    """``path``'s kernel ELF mapped from a file: the file itself when it is a vmlinux, else the ELF
    decompressed once into the cache (``vendor-elf/``, named for the file's path, size and modification
    time) and mapped from there. Every worker process that opens the image then shares its ~60 MB of
    pages instead of holding its own decompressed copy. Where the cache cannot be written, the image is
    decompressed into this process's memory as before."""
    try:
        return KernelImage.mapped(path)
    except KernelImageError:
        pass  # compressed (a vmlinuz, a vmlinux.gz)
    st = path.stat()
    key = blake3(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest(length=16)
    cached = cache_dir() / CACHE_FOLDER / f"{key}.elf"
    if cached.is_file():
        try:
            return KernelImage.mapped(cached, str(path))
        except (OSError, ValueError, KernelImageError):
            pass  # a damaged cache file: made again below
    image = KernelImage.open(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, memoryview(image.data))
    except OSError:
        return image
    del image
    return KernelImage.mapped(cached, str(path))
