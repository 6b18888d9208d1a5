"""What load_bundle hands the pipeline (manifest, unpacked folder, policy file, signer), and the
pipeline's side: it parses the policy, refuses a bad one and removes what was unpacked."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest

from vmsentinel.errors import PolicyError
from vmsentinel.pipeline.loading import PolicyLoader, pack_policy_bundle
from vmsentinel.trust.bundle import MANIFEST, POLICY_FILE, load_bundle, pack_bundle
from vmsentinel.trust.signing import load_trusted_keys, new_key, sign_file


def _folder(root: Path, policy: str) -> Path:
    folder = root / "policy"
    folder.mkdir()
    (folder / POLICY_FILE).write_text(policy)
    (folder / "notes.txt").write_text("kept as is\n")
    return folder


def test_load_bundle_returns_what_it_verified_and_unpacked(tmp_path: Path) -> None:
    secret, public = new_key(tmp_path / "ops")
    bundle = tmp_path / "p.vmspolicy"
    manifest = pack_policy_bundle(_folder(tmp_path, "interval = 3.0\n"), bundle)
    sign_file(bundle, secret)

    loaded = load_bundle(bundle, load_trusted_keys([public]))
    try:
        assert loaded.manifest == manifest and set(loaded.manifest["files"]) == {POLICY_FILE, "notes.txt"}
        assert loaded.policy_file == loaded.directory / POLICY_FILE and loaded.policy_file.read_text() == "interval = 3.0\n"
        assert (loaded.directory / "notes.txt").read_text() == "kept as is\n" and not (loaded.directory / MANIFEST).exists()
        assert loaded.path == str(bundle) and loaded.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
        assert "minisign" in loaded.verified.signer
    finally:
        loaded.remove()
    assert not loaded.directory.exists()


def test_the_loader_names_the_bundle_and_signer_as_before(tmp_path: Path) -> None:
    secret, public = new_key(tmp_path / "ops")
    bundle = tmp_path / "p.vmspolicy"
    pack_policy_bundle(_folder(tmp_path, "interval = 3.0\n"), bundle)
    sign_file(bundle, secret)
    active = PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()
    try:
        assert active.policy.interval == 3.0 and active.description.startswith(f"{bundle} (signed: ")
        assert active.policy.source == active.description
    finally:
        active.remove()


def test_packing_refuses_a_policy_that_would_not_load(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "no_such_key = 1\n")
    with pytest.raises(PolicyError, match="unknown section"):
        pack_policy_bundle(folder, tmp_path / "bad.vmspolicy")
    assert not (tmp_path / "bad.vmspolicy").exists()


def test_a_signed_bundle_whose_policy_does_not_parse_is_refused_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, public = new_key(tmp_path / "ops")
    bundle = tmp_path / "p.vmspolicy"
    pack_bundle(_folder(tmp_path, "no_such_key = 1\n"), bundle)  # no check: signed as it is
    sign_file(bundle, secret)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(PolicyError, match="unknown section"):
        PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()
    assert list(scratch.iterdir()) == []  # the unpacked folder went with the refusal
