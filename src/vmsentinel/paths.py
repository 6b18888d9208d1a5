"""Where vmsentinel keeps downloads (cache) and lab state, so commands in
different processes agree on them."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The download cache: ``$VMSENTINEL_CACHE`` or ``~/.cache/vmsentinel``."""
    env = os.environ.get("VMSENTINEL_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "vmsentinel"
    base.mkdir(parents=True, exist_ok=True)
    return base


def state_dir() -> Path:
    """Lab state: ``$VMSENTINEL_STATE`` or ``~/.local/state/vmsentinel``."""
    env = os.environ.get("VMSENTINEL_STATE")
    base = Path(env) if env else Path.home() / ".local" / "state" / "vmsentinel"
    base.mkdir(parents=True, exist_ok=True)
    return base
