"""The newc cpio writer, read back by an independent parser."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

from vmsentinel.lab.initramfs import CpioWriter, Entry, _modinfo_depends, extra_archive


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    files: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + i * 8 : pos + 14 + i * 8], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return files
        files[name] = (mode, body)


def test_cpio_round_trip_with_parent_dirs_and_symlinks() -> None:
    w = CpioWriter()
    w.add(Entry("bin/busybox", stat.S_IFREG | 0o755, b"\x7fELF..."))
    w.add(Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    w.add(Entry("/root/deep/dir/file.txt", stat.S_IFREG | 0o644, b"x" * 5))
    files = parse_newc(w.finish())
    assert files["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF...")
    assert files["bin/sh"][1] == b"busybox" and stat.S_ISLNK(files["bin/sh"][0])
    assert stat.S_ISDIR(files["root/deep/dir"][0]) and stat.S_ISDIR(files["root"][0])
    assert files["root/deep/dir/file.txt"][1] == b"xxxxx"


def test_extra_archive_holds_added_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "tool").chmod(0o755)
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "a.ko").write_bytes(b"module")
    files = parse_newc(gzip.decompress(extra_archive([(tmp_path / "tool", "/usr/bin/tool"), (tmp_path / "tree", "/opt/tree")])))
    assert files["usr/bin/tool"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n")
    assert files["opt/tree/sub/a.ko"][1] == b"module"


def test_modinfo_depends() -> None:
    blob = b"\0license=GPL\0depends=net_failover,virtio\0retpoline=Y\0"
    assert _modinfo_depends(blob) == ["net_failover", "virtio"]
    assert _modinfo_depends(b"\0depends=\0") == []
    assert _modinfo_depends(b"nothing here") == []
