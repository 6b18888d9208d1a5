"""Signed policy bundles: the whole configuration of a sentinel in one file.

A bundle is a plain tar (deterministic: sorted names, zero times and owners)
of a policy folder: ``policy.toml``, the YARA and Sigma rule sets it names,
code allowlists and the keys trusted to sign allowlists. Its first member,
``vmsentinel-policy.json``, says what it is and lists every other member with
its SHA-256, so a bundle cannot pass for another kind of signed file and a
member cannot be swapped inside it. The bundle is signed as a whole, by
minisign, ``ssh-keygen -Y sign -n vmsentinel`` or ``vmsentinel key sign``.

The policy itself is parsed by the pipeline (``vmsentinel.pipeline.loading``), which
owns what a policy means; this module only verifies, checks and unpacks::

    loaded = load_bundle("policy.vmspolicy", trusted_keys)   # verify, then unpack privately
    loaded.policy_file, loaded.verified.signer               # the unpacked policy.toml, who signed
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from vmsentinel.errors import BundleError

if TYPE_CHECKING:
    from vmsentinel.trust.signing import TrustedKey, Verified

KIND = "vmsentinel-policy"
MANIFEST = "vmsentinel-policy.json"
POLICY_FILE = "policy.toml"
MAX_BUNDLE_BYTES = 256 << 20
MAX_MEMBERS = 10_000


@dataclass
class LoadedBundle:
    """A bundle whose signature verified and whose members match its manifest, unpacked."""

    manifest: dict[str, Any]  # what the bundle says it holds, member by member with SHA-256
    directory: Path  # where its files were unpacked (private to this process)
    policy_file: Path  # the unpacked policy.toml, for the pipeline to parse
    verified: Verified  # who signed it
    path: str
    sha256: str

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def is_bundle(path: str | Path) -> bool:
    """A tar archive (what ``pack_bundle`` writes) rather than a TOML file."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return len(head) == 512 and head[257:262] == b"ustar"


def pack_bundle(folder: str | Path, out: str | Path, check: Callable[[Path], object] | None = None) -> dict[str, object]:
    """Pack ``folder`` (which must hold ``policy.toml``) into a bundle; returns the manifest.

    ``check`` is given the policy file first and raises if it would not load, so that a bad
    bundle is refused now, not at start-up (``pipeline.loading.pack_policy_bundle`` passes
    the policy parser, which this package must not import).
    """
    root = Path(folder)
    if not (root / POLICY_FILE).is_file():
        raise BundleError(f"{root} has no {POLICY_FILE}: a bundle packs a policy folder")
    if check is not None:
        check(root / POLICY_FILE)
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link: put the file itself in the policy folder")
        if path.is_file():
            files[rel] = path.read_bytes()
    manifest = {"kind": KIND, "version": 1, "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(data))
    Path(out).write_bytes(buffer.getvalue())
    return manifest


def read_bundle(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the members of bundle bytes (already verified), checked against each other."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{where}: larger than {MAX_BUNDLE_BYTES >> 20} MiB")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for count, info in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise BundleError(f"{where}: more than {MAX_MEMBERS} members")
                name = PurePosixPath(info.name)
                if not info.isfile() or name.is_absolute() or ".." in name.parts or info.name in members:
                    raise BundleError(f"{where}: member {info.name!r} is not a plain relative file")
                extracted = tar.extractfile(info)
                members[info.name] = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{where}: not a policy bundle ({exc})") from exc
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{where}: no readable {MANIFEST}: not a policy bundle") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise BundleError(
            f"{where}: a signed file of kind {manifest.get('kind') if isinstance(manifest, dict) else '?'!r}, not a policy bundle"
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict) or set(listed) != set(members):
        raise BundleError(f"{where}: the manifest does not list exactly the bundle's files")
    for member, content in members.items():
        if hashlib.sha256(content).hexdigest() != listed[member]:
            raise BundleError(f"{where}: {member} does not match its manifest hash")
    if POLICY_FILE not in members:
        raise BundleError(f"{where}: no {POLICY_FILE} in the bundle")
    return manifest, members


def load_bundle(path: str | Path, trusted_keys: Sequence[TrustedKey], signature: str | Path | None = None) -> LoadedBundle:
    """Verify the bundle's signature against ``trusted_keys``, then unpack it into a private folder.
    Nothing of an unverified bundle is parsed beyond its signature; the caller parses the policy
    and removes the folder if it does not load."""
    from vmsentinel.errors import SignatureError
    from vmsentinel.trust.signing import find_signature, verify_bytes

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read policy bundle {path}: {exc.strerror}") from exc
    if not trusted_keys:
        raise BundleError(f"no trusted keys configured to verify {path} (--trusted-key, or $VMSENTINEL_TRUSTED_KEYS)")
    try:
        sig_path = Path(signature) if signature is not None else find_signature(path)
        verified = verify_bytes(data, sig_path.read_bytes()[: 64 << 10], trusted_keys, what=str(path))
    except OSError as exc:
        raise BundleError(f"cannot read the signature of {path}: {exc.strerror}") from exc
    except SignatureError as exc:
        raise BundleError(f"policy bundle {path} refused: {exc}") from exc
    manifest, members = read_bundle(data, str(path))
    directory = Path(tempfile.mkdtemp(prefix="vmsentinel-policy-"))  # mode 0700: private to this user
    for name, content in members.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return LoadedBundle(manifest, directory, directory / POLICY_FILE, verified, str(path), hashlib.sha256(data).hexdigest())
