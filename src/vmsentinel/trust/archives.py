"""Archive readers for allowlist sources: initramfs images (newc cpio), tar streams and .deb files.

Each reader walks its archive once, streamed, and hands every entry to an
:class:`ArchiveSink` that decides what to keep; nothing is ever written to disk, and names
become guest paths (so "../../x" can only name "/x"). Archives are hostile: every size and
count is checked before anything is buffered, decompression runs under a byte budget, and
corruption raises :class:`AllowlistError` saying where (the entry, the offset)::

    read_initramfs(FileSource(fd, size), sink)   # cpio archives, raw or compressed, back to back
    read_deb(FileSource(fd, size), sink)         # the data.tar[.codec] member of an ar archive
"""

from __future__ import annotations

import re
import stat
import tarfile
from collections.abc import Iterable
from typing import Protocol, TypeVar

from vmsentinel.errors import AllowlistError
from vmsentinel.trust.allowlist import MAX_FILE_BYTES, MAX_NAME_BYTES, guest_path
from vmsentinel.trust.compression import Inflate, codec_of
from vmsentinel.trust.streams import Budget, Source, Stream, StreamError, raw_chunks

MAX_UNPACKED_BYTES = 4 << 30  # bytes decoded from one archive source, all streams together
MAX_AR_MEMBERS = 64  # a .deb has three
MAX_PAX_BYTES = 1 << 20  # one pax extended header

AR_MAGIC = b"!<arch>\n"
CPIO_MAGICS = (b"070701", b"070702")
_CPIO_TRAILER = "TRAILER!!!"
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_DATA_TAR_CODECS = {"": None, ".gz": "gzip", ".xz": "xz", ".zst": "zstd", ".bz2": "bzip2", ".lzma": "lzma"}
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, b"X")

T = TypeVar("T")


class ArchiveSink(Protocol[T]):
    """What an archive reader reports, entry by entry; ``T`` is what the sink made of a file's data."""

    def entry(self) -> None:
        """Called once per entry, before anything else: raises to stop a source with too many."""

    def take(self, paths: list[str], size: int, stream: Stream) -> T | None:
        """A regular file of ``size`` bytes, next in ``stream``: read or skip exactly those bytes."""

    def record(self, paths: list[str], found: T | None) -> None:
        """More names for data taken earlier (cpio hard links)."""

    def forget(self, path: str) -> None:
        """A later entry replaced ``path`` with something that is no regular file."""

    def link(self, path: str, target: str | None) -> None:
        """A tar hard link: ``path`` names what ``target`` named."""


def _pad4(n: int) -> int:
    return -n % 4


def read_cpio(stream: Stream, sink: ArchiveSink[T]) -> None:
    """One newc archive, up to and including its TRAILER!!! entry.

    Hard links: entries with nlink >= 2 share (dev, ino); the data comes with one of them
    (GNU cpio puts it on the last), and the kernel gives every name that inode.
    """
    start = stream.tell()
    links: dict[tuple[int, int, int], tuple[list[str], T | None]] = {}
    current = "the first header"
    try:
        while True:
            sink.entry()
            at = stream.tell()
            header = stream.read(110)
            if header[:6] not in CPIO_MAGICS:
                raise AllowlistError(f"no newc cpio header at archive offset {at - start:#x} (after {current})")
            raw = [header[6 + 8 * i : 14 + 8 * i] for i in range(13)]
            if not all(_HEX8.fullmatch(f) for f in raw):
                raise AllowlistError(f"malformed cpio header at archive offset {at - start:#x} (after {current})")
            ino, mode, _uid, _gid, nlink, _mtime, size, major, minor, _rmajor, _rminor, namesize, _check = (
                int(f, 16) for f in raw
            )
            if not 0 < namesize <= MAX_NAME_BYTES + 1:
                raise AllowlistError(f"cpio entry after {current} has a name of {namesize} bytes")
            name_raw = stream.read(namesize)
            if name_raw[-1] != 0:
                raise AllowlistError(f"cpio entry name {name_raw[:80]!r} is not NUL-terminated")
            name = name_raw[: name_raw.index(0)].decode("utf-8", "surrogateescape")
            current = f"entry {name[:200]!r}"
            stream.skip(_pad4(stream.tell() - start))
            if name == _CPIO_TRAILER:
                stream.skip(size)
                stream.skip(_pad4(stream.tell() - start))
                return
            if size > MAX_FILE_BYTES:
                raise AllowlistError(f"cpio {current} claims {size} bytes, more than the limit of {MAX_FILE_BYTES}")
            path = guest_path(name)
            if path is None or not stat.S_ISREG(mode):
                if path is not None:
                    sink.forget(path)
                stream.skip(size)
            elif nlink >= 2:
                paths, found = links.get((major, minor, ino), ([], None))
                paths.append(path)
                if size:
                    found = sink.take(paths, size, stream)
                elif found is not None:
                    sink.record([path], found)
                else:
                    sink.forget(path)
                links[(major, minor, ino)] = (paths, found)
            elif size:
                sink.take([path], size, stream)
            else:
                sink.forget(path)
            stream.skip(_pad4(stream.tell() - start))
    except StreamError as exc:
        raise AllowlistError(f"cpio {current}: {exc}") from None


def read_initramfs(src: Source, sink: ArchiveSink[T]) -> None:
    """What the kernel unpacks: cpio archives, each raw or compressed, back to back with zero padding between."""
    budget = Budget(MAX_UNPACKED_BYTES)
    pos = archives = 0
    while pos < src.size:
        chunk = src.read_at(pos, 64 << 10)
        rest = chunk.lstrip(b"\0")
        pos += len(chunk) - len(rest)
        if not rest:
            if not chunk:
                break
            continue
        head = src.read_at(pos, 8)
        if head[:6] in CPIO_MAGICS:
            stream = Stream(raw_chunks(src, pos, src.size), budget)
            read_cpio(stream, sink)
            pos += stream.tell()
            archives += 1
            continue
        codec = codec_of(head)
        if codec is None:
            raise AllowlistError(
                f"unrecognised data at offset {pos:#x}: not a newc cpio archive, zero padding or known compression"
            )
        inflate = Inflate(src, pos, src.size, codec)
        stream = Stream(inflate, budget)
        try:
            while stream.skip_zeros():
                if stream.peek(6) not in CPIO_MAGICS:
                    raise AllowlistError(f"the {codec} data at offset {pos:#x} holds something other than a newc cpio archive")
                read_cpio(stream, sink)
                archives += 1
        except StreamError as exc:
            raise AllowlistError(f"{codec} data at offset {pos:#x}: {exc}") from None
        pos = inflate.stop
    if not archives:
        raise AllowlistError("no cpio archive in it")


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:  # each record moves pos forward: its length is at least 1
        space = data.find(b" ", pos, pos + 24)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise AllowlistError("malformed pax header")
        end = pos + int(digits)
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise AllowlistError("malformed pax record")
        key, value = record[:-1].split(b"=", 1)
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


def read_tar(stream: Stream, sink: ArchiveSink[T]) -> None:
    """A tar stream (ustar, GNU long names, pax), read with every size checked before anything is buffered."""
    long_names: dict[bytes, str] = {}
    pax: dict[str, str] = {}
    current = "the first header"
    try:
        while True:
            block = stream.peek(512)
            if not block or block == bytes(512):
                return  # end-of-archive blocks, or a tar that simply ends (GNU tar accepts that too)
            if len(block) < 512:
                raise AllowlistError(f"tar ends inside a header after {current}")
            stream.skip(512)
            sink.entry()
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except (tarfile.HeaderError, ValueError) as exc:
                raise AllowlistError(f"bad tar header after {current}: {exc}") from None
            size, kind = info.size, info.type
            if kind in _EXTENDED:
                limit = MAX_NAME_BYTES + 1 if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else MAX_PAX_BYTES
                if not 0 <= size <= limit:
                    raise AllowlistError(f"tar extended header after {current} claims {size} bytes")
                data = stream.read(size)
                stream.skip(-size % 512)
                if kind in (tarfile.XHDTYPE, b"X"):
                    pax = _pax_records(data)
                elif kind != tarfile.XGLTYPE:
                    long_names[kind] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                continue
            name = long_names.get(tarfile.GNUTYPE_LONGNAME) or pax.get("path") or info.name
            link = long_names.get(tarfile.GNUTYPE_LONGLINK) or pax.get("linkpath") or info.linkname
            if "size" in pax:
                if not pax["size"].isdigit() or len(pax["size"]) > 20:
                    raise AllowlistError(f"bad pax size for {name[:200]!r}")
                size = int(pax["size"])
            long_names, pax = {}, {}
            current = f"entry {name[:200]!r}"
            if not 0 <= size <= MAX_FILE_BYTES:
                raise AllowlistError(f"tar {current} claims {size} bytes, more than the limit of {MAX_FILE_BYTES}")
            path = guest_path(name)
            if path is not None and kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) and size:
                sink.take([path], size, stream)
            else:
                stream.skip(size)
                if path is not None and kind == tarfile.LNKTYPE:
                    sink.link(path, guest_path(link))
                elif path is not None:
                    sink.forget(path)
            stream.skip(-size % 512)
    except StreamError as exc:
        raise AllowlistError(f"tar {current}: {exc}") from None


def _ar_members(src: Source) -> list[tuple[str, int, int]]:
    """(name, offset, size) of each member of an ``ar`` archive, each checked to lie inside the file."""
    members: list[tuple[str, int, int]] = []
    pos = len(AR_MAGIC)
    while pos < src.size:
        header = src.read_at(pos, 60)
        if header.strip(b"\n") == b"":
            break  # trailing padding
        if len(header) < 60 or header[58:60] != b"`\n":
            raise AllowlistError(f"bad ar member header at offset {pos:#x}")
        if len(members) >= MAX_AR_MEMBERS:
            raise AllowlistError(f"more than {MAX_AR_MEMBERS} ar members")
        name = header[:16].rstrip(b" ").rstrip(b"/").decode("ascii", "replace")
        size_field = header[48:58].rstrip(b" ")
        if not size_field.isdigit():
            raise AllowlistError(f"ar member {name!r} has a malformed size {size_field!r}")
        size = int(size_field)
        if pos + 60 + size > src.size:
            raise AllowlistError(f"ar member {name!r} claims {size} bytes, past the end of the file")
        members.append((name, pos + 60, size))
        pos += 60 + size + (size & 1)
    return members


def read_deb(src: Source, sink: ArchiveSink[T]) -> None:
    """A Debian package: an ``ar`` archive whose data.tar[.codec] member holds the files."""
    data = [m for m in _ar_members(src) if m[0].startswith("data.tar")]
    if not data:
        raise AllowlistError("no data.tar member: not a Debian package")
    name, start, size = data[0]
    suffix = name[len("data.tar") :]
    if suffix not in _DATA_TAR_CODECS:
        raise AllowlistError(f"member {name!r}: unknown compression")
    codec = _DATA_TAR_CODECS[suffix]
    chunks: Iterable[bytes] = raw_chunks(src, start, start + size) if codec is None else Inflate(src, start, start + size, codec)
    try:
        read_tar(Stream(chunks, Budget(MAX_UNPACKED_BYTES)), sink)
    except AllowlistError as exc:
        raise AllowlistError(f"member {name!r}: {exc}") from None
