"""What the sentinel runs with, and the one place that decides whether it may.

A policy comes from a signed bundle verified against the configured trusted
keys, or (for trying things out in a lab) from a plain TOML file with an
explicit, loudly logged ``--unsigned-policy``. The allowlists a policy names
are verified against the keys the policy trusts for them. The same loader
runs at start-up and on every reload, so a replaced policy passes exactly the
checks the first one passed.

    loader = PolicyLoader(bundle="/etc/vmsentinel/policy.vmspolicy", trusted_keys=[...])
    active = loader.load()          # -> ActivePolicy, or raises with the file and the key that failed
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.errors import PolicyRefused, VmSentinelError
from vmsentinel.pipeline.policy import Policy, load_policy

if TYPE_CHECKING:
    from vmsentinel.trust.allowlist import Allowlist

log = logging.getLogger("vmsentinel.policy")
#: where trusted keys are looked for when none are given: a colon-separated list of files or folders
TRUSTED_KEYS_ENV = "VMSENTINEL_TRUSTED_KEYS"
DEFAULT_TRUSTED_KEYS = Path("/etc/vmsentinel/trusted-keys")


@dataclass
class ActivePolicy:
    policy: Policy
    allowlist: Allowlist | None  # when the policy names allowlists
    description: str
    signed: bool
    #: files whose change means "reload": the bundle and its signature
    watched: list[Path] = field(default_factory=list)
    #: where a bundle was unpacked; its files are needed only until the rules are built from them
    unpacked: Path | None = None

    def remove(self) -> None:
        """Delete the unpacked bundle (once its rules are compiled and its allowlists loaded)."""
        if self.unpacked is not None:
            shutil.rmtree(self.unpacked, ignore_errors=True)


def trusted_key_files(given: list[str] | None) -> list[Path]:
    """Key files from the command line, else from $VMSENTINEL_TRUSTED_KEYS, else /etc/vmsentinel/trusted-keys/."""
    if given:
        return [Path(p) for p in given]
    places = [Path(p) for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(":") if p] or [DEFAULT_TRUSTED_KEYS]
    files: list[Path] = []
    for place in places:
        files.extend(sorted(p for p in place.iterdir() if p.is_file()) if place.is_dir() else [place] if place.is_file() else [])
    return files


def pack_policy_bundle(folder: str | Path, out: str | Path) -> dict[str, object]:
    """Pack a policy folder into a bundle, refusing now a policy that would not load at start-up."""
    from vmsentinel.trust.bundle import pack_bundle

    return pack_bundle(folder, out, check=load_policy)


def load_signed_allowlists(policy: Policy) -> Allowlist | None:
    """Every allowlist the policy names, each verified against the policy's allowlist keys, merged."""
    if not policy.allowlists:
        return None
    from vmsentinel.errors import AllowlistError, SignatureError
    from vmsentinel.trust.allowlist import Allowlist, load_allowlist
    from vmsentinel.trust.signing import find_signature, load_trusted_keys, verify_file

    try:
        keys = load_trusted_keys(policy.allowlist_keys)
    except SignatureError as exc:
        raise PolicyRefused(f"allowlist keys of {policy.source}: {exc}") from exc
    merged = Allowlist(files={}, modules={}, sources=[], created="")
    for path in policy.allowlists:
        try:
            verify_file(path, find_signature(Path(path)), keys)
            one = load_allowlist(path)
        except SignatureError as exc:
            raise PolicyRefused(f"allowlist {path} refused: {exc}") from exc
        except (AllowlistError, OSError) as exc:
            raise PolicyRefused(f"allowlist {path}: {exc}") from exc
        merged.files.update(one.files)
        merged.modules.update(one.modules)
        merged.sources.extend(one.sources)
    return merged


@dataclass
class PolicyLoader:
    bundle: str | None = None
    trusted_keys: list[str] | None = None
    signature: str | None = None
    unsigned: str | None = None  # a TOML file used without a signature (--unsigned-policy)
    allow_defaults: bool = True

    def load(self) -> ActivePolicy:
        if self.bundle is not None:
            return self._load_bundle(self.bundle)
        if self.unsigned is not None:
            policy = load_policy(self.unsigned)
            log.warning("running with an UNSIGNED policy %s (--unsigned-policy): for trying things out only", self.unsigned)
            return ActivePolicy(policy, load_signed_allowlists(policy), f"UNSIGNED {self.unsigned}", False, [Path(self.unsigned)])
        return ActivePolicy(Policy(), None, "built-in defaults", True)

    def _load_bundle(self, bundle: str) -> ActivePolicy:
        from vmsentinel.errors import BundleError, SignatureError
        from vmsentinel.trust.bundle import load_bundle
        from vmsentinel.trust.signing import load_trusted_keys

        key_files = trusted_key_files(self.trusted_keys)
        try:
            keys = load_trusted_keys(key_files)
        except SignatureError as exc:
            raise PolicyRefused(f"trusted keys: {exc}") from exc
        try:
            loaded = load_bundle(bundle, keys, self.signature)
        except BundleError as exc:
            tried = ", ".join(str(k) for k in key_files) or "none"
            raise PolicyRefused(f"{exc} (trusted keys: {tried})") from exc
        try:
            policy = load_policy(loaded.policy_file)
            policy.source = f"{loaded.path} (signed: {loaded.verified.signer})"
            allowlist = load_signed_allowlists(policy)
        except VmSentinelError:
            loaded.remove()
            raise
        signature = Path(self.signature) if self.signature else None
        watched = [Path(bundle), *(p for p in (signature, Path(bundle + ".minisig"), Path(bundle + ".sig")) if p)]
        return ActivePolicy(policy, allowlist, policy.source, True, watched, loaded.directory)
