"""The one codec module on hostile input: every format round-trips, and truncation, corruption,
bombs and unknown formats fail with the caller's error naming the file, never hang."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import time
from collections.abc import Callable

import lz4.block
import lz4.frame
import pytest
import zstandard

from vmsentinel.errors import KernelImageError, VmSentinelError
from vmsentinel.trust.compression import MAGICS, Inflate, codec_of, decompress
from vmsentinel.trust.streams import BufferSource, StreamError


def _lz4_legacy(data: bytes) -> bytes:
    out = MAGICS["lz4-legacy"]
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i : i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ),
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
    "bzip2": bz2.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "lz4": lz4.frame.compress,
    "lz4-legacy": _lz4_legacy,
}
TEXT = b"".join(b"line %d of a file that compresses well\n" % i for i in range(5000))


def _decompress(data: bytes, limit: int = 1 << 24, **kwargs: object) -> bytes:
    return decompress(data, limit=limit, error=KernelImageError, what="vmlinuz-test", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_every_format_round_trips_and_is_recognised_by_its_magic(codec: str) -> None:
    packed = COMPRESS[codec](TEXT)
    assert codec_of(packed[:8]) == codec
    assert _decompress(packed) == TEXT


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_a_truncated_stream_is_the_callers_error_naming_the_file(codec: str) -> None:
    packed = COMPRESS[codec](TEXT)
    with pytest.raises(KernelImageError, match=r"^vmlinuz-test: .*(truncated|corrupt|lz4)"):
        _decompress(packed[: len(packed) // 2])


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_a_bomb_over_the_cap_fails_cleanly_and_quickly(codec: str) -> None:
    bomb = COMPRESS[codec](bytes(32 << 20))  # 32 MiB of zeros: a few KiB compressed
    started = time.monotonic()
    with pytest.raises(KernelImageError, match=r"^vmlinuz-test: more than 1048576 bytes .*decompression bomb"):
        _decompress(bomb, limit=1 << 20)
    assert time.monotonic() - started < 5  # stopped near the cap, not after decoding everything


def test_exactly_the_cap_is_allowed() -> None:
    assert len(_decompress(gzip.compress(bytes(1 << 20)), limit=1 << 20)) == 1 << 20


@pytest.mark.parametrize("codec", ["gzip", "xz", "zstd", "bzip2", "lz4", "lzma"])
def test_garbage_after_a_magic_is_corrupt_data_not_a_crash(codec: str) -> None:
    with pytest.raises(KernelImageError, match=r"^vmlinuz-test: "):
        _decompress(MAGICS[codec] + b"\xa5" * 4000)


def test_unknown_and_unsupported_formats_say_which() -> None:
    with pytest.raises(KernelImageError, match=r"vmlinuz-test: not compressed in a format we know \(magic 13370000"):
        _decompress(b"\x13\x37\x00\x00" + bytes(64))
    with pytest.raises(KernelImageError, match="lzo-compressed data is not supported"):
        _decompress(MAGICS["lzo"] + bytes(64))
    with pytest.raises(KernelImageError, match="not compressed"):
        _decompress(b"")


def test_back_to_back_streams_are_one_unless_told_otherwise() -> None:
    two = gzip.compress(b"first ") + gzip.compress(b"second")
    assert _decompress(two) == b"first second"
    assert _decompress(two, concatenated=False) == b"first "


@pytest.mark.parametrize("codec", ["xz", "zstd", "bzip2", "lzma", "gzip"])
def test_one_stream_ignores_a_size_trailer(codec: str) -> None:
    """A bzImage payload ends with the uncompressed size (the kernel's *_with_size rules)."""
    packed = COMPRESS[codec](TEXT) + struct.pack("<I", len(TEXT))
    assert _decompress(packed, concatenated=False) == TEXT


def test_legacy_lz4_ends_at_a_size_trailer_but_not_at_a_truncated_block() -> None:
    small = b"tiny kernel " * 100  # uncompressed size below the 8 MiB block bound
    packed = _lz4_legacy(small)
    assert _decompress(packed + struct.pack("<I", len(small))) == small
    with pytest.raises(KernelImageError, match="lz4 data at offset 0x0 is truncated"):
        _decompress(packed[:-5] + bytes(3))  # a block that runs past the end, with more than a trailer left


def test_inflate_stops_where_the_compressed_data_ends() -> None:
    """The initramfs reader goes on from ``stop`` with the next archive."""
    first = zstandard.ZstdCompressor().compress(b"a" * 100)
    data = first + bytes(8) + b"after"
    inflate = Inflate(BufferSource(data), 0, len(data), "zstd")
    assert b"".join(inflate) == b"a" * 100
    assert inflate.stop == len(first)


def test_a_zstd_frame_that_claims_a_huge_window_is_refused() -> None:
    header = MAGICS["zstd"] + b"\x00" + b"\xf8"  # no content size, window descriptor of 2^41 bytes
    with pytest.raises(StreamError, match="corrupt zstd"):
        b"".join(Inflate(BufferSource(header + bytes(64)), 0, len(header) + 64, "zstd"))


def test_the_error_type_is_the_callers() -> None:
    class Mine(VmSentinelError):
        pass

    with pytest.raises(Mine, match=r"^module x\.ko\.xz: "):
        decompress(b"\xfd7zXZ\x00junk", limit=100, error=Mine, what="module x.ko.xz")
