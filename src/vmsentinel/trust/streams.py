"""Bounded reading of hostile bytes: sources read by position, a byte budget, exact reads.

Every reader of guest or downloaded data in ``vmsentinel.trust`` goes through these, so a
length field that lies becomes a :class:`StreamError` saying how much was wanted and how
much was left, never a short read, and a stream that unpacks to more than its budget stops::

    stream = Stream(raw_chunks(BufferSource(data), 0, len(data)), Budget(1 << 20))
    header = stream.read(110)   # exactly 110 bytes, or StreamError
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Protocol

READ_CHUNK = 1 << 20


class StreamError(Exception):
    """A read ran off the end, a compressed stream is corrupt, or the budget ran out.

    Internal to ``vmsentinel.trust``: the reader that knows the file and the entry turns it
    into an error from :mod:`vmsentinel.errors` with that context (``compression.decompress``
    does it for callers outside this package).
    """


class Source(Protocol):
    """Bytes by position, so that a reader never holds more than it asks for."""

    size: int

    def read_at(self, pos: int, n: int) -> bytes: ...


class FileSource:
    """A file read with pread, so that memory stays bounded whatever its size."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read_at(self, pos: int, n: int) -> bytes:
        n = min(n, self.size - pos)
        parts: list[bytes] = []
        while n > 0:
            part = os.pread(self.fd, n, pos)
            if not part:
                break  # the file shrank under us: the reader sees a short read and says so
            parts.append(part)
            pos += len(part)
            n -= len(part)
        return b"".join(parts)


class BufferSource:
    """Bytes already in memory, behind the same interface as a file."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read_at(self, pos: int, n: int) -> bytes:
        return self.data[pos : pos + max(n, 0)]


def raw_chunks(src: Source, start: int, end: int) -> Iterator[bytes]:
    """The bytes of ``src`` from ``start`` to ``end`` in pieces of at most READ_CHUNK."""
    pos = start
    while pos < end:
        chunk = src.read_at(pos, min(READ_CHUNK, end - pos))
        if not chunk:
            return
        pos += len(chunk)
        yield chunk


class Budget:
    """Bytes one source may still produce: the defence against decompression bombs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise StreamError(f"more than {self.limit} bytes of unpacked data (a decompression bomb?)")


class Stream:
    """Exact reads over a chunk iterator, with a position and a byte budget."""

    def __init__(self, chunks: Iterable[bytes], budget: Budget) -> None:
        self._it = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self._budget = budget

    def tell(self) -> int:
        return self._pos

    def _more(self) -> bool:
        chunk = next(self._it, None)
        if chunk is None:
            return False
        self._budget.take(len(chunk))
        self._buf += chunk
        return True

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._more():
                raise StreamError(f"unexpected end of data ({n} bytes wanted, {len(self._buf)} left)")
        with memoryview(self._buf) as view:
            out = bytes(view[:n])  # one copy, even of a 1 GiB file
        del self._buf[:n]  # O(1) from the front of a bytearray
        self._pos += n
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._buf and not self._more():
                raise StreamError(f"unexpected end of data ({n} bytes short)")
            k = min(n, len(self._buf))
            del self._buf[:k]
            self._pos += k
            n -= k

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n and self._more():
            pass
        return bytes(self._buf[:n])

    def skip_zeros(self) -> bool:
        """Skips zero padding; True if more data follows."""
        while True:
            rest = self._buf.lstrip(b"\0")
            self._pos += len(self._buf) - len(rest)
            self._buf = bytearray(rest)
            if self._buf:
                return True
            if not self._more():
                return False
