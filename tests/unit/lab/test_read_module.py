"""The lab reads Debian's .ko.xz modules through the shared codec, capped: a download is untrusted."""

from __future__ import annotations

import lzma
import re
from pathlib import Path

import pytest

from vmsentinel.errors import LabError
from vmsentinel.lab import debian
from vmsentinel.lab.initramfs import _modinfo_depends


def test_modules_are_read_decompressed_or_as_they_are(tmp_path: Path) -> None:
    ko = b"\x7fELF" + b"\0depends=virtio,net_failover\0" + bytes(4000)
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(ko))
    (tmp_path / "b.ko").write_bytes(ko)
    assert debian.read_module(tmp_path / "a.ko.xz") == ko == debian.read_module(tmp_path / "b.ko")
    assert _modinfo_depends(debian.read_module(tmp_path / "a.ko.xz")) == ["virtio", "net_failover"]


def test_a_corrupt_or_bomb_module_is_a_lab_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cut = tmp_path / "cut.ko.xz"
    cut.write_bytes(lzma.compress(bytes(range(256)) * 100)[:-20])
    with pytest.raises(LabError, match=rf"module {re.escape(str(cut))}: "):
        debian.read_module(cut)
    monkeypatch.setattr(debian, "MAX_MODULE_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.ko.xz"
    bomb.write_bytes(lzma.compress(bytes(8 << 20)))
    with pytest.raises(LabError, match=rf"module {re.escape(str(bomb))}: more than 1048576 bytes .*decompression bomb"):
        debian.read_module(bomb)
