"""Kernel package resolution against a fake apt-cache (no archive needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmsentinel.errors import KernelPackageNotFound
from vmsentinel.lab import debian

FAKE_APT_CACHE = r"""#!/bin/sh
case "$1 $2" in
  "depends linux-image-amd64") printf 'linux-image-amd64\n  Depends: linux-image-6.1.0-99-amd64\n' ;;
  "depends linux-image-6.12-amd64") printf 'linux-image-6.12-amd64\n  Depends: linux-image-6.12.200+deb12-amd64\n' ;;
  "pkgnames linux-image-") printf 'linux-image-6.12-amd64\nlinux-image-6.12-cloud-amd64\nlinux-image-6.1.0-99-amd64\n' ;;
  "show --no-all-versions")
    case "$3" in
      linux-image-6.12-amd64|linux-image-6.1.0-99-amd64|linux-image-6.1.0-98-amd64) echo "Package: $3" ;;
      *) exit 100 ;;
    esac ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture(autouse=True)
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "apt-cache"
    script.write_text(FAKE_APT_CACHE)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VMSENTINEL_CACHE", str(tmp_path / "cache"))


def test_default_series_and_exact_package() -> None:
    assert debian.resolve_kernel_package(None) == "linux-image-6.1.0-99-amd64"
    assert debian.resolve_kernel_package("6.1") == "linux-image-6.1.0-99-amd64"
    assert debian.resolve_kernel_package("6.12") == "linux-image-6.12.200+deb12-amd64"
    assert debian.resolve_kernel_package("linux-image-6.1.0-98-amd64") == "linux-image-6.1.0-98-amd64"


def test_unknown_series_lists_the_available_ones() -> None:
    with pytest.raises(KernelPackageNotFound, match=r"available: 6\.1, 6\.12"):
        debian.resolve_kernel_package("5.10")
    with pytest.raises(KernelPackageNotFound, match="no package"):
        debian.resolve_kernel_package("linux-image-9.9.9-amd64")
    with pytest.raises(KernelPackageNotFound, match="series like"):
        debian.resolve_kernel_package("latest-please")


def test_resolution_is_reused_offline_once_the_package_is_cached(tmp_path: Path) -> None:
    assert debian.resolve_kernel_package("6.12") == "linux-image-6.12.200+deb12-amd64"
    debs = tmp_path / "cache" / "debs"
    debs.mkdir(parents=True)
    (debs / "linux-image-6.12.200+deb12-amd64_6.12.200-1_amd64.deb").write_bytes(b"")
    (tmp_path / "bin" / "apt-cache").write_text("#!/bin/sh\nexit 1\n")  # the archive is gone
    assert debian.resolve_kernel_package("6.12") == "linux-image-6.12.200+deb12-amd64"
