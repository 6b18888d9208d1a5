"""Compressed streams, decoded in bounded pieces under an output cap.

The one decoder for everything vmsentinel unpacks: initramfs images and .deb members (the
allowlist builder), bzImage payloads (kernel profiles) and compressed kernel modules (the
builder and the lab). Formats are recognised by magic, as the kernel's unpackers do: gzip,
xz, lzma, bzip2, zstd, lz4 frames and legacy lz4; lzo is recognised only to be refused by
name. Input is hostile, so output comes in pieces of at most 1 MiB, a stream that produces
more than its cap fails, and any decoder error names the codec and the offset::

    elf = decompress(payload, limit=1 << 30, error=KernelImageError, what="vmlinuz: kernel payload")
    for chunk in Inflate(FileSource(fd, size), offset, size, "zstd"): ...   # .stop: where it ended
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import lz4.block
import lz4.frame
import zstandard

from vmsentinel.trust.streams import READ_CHUNK, Budget, BufferSource, Source, StreamError

_OUT_CHUNK = 1 << 20
_LZMA_MEMLIMIT = 256 << 20
_LZ4_LEGACY_BLOCK = 8 << 20
_LZ4_LEGACY_BOUND = _LZ4_LEGACY_BLOCK + _LZ4_LEGACY_BLOCK // 255 + 16

#: Stream magics by codec, the ones the kernel's initramfs unpacker knows.
MAGICS: dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x04\x22\x4d\x18",
    "lz4-legacy": b"\x02\x21\x4c\x18",
    "bzip2": b"BZh",
    "lzma": b"\x5d\x00",
    "lzo": b"\x89LZO",  # recognised, so that the error can say what it is
}
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    ValueError,
    RuntimeError,  # lz4.frame
    zstandard.ZstdError,
    lz4.block.LZ4BlockError,
)


def codec_of(head: bytes) -> str | None:
    """The codec whose magic ``head`` starts with (8 bytes are enough), or None."""
    for codec, magic in MAGICS.items():
        if head.startswith(magic):
            return codec
    return None


def decompress(
    data: bytes,
    *,
    limit: int,
    error: Callable[[str], Exception],
    what: str = "",
    codec: str | None = None,
    concatenated: bool = True,
) -> bytes:
    """All of ``data`` decoded, for inputs small enough to hold whole (a kernel, a module).

    More than ``limit`` bytes of output, a truncated or corrupt stream, or an unknown format
    raise ``error("{what}: {reason}")``, so each caller keeps its own error type and names
    its file. ``concatenated=False`` decodes one stream and ignores what follows it (a
    bzImage payload ends with the uncompressed size, which is no stream).
    """
    prefix = f"{what}: " if what else ""
    codec = codec or codec_of(data[:8])
    if codec is None:
        raise error(f"{prefix}not compressed in a format we know (magic {data[:6].hex()})")
    budget = Budget(limit)
    out = bytearray()
    try:
        for chunk in Inflate(BufferSource(data), 0, len(data), codec, concatenated=concatenated):
            budget.take(len(chunk))
            out += chunk
    except StreamError as exc:
        raise error(f"{prefix}{exc}") from None
    return bytes(out)


class _Decoder(Protocol):
    in_chunk: int

    def feed(self, data: bytes | memoryview) -> bytes: ...
    def has_output(self) -> bool: ...
    def eof(self) -> bool: ...
    def unused(self) -> bytes: ...


class _ZlibDecoder:
    """gzip, one member; output capped per call, leftover input kept in unconsumed_tail."""

    in_chunk = 64 << 10

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)
        self._full = False

    def feed(self, data: bytes | memoryview) -> bytes:
        out = self._d.decompress(data or self._d.unconsumed_tail, _OUT_CHUNK)
        self._full = len(out) == _OUT_CHUNK
        return out

    def has_output(self) -> bool:
        return not self._d.eof and (bool(self._d.unconsumed_tail) or self._full)

    def eof(self) -> bool:
        return self._d.eof

    def unused(self) -> bytes:
        return self._d.unused_data


class _BufferedDecoder:
    """xz, lzma, bzip2, lz4 frames: decompressors that take max_length and say when they need input."""

    in_chunk = 64 << 10

    def __init__(self, codec: str) -> None:
        self._d: Any
        if codec == "xz":
            self._d = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT)
        elif codec == "lzma":
            self._d = lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=_LZMA_MEMLIMIT)
        elif codec == "bzip2":
            self._d = bz2.BZ2Decompressor()
        else:
            self._d = lz4.frame.LZ4FrameDecompressor()

    def feed(self, data: bytes | memoryview) -> bytes:
        out: bytes = self._d.decompress(data, max_length=_OUT_CHUNK)
        return out

    def has_output(self) -> bool:
        return not self._d.eof and not self._d.needs_input

    def eof(self) -> bool:
        return bool(self._d.eof)

    def unused(self) -> bytes:
        return bytes(self._d.unused_data or b"")  # lz4.frame says None when the frame ends the input


class _ZstdDecoder:
    """zstd has no output cap per call, so it gets small input pieces: 2 KiB of RLE blocks expand to at most 64 MiB."""

    in_chunk = 2 << 10

    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes | memoryview) -> bytes:
        return self._d.decompress(data) if data else b""

    def has_output(self) -> bool:
        return False

    def eof(self) -> bool:
        return self._d.eof

    def unused(self) -> bytes:
        return self._d.unused_data


def _decoder(codec: str) -> _Decoder:
    if codec == "gzip":
        return _ZlibDecoder()
    if codec == "zstd":
        return _ZstdDecoder()
    if codec in ("xz", "lzma", "bzip2", "lz4"):
        return _BufferedDecoder(codec)
    raise StreamError(f"{codec}-compressed data is not supported")


class Inflate:
    """The decoded bytes of the compressed stream at ``start``, in bounded chunks.

    Back-to-back streams of the same codec (multi-member gzip, pzstd frames) are read as one,
    as the tools that write them intend, unless ``concatenated`` is False. Once iterated,
    ``stop`` is where the compressed data ended in the source: the kernel goes on from there
    with the next archive.
    """

    def __init__(self, src: Source, start: int, end: int, codec: str, *, concatenated: bool = True) -> None:
        self.src, self.start, self.end, self.codec = src, start, end, codec
        self.concatenated = concatenated
        self.stop = start

    def __iter__(self) -> Iterator[bytes]:
        if self.codec == "lz4-legacy":
            yield from self._lz4_legacy()
            return
        magic = MAGICS[self.codec]
        pos = self.start
        while True:
            dec = _decoder(self.codec)
            pending = memoryview(b"")
            stalls = 0
            while not dec.eof():
                data: bytes | memoryview = b""
                if not dec.has_output():
                    if not pending:
                        raw = self.src.read_at(pos, min(READ_CHUNK, self.end - pos))
                        if not raw:
                            raise StreamError(f"{self.codec} data at offset {self.start:#x} is truncated")
                        pos += len(raw)
                        pending = memoryview(raw)
                    data, pending = pending[: dec.in_chunk], pending[dec.in_chunk :]
                try:
                    out = dec.feed(data)
                except _DECODE_ERRORS as exc:
                    raise StreamError(f"corrupt {self.codec} data at offset {self.start:#x}: {exc}") from None
                if out:
                    stalls = 0
                    yield out
                elif not data:
                    stalls += 1
                    if stalls > 3:
                        raise StreamError(f"{self.codec} decoder made no progress at offset {self.start:#x}")
            pos -= len(dec.unused()) + len(pending)
            if not self.concatenated or pos >= self.end or self.src.read_at(pos, len(magic)) != magic:
                break
        self.stop = pos

    def _lz4_legacy(self) -> Iterator[bytes]:
        """The legacy lz4 format (``lz4 -l``: initramfs-tools, bzImages): sized blocks of at most 8 MiB.

        The format has no end marker: a size that no block can have ends the stream, and so
        do the last 4 bytes of the input, where a bzImage build puts the uncompressed size.
        """
        pos = self.start + 4
        while pos + 4 <= self.end:
            head = self.src.read_at(pos, 4)
            if head == MAGICS["lz4-legacy"]:
                pos += 4
                continue
            size = int.from_bytes(head, "little")
            if size == 0 or size > _LZ4_LEGACY_BOUND or pos + 4 == self.end:
                break  # not a block: the stream has ended and something else follows
            block = self.src.read_at(pos + 4, size)
            if len(block) < size:
                raise StreamError(f"lz4 data at offset {self.start:#x} is truncated")
            try:
                out: bytes = lz4.block.decompress(block, uncompressed_size=_LZ4_LEGACY_BLOCK)
            except _DECODE_ERRORS as exc:
                raise StreamError(f"corrupt lz4 data at offset {pos:#x}: {exc}") from None
            pos += 4 + size
            yield out
        self.stop = pos
