"""Code allowlists: which file pages may be executable in a guest, and which kernel modules may load.

The sentinel checks from outside the VM that every executable page a process maps from a
file equals the page at the same offset of a file on a signed allowlist, and that every
loaded module is on it. This module is the data model: lookups, the canonical JSON form
(sorted keys, no whitespace, so one allowlist always gives the same bytes, which is what
gets signed) and its strict loader, which refuses anything that is not exactly an allowlist
of this version. Building one from a root filesystem, an initramfs or .deb files is
:mod:`vmsentinel.trust.allowlist_build`; this module stays cheap to import for the detector::

    allowlist = load_allowlist("/etc/vmsentinel/allow.json")
    allowlist.page_allowed("/usr/bin/ls", 0x4000, page_hash(page))
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blake3 import blake3

from vmsentinel.errors import AllowlistError

PAGE_SIZE = 4096
KIND = "vmsentinel-allowlist"
FORMAT_VERSION = 1
FILE_KINDS = ("executable", "shared-library", "kernel-module")

# Limits. Each is far above what a real system needs and low enough that hostile input
# cannot exhaust memory or time.
MAX_FILE_BYTES = 1 << 30  # one file
MAX_NAME_BYTES = 4096  # a path, as PATH_MAX
MAX_FILES = 1 << 22  # entries in an allowlist
MAX_MODULES = 1 << 20
MAX_TOTAL_PAGES = 1 << 24  # 64 GiB of code
MAX_SOURCES = 4096
MAX_JSON_BYTES = 2 << 30

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: a module name as the kernel allows it (MODULE_NAME_LEN): printable, no '/'
MODULE_NAME = re.compile(r"[\x21-\x2e\x30-\x7e]{1,55}")


def page_hash(page: bytes) -> str:
    """BLAKE3 of one page, zero-padded to PAGE_SIZE: the detector hashes guest pages with this same function."""
    if len(page) > PAGE_SIZE:
        raise ValueError(f"a page is at most {PAGE_SIZE} bytes, got {len(page)}")
    if len(page) < PAGE_SIZE:
        page = bytes(page) + bytes(PAGE_SIZE - len(page))
    return blake3(page).hexdigest()


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
            _check(MODULE_NAME.fullmatch(name) is not None, f"bad module name {name!r}")
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


def guest_path(name: str) -> str | None:
    """An archive or tree name as an absolute, normalised guest path ("./usr/bin/x" -> "/usr/bin/x").

    Normalising from "/" means "../../etc/x" can only ever name "/etc/x": a name cannot
    climb out of the guest's root. None for names no guest path can have.
    """
    path = posixpath.normpath("/" + name.lstrip("/"))
    if path == "/" or "\0" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return None
    return path


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


def build_allowlist(sources: Sequence[str | Path], progress: Callable[[str], None] | None = None) -> Allowlist:
    """The allowlist of everything in ``sources``: see :func:`vmsentinel.trust.allowlist_build.build_allowlist`.

    Here so that callers keep one import; the builder (pyelftools, the codecs) loads only when used.
    """
    from vmsentinel.trust.allowlist_build import build_allowlist as build

    return build(sources, progress)
