"""Building an allowlist from what a guest boots: root filesystem trees, initramfs images, .deb files.

Each source's kind is found from what it is and holds; every ELF executable and shared
library gets the hash of each page of its executable segments as mapped, every kernel
module its name and SHA-256. Sources are hostile (a guest disk, an initramfs from someone's
build): a broken ELF is skipped and reported through ``progress``, because one bad file must
not stop a whole distribution from being listed; a broken source is an
:class:`AllowlistError` naming it, never another exception or a hang::

    allowlist = build_allowlist(["/srv/rootfs", "initrd.img", "linux-image.deb"], print)
    save_allowlist(allowlist, "allow.json")
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from vmsentinel.errors import AllowlistError
from vmsentinel.trust.allowlist import MAX_FILE_BYTES, MAX_FILES, MAX_MODULES, MAX_SOURCES, AllowedFile, Allowlist, guest_path
from vmsentinel.trust.archives import AR_MAGIC, CPIO_MAGICS, read_deb, read_initramfs
from vmsentinel.trust.compression import codec_of
from vmsentinel.trust.elf_pages import ELF_MAGIC, CodeFile, examine, may_be_code
from vmsentinel.trust.streams import Budget, FileSource, Stream, StreamError, raw_chunks

MAX_ENTRIES = 1 << 20  # entries in one archive source (cpio or tar)
MAX_TREE_ENTRIES = 1 << 22  # entries in one directory tree (a full distribution has ~300k)


class _Collector:
    """The files and modules of one source, with counts and notes for ``progress`` (an ArchiveSink)."""

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
            raise AllowlistError(f"more than {self.max_entries} entries")

    def forget(self, path: str) -> None:
        """A later entry replaced this path with something that is not code."""
        self.files.pop(path, None)

    def take(self, paths: list[str], size: int, stream: Stream) -> CodeFile | None:
        """Reads one regular file's data from ``stream`` (or skips it if it is no ELF) and records it under ``paths``."""
        self.regular += 1
        if size > MAX_FILE_BYTES:
            raise AllowlistError(f"entry {paths[0]!r} claims {size} bytes, more than the limit of {MAX_FILE_BYTES}")
        if not may_be_code(paths, stream.peek(min(size, 8))):
            stream.skip(size)
            for path in paths:
                self.forget(path)
            return None
        data = stream.read(size)
        found = self.examine(paths[0], data)
        self.record(paths, found)
        return found

    def examine(self, path: str, data: bytes) -> CodeFile | None:
        try:
            found = examine(path, data)
        except AllowlistError as exc:  # this one file is unusable: skip it, say why, go on
            self.elf += 1  # skipped ones count: "ELF" is everything that looked like code
            self.skipped += 1
            self.note(f"skipped {path}: {exc}")
            return None
        if found is not None or data.startswith(ELF_MAGIC):
            self.elf += 1
        return found

    def record(self, paths: list[str], found: CodeFile | None) -> None:
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
            path = guest_path(os.path.relpath(full, root))
            if path is None:
                continue
            try:
                _read_tree_file(full, path, col)
            except (OSError, AllowlistError, StreamError) as exc:
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
        src = FileSource(fd, st.st_size)
        head = src.read_at(0, 8)
        if not may_be_code([path], head):
            col.regular += 1  # most of a root filesystem: read 8 bytes, not the whole file
            return
        if st.st_size > MAX_FILE_BYTES:
            col.regular += 1
            col.skipped += 1
            col.note(f"skipped {path}: {st.st_size} bytes is more than the limit of {MAX_FILE_BYTES}")
            return
        col.take([path], st.st_size, Stream(raw_chunks(src, 0, st.st_size), Budget(MAX_FILE_BYTES)))
    finally:
        os.close(fd)


def _read_file(source: Path, col: _Collector) -> str:
    """An initramfs or a .deb, told apart by their first bytes; returns the kind."""
    with open(source, "rb") as f:
        src = FileSource(f.fileno(), os.fstat(f.fileno()).st_size)
        head = src.read_at(0, 8)
        if not head:
            raise AllowlistError("empty file")
        if head == AR_MAGIC:
            read_deb(src, col)
            return "deb"
        if head[0] == 0 or head[:6] in CPIO_MAGICS or codec_of(head):
            read_initramfs(src, col)
            return "initramfs"
    raise AllowlistError("neither a directory, an initramfs (newc cpio, maybe compressed) nor a Debian package")


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
            kind = _read_file(source, col)
        else:
            raise AllowlistError("neither a directory nor a regular file")
    except (AllowlistError, StreamError) as exc:
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
