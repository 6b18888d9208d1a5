"""The one .modinfo parser, on what the kernel writes and on what an attacker might."""

from __future__ import annotations

import pytest

from vmsentinel.trust.kernel_modules import modinfo_field, module_stem


@pytest.mark.parametrize(
    ("blob", "key", "value"),
    [
        (b"name=fake_mod\0license=GPL\0", "name", "fake_mod"),
        (b"\0license=GPL\0depends=a,b\0retpoline=Y\0", "depends", "a,b"),
        (b"license=GPL\0depends=\0", "depends", ""),
        (b"license=GPL\0depends=unterminated", "depends", "unterminated"),
        (b"license=GPL\0xdepends=no\0", "depends", None),  # only a whole string counts
        (b"license=GPL\0", "depends", None),
        (b"", "name", None),
        (b"\0name=first\0name=second\0", "name", "first"),
        (b"\0name=\xff\xfe\0", "name", "\ufffd\ufffd"),  # bytes that are no UTF-8 cannot raise
    ],
)
def test_modinfo_field(blob: bytes, key: str, value: str | None) -> None:
    assert modinfo_field(blob, key) == value


@pytest.mark.parametrize(
    ("path", "stem"),
    [
        ("/lib/modules/6.1.0/kernel/fake-mod.ko.xz", "fake_mod"),
        ("virtio_net.ko", "virtio_net"),
        ("x.ko.zst", "x"),
        (".ko", None),
        ("notes.txt", None),
        ("mod.ko.bz2", None),  # the kernel does not load bzip2 modules
    ],
)
def test_module_stem(path: str, stem: str | None) -> None:
    assert module_stem(path) == stem
