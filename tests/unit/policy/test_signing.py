"""Signatures made by the real minisign and ssh-keygen tools verify, and every kind of bad
signature is refused with a reason that says why (never a crash)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import minisign  # type: ignore[import-untyped]
import pytest
from sshsig.sshsig import SshsigSignature
from typer.testing import CliRunner

from vmsentinel.cli.key_cmd import app
from vmsentinel.errors import SignatureError
from vmsentinel.trust.signing import (
    NAMESPACE,
    TrustedKey,
    Verified,
    find_signature,
    load_trusted_key,
    load_trusted_keys,
    new_key,
    secret_key_signer,
    sign_file,
    verify_bytes,
    verify_file,
)

MINISIGN = shutil.which("minisign")
SSH_KEYGEN = shutil.which("ssh-keygen")
POLICY = b"rules:\n  - id: no-hidden-modules\n    action: alert\n"
runner = CliRunner()


def _tool(path: str | None, name: str) -> str:
    assert path is not None, f"{name} is not installed (scripts/setup installs it)"
    return path


def run(*args: str, cwd: Path, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(args, cwd=cwd, input=stdin if stdin is not None else b"", capture_output=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout!r} {proc.stderr!r}"
    return proc


def policy_file(tmp_path: Path, name: str = "policy.yaml", content: bytes = POLICY) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def minisign_pair(tmp_path: Path, name: str = "ops") -> tuple[Path, Path]:
    """(public, secret) made by ``minisign -G -W`` (no password)."""
    pub, sec = tmp_path / f"{name}.pub", tmp_path / f"{name}.key"
    run(_tool(MINISIGN, "minisign"), "-G", "-W", "-p", str(pub), "-s", str(sec), cwd=tmp_path)
    return pub, sec


def minisign_sign(tmp_path: Path, secret: Path, file: Path, *extra: str) -> Path:
    run(_tool(MINISIGN, "minisign"), "-S", *extra, "-s", str(secret), "-m", str(file), cwd=tmp_path)
    return Path(f"{file}.minisig")


def cli_key_id(pub: Path) -> str:
    """The key id as the minisign CLI wrote it in the public key's comment."""
    comment = pub.read_text().splitlines()[0]
    assert comment.startswith("untrusted comment: minisign public key ")
    return comment.rsplit(" ", 1)[1]


def ssh_pair(tmp_path: Path, name: str = "ops", kind: str = "ed25519", comment: str = "ops@example") -> Path:
    """The private key path (the public key is next to it, .pub)."""
    key = tmp_path / f"id_{name}"  # not NAME.pub: that is where minisign_pair writes
    bits = ["-b", "2048"] if kind == "rsa" else []
    run(_tool(SSH_KEYGEN, "ssh-keygen"), "-q", "-t", kind, *bits, "-N", "", "-f", str(key), "-C", comment, cwd=tmp_path)
    return key


def ssh_sign(tmp_path: Path, key: Path, file: Path, namespace: str = NAMESPACE) -> Path:
    run(_tool(SSH_KEYGEN, "ssh-keygen"), "-Y", "sign", "-f", str(key), "-n", namespace, str(file), cwd=tmp_path)
    return Path(f"{file}.sig")


def allowed_signers(tmp_path: Path, key: Path, options: str, principal: str = "ops@example") -> Path:
    pub_line = Path(f"{key}.pub").read_text().strip()
    path = tmp_path / "allowed_signers"
    path.write_text(f"# vmsentinel signers\n{principal} {options}{' ' if options else ''}{pub_line}\n")
    return path


def fingerprint(key: Path) -> str:
    proc = run(_tool(SSH_KEYGEN, "ssh-keygen"), "-l", "-f", f"{key}.pub", cwd=key.parent)
    return proc.stdout.decode().split()[1]


def ssh_keygen_accepts(tmp_path: Path, allowed: Path, sig: Path, file: Path) -> bool:
    """What ``ssh-keygen -Y verify`` itself says about the same signature and allowed_signers."""
    proc = run(
        _tool(SSH_KEYGEN, "ssh-keygen"),
        *("-Y", "verify", "-f", str(allowed), "-I", "ops@example", "-n", NAMESPACE, "-s", str(sig)),
        cwd=tmp_path,
        stdin=file.read_bytes(),
        check=False,
    )
    return proc.returncode == 0


def refused(file: Path, sig: Path, keys: list[TrustedKey], now: datetime | None = None) -> str:
    with pytest.raises(SignatureError) as info:
        verify_file(file, sig, keys, now=now)
    return str(info.value)


def replace_char(line: str, index: int) -> str:
    """Change one base64 character to another valid one, so the text still parses."""
    new = "A" if line[index] != "A" else "B"
    return line[:index] + new + line[index + 1 :]


# ---------------------------------------------------------------------------- minisign CLI -> us


def test_minisign_cli_prehashed_signature_verifies(tmp_path: Path) -> None:
    pub, sec = minisign_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = minisign_sign(tmp_path, sec, file)
    assert base64.b64decode(sig.read_text().splitlines()[1])[:2] == b"ED"  # minisign 0.11 prehashes by default
    key = load_trusted_key(pub)
    assert key.kind == "minisign" and key.key_id == cli_key_id(pub)
    verified = verify_file(file, sig, [key])
    assert verified == Verified(
        kind="minisign",
        signer=f"minisign key {cli_key_id(pub)} (from {pub})",
        key_source=str(pub),
        trusted_comment=verified.trusted_comment,
    )
    assert verified.trusted_comment is not None and "file:policy.yaml" in verified.trusted_comment


def test_minisign_cli_legacy_signature_verifies(tmp_path: Path) -> None:
    usage = run(_tool(MINISIGN, "minisign"), "-h", cwd=tmp_path, check=False)
    assert b"-l                sign using the legacy format" in usage.stdout + usage.stderr
    pub, sec = minisign_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = minisign_sign(tmp_path, sec, file, "-l")
    assert base64.b64decode(sig.read_text().splitlines()[1])[:2] == b"Ed"
    assert verify_file(file, sig, load_trusted_keys([pub])).kind == "minisign"


def test_bare_base64_minisign_public_key_is_accepted(tmp_path: Path) -> None:
    """The one-line form ``minisign -P`` takes on the command line."""
    pub, sec = minisign_pair(tmp_path)
    bare = tmp_path / "bare.pub"
    bare.write_text(pub.read_text().splitlines()[1] + "\n")
    file = policy_file(tmp_path)
    sig = minisign_sign(tmp_path, sec, file)
    assert verify_file(file, sig, [load_trusted_key(bare)]).signer == f"minisign key {cli_key_id(pub)} (from {bare})"


@pytest.mark.parametrize("key_id", [bytes.fromhex("0102030405060708"), bytes.fromhex("01020304050607f0")])
def test_key_id_is_written_as_the_minisign_cli_writes_it(tmp_path: Path, key_id: bytes) -> None:
    """``minisign -R`` rebuilds the public key from our secret key and prints the id its way
    (little-endian, no leading zeros): ours must read the same, or operators cannot match them."""
    pair = minisign.KeyPair.generate()
    pair.secret_key._keynum_sk.key_id[:] = key_id
    pair.secret_key._update_checksum()
    secret = tmp_path / "crafted.key"
    secret.write_bytes(bytes(pair.secret_key) + b"\n")
    pub = tmp_path / "crafted.pub"
    run(_tool(MINISIGN, "minisign"), "-R", "-s", str(secret), "-p", str(pub), cwd=tmp_path)
    assert load_trusted_key(pub).key_id == cli_key_id(pub) == f"{int.from_bytes(key_id, 'little'):X}"
    file = policy_file(tmp_path)
    assert cli_key_id(pub) in verify_file(file, sign_file(file, secret), [load_trusted_key(pub)]).signer


# ---------------------------------------------------------------------------- ssh-keygen -> us


def test_ssh_signature_verifies_with_public_key_and_allowed_signers(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    fp = fingerprint(key)
    by_pub = verify_file(file, sig, [load_trusted_key(f"{key}.pub")])
    assert by_pub == Verified(kind="sshsig", signer=f"ssh-ed25519 {fp} (from {key}.pub)", key_source=f"{key}.pub")
    allowed = allowed_signers(tmp_path, key, 'namespaces="vmsentinel"')
    assert ssh_keygen_accepts(tmp_path, allowed, sig, file)
    trusted = load_trusted_key(allowed)
    assert trusted.kind == "allowed_signers"
    by_allowed = verify_file(file, sig, [trusted])
    assert by_allowed.signer == f"ssh-ed25519 {fp} (principal ops@example in allowed_signers {allowed})"


@pytest.mark.parametrize(
    "options",
    [
        "",
        'namespaces="vmsentinel"',
        'namespaces="git,vmsentinel"',
        'namespaces="vmsentinel*"',
        'namespaces="*"',
        'namespaces="vm?entinel"',
        'valid-after="20200101",valid-before="29991231"',
        'namespaces="vmsentinel",valid-after="202001011200"',
    ],
)
def test_allowed_signers_options_that_allow_us_agree_with_ssh_keygen(tmp_path: Path, options: str) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    allowed = allowed_signers(tmp_path, key, options)
    assert ssh_keygen_accepts(tmp_path, allowed, sig, file)
    assert verify_file(file, sig, [load_trusted_key(allowed)]).kind == "sshsig"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ('namespaces="git"', 'may not sign for namespace "vmsentinel" (namespaces="git" in {allowed} line 2)'),
        ('namespaces="git,file"', 'namespaces="git,file"'),
        ('namespaces="*,!vmsentinel"', 'namespaces="*,!vmsentinel"'),
        ('valid-before="20200101"', "expired on 2020-01-01 00:00:00 UTC (valid-before in {allowed} line 2)"),
        ('valid-after="29990101"', "is not valid before 2999-01-01 00:00:00 UTC (valid-after in {allowed} line 2)"),
    ],
)
def test_allowed_signers_options_that_refuse_us_agree_with_ssh_keygen(tmp_path: Path, options: str, reason: str) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    allowed = allowed_signers(tmp_path, key, options)
    assert not ssh_keygen_accepts(tmp_path, allowed, sig, file)
    message = refused(file, sig, [load_trusted_key(allowed)])
    assert reason.format(allowed=allowed) in message
    assert f"key ssh-ed25519 {fingerprint(key)} (principal ops@example)" in message


def test_validity_dates_are_checked_against_the_given_time(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    keys = [load_trusted_key(allowed_signers(tmp_path, key, 'valid-after="20290101",valid-before="20300101123000"'))]
    assert verify_file(file, sig, keys, now=datetime(2029, 6, 1, tzinfo=UTC)).kind == "sshsig"
    assert verify_file(file, sig, keys, now=datetime(2030, 1, 1, 12, 30)).kind == "sshsig"  # naive = UTC, bound inclusive
    assert "expired on 2030-01-01 12:30:00 UTC" in refused(file, sig, keys, now=datetime(2030, 1, 1, 12, 30, 1, tzinfo=UTC))
    assert "is not valid before 2029-01-01" in refused(file, sig, keys, now=datetime(2028, 12, 31, 23, 59, tzinfo=UTC))


def test_one_permitting_line_is_enough_when_a_key_appears_twice(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    pub_line = Path(f"{key}.pub").read_text().strip()
    allowed = tmp_path / "allowed"
    allowed.write_text(f'git@example namespaces="git" {pub_line}\n"ops team" namespaces="vmsentinel" {pub_line}\n')
    assert "(principal ops team in allowed_signers" in verify_file(file, sig, [load_trusted_key(allowed)]).signer


# ---------------------------------------------------------------------------- refusals


def test_flipped_byte_in_data_is_refused(tmp_path: Path) -> None:
    pub, sec = minisign_pair(tmp_path)
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    msig = minisign_sign(tmp_path, sec, file)
    ssig = ssh_sign(tmp_path, key, file)
    keys = load_trusted_keys([pub, f"{key}.pub"])
    assert verify_file(file, msig, keys).kind == "minisign" and verify_file(file, ssig, keys).kind == "sshsig"
    tampered = bytearray(POLICY)
    tampered[10] ^= 0x01
    file.write_bytes(bytes(tampered))
    assert "does not match" in refused(file, msig, keys)
    assert "does not match" in refused(file, ssig, keys)
    message = refused(file, ssig, keys)
    assert str(file) in message and fingerprint(key) in message


def test_flipped_byte_in_minisign_signature_is_refused(tmp_path: Path) -> None:
    pub, sec = minisign_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = minisign_sign(tmp_path, sec, file)
    keys = [load_trusted_key(pub)]
    original = sig.read_text().splitlines()
    for line_no, index in ((1, 40), (3, 20)):  # the file signature, then the global signature
        lines = list(original)
        lines[line_no] = replace_char(lines[line_no], index)
        sig.write_text("\n".join(lines) + "\n")
        message = refused(file, sig, keys)
        assert "does not match" in message and cli_key_id(pub) in message
    lines = list(original)
    lines[2] = lines[2].replace("timestamp:", "timestamp:1")  # the trusted comment is signed too
    sig.write_text("\n".join(lines) + "\n")
    assert "does not match" in refused(file, sig, keys)
    lines = list(original)
    lines[0] = "untrusted comment: anyone may change this line"
    sig.write_text("\n".join(lines) + "\n")
    assert verify_file(file, sig, keys).kind == "minisign"


def test_flipped_byte_in_ssh_signature_is_refused(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    keys = [load_trusted_key(f"{key}.pub")]
    lines = sig.read_text().splitlines()
    assert lines[-1] == "-----END SSH SIGNATURE-----"
    lines[-2] = replace_char(lines[-2], 5)  # the last armored line lies inside the Ed25519 signature
    sig.write_text("\n".join(lines) + "\n")
    message = refused(file, sig, keys)
    assert "does not match" in message and fingerprint(key) in message


def test_wrong_minisign_key_is_an_unknown_key_id(tmp_path: Path) -> None:
    pub, sec = minisign_pair(tmp_path, "ops")
    other_pub, _ = minisign_pair(tmp_path, "other")
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = minisign_sign(tmp_path, sec, file)
    message = refused(file, sig, load_trusted_keys([other_pub, f"{key}.pub"]))
    assert message == (
        f"{file} is signed by minisign key ID {cli_key_id(pub)}; none of the trusted keys ({other_pub}, {key}.pub) has that ID"
    )


def test_minisign_key_with_the_right_id_but_wrong_key_is_refused(tmp_path: Path) -> None:
    """A key id is a label, not an identity: the key itself must verify the signature."""
    pub, sec = minisign_pair(tmp_path, "ops")
    other_pub, _ = minisign_pair(tmp_path, "other")
    raw_ops = base64.b64decode(pub.read_text().splitlines()[1])
    raw_other = base64.b64decode(other_pub.read_text().splitlines()[1])
    forged = tmp_path / "forged.pub"
    forged.write_text("untrusted comment: forged\n" + base64.b64encode(raw_ops[:10] + raw_other[10:]).decode() + "\n")
    file = policy_file(tmp_path)
    sig = minisign_sign(tmp_path, sec, file)
    assert "does not match" in refused(file, sig, [load_trusted_key(forged)])


def test_wrong_ssh_key_is_refused(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path, "ops")
    other = ssh_pair(tmp_path, "other", comment="other@example")
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    message = refused(file, sig, [load_trusted_key(f"{other}.pub"), load_trusted_key(allowed_signers(tmp_path, other, ""))])
    assert f"is signed by ssh-ed25519 {fingerprint(key)}; none of the trusted keys" in message
    assert "is that key" in message


@pytest.mark.parametrize("namespace", ["git", "file"])
def test_wrong_namespace_is_refused(tmp_path: Path, namespace: str) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file, namespace=namespace)
    message = refused(file, sig, [load_trusted_key(f"{key}.pub")])
    assert f'is for namespace "{namespace}", not "vmsentinel"' in message


def test_hostile_namespace_is_reported_on_one_line(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = SshsigSignature.from_armored(ssh_sign(tmp_path, key, file).read_text())
    sig.namespace = b"vmsentinel\ninvalid: nothing"
    with pytest.raises(SignatureError) as info:
        verify_bytes(POLICY, sig.to_armored().encode(), [load_trusted_key(f"{key}.pub")])
    assert "\n" not in str(info.value), str(info.value)
    assert "is for namespace \"'vmsentinel\\ninvalid: nothing'\"" in str(info.value)


def test_cert_authority_lines_are_refused(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    allowed = allowed_signers(tmp_path, key, "cert-authority", principal="*@example")
    with pytest.raises(SignatureError, match=r"line 2: cert-authority lines are not supported"):
        load_trusted_key(allowed)


def test_rsa_keys_and_signatures_are_refused(tmp_path: Path) -> None:
    rsa = ssh_pair(tmp_path, "rsa", kind="rsa")
    ed = ssh_pair(tmp_path, "ed")
    file = policy_file(tmp_path)
    with pytest.raises(SignatureError, match=r"ssh-rsa keys are not accepted; vmsentinel trusts only ssh-ed25519"):
        load_trusted_key(f"{rsa}.pub")
    with pytest.raises(SignatureError, match=r"line 2: ssh-rsa keys are not accepted"):
        load_trusted_key(allowed_signers(tmp_path, rsa, 'namespaces="vmsentinel"'))
    sig = ssh_sign(tmp_path, rsa, file)
    message = refused(file, sig, [load_trusted_key(f"{ed}.pub")])
    assert "is signed with a ssh-rsa key; vmsentinel accepts only ssh-ed25519" in message


GARBAGE = [
    b"",
    b"\x00\xff" * 200,
    b"hello world\n",
    b"untrusted comment: x\n",
    b"untrusted comment: x\nnot base64!\ntrusted comment: y\nAAAA\n",
    b"untrusted comment: x\nRUQAAAAA\ntrusted comment: y\nAAAA\n",
    b"-----BEGIN SSH SIGNATURE-----\n",
    b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
    b"-----BEGIN SSH SIGNATURE-----\n%%%%\n-----END SSH SIGNATURE-----\n",
    b"-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(b"SSHSIG\x00\x00\x00\x02") + b"\n-----END SSH SIGNATURE-----\n",
    b"-----BEGIN SSH SIGNATURE-----\n\xc3\xa9\n-----END SSH SIGNATURE-----\n",
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_signature_is_refused_with_a_reason(tmp_path: Path, garbage: bytes) -> None:
    pub, _ = minisign_pair(tmp_path)
    key = ssh_pair(tmp_path)
    keys = load_trusted_keys([pub, f"{key}.pub"])
    file = policy_file(tmp_path)
    sig = tmp_path / "policy.yaml.sig"
    sig.write_bytes(garbage)
    message = refused(file, sig, keys)
    assert str(sig) in message and ("not a valid" in message or "neither a minisign" in message)


def test_every_truncation_and_byte_change_gives_signature_error_or_verifies(tmp_path: Path) -> None:
    """Hostile signatures: whatever the bytes, the answer is Verified or SignatureError."""
    pub, sec = minisign_pair(tmp_path)
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    keys = load_trusted_keys([pub, f"{key}.pub"])
    signatures = [minisign_sign(tmp_path, sec, file).read_bytes(), ssh_sign(tmp_path, key, file).read_bytes()]
    outcomes: dict[str, int] = {"verified": 0, "refused": 0}
    for good in signatures:
        variants = [good[:n] for n in range(len(good))]
        for i in range(len(good)):
            for value in (good[i] ^ 0x01, good[i] ^ 0x20, 0x0A, 0x80, 0x3D):
                variants.append(good[:i] + bytes([value]) + good[i + 1 :])
        for variant in variants:
            try:
                assert isinstance(verify_bytes(POLICY, variant, keys, what="policy.yaml"), Verified)
                outcomes["verified"] += 1
            except SignatureError as exc:
                assert str(exc) and "\n" not in str(exc)  # one line, whatever the hostile bytes were
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0.9 * (outcomes["refused"] + outcomes["verified"])


def test_oversized_signature_and_key_files_are_refused(tmp_path: Path) -> None:
    pub, _ = minisign_pair(tmp_path)
    file = policy_file(tmp_path)
    big_sig = tmp_path / "big.sig"
    big_sig.write_bytes(b"untrusted comment: " + b"A" * (64 * 1024))
    assert "larger than 64 KiB" in refused(file, big_sig, [load_trusted_key(pub)])
    with pytest.raises(SignatureError, match="larger than 64 KiB"):
        verify_bytes(POLICY, big_sig.read_bytes(), [load_trusted_key(pub)])
    big_key = tmp_path / "big.pub"
    big_key.write_bytes(b"# " + b"A" * (1024 * 1024) + b"\n")
    with pytest.raises(SignatureError, match="larger than 1024 KiB"):
        load_trusted_key(big_key)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b"\xff\xfe\x00", "not ASCII"),
        (b"just some text\n", "is not a minisign public key, an OpenSSH public key or an allowed_signers file"),
        (b"untrusted comment: x\nRWQ\n", "is not a valid minisign public key"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDOE\n", "malformed ssh-ed25519 public key"),
        (b"ssh-ed25519\n", "is not a valid OpenSSH public key"),
        (b"ecdsa-sha2-nistp256 AAAA\n", "ecdsa-sha2-nistp256 keys are not accepted"),
        (b'ops@example namespaces="vmsentinel ssh-ed25519 AAAA\n', "not a minisign public key"),
        (b"# only comments\n\n", "holds no keys"),
    ],
)
def test_bad_key_files_are_refused_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(SignatureError) as info:
        load_trusted_key(path)
    assert reason in str(info.value) and str(path) in str(info.value)


def test_secret_keys_given_as_trusted_keys_are_refused(tmp_path: Path) -> None:
    _, sec = minisign_pair(tmp_path)
    key = ssh_pair(tmp_path)
    for secret in (sec, key):
        with pytest.raises(SignatureError, match="trust its public key"):
            load_trusted_key(secret)
    with pytest.raises(SignatureError, match="does not exist"):
        load_trusted_key(tmp_path / "missing.pub")


def test_verify_bytes_needs_keys_and_a_known_format(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_bytes(POLICY, b"untrusted comment: x\n", [])
    pub, _ = minisign_pair(tmp_path)
    with pytest.raises(SignatureError, match="neither a minisign signature nor an SSH signature"):
        verify_bytes(POLICY, b"-----BEGIN PGP SIGNATURE-----\n", [load_trusted_key(pub)])


def test_find_signature_prefers_minisig_then_sig(tmp_path: Path) -> None:
    file = policy_file(tmp_path)
    with pytest.raises(SignatureError) as info:
        find_signature(file)
    assert str(info.value) == f"no signature for {file} (looked for {file}.minisig and {file}.sig)"
    Path(f"{file}.sig").write_text("x")
    assert find_signature(file) == Path(f"{file}.sig")
    Path(f"{file}.minisig").write_text("x")
    assert find_signature(str(file)) == Path(f"{file}.minisig")


# ---------------------------------------------------------------------------- us -> minisign CLI


def test_new_key_and_sign_file_interoperate_with_minisign_cli(tmp_path: Path) -> None:
    secret, public = new_key(tmp_path / "signer")
    assert (secret, public) == (tmp_path / "signer.key", tmp_path / "signer.pub")
    assert secret.stat().st_mode & 0o777 == 0o600
    file = policy_file(tmp_path)
    sig = sign_file(file, secret, trusted_comment="policy v7")
    assert sig == Path(f"{file}.minisig")
    assert base64.b64decode(sig.read_text().splitlines()[1])[:2] == b"ED"
    proc = run(_tool(MINISIGN, "minisign"), "-V", "-p", str(public), "-m", str(file), cwd=tmp_path)
    assert b"Trusted comment: policy v7" in proc.stdout
    run(_tool(MINISIGN, "minisign"), "-V", "-H", "-p", str(public), "-m", str(file), cwd=tmp_path)  # -H: must be prehashed
    file.write_bytes(POLICY + b"#")
    assert run(_tool(MINISIGN, "minisign"), "-V", "-p", str(public), "-m", str(file), cwd=tmp_path, check=False).returncode != 0
    # the minisign CLI signs with our secret key, and we check it with our public key
    other = policy_file(tmp_path, "other.yaml")
    cli_sig = minisign_sign(tmp_path, secret, other)
    verified = verify_file(other, cli_sig, [load_trusted_key(public)])
    assert verified.signer == f"minisign key {load_trusted_key(public).key_id} (from {public})"
    library_public = minisign.PublicKey.from_file(str(public))
    library_public.verify(other.read_bytes(), minisign.Signature.from_file(str(cli_sig)))  # raises if not valid


def test_sign_file_default_trusted_comment_matches_minisign(tmp_path: Path) -> None:
    secret, public = new_key(tmp_path / "signer", comment="ops signing key")
    assert public.read_text().startswith("untrusted comment: ops signing key - minisign public key ")
    file = policy_file(tmp_path)
    verified = verify_file(file, sign_file(file, secret), [load_trusted_key(public)])
    assert verified.trusted_comment is not None
    assert verified.trusted_comment.startswith("timestamp:") and verified.trusted_comment.endswith("\tfile:policy.yaml\thashed")


def test_new_key_never_overwrites(tmp_path: Path) -> None:
    secret, public = new_key(tmp_path / "signer")
    before = secret.read_bytes(), public.read_bytes()
    with pytest.raises(SignatureError, match="already exists; refusing to overwrite"):
        new_key(tmp_path / "signer")
    public.unlink()
    with pytest.raises(SignatureError, match=r"signer\.key already exists"):
        new_key(tmp_path / "signer")
    assert secret.read_bytes() == before[0] and not public.exists()
    with pytest.raises(SignatureError, match="bad key comment"):
        new_key(tmp_path / "other", comment="two\nlines")
    assert not (tmp_path / "other.key").exists()


def test_sign_file_refuses_encrypted_damaged_and_non_keys(tmp_path: Path) -> None:
    file = policy_file(tmp_path)
    pair = minisign.KeyPair.generate()
    pair.secret_key.encrypt("pw", opslimit=1 << 15, memlimit=1 << 24)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(bytes(pair.secret_key) + b"\n")
    with pytest.raises(SignatureError, match="password-protected"):
        sign_file(file, encrypted)
    secret, _ = new_key(tmp_path / "signer")
    lines = secret.read_text().splitlines()
    raw = bytearray(base64.b64decode(lines[1]))
    raw[-40] ^= 0x01  # a byte of the stored public key: the halves no longer match
    damaged = tmp_path / "damaged.key"
    damaged.write_text(lines[0] + "\n" + base64.b64encode(bytes(raw)).decode() + "\n")
    with pytest.raises(SignatureError, match="damaged"):
        sign_file(file, damaged)
    with pytest.raises(SignatureError, match="is not a minisign secret key"):
        sign_file(file, file)
    assert not Path(f"{file}.minisig").exists()


def test_secret_key_signer_signs_messages_minisign_and_we_accept(tmp_path: Path) -> None:
    """The record sinks sign their chain heads with this; ``vmsentinel verify-record --key`` checks them."""
    secret, public = new_key(tmp_path / "records")
    sign = secret_key_signer(secret)
    message = b"vmsentinel chain head: alerts.db 42 ab12"
    signature = sign(message)
    keys = [load_trusted_key(public)]
    assert verify_bytes(message, signature, keys, what="chain head").kind == "minisign"
    with pytest.raises(SignatureError, match=r"chain head: minisign signature .* does not match"):
        verify_bytes(message + b"3", signature, keys, what="chain head")
    (tmp_path / "head").write_bytes(message)
    (tmp_path / "head.minisig").write_bytes(signature)
    run(_tool(MINISIGN, "minisign"), "-V", "-p", str(public), "-m", str(tmp_path / "head"), cwd=tmp_path)
    with pytest.raises(SignatureError, match="is not a minisign secret key"):
        secret_key_signer(public)


# ---------------------------------------------------------------------------- the CLI


def test_cli_verify_valid_and_invalid(tmp_path: Path) -> None:
    key = ssh_pair(tmp_path)
    file = policy_file(tmp_path)
    sig = ssh_sign(tmp_path, key, file)
    allowed = allowed_signers(tmp_path, key, 'namespaces="vmsentinel"')
    ok = runner.invoke(app, ["verify", str(file), "--signature", str(sig), "--key", str(allowed)])
    assert ok.exit_code == 0, ok.output
    assert f"valid: {file} signed by ssh-ed25519 {fingerprint(key)} (principal ops@example" in ok.stdout
    file.write_bytes(POLICY + b"\n")
    bad = runner.invoke(app, ["verify", str(file), "--signature", str(sig), "--key", str(allowed)])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("invalid: ") and "does not match" in bad.stderr and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_verify_json(tmp_path: Path) -> None:
    pub, sec = minisign_pair(tmp_path)
    other_pub, _ = minisign_pair(tmp_path, "other")
    file = policy_file(tmp_path)
    minisign_sign(tmp_path, sec, file)
    ok = runner.invoke(app, ["verify", str(file), "--key", str(other_pub), "--key", str(pub), "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["valid"] is True and data["kind"] == "minisign" and data["signature"] == f"{file}.minisig"
    assert data["signer"] == f"minisign key {cli_key_id(pub)} (from {pub})"
    bad = runner.invoke(app, ["verify", str(file), "--key", str(other_pub), "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert data["valid"] is False and f"minisign key ID {cli_key_id(pub)}" in data["reason"]


def test_cli_verify_errors_are_one_line(tmp_path: Path) -> None:
    pub, _ = minisign_pair(tmp_path)
    file = policy_file(tmp_path)
    missing_sig = runner.invoke(app, ["verify", str(file), "--key", str(pub)])
    assert missing_sig.exit_code == 1 and missing_sig.stderr.strip() == (
        f"invalid: no signature for {file} (looked for {file}.minisig and {file}.sig)"
    )
    missing_key = runner.invoke(app, ["verify", str(file), "-s", str(pub), "--key", str(tmp_path / "nope.pub")])
    assert missing_key.exit_code == 2 and "does not exist" in missing_key.stderr
    assert missing_key.exception is None or isinstance(missing_key.exception, SystemExit)
    usage = runner.invoke(app, ["verify", str(file)])
    assert usage.exit_code == 2


def test_cli_new_and_sign_make_files_minisign_accepts(tmp_path: Path) -> None:
    prefix = tmp_path / "release"
    made = runner.invoke(app, ["new", str(prefix), "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert info["secret_key"] == f"{prefix}.key" and info["public_key"] == f"{prefix}.pub"
    assert info["key_id"] == load_trusted_key(f"{prefix}.pub").key_id
    again = runner.invoke(app, ["new", str(prefix)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    file = policy_file(tmp_path)
    signed = runner.invoke(app, ["sign", str(file), "--key", f"{prefix}.key", "--trusted-comment", "from the CLI"])
    assert signed.exit_code == 0, signed.output
    assert f"{file}.minisig" in signed.stdout
    proc = run(_tool(MINISIGN, "minisign"), "-V", "-p", f"{prefix}.pub", "-m", str(file), cwd=tmp_path)
    assert b"Trusted comment: from the CLI" in proc.stdout
    checked = runner.invoke(app, ["verify", str(file), "--key", f"{prefix}.pub"])
    assert checked.exit_code == 0 and "trusted comment: from the CLI" in checked.stdout


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_key_file_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        secret, public = new_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert secret.stat().st_mode & 0o777 == 0o600 and public.stat().st_mode & 0o777 == 0o644
