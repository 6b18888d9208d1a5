"""Kernel and busybox packages from the Debian archive, resolved and cached.

Nothing here hard-codes an ABI number: a series such as ``6.12`` is resolved
through the archive's meta-packages (``linux-image-6.12-amd64``) or through
what ``linux-image-amd64`` depends on today. Downloads land in the cache, so a
second run needs no network::

    pkg = resolve_kernel_package("6.12")      # 'linux-image-6.12.57+deb12-amd64'
    kernel = fetch_kernel(pkg)                # KernelBuild(release=..., vmlinuz=...)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmsentinel.errors import KernelPackageNotFound, LabError, MissingTool
from vmsentinel.paths import cache_dir
from vmsentinel.trust.compression import decompress

DEFAULT_META = "linux-image-amd64"
_SERIES_META = re.compile(r"^linux-image-(\d+\.\d+)-amd64$")
_IMAGE_PKG = re.compile(r"^linux-image-(\d+\.\d+)[.\-][\w.+~-]*-amd64(-unsigned)?$")
#: a decompressed module larger than this is hostile (Debian's largest, amdgpu, is tens of MiB)
MAX_MODULE_BYTES = 256 << 20


@dataclass(frozen=True)
class KernelBuild:
    """An extracted kernel package: its image, modules and release string."""

    package: str
    release: str
    vmlinuz: Path
    modules_dir: Path


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise MissingTool(f"{cmd[0]} is not installed (this needs a Debian host with apt)")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return proc.stdout


def _depends_of(package: str) -> list[str]:
    out = _run(["apt-cache", "depends", package])
    return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Depends:")]


def _package_known(package: str) -> bool:
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True)
    return proc.returncode == 0 and "Package:" in proc.stdout


def available_series() -> list[str]:
    """Kernel series the archive offers (default meta-package plus ``linux-image-X.Y-amd64``)."""
    names = _run(["apt-cache", "pkgnames", "linux-image-"]).split()
    series = {m.group(1) for n in names if (m := _SERIES_META.match(n))}
    default = _default_image_package()
    if default and (m := _IMAGE_PKG.match(default)):
        series.add(m.group(1))
    return sorted(series, key=lambda s: tuple(int(p) for p in s.split(".")))


def _default_image_package() -> str | None:
    deps = [d for d in _depends_of(DEFAULT_META) if d.startswith("linux-image-")]
    return deps[0] if deps else None


def resolve_kernel_package(spec: str | None) -> str:
    """Turn ``None`` (default), a series (``6.1``) or a package name into a package name."""
    cached = _cached_resolution(spec)
    if cached:
        return cached
    if spec is None or spec == "default":
        pkg = _default_image_package()
        if pkg is None:
            raise KernelPackageNotFound(f"{DEFAULT_META} has no kernel dependency; run 'apt-get update' first")
    elif spec.startswith("linux-image-"):
        if not _package_known(spec):
            raise KernelPackageNotFound(f"no package {spec} in the archive (run 'apt-get update'?)")
        pkg = spec
    elif re.fullmatch(r"\d+\.\d+", spec):
        meta = f"linux-image-{spec}-amd64"
        deps = [d for d in _depends_of(meta) if d.startswith("linux-image-")] if _package_known(meta) else []
        default = _default_image_package()
        if deps:
            pkg = deps[0]
        elif default and default.startswith(f"linux-image-{spec}."):
            pkg = default
        else:
            raise KernelPackageNotFound(
                f"unknown kernel series {spec!r}; available: {', '.join(available_series()) or 'none (apt-get update?)'}"
            )
    else:
        raise KernelPackageNotFound(
            f"--kernel takes a series like 6.12 or a package like linux-image-6.1.0-56-amd64, not {spec!r}"
        )
    _remember_resolution(spec, pkg)
    return pkg


def _resolution_file() -> Path:
    return cache_dir() / "kernel-resolutions.txt"


def _cached_resolution(spec: str | None) -> str | None:
    """Offline re-runs: reuse what a spec resolved to when its package is still in the cache."""
    path = _resolution_file()
    if not path.exists():
        return None
    key = spec or "default"
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        if k == key and any((cache_dir() / "debs").glob(f"{v}_*.deb")):
            return v
    return None


def _remember_resolution(spec: str | None, pkg: str) -> None:
    path = _resolution_file()
    key = spec or "default"
    lines = [ln for ln in (path.read_text().splitlines() if path.exists() else []) if not ln.startswith(f"{key}=")]
    lines.append(f"{key}={pkg}")
    path.write_text("\n".join(lines) + "\n")


def download_deb(package: str) -> Path:
    """``apt-get download`` a package into the cache, once."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    tmp = debs / f".dl-{package}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if shutil.which("apt-get") is None:
        raise MissingTool("apt-get is not installed; the lab needs a Debian host")
    proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
    got = list(tmp.glob("*.deb"))
    if proc.returncode != 0 or not got:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(f"apt-get download {package} failed: {proc.stderr.strip()[-300:]}")
    final = debs / got[0].name.replace("%3a", "_")
    got[0].rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract(deb: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()}")
    tmp.rename(dest)


def fetch_kernel(package: str) -> KernelBuild:
    """Download and extract a kernel image package; return its paths."""
    dest = cache_dir() / "kernels" / package
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _extract(download_deb(package), dest)
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if not images:
        raise LabError(f"{package} holds no /boot/vmlinuz-*; is it a kernel image package?")
    release = images[0].name.removeprefix("vmlinuz-")
    return KernelBuild(package, release, images[0], dest / "lib" / "modules" / release)


def fetch_busybox() -> Path:
    """The static busybox binary from Debian's busybox-static, cached."""
    dest = cache_dir() / "busybox-static"
    if not dest.exists():
        _extract(download_deb("busybox-static"), dest)
    binary = dest / "bin" / "busybox"
    if not binary.exists():
        raise MissingTool("busybox-static has no bin/busybox; install it with 'apt-get install busybox-static'")
    return binary


def read_module(path: Path) -> bytes:
    """A module's bytes, decompressed when the package ships ``.ko.xz`` (capped: a download is untrusted)."""
    data = path.read_bytes()
    if path.suffix != ".xz":
        return data
    return decompress(data, limit=MAX_MODULE_BYTES, error=LabError, what=f"module {path}")
