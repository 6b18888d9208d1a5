"""Ed25519 signatures on policy and rule files, compatible with the tools operators already use.

A file vmsentinel acts on (a policy, a rule bundle) can be signed two ways:

* with minisign (``minisign -S``, or :func:`sign_file` / ``vmsentinel key sign``), checked
  against minisign public keys;
* with OpenSSH (``ssh-keygen -Y sign -n vmsentinel``), checked against an OpenSSH public key
  line or an ``allowed_signers`` file, as ``ssh-keygen -Y verify`` would.

The signature format is read from the signature itself, so one ``--key`` list can mix both
kinds. All the cryptography comes from ``py-minisign``, ``sshsig`` and ``cryptography``; this
module only parses the file formats strictly, picks the key and applies the trust rules
(key id, namespace, validity dates), turning every failure into one :class:`SignatureError`
that names the file and the key, because a refused signature must say what to fix.

Only Ed25519 is accepted: one algorithm, no RSA padding or hash choices to get wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import minisign  # type: ignore[import-untyped]
from sshsig.allowed_signers import AllowedSigner
from sshsig.binary_io import SshReader, ssh_read_string_pair
from sshsig.ssh_public_key import PublicKey as SshPublicKey
from sshsig.sshsig import SshsigSignature, do_sshsig_verify

from vmsentinel.errors import SignatureError

NAMESPACE = "vmsentinel"
"""The SSHSIG namespace of every vmsentinel signature, so a git or file signature made with
the same SSH key cannot be replayed as a vmsentinel one."""

SIGNATURE_MAX_BYTES = 64 * 1024
KEY_FILE_MAX_BYTES = 1024 * 1024

PathArg = str | os.PathLike[str]

_MINISIGN_PREFIX = "untrusted comment:"
_SSH_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_SSH_END = "-----END SSH SIGNATURE-----"
_ED25519 = "ssh-ed25519"
_MINISIGN_PUBLIC_KEY_LEN = 42  # "Ed" + key id (8) + Ed25519 public key (32)
_MINISIGN_SECRET_KEY_LEN = 158
_SSH_HASHES = (b"sha256", b"sha512")  # the two PROTOCOL.sshsig allows
_SSH_KEY_TYPE = re.compile(
    r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)(-cert-v01@openssh\.com)?"
)
_BARE_MINISIGN_KEY = re.compile(r"RW[A-Za-z0-9+/]{54}")
_SSH_TIME = re.compile(r"(\d{8}|\d{12}|\d{14})Z?")
_TIME_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


@dataclass(frozen=True)
class SshSigner:
    """One trusted SSH key: an OpenSSH ``.pub`` file, or one line of an allowed_signers file
    with the restrictions that line puts on it."""

    key: SshPublicKey
    fingerprint: str
    principals: str | None = None
    namespaces: str | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    line: int | None = None


@dataclass(frozen=True)
class TrustedKey:
    """One key file or allowed_signers file loaded from disk."""

    source: str
    kind: str  # "minisign" | "openssh" | "allowed_signers"
    key_id: str | None = None  # minisign key id, as the minisign CLI prints it
    minisign_key: Any = None  # minisign.PublicKey (the library has no type hints)
    ssh_signers: tuple[SshSigner, ...] = ()

    def describe(self) -> str:
        if self.kind == "minisign":
            return f"minisign key {self.key_id} (from {self.source})"
        if self.kind == "openssh":
            return f"{_ED25519} {self.ssh_signers[0].fingerprint} (from {self.source})"
        return f"allowed_signers {self.source} ({len(self.ssh_signers)} keys)"


@dataclass(frozen=True)
class Verified:
    """Who signed: what a caller logs or shows once a signature checked out."""

    kind: str  # "minisign" | "sshsig"
    signer: str
    key_source: str = ""
    trusted_comment: str | None = None  # minisign only: signed, so it can be shown as fact


# ---------------------------------------------------------------------------- reading


def _read_capped(path: PathArg, limit: int, what: str) -> bytes:
    """Read a small file whole, refusing anything larger than ``limit``: a key or a signature
    is tiny, so a huge one is a mistake or an attack, not something to load into memory."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise SignatureError(f"{what} {os.fspath(path)} does not exist") from None
    except OSError as exc:
        raise SignatureError(f"cannot read {what} {os.fspath(path)}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SignatureError(f"{what} {os.fspath(path)} is larger than {limit // 1024} KiB; that is not a {what}")
    return data


def _printable(text: str) -> str:
    """Text taken from a hostile file, made safe to put in a one-line message."""
    return text if text.isprintable() else repr(text)


def _reason(exc: BaseException) -> str:
    text = _printable(" ".join(str(exc).split()))
    return text or type(exc).__name__


# ---------------------------------------------------------------------------- minisign


def _minisign_id(key_id: bytes) -> str:
    """The key id as the minisign CLI prints it in its key comments: the 8 bytes read as a
    little-endian number, in hex without leading zeros (printf ``%PRIX64``)."""
    return f"{int.from_bytes(key_id, 'little'):X}"


def _minisign_key_id(public_key: Any) -> str:
    raw = base64.b64decode(bytes(public_key.to_base64()))
    return _minisign_id(raw[2:10])


def _load_minisign_key(source: str, text: str) -> TrustedKey:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) >= 2:
        try:
            length = len(base64.b64decode(lines[1], validate=True))
        except (binascii.Error, ValueError):
            length = -1
        if length == _MINISIGN_SECRET_KEY_LEN:
            raise SignatureError(f"{source} is a minisign secret key; trust its public key (the .pub file) instead")
    if len(lines) != 2:
        raise SignatureError(f"{source} is not a valid minisign public key (expected 2 lines, found {len(lines)})")
    try:
        key = minisign.PublicKey.from_bytes("\n".join(lines).encode())
    except Exception as exc:
        raise SignatureError(f"{source} is not a valid minisign public key ({_reason(exc)})") from None
    return TrustedKey(source=source, kind="minisign", key_id=_minisign_key_id(key), minisign_key=key)


def _load_bare_minisign_key(source: str, line: str) -> TrustedKey:
    try:
        key = minisign.PublicKey.from_base64(line)
    except Exception as exc:
        raise SignatureError(f"{source} is not a valid minisign public key ({_reason(exc)})") from None
    return TrustedKey(source=source, kind="minisign", key_id=_minisign_key_id(key), minisign_key=key)


def _verify_minisign(data: bytes, signature: bytes, keys: Sequence[TrustedKey], what: str, sig_name: str) -> Verified:
    try:
        sig = minisign.Signature.from_bytes(signature.rstrip() + b"\n")
        line1 = base64.b64decode(bytes(sig).splitlines()[1])
    except Exception as exc:
        raise SignatureError(f"{sig_name} is not a valid minisign signature ({_reason(exc)})") from None
    key_id = _minisign_id(line1[2:10])
    candidates = [k for k in keys if k.kind == "minisign" and k.key_id == key_id]
    if not candidates:
        raise SignatureError(
            f"{what} is signed by minisign key ID {key_id}; none of the trusted keys ({_sources(keys)}) has that ID"
        )
    key = candidates[0]
    try:
        key.minisign_key.verify(data, sig)
    except Exception:
        raise SignatureError(
            f"{what}: minisign signature {sig_name} does not match for key ID {key_id} (from {key.source}); "
            "the file or its signature was altered"
        ) from None
    return Verified(
        kind="minisign",
        signer=f"minisign key {key_id} (from {key.source})",
        key_source=key.source,
        trusted_comment=str(sig.trusted_comment),
    )


# ---------------------------------------------------------------------------- OpenSSH


def _parse_ssh_key(key_type: str, b64: str, where: str) -> SshSigner:
    """Parse one ``ssh-ed25519 AAAA...`` key strictly: canonical base64, matching inner type."""
    if key_type != _ED25519:
        raise SignatureError(f"{where}: {key_type} keys are not accepted; vmsentinel trusts only {_ED25519} keys")
    try:
        blob = base64.b64decode(b64, validate=True)
        key = SshPublicKey.from_ssh_encoding(blob)
    except Exception as exc:
        raise SignatureError(f"{where}: malformed {_ED25519} public key ({_reason(exc)})") from None
    if key.algo_name != _ED25519 or key.openssh_str().split()[1] != b64:
        raise SignatureError(f"{where}: malformed {_ED25519} public key (the encoded key does not match its type)")
    return SshSigner(key=key, fingerprint=key.sha256_str())


def _load_openssh_key(source: str, lines: list[str]) -> TrustedKey:
    if len(lines) != 1:
        raise SignatureError(
            f"{source} holds {len(lines)} OpenSSH keys; an OpenSSH public key file holds one "
            "(list several keys in an allowed_signers file instead)"
        )
    parts = lines[0].split()
    if len(parts) < 2:
        raise SignatureError(f"{source} is not a valid OpenSSH public key (no key after {parts[0]!r})")
    signer = _parse_ssh_key(parts[0], parts[1], source)
    return TrustedKey(source=source, kind="openssh", ssh_signers=(signer,))


def _parse_ssh_time(value: str, where: str, option: str) -> datetime:
    """An allowed_signers date, YYYYMMDD[HHMM[SS]][Z]. Always read as UTC: a sentinel must not
    trust a key for a few hours more or less depending on the time zone of the host."""
    if not _SSH_TIME.fullmatch(value):
        raise SignatureError(f'{where}: {option}="{value}" is not a date (expected YYYYMMDD[HHMM[SS]])')
    digits = value.rstrip("Z")
    try:
        return datetime.strptime(digits, _TIME_FORMATS[len(digits)]).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(f'{where}: {option}="{value}" is not a valid date') from None


def _load_allowed_signers(source: str, text: str) -> TrustedKey:
    signers: list[SshSigner] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip("\n\r").lstrip(" \t")
        if not line or line[0] in "#\0":
            continue
        where = f"{source} line {number}"
        if "\f" in line or "\v" in line:
            raise SignatureError(f"{where}: form feed or vertical tab in an allowed_signers line")
        try:
            entry = AllowedSigner.parse(line)
        except Exception as exc:
            if not signers:
                raise SignatureError(
                    f"{source} is not a minisign public key, an OpenSSH public key or an allowed_signers file "
                    f"(line {number}: {_reason(exc)})"
                ) from None
            raise SignatureError(f"{where}: not a valid allowed_signers line ({_reason(exc)})") from None
        options = entry.options or {}
        if "cert-authority" in options:
            raise SignatureError(f"{where}: cert-authority lines are not supported; list the signing keys themselves, not a CA")
        if not _SSH_KEY_TYPE.fullmatch(entry.key_type):
            if not signers:
                raise SignatureError(
                    f"{source} is not a minisign public key, an OpenSSH public key or an allowed_signers file "
                    f"(line {number}: {entry.key_type!r} is not an SSH key type)"
                )
            raise SignatureError(f"{where}: {entry.key_type!r} is not an SSH key type")
        signer = _parse_ssh_key(entry.key_type, entry.base64_key, where)
        after = options.get("valid-after")
        before = options.get("valid-before")
        signers.append(
            SshSigner(
                key=signer.key,
                fingerprint=signer.fingerprint,
                principals=entry.principals,
                namespaces=options.get("namespaces"),
                valid_after=None if after is None else _parse_ssh_time(after, where, "valid-after"),
                valid_before=None if before is None else _parse_ssh_time(before, where, "valid-before"),
                line=number,
            )
        )
    if not signers:
        raise SignatureError(f"{source} holds no keys")
    return TrustedKey(source=source, kind="allowed_signers", ssh_signers=tuple(signers))


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` wildcards, nothing else."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _namespace_allowed(patterns: str, namespace: str) -> bool:
    """OpenSSH's match_pattern_list: a matching ``!pattern`` denies, else any match allows."""
    allowed = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _glob(pattern[1:] if negated else pattern, namespace):
            if negated:
                return False
            allowed = True
    return allowed


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _policy_refusal(signer: SshSigner, source: str, now: datetime, who: str) -> str | None:
    """Why an allowed_signers line does not let its key sign for us now, or None if it does."""
    where = f"{source} line {signer.line}"
    if signer.namespaces is not None and not _namespace_allowed(signer.namespaces, NAMESPACE):
        return f'key {who} may not sign for namespace "{NAMESPACE}" (namespaces="{signer.namespaces}" in {where})'
    if signer.valid_after is not None and now < signer.valid_after:
        return f"key {who} is not valid before {_stamp(signer.valid_after)} (valid-after in {where})"
    if signer.valid_before is not None and now > signer.valid_before:
        return f"key {who} expired on {_stamp(signer.valid_before)} (valid-before in {where})"
    return None


def _dearmor(signature: bytes, sig_name: str) -> bytes:
    """The SSHSIG blob inside the armor, decoded strictly (the library skips stray characters)."""
    try:
        text = signature.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError(f"{sig_name} is not a valid SSH signature (it is not ASCII text)") from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if lines[0] != _SSH_BEGIN or _SSH_END not in lines:
        raise SignatureError(f"{sig_name} is not a valid SSH signature (no {_SSH_END} line)")
    end = lines.index(_SSH_END)
    if end != len(lines) - 1:
        raise SignatureError(f"{sig_name} is not a valid SSH signature (text after {_SSH_END})")
    try:
        return base64.b64decode("".join(lines[1:end]), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{sig_name} is not a valid SSH signature (bad base64)") from None


class InvalidSshSignature(Exception):
    """A library failure inside SSHSIG verification, kept as a value to report."""


def _verify_sshsig(
    data: bytes, signature: bytes, keys: Sequence[TrustedKey], what: str, sig_name: str, now: datetime
) -> Verified:
    blob = _dearmor(signature, sig_name)
    try:
        sig = SshsigSignature(blob)
        canonical = bytes(sig) == blob
        key_type = _printable(SshReader(sig.public_key).read_string().decode("ascii", "replace"))
        sig_type = ssh_read_string_pair(sig.signature)[0]
    except Exception as exc:
        raise SignatureError(f"{sig_name} is not a valid SSH signature ({_reason(exc)})") from None
    if not canonical:
        raise SignatureError(f"{sig_name} is not a valid SSH signature (truncated, or extra data in it)")
    namespace = _printable(sig.namespace.decode("ascii", "replace"))
    if namespace != NAMESPACE:
        raise SignatureError(
            f'{what}: the SSH signature {sig_name} is for namespace "{namespace}", not "{NAMESPACE}" '
            f"(sign with: ssh-keygen -Y sign -n {NAMESPACE} -f KEY FILE)"
        )
    if key_type != _ED25519 or sig_type != _ED25519.encode():
        raise SignatureError(f"{what} is signed with a {key_type} key; vmsentinel accepts only {_ED25519} signatures")
    if sig.hash_algo not in _SSH_HASHES:
        raise SignatureError(f"{sig_name} uses hash {sig.hash_algo!r}; only sha256 and sha512 are allowed")
    try:
        embedded = SshPublicKey.from_ssh_encoding(sig.public_key)
        fingerprint = embedded.sha256_str()
    except Exception as exc:
        raise SignatureError(f"{sig_name} is not a valid SSH signature (its key: {_reason(exc)})") from None
    who = f"{_ED25519} {fingerprint}"
    matches = [(k, s) for k in keys if k.kind in ("openssh", "allowed_signers") for s in k.ssh_signers if s.key == embedded]
    if not matches:
        raise SignatureError(f"{what} is signed by {who}; none of the trusted keys ({_sources(keys)}) is that key")
    result: object
    try:
        result = do_sshsig_verify(sig, io.BytesIO(data), NAMESPACE)
    except Exception as exc:  # the library asserts and raises on some malformed blobs
        result = InvalidSshSignature(_reason(exc))
    if not isinstance(result, SshPublicKey) or result != embedded:
        raise SignatureError(
            f"{what}: SSH signature {sig_name} does not match for {who} (from {matches[0][0].source}); "
            "the file or its signature was altered"
        )
    refusals: list[str] = []
    for key, signer in matches:
        label = who if signer.principals is None else f"{who} (principal {signer.principals})"
        refusal = _policy_refusal(signer, key.source, now, label)
        if refusal is None:
            if key.kind == "openssh":
                described = f"{who} (from {key.source})"
            else:
                described = f"{who} (principal {signer.principals} in allowed_signers {key.source})"
            return Verified(kind="sshsig", signer=described, key_source=key.source)
        refusals.append(refusal)
    raise SignatureError(f"{what}: {refusals[0]}")


# ---------------------------------------------------------------------------- public API


def _sources(keys: Sequence[TrustedKey]) -> str:
    return ", ".join(dict.fromkeys(k.source for k in keys))


def load_trusted_key(path: PathArg) -> TrustedKey:
    """Load a minisign public key, an OpenSSH ``ssh-ed25519`` public key line, or an
    allowed_signers file, telling them apart by content so any can be given as ``--key``."""
    source = os.fspath(path)
    raw = _read_capped(path, KEY_FILE_MAX_BYTES, "key file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError(f"{source} is not a key file (it is not ASCII text)") from None
    stripped = text.strip()
    if not stripped:
        raise SignatureError(f"{source} is empty; expected a minisign or OpenSSH public key or an allowed_signers file")
    if stripped.startswith(_MINISIGN_PREFIX):
        return _load_minisign_key(source, stripped)
    if stripped.startswith("-----BEGIN") and "PRIVATE KEY" in stripped.splitlines()[0]:
        raise SignatureError(f"{source} is a private key; trust its public key (the .pub file) instead")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SignatureError(f"{source} holds no keys")
    if len(lines) == 1 and _BARE_MINISIGN_KEY.fullmatch(lines[0]):
        return _load_bare_minisign_key(source, lines[0])
    if _SSH_KEY_TYPE.fullmatch(lines[0].split()[0]):
        return _load_openssh_key(source, lines)
    return _load_allowed_signers(source, text)


def load_trusted_keys(paths: Iterable[PathArg]) -> list[TrustedKey]:
    """Load every key file, failing on the first bad one: a typo in a trusted key must not pass unnoticed."""
    return [load_trusted_key(p) for p in paths]


def find_signature(path: PathArg) -> Path:
    """The signature next to a file: ``FILE.minisig`` (minisign) first, then ``FILE.sig``
    (the name ``ssh-keygen -Y sign`` writes)."""
    base = os.fspath(path)
    for suffix in (".minisig", ".sig"):
        candidate = Path(base + suffix)
        if candidate.exists():
            return candidate
    raise SignatureError(f"no signature for {base} (looked for {base}.minisig and {base}.sig)")


def verify_bytes(
    data: bytes,
    signature: bytes,
    keys: Sequence[TrustedKey],
    what: str = "data",
    now: datetime | None = None,
    *,
    signature_name: str | None = None,
) -> Verified:
    """Check ``signature`` (minisign or armored SSHSIG, told apart by content) over ``data``
    against the trusted keys; return who signed or raise :class:`SignatureError`."""
    sig_name = signature_name or f"the signature of {what}"
    if len(signature) > SIGNATURE_MAX_BYTES:
        raise SignatureError(f"{sig_name} is larger than {SIGNATURE_MAX_BYTES // 1024} KiB; that is not a signature")
    if not keys:
        raise SignatureError(f"{what}: no trusted keys given to check its signature against")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    head = signature.lstrip()
    if head.startswith(_MINISIGN_PREFIX.encode()):
        return _verify_minisign(data, signature, keys, what, sig_name)
    if head.startswith(_SSH_BEGIN.encode()):
        return _verify_sshsig(data, head, keys, what, sig_name, now)
    raise SignatureError(f"{sig_name} is neither a minisign signature nor an SSH signature")


def verify_file(path: PathArg, signature_path: PathArg, keys: Sequence[TrustedKey], now: datetime | None = None) -> Verified:
    """Check the signature file of a file; see :func:`verify_bytes`."""
    signature = _read_capped(signature_path, SIGNATURE_MAX_BYTES, "signature file")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{os.fspath(path)} does not exist") from None
    except OSError as exc:
        raise SignatureError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    return verify_bytes(data, signature, keys, os.fspath(path), now, signature_name=os.fspath(signature_path))


def _write_new(path: Path, content: bytes, mode: int) -> None:
    """Create a file that must not exist yet (O_EXCL, no symlink following) with ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
    finally:
        os.close(fd)


def new_key(prefix: PathArg, comment: str = "vmsentinel signing key") -> tuple[Path, Path]:
    """Generate a minisign key pair: ``PREFIX.key`` (secret, unencrypted, mode 0600) and
    ``PREFIX.pub``. Unencrypted so an unattended signer can use it; the file mode is its
    protection. Existing files are never overwritten: losing a key is not recoverable."""
    base = os.fspath(prefix)
    key_path, pub_path = Path(base + ".key"), Path(base + ".pub")
    for existing in (key_path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise SignatureError(f"{existing} already exists; refusing to overwrite a key")
    pair = minisign.KeyPair.generate()
    key_id = _minisign_key_id(pair.public_key)
    try:
        pair.public_key.untrusted_comment = f"{comment} - minisign public key {key_id}"
        pair.secret_key.untrusted_comment = f"{comment} - minisign secret key {key_id}, unencrypted"
        secret = bytes(pair.secret_key) + b"\n"
        public = bytes(pair.public_key) + b"\n"
    except minisign.Error as exc:
        raise SignatureError(f"bad key comment {comment!r}: {_reason(exc)} (one line of printable ASCII)") from None
    finally:
        pair.secret_key.wipe()
    try:
        _write_new(key_path, secret, 0o600)
    except OSError as exc:
        raise SignatureError(f"cannot write {key_path}: {exc.strerror or exc}") from None
    try:
        _write_new(pub_path, public, 0o644)
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise SignatureError(f"cannot write {pub_path}: {exc.strerror or exc}") from None
    return key_path, pub_path


def _load_secret_key(secret_key_path: PathArg) -> Any:
    """Read an unencrypted minisign secret key and make sure its secret and public halves
    belong together, so a damaged key file cannot produce signatures nobody accepts."""
    key_name = os.fspath(secret_key_path)
    raw = _read_capped(secret_key_path, KEY_FILE_MAX_BYTES, "secret key file")
    try:
        secret = minisign.SecretKey.from_bytes(raw.strip() + b"\n")
        encrypted = bool(secret.is_encrypted())
    except Exception as exc:
        raise SignatureError(f"{key_name} is not a minisign secret key ({_reason(exc)})") from None
    if encrypted:
        secret.wipe()
        raise SignatureError(
            f"{key_name} is password-protected; vmsentinel signs only with unencrypted keys "
            f"(remove the password with: minisign -C -W -s {key_name})"
        )
    probe = b"vmsentinel key self-test"
    try:
        secret.get_public_key().verify(probe, secret.sign(probe, prehash=True, trusted_comment="self-test"))
    except Exception:
        secret.wipe()
        raise SignatureError(f"{key_name} is damaged: its secret and public halves do not match") from None
    return secret


def sign_file(path: PathArg, secret_key_path: PathArg, trusted_comment: str | None = None) -> Path:
    """Sign a file with a minisign secret key, in minisign's prehashed ("ED") format (what
    minisign 0.11 writes by default), and write ``FILE.minisig`` atomically."""
    file_name = os.fspath(path)
    if trusted_comment is None:
        trusted_comment = f"timestamp:{int(time.time())}\tfile:{os.path.basename(file_name)}\thashed"
    with _load_secret_key(secret_key_path) as secret:
        try:
            with open(file_name, "rb") as f:
                signature = secret.sign(f, prehash=True, trusted_comment=trusted_comment)
        except OSError as exc:
            raise SignatureError(f"cannot read {file_name}: {exc.strerror or exc}") from None
        except minisign.Error as exc:
            raise SignatureError(f"cannot sign {file_name}: {_reason(exc)}") from None
    out = Path(file_name + ".minisig")
    content = bytes(signature) + b"\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise SignatureError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def secret_key_signer(secret_key_path: PathArg) -> Callable[[bytes], bytes]:
    """A function that signs a message with a minisign secret key and returns the ``.minisig``
    text, which :func:`verify_bytes` (or ``minisign -V``) checks. For the record sinks, which
    sign their chain heads as they go: the key is read and checked once, up front, so a bad
    key stops the sentinel at start rather than at its first alert."""
    secret = _load_secret_key(secret_key_path)

    def sign(message: bytes) -> bytes:
        signature = secret.sign(message, prehash=True, trusted_comment=f"timestamp:{int(time.time())}")
        return bytes(signature) + b"\n"

    return sign


def public_key_of_secret(secret_key_path: PathArg) -> TrustedKey:
    """The public half of a minisign secret key, as a trusted key: what the sentinel itself signed
    with its record key (its stored baselines) it checks with the same key when it reads it back."""
    secret = _load_secret_key(secret_key_path)
    try:
        public = secret.get_public_key()
        return TrustedKey(
            source=os.fspath(secret_key_path), kind="minisign", key_id=_minisign_key_id(public), minisign_key=public
        )
    finally:
        secret.wipe()
