"""Finding the vendor image of a guest's kernel: a ``vmlinuz`` whose GNU build id is the guest's.

Folders searched, in order: those named by ``VMSENTINEL_KERNEL_IMAGES`` (separated like ``PATH``;
``vmsentinel check/watch/serve --kernel-images DIR`` set it, so worker processes see it too), the
kernels the lab has unpacked (``~/.cache/vmsentinel/kernels``) and ``/boot``. Files named for the
guest's release are opened first; each one opened has its build id remembered (by path, size and
modification time) so that a later look does not decompress it again.

    vendor = find_vendor(build_id, release)      # VendorKernel, or None
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from vmsentinel.errors import KernelImageError
from vmsentinel.os.linux.vendor.image import VendorKernel
from vmsentinel.paths import cache_dir, write_atomic

ENVIRONMENT = "VMSENTINEL_KERNEL_IMAGES"
PATTERNS = ("vmlinuz-*", "vmlinux-*", "vmlinuz", "bzImage")
#: folders deeper than this under a search folder are not searched (a package unpacked: boot/vmlinuz-*)
MAX_DEPTH = 3
#: vendor images kept open per process (each holds its decompressed kernel, ~60 MB)
KEEP = 2
#: an image no first look has used for this many seconds is let go (a watch needs it only while
#: guests of its build start)
IDLE = 60.0

_lock = threading.Lock()
_open: dict[str, VendorKernel] = {}
_used: dict[str, float] = {}


def search_folders() -> list[Path]:
    named = [Path(p) for p in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if p]
    return [*named, cache_dir() / "kernels", Path("/boot")]


def candidates(release: str) -> list[Path]:
    """Kernel image files in the search folders, those named for ``release`` first."""
    found: list[Path] = []
    for folder in search_folders():
        for depth in range(MAX_DEPTH + 1):
            for pattern in PATTERNS:
                found.extend(p for p in folder.glob("/".join(["*"] * depth + [pattern])) if p.is_file())
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda p: release not in p.name)


def _index_path() -> Path:
    return cache_dir() / "vendor-build-ids.json"


def _load_index() -> dict[str, str]:
    try:
        index = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in index.items()} if isinstance(index, dict) else {}


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def find_vendor(build_id: str | None, release: str) -> VendorKernel | None:
    """The vendor image whose build id is ``build_id`` (None: no build id, nothing can be matched)."""
    if not build_id:
        return None
    with _lock:
        _used[build_id] = time.monotonic()
        if build_id in _open:
            return _open[build_id]
        index = _load_index()
        changed = False
        for path in candidates(release):
            try:
                key = _key(path)
            except OSError:
                continue
            known = index.get(key)
            if known is not None and known != build_id:
                continue
            try:
                vendor = VendorKernel.open(path)
            except (KernelImageError, OSError):
                index[key], changed = "", True  # not a usable image: not opened again
                continue
            index[key], changed = vendor.build_id or "", True
            if vendor.build_id == build_id:
                _keep(vendor)
                _save(index)
                return vendor
        if changed:
            _save(index)
        return None


def forget_idle(idle: float = IDLE) -> int:
    """Let go of the images no first look has used for ``idle`` seconds; how many were let go."""
    now = time.monotonic()
    with _lock:
        stale = [b for b in _open if now - _used.get(b, 0.0) >= idle]
        for build_id in stale:
            del _open[build_id]
    return len(stale)


def _keep(vendor: VendorKernel) -> None:
    while len(_open) >= KEEP:
        _open.pop(next(iter(_open)))
    if vendor.build_id:
        _open[vendor.build_id] = vendor


def _save(index: dict[str, str]) -> None:
    try:
        _index_path().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_index_path(), json.dumps(index, indent=1, sort_keys=True).encode())
    except OSError:
        pass  # a cache: the next look opens the images again
