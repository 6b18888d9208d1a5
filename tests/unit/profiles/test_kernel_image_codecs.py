"""Kernel images decode through the shared codec: the size trailer real bzImages carry, and
hostile payloads (bombs, truncation, a corrupt vmlinux.gz) as KernelImageErrors naming the file."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from tests.unit.profiles.test_image_profile_isf import _bzimage, _lz4_legacy, synthetic_vmlinux

from vmsentinel.errors import KernelImageError
from vmsentinel.os.linux.profile import kernel_image
from vmsentinel.os.linux.profile.kernel_image import KernelImage

CODECS: dict[str, Callable[[bytes], bytes]] = {
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "lz4": _lz4_legacy,
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_payload_ending_with_the_uncompressed_size_decodes(tmp_path: Path, codec: str) -> None:
    """What arch/x86/boot/compressed writes: the stream, then its uncompressed size (u32), inside payload_length."""
    elf = synthetic_vmlinux()
    path = tmp_path / "vmlinuz"
    path.write_bytes(_bzimage(CODECS[codec](elf) + struct.pack("<I", len(elf))))
    assert KernelImage.open(path).data == elf


@pytest.mark.parametrize("codec", ["xz", "zstd", "gzip", "bzip2", "lzma"])
def test_a_bomb_payload_is_refused_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    monkeypatch.setattr(kernel_image, "MAX_KERNEL_BYTES", 1 << 20)
    path = tmp_path / "vmlinuz-bomb"
    path.write_bytes(_bzimage(CODECS[codec](bytes(16 << 20))))
    with pytest.raises(
        KernelImageError, match=rf"{re.escape(str(path))}: kernel payload does not decompress: more than 1048576 bytes"
    ):
        KernelImage.open(path)


def test_a_truncated_payload_names_the_file(tmp_path: Path) -> None:
    packed = lzma.compress(synthetic_vmlinux(), format=lzma.FORMAT_XZ)
    path = tmp_path / "vmlinuz-cut"
    path.write_bytes(_bzimage(packed[: len(packed) // 2]))
    with pytest.raises(
        KernelImageError, match=rf"{re.escape(str(path))}: kernel payload does not decompress: xz data .* truncated"
    ):
        KernelImage.open(path)


def test_a_corrupt_or_bomb_vmlinux_gz_is_a_kernel_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vmlinux.gz"
    path.write_bytes(gzip.compress(synthetic_vmlinux())[:-30])
    with pytest.raises(KernelImageError, match=rf"{re.escape(str(path))}: gzip'd vmlinux: "):
        KernelImage.open(path)
    monkeypatch.setattr(kernel_image, "MAX_KERNEL_BYTES", 1 << 20)
    path.write_bytes(gzip.compress(bytes(4 << 20)))
    with pytest.raises(KernelImageError, match="decompression bomb"):
        KernelImage.open(path)
    path.write_bytes(gzip.compress(synthetic_vmlinux()))
    monkeypatch.setattr(kernel_image, "MAX_KERNEL_BYTES", 1 << 30)
    assert KernelImage.open(path).data == synthetic_vmlinux()


def test_a_vendor_image_is_decompressed_once_into_the_cache_and_mapped_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vmlinuz's ELF is written to the cache on the first open and mapped read-only (shared by every
    process, not in any one's own memory); the next open maps the cached file without decompressing; a
    new vmlinuz at the same path (another size or time) gets its own file; a damaged cached file is
    made again; a vmlinux is mapped where it lies."""
    import mmap

    from vmsentinel.os.linux.vendor import image as vendor_image

    monkeypatch.setenv("VMSENTINEL_CACHE", str(tmp_path / "cache"))
    elf = synthetic_vmlinux()
    path = tmp_path / "vmlinuz"
    path.write_bytes(_bzimage(gzip.compress(elf) + struct.pack("<I", len(elf))))
    first = vendor_image.uncompressed(path)
    assert isinstance(first.data, mmap.mmap) and first.data[:] == elf and first.path == str(path)
    cached = list((tmp_path / "cache" / vendor_image.CACHE_FOLDER).iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == elf

    def no_decompressing(*_a: object) -> KernelImage:
        raise AssertionError("decompressed again")

    monkeypatch.setattr(KernelImage, "open", no_decompressing)
    assert vendor_image.uncompressed(path).data[:] == elf
    monkeypatch.undo()
    monkeypatch.setenv("VMSENTINEL_CACHE", str(tmp_path / "cache"))
    cached[0].write_bytes(b"garbage")
    assert vendor_image.uncompressed(path).data[:] == elf and cached[0].read_bytes() == elf
    path.write_bytes(_bzimage(gzip.compress(elf) + struct.pack("<I", len(elf))) + b"\0" * 16)
    vendor_image.uncompressed(path)
    assert len(list((tmp_path / "cache" / vendor_image.CACHE_FOLDER).iterdir())) == 2
    plain = tmp_path / "vmlinux"
    plain.write_bytes(elf)
    mapped = vendor_image.uncompressed(plain)
    assert isinstance(mapped.data, mmap.mmap) and mapped.data[:] == elf
    assert len(list((tmp_path / "cache" / vendor_image.CACHE_FOLDER).iterdir())) == 2
