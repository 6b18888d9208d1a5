"""Code allowlists: which file pages may be executable in a guest, and which kernel modules may load.

The sentinel checks from outside the VM that every executable page a process maps from a
file equals the page at the same offset of a file on a signed allowlist, and that every
loaded module is on it. This module holds the data model and the builder. The builder reads
root filesystem trees, initramfs images (newc cpio, compressed, concatenated) and Debian
packages, and records for each ELF executable and shared library the BLAKE3 hash of every
page of its executable segments *as the page appears in memory*, and for each kernel module
its name and SHA-256.

All input is treated as hostile (a guest disk, an initramfs from someone's build): sizes,
counts and names are bounded, decompression is streamed against an output budget, and any
corruption becomes an :class:`AllowlistError` naming the source and the entry, never another
exception or a hang. A broken ELF inside an otherwise good archive is skipped and reported
through ``progress``, because one bad file must not stop a whole distribution from being
listed.

The JSON form is canonical (sorted keys, no whitespace), so one allowlist always gives the
same bytes, which is what gets signed.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import lz4.block
import lz4.frame
import zstandard
from blake3 import blake3
from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile

from vmsentinel.errors import AllowlistError

PAGE_SIZE = 4096
KIND = "vmsentinel-allowlist"
FORMAT_VERSION = 1
FILE_KINDS = ("executable", "shared-library", "kernel-module")

# Limits. Each is far above what a real system needs and low enough that hostile input
# cannot exhaust memory or time.
MAX_ENTRIES = 1 << 20  # entries in one archive (cpio or tar)
MAX_TREE_ENTRIES = 1 << 22  # entries in one directory tree (a full distribution has ~300k)
MAX_FILE_BYTES = 1 << 30  # one file
MAX_UNPACKED_BYTES = 4 << 30  # bytes decoded from one archive source, all streams together
MAX_NAME_BYTES = 4096  # a path, as PATH_MAX
MAX_AR_MEMBERS = 64  # a .deb has three
MAX_PAX_BYTES = 1 << 20  # one pax extended header
MAX_SECTIONS = 1 << 17  # section headers read from one module
MAX_FILES = 1 << 22  # entries in an allowlist
MAX_MODULES = 1 << 20
MAX_TOTAL_PAGES = 1 << 24  # 64 GiB of code
MAX_SOURCES = 4096
MAX_JSON_BYTES = 2 << 30

_READ_CHUNK = 1 << 20
_OUT_CHUNK = 1 << 20
_LZMA_MEMLIMIT = 256 << 20
_ELF_MAGIC = b"\x7fELF"
_PF_X = 1
_CPIO_MAGICS = (b"070701", b"070702")
_CPIO_TRAILER = b"TRAILER!!!"
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MODULE_NAME = re.compile(r"[\x21-\x2e\x30-\x7e]{1,55}")  # printable, no '/', as MODULE_NAME_LEN allows
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_LZ4_LEGACY_BLOCK = 8 << 20
_LZ4_LEGACY_BOUND = _LZ4_LEGACY_BLOCK + _LZ4_LEGACY_BLOCK // 255 + 16

# Compressed-stream magics, the ones the kernel's initramfs unpacker knows (lzo is recognised
# only to say it is not supported).
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x02\x21\x4c\x18", "lz4-legacy"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00", "lzma"),
    (b"\x89LZO", "lzo"),
)
_MAGIC_OF = {codec: magic for magic, codec in _MAGICS}
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


def page_hash(page: bytes) -> str:
    """BLAKE3 of one page, zero-padded to PAGE_SIZE: the detector hashes guest pages with this same function."""
    if len(page) > PAGE_SIZE:
        raise ValueError(f"a page is at most {PAGE_SIZE} bytes, got {len(page)}")
    if len(page) < PAGE_SIZE:
        page = bytes(page) + bytes(PAGE_SIZE - len(page))
    return blake3(page).hexdigest()


# --------------------------------------------------------------------------------------------
# The data model


@dataclass(frozen=True)
class AllowedFile:
    """One file whose code may run: its executable pages by file offset, as they appear when mapped."""

    path: str
    sha256: str
    kind: str
    pages: dict[int, str] = field(default_factory=dict)


def _now() -> str:
    """Creation time, honouring SOURCE_DATE_EPOCH so that builds can be reproduced byte for byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    seconds = int(epoch) if epoch.isdigit() else int(time.time())
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Allowlist:
    """Files (by guest path) whose executable pages are allowed, and kernel modules (by name) allowed to load."""

    files: dict[str, AllowedFile] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    created: str = field(default_factory=_now)

    def page_allowed(self, path: str, file_offset: int, digest: str) -> bool:
        """Whether the page at ``file_offset`` of the file mapped from ``path`` may have this page_hash."""
        if file_offset < 0 or file_offset % PAGE_SIZE:
            return False
        entry = self.files.get(path)
        return entry is not None and entry.pages.get(file_offset) == digest

    def knows(self, path: str) -> bool:
        """Whether ``path`` is on the allowlist at all (an unknown file is a different finding than a changed page)."""
        return path in self.files

    def summary(self) -> dict[str, int]:
        """Counts for people: entries by kind and pages."""
        kinds = [f.kind for f in self.files.values()]
        return {
            "files": len(self.files),
            "executables": kinds.count("executable"),
            "libraries": kinds.count("shared-library"),
            "module_files": kinds.count("kernel-module"),
            "modules": len(self.modules),
            "pages": sum(len(f.pages) for f in self.files.values()),
        }

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object: everything sorted, pages as [offset, hash] pairs by offset."""
        files: dict[str, Any] = {}
        for path, entry in sorted(self.files.items()):
            if entry.path != path:
                raise AllowlistError(f"allowlist entry {path!r} names another path, {entry.path!r}")
            files[path] = {
                "sha256": entry.sha256,
                "kind": entry.kind,
                "pages": [[offset, digest] for offset, digest in sorted(entry.pages.items())],
            }
        return {
            "kind": KIND,
            "version": FORMAT_VERSION,
            "created": self.created,
            "sources": list(self.sources),
            "files": files,
            "modules": dict(sorted(self.modules.items())),
        }

    @classmethod
    def from_json(cls, data: Any) -> Allowlist:
        """Strictly validated: a policy that is not exactly an allowlist of this version is refused."""
        _check(isinstance(data, dict), "an allowlist is a JSON object")
        _check(data.get("kind") == KIND, f'not an allowlist: "kind" is {data.get("kind")!r}, expected {KIND!r}')
        expected = {"kind", "version", "created", "sources", "files", "modules"}
        _check(not expected - data.keys(), f"missing fields: {', '.join(sorted(expected - data.keys()))}")
        _check(not data.keys() - expected, f"unknown fields: {', '.join(sorted(data.keys() - expected))}")
        version = data["version"]
        _check(_is_int(version) and version == FORMAT_VERSION, f"unsupported allowlist version {version!r}")
        created = data["created"]
        _check(isinstance(created, str) and len(created) <= 64, '"created" must be an ISO-8601 string')
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise AllowlistError(f'"created" is not an ISO-8601 time: {created!r}') from None
        sources = data["sources"]
        _check(isinstance(sources, list) and len(sources) <= MAX_SOURCES, '"sources" must be a list of strings')
        for source in sources:
            _check(isinstance(source, str) and len(source) <= MAX_NAME_BYTES * 2, f"bad source {source!r}")
        files_in = data["files"]
        _check(isinstance(files_in, dict), '"files" must be an object')
        _check(len(files_in) <= MAX_FILES, f"{len(files_in)} files is more than the limit of {MAX_FILES}")
        files: dict[str, AllowedFile] = {}
        total_pages = 0
        for path, entry in files_in.items():
            files[path] = _file_from_json(path, entry)
            total_pages += len(files[path].pages)
            _check(total_pages <= MAX_TOTAL_PAGES, f"more than {MAX_TOTAL_PAGES} pages")
        modules = data["modules"]
        _check(isinstance(modules, dict), '"modules" must be an object')
        _check(len(modules) <= MAX_MODULES, f"{len(modules)} modules is more than the limit of {MAX_MODULES}")
        for name, digest in modules.items():
            _check(_MODULE_NAME.fullmatch(name) is not None, f"bad module name {name!r}")
            _check(_is_sha(digest), f"module {name!r}: bad sha256 {digest!r}")
        return cls(files=files, modules=dict(modules), sources=list(sources), created=created)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AllowlistError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _valid_path(path: object) -> bool:
    """An absolute, normalised guest path of at most PATH_MAX bytes."""
    if not isinstance(path, str) or not path.startswith("/") or path == "/" or "\0" in path:
        return False
    try:
        size = len(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return False
    return size <= MAX_NAME_BYTES and posixpath.normpath(path) == path


def _file_from_json(path: str, entry: Any) -> AllowedFile:
    _check(_valid_path(path), f"bad path {path[:200]!r}")
    _check(isinstance(entry, dict) and set(entry) == {"sha256", "kind", "pages"}, f"{path}: needs exactly sha256, kind, pages")
    _check(_is_sha(entry["sha256"]), f"{path}: bad sha256 {entry['sha256']!r}")
    _check(entry["kind"] in FILE_KINDS, f"{path}: unknown kind {entry['kind']!r}")
    pages_in = entry["pages"]
    _check(isinstance(pages_in, list), f"{path}: pages must be a list")
    _check(len(pages_in) <= MAX_FILE_BYTES // PAGE_SIZE, f"{path}: {len(pages_in)} pages is more than a file can have")
    _check(entry["kind"] != "kernel-module" or not pages_in, f"{path}: a kernel module has no mapped pages")
    pages: dict[int, str] = {}
    for pair in pages_in:
        _check(isinstance(pair, list) and len(pair) == 2, f"{path}: a page is an [offset, hash] pair, got {pair!r}")
        offset, digest = pair
        _check(_is_int(offset) and 0 <= offset < MAX_FILE_BYTES, f"{path}: bad page offset {offset!r}")
        _check(offset % PAGE_SIZE == 0, f"{path}: page offset {offset:#x} is not page-aligned")
        _check(_is_sha(digest), f"{path}: bad page hash {digest!r}")
        _check(offset not in pages, f"{path}: page {offset:#x} listed twice")
        pages[offset] = digest
    return AllowedFile(path=path, sha256=entry["sha256"], kind=entry["kind"], pages=pages)


def allowlist_bytes(allowlist: Allowlist) -> bytes:
    """The canonical serialisation (what is saved and what gets signed)."""
    text = json.dumps(allowlist.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return (text + "\n").encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys would let two readers of one signed file disagree; refuse them."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise AllowlistError(f"duplicate key {key[:200]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise AllowlistError(f"{name} is not valid JSON")


def loads_allowlist(data: bytes, source: str = "allowlist") -> Allowlist:
    """Parses serialised bytes (for a caller that has verified a signature over exactly these bytes)."""
    if len(data) > MAX_JSON_BYTES:
        raise AllowlistError(f"{source}: {len(data)} bytes is more than the limit of {MAX_JSON_BYTES}")
    try:
        parsed = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        return Allowlist.from_json(parsed)
    except AllowlistError as exc:
        raise AllowlistError(f"{source}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AllowlistError(f"{source}: not a valid allowlist JSON file: {exc}") from None


def save_allowlist(allowlist: Allowlist, path: str | Path) -> None:
    """Writes the canonical bytes atomically, so a reader never sees half a policy."""
    target = Path(path)
    data = allowlist_bytes(allowlist)
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
        os.chmod(tmp_name, 0o644)  # a policy, not a secret (NamedTemporaryFile makes 0600)
        os.replace(tmp_name, target)
    except OSError as exc:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        raise AllowlistError(f"cannot write {target}: {exc.strerror or exc}") from None


def load_allowlist(path: str | Path) -> Allowlist:
    """Reads and strictly validates an allowlist file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON_BYTES:
                raise AllowlistError(f"{path}: {size} bytes is more than the limit of {MAX_JSON_BYTES}")
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise AllowlistError(f"cannot read {path}: {exc.strerror or exc}") from None
    return loads_allowlist(data, str(path))


# --------------------------------------------------------------------------------------------
# Byte plumbing: bounded random access, streamed decompression, exact reads


class _Corrupt(Exception):
    """The input is not what it claims to be; becomes an AllowlistError naming the source."""


class _StreamError(_Corrupt):
    """A read ran off the end, a compressed stream is corrupt, or the budget ran out (context added by the parser)."""


class _BadElf(Exception):
    """One file is an unusable ELF: skipped and reported, the rest of the source still counts."""


class _Source(Protocol):
    size: int

    def read_at(self, pos: int, n: int) -> bytes: ...


class _FileSource:
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
                break
            parts.append(part)
            pos += len(part)
            n -= len(part)
        return b"".join(parts)


class _BufferSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read_at(self, pos: int, n: int) -> bytes:
        return self.data[pos : pos + max(n, 0)]


def _raw_chunks(src: _Source, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        chunk = src.read_at(pos, min(_READ_CHUNK, end - pos))
        if not chunk:
            return
        pos += len(chunk)
        yield chunk


def _codec_of(head: bytes) -> str | None:
    for magic, codec in _MAGICS:
        if head.startswith(magic):
            return codec
    return None


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
        return bytes(self._d.unused_data)


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
    raise _Corrupt(f"{codec}-compressed data is not supported")


class _Inflate:
    """The decoded bytes of the compressed stream at ``start``, in bounded chunks.

    Back-to-back streams of the same codec (multi-member gzip, pzstd frames) are read as one,
    as the tools that write them intend. Once iterated, ``stop`` is where the compressed data
    ended in the source: the kernel goes on from there with the next archive.
    """

    def __init__(self, src: _Source, start: int, end: int, codec: str) -> None:
        self.src, self.start, self.end, self.codec = src, start, end, codec
        self.stop = start

    def __iter__(self) -> Iterator[bytes]:
        if self.codec == "lz4-legacy":
            yield from self._lz4_legacy()
            return
        magic = _MAGIC_OF[self.codec]
        pos = self.start
        while True:
            dec = _decoder(self.codec)
            pending = memoryview(b"")
            stalls = 0
            while not dec.eof():
                data: bytes | memoryview = b""
                if not dec.has_output():
                    if not pending:
                        raw = self.src.read_at(pos, min(_READ_CHUNK, self.end - pos))
                        if not raw:
                            raise _StreamError(f"{self.codec} data at offset {self.start:#x} is truncated")
                        pos += len(raw)
                        pending = memoryview(raw)
                    data, pending = pending[: dec.in_chunk], pending[dec.in_chunk :]
                try:
                    out = dec.feed(data)
                except _DECODE_ERRORS as exc:
                    raise _StreamError(f"corrupt {self.codec} data at offset {self.start:#x}: {exc}") from None
                if out:
                    stalls = 0
                    yield out
                elif not data:
                    stalls += 1
                    if stalls > 3:
                        raise _StreamError(f"{self.codec} decoder made no progress at offset {self.start:#x}")
            pos -= len(dec.unused()) + len(pending)
            if pos >= self.end or self.src.read_at(pos, len(magic)) != magic:
                break
        self.stop = pos

    def _lz4_legacy(self) -> Iterator[bytes]:
        """The legacy lz4 format (``lz4 -l``, what initramfs-tools writes): sized blocks of at most 8 MiB."""
        pos = self.start + 4
        while pos + 4 <= self.end:
            head = self.src.read_at(pos, 4)
            if head == _MAGIC_OF["lz4-legacy"]:
                pos += 4
                continue
            size = int.from_bytes(head, "little")
            if size == 0 or size > _LZ4_LEGACY_BOUND:
                break  # not a block: the stream has ended and something else follows
            block = self.src.read_at(pos + 4, size)
            if len(block) < size:
                raise _StreamError(f"lz4 data at offset {self.start:#x} is truncated")
            try:
                out: bytes = lz4.block.decompress(block, uncompressed_size=_LZ4_LEGACY_BLOCK)
            except _DECODE_ERRORS as exc:
                raise _StreamError(f"corrupt lz4 data at offset {pos:#x}: {exc}") from None
            pos += 4 + size
            yield out
        self.stop = pos


class _Budget:
    """Bytes one source may still produce: the defence against decompression bombs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _StreamError(f"more than {self.limit} bytes of unpacked data (a decompression bomb?)")


class _Stream:
    """Exact reads over a chunk iterator, with a position and a byte budget."""

    def __init__(self, chunks: Iterable[bytes], budget: _Budget) -> None:
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
                raise _StreamError(f"unexpected end of data ({n} bytes wanted, {len(self._buf)} left)")
        with memoryview(self._buf) as view:
            out = bytes(view[:n])  # one copy, even of a 1 GiB file
        del self._buf[:n]  # O(1) from the front of a bytearray
        self._pos += n
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._buf and not self._more():
                raise _StreamError(f"unexpected end of data ({n} bytes short)")
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


# --------------------------------------------------------------------------------------------
# What a file is: ELF analysis


@dataclass
class _Found:
    """What one file's bytes turned out to be, whatever its path (hard links share it)."""

    sha256: str
    kind: str
    pages: dict[int, str]
    module: str | None = None
    module_sha256: str | None = None


def _guest_path(name: str) -> str | None:
    """An archive or tree name as an absolute, normalised guest path ("./usr/bin/x" -> "/usr/bin/x")."""
    path = posixpath.normpath("/" + name.lstrip("/"))
    if path == "/" or "\0" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return None
    return path


def _module_stem(path: str) -> str | None:
    """The module name a file name gives ("fake-mod.ko.xz" -> "fake_mod"), or None if it is no module file."""
    base = posixpath.basename(path)
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)].replace("-", "_")
    return None


def _decompress_module(data: bytes, codec: str) -> bytes:
    """A compressed module as the kernel decompresses it (gzip, xz or zstd), bounded to MAX_FILE_BYTES."""
    if codec not in ("gzip", "xz", "zstd"):
        raise _BadElf(f"module compressed with {codec}, which the kernel does not load")
    src = _BufferSource(data)
    stream = _Stream(_Inflate(src, 0, len(data), codec), _Budget(MAX_FILE_BYTES))
    try:
        return stream.peek(MAX_FILE_BYTES + 1)
    except _Corrupt as exc:
        raise _BadElf(str(exc)) from None


def _examine(path: str, data: bytes) -> _Found | None:
    """Executable, shared library, kernel module, or None for anything else."""
    stem = _module_stem(path)
    elf = data
    if stem is not None and not data.startswith(_ELF_MAGIC):
        codec = _codec_of(data[:8])
        if codec is None:
            return None
        elf = _decompress_module(data, codec)
    if not elf.startswith(_ELF_MAGIC):
        return None
    try:
        return _examine_elf(path, data, elf, stem)
    except _BadElf:
        raise
    except Exception as exc:  # pyelftools on hostile bytes raises many kinds of errors: all mean "unusable"
        raise _BadElf(f"unreadable ELF ({type(exc).__name__}: {exc})") from None


def _examine_elf(path: str, data: bytes, elf_bytes: bytes, stem: str | None) -> _Found | None:
    sha = hashlib.sha256(data).hexdigest()
    elf = ELFFile(io.BytesIO(elf_bytes))
    etype = elf["e_type"]
    if etype == "ET_REL":
        if stem is None:
            return None  # an object file, not a module
        name = _modinfo_name(elf, elf_bytes) or stem
        if _MODULE_NAME.fullmatch(name) is None:
            raise _BadElf(f"module name {name[:80]!r} is not one the kernel would use")
        return _Found(sha, "kernel-module", {}, name, hashlib.sha256(elf_bytes).hexdigest())
    if etype not in ("ET_EXEC", "ET_DYN") or elf_bytes is not data:
        return None
    phdrs = _program_headers(elf, len(data))
    if not any(ph["p_type"] == "PT_LOAD" and ph["p_flags"] & _PF_X for ph in phdrs):
        return None
    has_interp = any(ph["p_type"] == "PT_INTERP" for ph in phdrs)
    kind = "executable" if etype == "ET_EXEC" or has_interp else "shared-library"
    return _Found(sha, kind, _exec_pages(data, phdrs, kind))


def _program_headers(elf: ELFFile, size: int) -> list[Any]:
    count = elf.num_segments()
    if not count:
        return []
    entsize, offset = elf["e_phentsize"], elf["e_phoff"]
    if entsize != elf.structs.Elf_Phdr.sizeof() or offset + count * entsize > size:
        raise _BadElf("program headers out of bounds")
    return [struct_parse(elf.structs.Elf_Phdr, elf.stream, stream_pos=offset + i * entsize) for i in range(count)]


def _exec_pages(data: bytes, phdrs: list[Any], kind: str) -> dict[int, str]:
    """page_hash of every page of every executable PT_LOAD segment, as mapped.

    A mapping shows the whole file page, so bytes of neighbouring segments are in it and bytes
    past the end of the file are zeros. Only when an executable segment has bss (p_memsz >
    p_filesz) does the loader zero the rest of its last page: the kernel to the end of the page
    (executables), ld.so up to p_memsz (libraries).
    """
    pages: dict[int, str] = {}
    budget = len(data) // PAGE_SIZE + 1
    for ph in phdrs:
        if ph["p_type"] != "PT_LOAD" or not ph["p_flags"] & _PF_X or ph["p_filesz"] == 0:
            continue
        start, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
        end = start + filesz
        if end > len(data):
            raise _BadElf(f"executable segment at {start:#x}+{filesz:#x} runs past the end of the file")
        if (ph["p_vaddr"] - start) % PAGE_SIZE:
            raise _BadElf(f"segment at offset {start:#x} is not page-congruent with its address; it cannot be mapped")
        first = start - start % PAGE_SIZE
        budget -= (end - first + PAGE_SIZE - 1) // PAGE_SIZE - 1
        if budget < 0:
            raise _BadElf("executable segments overlap far more than a loader would allow")
        zero_to = 0
        if memsz > filesz:
            page_end = end + (-end % PAGE_SIZE)
            zero_to = page_end if kind == "executable" else min(page_end, start + memsz)
        for offset in range(first, end, PAGE_SIZE):
            page = data[offset : offset + PAGE_SIZE]
            if zero_to > end and offset < end <= offset + PAGE_SIZE:
                keep, zeros = end - offset, zero_to - end
                page = page[:keep] + bytes(zeros) + page[keep + zeros :]
            pages.setdefault(offset, page_hash(page))
    return pages


def _modinfo_name(elf: ELFFile, data: bytes) -> str | None:
    """The ``name=`` string in a module's .modinfo: the name the kernel gives the module."""
    count = elf.num_sections()
    if not count:
        return None
    shdr = elf.structs.Elf_Shdr
    entsize, offset = elf["e_shentsize"], elf["e_shoff"]
    if entsize != shdr.sizeof() or count > MAX_SECTIONS or offset + count * entsize > len(data):
        raise _BadElf("section headers out of bounds")
    headers = [struct_parse(shdr, elf.stream, stream_pos=offset + i * entsize) for i in range(count)]
    strndx = elf.get_shstrndx()
    if not 0 < strndx < count:
        return None
    names = headers[strndx]
    strtab = data[names["sh_offset"] : names["sh_offset"] + names["sh_size"]]
    for header in headers:
        at = header["sh_name"]
        if strtab[at : at + 9] != b".modinfo\0" or header["sh_type"] == "SHT_NOBITS":
            continue
        blob = data[header["sh_offset"] : header["sh_offset"] + header["sh_size"]]
        for item in blob.split(b"\0"):
            if item.startswith(b"name="):
                return item[5:].decode("utf-8", "replace").replace("-", "_")
    return None


# --------------------------------------------------------------------------------------------
# Collecting one source


class _Collector:
    """The files and modules of one source, with counts and notes for ``progress``."""

    def __init__(self, label: str, say: Callable[[str], None], max_entries: int) -> None:
        self.label = label
        self.say = say
        self.max_entries = max_entries
        self.files: dict[str, AllowedFile] = {}
        self.modules: dict[str, str] = {}
        self.entries = self.regular = self.elf = self.skipped = 0

    def note(self, message: str) -> None:
        self.say(f"{self.label}: {message}")

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise _Corrupt(f"more than {self.max_entries} entries")

    def forget(self, path: str) -> None:
        """A later entry replaced this path with something that is not code."""
        self.files.pop(path, None)

    def take(self, paths: list[str], size: int, stream: _Stream) -> _Found | None:
        """Reads one regular file's data from ``stream`` (or skips it if it is no ELF) and records it under ``paths``."""
        self.regular += 1
        if size > MAX_FILE_BYTES:
            raise _Corrupt(f"entry {paths[0]!r} claims {size} bytes, more than the limit of {MAX_FILE_BYTES}")
        if not self.wants(paths, stream.peek(min(size, 8))):
            stream.skip(size)
            for path in paths:
                self.forget(path)
            return None
        data = stream.read(size)
        found = self.examine(paths[0], data)
        self.record(paths, found)
        return found

    @staticmethod
    def wants(paths: list[str], head: bytes) -> bool:
        """From a file's first 8 bytes: ELF, or a compressed file named like a module. Anything else is not code."""
        if head.startswith(_ELF_MAGIC):
            return True
        return _codec_of(head) is not None and any(_module_stem(p) is not None for p in paths)

    def examine(self, path: str, data: bytes) -> _Found | None:
        try:
            found = _examine(path, data)
        except _BadElf as exc:
            self.elf += 1  # skipped ones count: "ELF" is everything that looked like code
            self.skipped += 1
            self.note(f"skipped {path}: {exc}")
            return None
        if found is not None or data.startswith(_ELF_MAGIC):
            self.elf += 1
        return found

    def record(self, paths: list[str], found: _Found | None) -> None:
        for path in paths:
            if found is None:
                self.forget(path)
                continue
            self.files[path] = AllowedFile(path, found.sha256, found.kind, dict(found.pages))
            if found.module is not None and found.module_sha256 is not None:
                self.modules[found.module] = found.module_sha256

    def link(self, path: str, target: str | None) -> None:
        """A hard link in a tar: the same code under another name."""
        entry = self.files.get(target) if target else None
        if entry is None:
            self.forget(path)
        else:
            self.files[path] = replace(entry, path=path, pages=dict(entry.pages))

    def summary(self) -> str:
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"{self.label}: {self.regular} files, {self.elf} ELF{skipped}"


def _pad4(n: int) -> int:
    return -n % 4


def _read_cpio(stream: _Stream, col: _Collector) -> None:
    """One newc archive, up to and including its TRAILER!!! entry.

    Hard links: entries with nlink >= 2 share (dev, ino); the data comes with one of them
    (GNU cpio puts it on the last), and the kernel gives every name that inode.
    """
    start = stream.tell()
    links: dict[tuple[int, int, int], tuple[list[str], _Found | None]] = {}
    current = "the first header"
    try:
        while True:
            col.entry()
            at = stream.tell()
            header = stream.read(110)
            if header[:6] not in _CPIO_MAGICS:
                raise _Corrupt(f"no newc cpio header at archive offset {at - start:#x} (after {current})")
            raw = [header[6 + 8 * i : 14 + 8 * i] for i in range(13)]
            if not all(_HEX8.fullmatch(f) for f in raw):
                raise _Corrupt(f"malformed cpio header at archive offset {at - start:#x} (after {current})")
            ino, mode, _uid, _gid, nlink, _mtime, size, major, minor, _rmajor, _rminor, namesize, _check = (
                int(f, 16) for f in raw
            )
            if not 0 < namesize <= MAX_NAME_BYTES + 1:
                raise _Corrupt(f"cpio entry after {current} has a name of {namesize} bytes")
            name_raw = stream.read(namesize)
            if name_raw[-1] != 0:
                raise _Corrupt(f"cpio entry name {name_raw[:80]!r} is not NUL-terminated")
            name = name_raw[: name_raw.index(0)].decode("utf-8", "surrogateescape")
            current = f"entry {name[:200]!r}"
            stream.skip(_pad4(stream.tell() - start))
            if name == _CPIO_TRAILER.decode():
                stream.skip(size)
                stream.skip(_pad4(stream.tell() - start))
                return
            if size > MAX_FILE_BYTES:
                raise _Corrupt(f"cpio {current} claims {size} bytes, more than the limit of {MAX_FILE_BYTES}")
            path = _guest_path(name)
            if path is None or not stat.S_ISREG(mode):
                if path is not None:
                    col.forget(path)
                stream.skip(size)
            elif nlink >= 2:
                paths, found = links.get((major, minor, ino), ([], None))
                paths.append(path)
                if size:
                    found = col.take(paths, size, stream)
                elif found is not None:
                    col.record([path], found)
                else:
                    col.forget(path)
                links[(major, minor, ino)] = (paths, found)
            elif size:
                col.take([path], size, stream)
            else:
                col.forget(path)
            stream.skip(_pad4(stream.tell() - start))
    except _StreamError as exc:
        raise _Corrupt(f"cpio {current}: {exc}") from None


def _read_initramfs(src: _Source, col: _Collector) -> None:
    """What the kernel unpacks: cpio archives, each raw or compressed, back to back with zero padding between."""
    budget = _Budget(MAX_UNPACKED_BYTES)
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
        if head[:6] in _CPIO_MAGICS:
            stream = _Stream(_raw_chunks(src, pos, src.size), budget)
            _read_cpio(stream, col)
            pos += stream.tell()
            archives += 1
            continue
        codec = _codec_of(head)
        if codec is None:
            raise _Corrupt(f"unrecognised data at offset {pos:#x}: not a newc cpio archive, zero padding or known compression")
        inflate = _Inflate(src, pos, src.size, codec)
        stream = _Stream(inflate, budget)
        try:
            while stream.skip_zeros():
                if stream.peek(6) not in _CPIO_MAGICS:
                    raise _Corrupt(f"the {codec} data at offset {pos:#x} holds something other than a newc cpio archive")
                _read_cpio(stream, col)
                archives += 1
        except _StreamError as exc:
            raise _Corrupt(f"{codec} data at offset {pos:#x}: {exc}") from None
        pos = inflate.stop
    if not archives:
        raise _Corrupt("no cpio archive in it")


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _Corrupt("malformed pax header")
        end = pos + int(digits)
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise _Corrupt("malformed pax record")
        key, value = record[:-1].split(b"=", 1)
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


def _read_tar(stream: _Stream, col: _Collector) -> None:
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
                raise _Corrupt(f"tar ends inside a header after {current}")
            stream.skip(512)
            col.entry()
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except (tarfile.HeaderError, ValueError) as exc:
                raise _Corrupt(f"bad tar header after {current}: {exc}") from None
            size, kind = info.size, info.type
            if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, b"X"):
                limit = MAX_NAME_BYTES + 1 if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else MAX_PAX_BYTES
                if not 0 <= size <= limit:
                    raise _Corrupt(f"tar extended header after {current} claims {size} bytes")
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
                    raise _Corrupt(f"bad pax size for {name[:200]!r}")
                size = int(pax["size"])
            long_names, pax = {}, {}
            current = f"entry {name[:200]!r}"
            if not 0 <= size <= MAX_FILE_BYTES:
                raise _Corrupt(f"tar {current} claims {size} bytes, more than the limit of {MAX_FILE_BYTES}")
            path = _guest_path(name)
            if path is not None and kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) and size:
                col.take([path], size, stream)
            else:
                stream.skip(size)
                if path is not None and kind == tarfile.LNKTYPE:
                    col.link(path, _guest_path(link))
                elif path is not None:
                    col.forget(path)
            stream.skip(-size % 512)
    except _StreamError as exc:
        raise _Corrupt(f"tar {current}: {exc}") from None


_DATA_TAR_CODECS = {"": None, ".gz": "gzip", ".xz": "xz", ".zst": "zstd", ".bz2": "bzip2", ".lzma": "lzma"}


def _read_deb(src: _Source, col: _Collector) -> None:
    """A Debian package: an ``ar`` archive whose data.tar[.codec] member holds the files."""
    members: list[tuple[str, int, int]] = []
    pos = 8
    while pos < src.size:
        header = src.read_at(pos, 60)
        if header.strip(b"\n") == b"":
            break  # trailing padding
        if len(header) < 60 or header[58:60] != b"`\n":
            raise _Corrupt(f"bad ar member header at offset {pos:#x}")
        if len(members) >= MAX_AR_MEMBERS:
            raise _Corrupt(f"more than {MAX_AR_MEMBERS} ar members")
        name = header[:16].rstrip(b" ").rstrip(b"/").decode("ascii", "replace")
        size_field = header[48:58].rstrip(b" ")
        if not size_field.isdigit():
            raise _Corrupt(f"ar member {name!r} has a malformed size {size_field!r}")
        size = int(size_field)
        if pos + 60 + size > src.size:
            raise _Corrupt(f"ar member {name!r} claims {size} bytes, past the end of the file")
        members.append((name, pos + 60, size))
        pos += 60 + size + (size & 1)
    data = [m for m in members if m[0].startswith("data.tar")]
    if not data:
        raise _Corrupt("no data.tar member: not a Debian package")
    name, start, size = data[0]
    suffix = name[len("data.tar") :]
    if suffix not in _DATA_TAR_CODECS:
        raise _Corrupt(f"member {name!r}: unknown compression")
    codec = _DATA_TAR_CODECS[suffix]
    chunks: Iterable[bytes] = (
        _raw_chunks(src, start, start + size) if codec is None else _Inflate(src, start, start + size, codec)
    )
    try:
        _read_tar(_Stream(chunks, _Budget(MAX_UNPACKED_BYTES)), col)
    except _Corrupt as exc:
        raise _Corrupt(f"member {name!r}: {exc}") from None


def _read_tree(root: Path, col: _Collector) -> None:
    """A root filesystem: every regular file, symlinks never followed, paths relative to ``root``.

    Mounted /proc, /sys and /dev (a live root given by mistake) are not descended into.
    """
    root_dev = os.stat(root).st_dev

    def unreadable(exc: OSError) -> None:
        col.note(f"cannot list {exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if not (d in ("proc", "sys", "dev") and os.lstat(root / d).st_dev != root_dev)]
        for _ in dirnames:
            col.entry()
        for name in filenames:
            col.entry()
            full = os.path.join(dirpath, name)
            path = _guest_path(os.path.relpath(full, root))
            if path is None:
                continue
            try:
                _read_tree_file(full, path, col)
            except (OSError, _Corrupt) as exc:
                col.skipped += 1
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                col.note(f"skipped {path}: {reason}")


def _read_tree_file(full: str, path: str, col: _Collector) -> None:
    if not stat.S_ISREG(os.lstat(full).st_mode):
        return
    # O_NOFOLLOW and O_NONBLOCK: a file swapped for a symlink or a FIFO after lstat cannot redirect or block us
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        src = _FileSource(fd, st.st_size)
        head = src.read_at(0, 8)
        if not col.wants([path], head):
            col.regular += 1  # most of a root filesystem: read 8 bytes, not the whole file
            return
        if st.st_size > MAX_FILE_BYTES:
            col.regular += 1
            col.skipped += 1
            col.note(f"skipped {path}: {st.st_size} bytes is more than the limit of {MAX_FILE_BYTES}")
            return
        col.take([path], st.st_size, _Stream(_raw_chunks(src, 0, st.st_size), _Budget(MAX_FILE_BYTES)))
    finally:
        os.close(fd)


def _read_source(source: Path, say: Callable[[str], None]) -> tuple[str, _Collector]:
    """One source, its kind found from what it is and holds: (kind, collected)."""
    label = source.name or str(source)
    try:
        st = os.stat(source)
    except OSError as exc:
        raise AllowlistError(f"{source}: {exc.strerror or exc}") from None
    try:
        if stat.S_ISDIR(st.st_mode):
            col = _Collector(label, say, MAX_TREE_ENTRIES)
            _read_tree(source, col)
            kind = "rootfs"
        elif stat.S_ISREG(st.st_mode):
            col = _Collector(label, say, MAX_ENTRIES)
            with open(source, "rb") as f:
                src = _FileSource(f.fileno(), os.fstat(f.fileno()).st_size)
                head = src.read_at(0, 8)
                if not head:
                    raise _Corrupt("empty file")
                if head == b"!<arch>\n":
                    kind = "deb"
                    _read_deb(src, col)
                elif head[0] == 0 or head[:6] in _CPIO_MAGICS or _codec_of(head):
                    kind = "initramfs"
                    _read_initramfs(src, col)
                else:
                    raise _Corrupt("neither a directory, an initramfs (newc cpio, maybe compressed) nor a Debian package")
        else:
            raise _Corrupt("neither a directory nor a regular file")
    except _Corrupt as exc:
        raise AllowlistError(f"{source}: {exc}") from None
    except OSError as exc:
        raise AllowlistError(f"{source}: {exc.strerror or exc}") from None
    say(col.summary())
    return kind, col


def build_allowlist(sources: Sequence[str | Path], progress: Callable[[str], None] | None = None) -> Allowlist:
    """The allowlist of everything in ``sources`` (directories, initramfs images, .deb files), merged.

    Where two sources have the same path, the later one wins and the difference is reported:
    the allowlist holds one file per path.
    """
    say = progress or (lambda _message: None)
    if not sources:
        raise AllowlistError("no sources given")
    if len(sources) > MAX_SOURCES:
        raise AllowlistError(f"more than {MAX_SOURCES} sources")
    files: dict[str, AllowedFile] = {}
    modules: dict[str, str] = {}
    names: list[str] = []
    for source in sources:
        kind, col = _read_source(Path(source), say)
        names.append(f"{kind}:{source}")
        for path, entry in col.files.items():
            old = files.get(path)
            if old is not None and old.sha256 != entry.sha256:
                say(f"{col.label}: {path} differs from an earlier source; keeping this one")
            files[path] = entry
        for name, digest in col.modules.items():
            if modules.get(name, digest) != digest:
                say(f"{col.label}: module {name} differs from an earlier source; keeping this one")
            modules[name] = digest
    if len(files) > MAX_FILES or len(modules) > MAX_MODULES:
        raise AllowlistError(f"{len(files)} files and {len(modules)} modules is over the limits")
    return Allowlist(files=dict(sorted(files.items())), modules=dict(sorted(modules.items())), sources=names)
