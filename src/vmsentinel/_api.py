"""The two calls of the public API that are not a class: open a guest, load a policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmsentinel.os.linux.guest import LinuxGuest
    from vmsentinel.pipeline.compiled import CompiledPolicy


def open_guest(target: str) -> LinuxGuest:
    """Open a TARGET (memory image, ``qemu:RAM_PATH[,qmp=SOCKET]``, ``lab:NAME``) and locate its kernel
    from memory alone. Close it (or use ``with``) when done."""
    from vmsentinel.os import open_guest as open_any

    guest: LinuxGuest = open_any(target)
    return guest


def load_policy(
    source: str | Path | None = None,
    trusted_keys: list[str] | None = None,
    *,
    signature: str | None = None,
    unsigned: bool = False,
) -> CompiledPolicy:
    """A policy ready to run: the built-in defaults (no ``source``), a signed bundle verified against
    ``trusted_keys`` exactly as ``watch`` verifies it, or, with ``unsigned=True`` only, a plain TOML file.
    Every rule it names is compiled; a bad one raises ``RuleError`` with its file and line."""
    from vmsentinel.errors import PolicyRefused
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.pipeline.loading import PolicyLoader
    from vmsentinel.trust.bundle import is_bundle

    if source is None:
        loader = PolicyLoader()
    elif is_bundle(str(source)):
        loader = PolicyLoader(bundle=str(source), trusted_keys=trusted_keys, signature=signature)
    elif unsigned:
        loader = PolicyLoader(unsigned=str(source))
    else:
        raise PolicyRefused(f"{source} is not a signed policy bundle (pass unsigned=True to run a plain TOML policy)")
    active = loader.load()
    try:
        return CompiledPolicy.compile(active.policy, active.allowlist)
    finally:
        active.remove()
