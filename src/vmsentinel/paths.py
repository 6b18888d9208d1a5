"""Where vmsentinel keeps downloads (cache) and lab state, so commands in
different processes agree on them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """The download cache: ``$VMSENTINEL_CACHE`` or ``~/.cache/vmsentinel``."""
    return _folder("VMSENTINEL_CACHE", Path.home() / ".cache" / "vmsentinel", "cache")


def state_dir() -> Path:
    """Lab state: ``$VMSENTINEL_STATE`` or ``~/.local/state/vmsentinel``."""
    return _folder("VMSENTINEL_STATE", Path.home() / ".local" / "state" / "vmsentinel", "state")


def _folder(variable: str, default: Path, what: str) -> Path:
    env = os.environ.get(variable)
    base = Path(env) if env else default
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a one-line error naming the folder, not a traceback
        from vmsentinel.errors import VmSentinelError

        raise VmSentinelError(f"cannot use {base} as the {what} folder: {exc.strerror} (set ${variable} to another)") from exc
    return base


def write_atomic(path: Path, *parts: bytes | memoryview) -> None:
    """Write a file so that readers see the old or the new content, never a mix, even with several
    writers at once (threads of one watcher share a process id, so the temporary name is unique)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
