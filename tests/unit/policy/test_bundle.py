"""Signed policy bundles: pack, sign (our key, the minisign CLI), load only when the signature verifies
against a trusted key, refuse tampering and swapped members, and the CLI's refusal of unsigned policy."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmsentinel.cli.main import app
from vmsentinel.errors import BundleError, PolicyRefused
from vmsentinel.pipeline.loading import PolicyLoader
from vmsentinel.trust.bundle import is_bundle, pack_bundle, read_bundle
from vmsentinel.trust.signing import new_key, sign_file

runner = CliRunner()


def policy_folder(root: Path) -> Path:
    folder = root / "policy"
    (folder / "yara").mkdir(parents=True)
    (folder / "yara" / "marker.yar").write_text('rule m { strings: $a = "x-marker" condition: $a }\n')
    (folder / "policy.toml").write_text('interval = 2.0\n[yara]\nrules = ["yara"]\n[responses]\ncritical = ["pause"]\n')
    return folder


def signed_bundle(tmp_path: Path) -> tuple[Path, Path]:
    secret, public = new_key(tmp_path / "ops")
    bundle = tmp_path / "p.vmspolicy"
    pack_bundle(policy_folder(tmp_path), bundle)
    sign_file(bundle, secret)
    return bundle, public


def test_a_signed_bundle_loads_with_its_files_and_says_who_signed(tmp_path: Path) -> None:
    bundle, public = signed_bundle(tmp_path)
    assert is_bundle(bundle) and not is_bundle(tmp_path / "policy" / "policy.toml")
    active = PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()
    assert active.signed and active.policy.interval == 2.0 and active.policy.by_severity == {"critical": ["pause"]}
    rules = Path(active.policy.yara_rules[0])
    assert (
        (rules / "marker.yar").read_text().startswith("rule m")
        and active.unpacked is not None
        and rules.is_relative_to(active.unpacked)
    )
    assert "minisign" in active.description and bundle in active.watched


def test_packing_is_deterministic(tmp_path: Path) -> None:
    folder = policy_folder(tmp_path)
    pack_bundle(folder, tmp_path / "a")
    pack_bundle(folder, tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_tampered_bundle_wrong_key_and_missing_signature_are_refused(tmp_path: Path) -> None:
    bundle, public = signed_bundle(tmp_path)
    _, other = new_key(tmp_path / "other")
    with pytest.raises(PolicyRefused, match="refused"):
        PolicyLoader(bundle=str(bundle), trusted_keys=[str(other)]).load()
    data = bytearray(bundle.read_bytes())
    data[1024] ^= 1
    bundle.write_bytes(bytes(data))
    with pytest.raises(PolicyRefused, match=str(bundle)):
        PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()
    Path(str(bundle) + ".minisig").unlink()
    with pytest.raises(PolicyRefused, match="no signature"):
        PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()


def test_the_minisign_cli_signs_bundles_too(tmp_path: Path) -> None:
    subprocess.run(
        ["minisign", "-G", "-W", "-p", str(tmp_path / "m.pub"), "-s", str(tmp_path / "m.key")], check=True, capture_output=True
    )
    bundle = tmp_path / "p.vmspolicy"
    pack_bundle(policy_folder(tmp_path), bundle)
    subprocess.run(["minisign", "-S", "-s", str(tmp_path / "m.key"), "-m", str(bundle)], check=True, capture_output=True)
    assert PolicyLoader(bundle=str(bundle), trusted_keys=[str(tmp_path / "m.pub")]).load().policy.interval == 2.0


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_signed_but_malformed_bundles_are_refused_clearly() -> None:
    policy = b"interval = 1.0\n"
    manifest = b'{"kind": "vmsentinel-policy", "version": 1, "files": {"policy.toml": "00"}}'
    with pytest.raises(BundleError, match="does not match its manifest"):
        read_bundle(_tar([("vmsentinel-policy.json", manifest), ("policy.toml", policy)]), "b")
    with pytest.raises(BundleError, match="not a policy bundle"):
        read_bundle(_tar([("vmsentinel-policy.json", b'{"kind": "vmsentinel-allowlist"}')]), "b")
    with pytest.raises(BundleError, match="not a plain relative file"):
        read_bundle(_tar([("../etc/passwd", b"x")]), "b")
    with pytest.raises(BundleError, match="not a policy bundle"):
        read_bundle(b"\x00" * 700 + b"garbage", "b")


def test_the_cli_refuses_a_plain_policy_without_the_unsigned_flag(tmp_path: Path) -> None:
    toml = policy_folder(tmp_path) / "policy.toml"
    refused = runner.invoke(app, ["check", str(tmp_path / "no-such.core"), "--policy", str(toml)])
    assert refused.exit_code == 2 and "not a signed policy bundle" in refused.output
    allowed = runner.invoke(app, ["check", str(tmp_path / "no-such.core"), "--policy", str(toml), "--unsigned-policy"])
    # got past the policy (loudly), then failed on the missing image
    assert (
        "UNSIGNED" in allowed.output and "not a signed policy bundle" not in allowed.output and "no-such.core" in allowed.output
    )


def test_policy_pack_and_verify_commands(tmp_path: Path) -> None:
    folder = policy_folder(tmp_path)
    secret, public = new_key(tmp_path / "ops")
    bundle = tmp_path / "p.vmspolicy"
    assert runner.invoke(app, ["policy", "pack", str(folder), "-o", str(bundle)]).exit_code == 0
    assert runner.invoke(app, ["key", "sign", str(bundle), "--key", str(secret)]).exit_code == 0
    ok = runner.invoke(app, ["policy", "verify", str(bundle), "--trusted-key", str(public), "--json"])
    assert ok.exit_code == 0 and '"accepted": true' in ok.stdout
    bundle.write_bytes(bundle.read_bytes() + b"\0")
    bad = runner.invoke(app, ["policy", "verify", str(bundle), "--trusted-key", str(public)])
    assert bad.exit_code == 1 and "refused" in bad.output


def test_a_tampered_bundle_swapped_in_while_watching_is_refused_and_alerted(tmp_path: Path) -> None:
    import threading
    import time

    from tests.unit.watch.test_watcher import FakeGuest, ListSink

    from vmsentinel.watch.watcher import Watcher

    bundle, public = signed_bundle(tmp_path)
    loader = PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)])
    active = loader.load()
    guest, sink = FakeGuest("g"), ListSink()
    watcher = Watcher(["g"], interval=0.05, sinks=[sink], open_guest=lambda _t: guest, policy=active.policy, loader=loader.load)
    watcher.watched_files = active.watched
    before = watcher.compiled

    def tamper() -> None:
        deadline = time.monotonic() + 30
        while watcher.states[0].sweeps == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the watcher is running (and has seen the bundle as it was)
        data = bytearray(bundle.read_bytes())
        data[700] ^= 0x20  # inside policy.toml's bytes: still a tar, no longer what was signed
        bundle.write_bytes(bytes(data))
        while not any(f.detector == "policy_rejected" for f in sink.findings) and time.monotonic() < deadline:
            time.sleep(0.05)
        watcher.stop()

    threading.Thread(target=tamper).start()
    watcher.run()
    rejected = [f for f in sink.findings if f.detector == "policy_rejected"]
    assert len(rejected) == 1 and str(bundle) in rejected[0].title and "signature" in rejected[0].title.lower()
    assert watcher.compiled is before and watcher.policy.interval == 2.0  # the old policy is still the one in force


def test_watch_does_not_start_on_a_bundle_that_does_not_verify_and_names_file_and_key(tmp_path: Path) -> None:
    bundle, public = signed_bundle(tmp_path)
    _, other = new_key(tmp_path / "other")
    wrong = runner.invoke(app, ["watch", "lab:none", "--policy", str(bundle), "--trusted-key", str(other), "--sweeps", "1"])
    assert wrong.exit_code == 2
    message = " ".join(wrong.output.split())
    assert str(bundle) in message and str(other) in message and "refused" in message
    Path(str(bundle) + ".minisig").unlink()
    missing = runner.invoke(app, ["watch", "lab:none", "--policy", str(bundle), "--trusted-key", str(public), "--sweeps", "1"])
    assert missing.exit_code == 2 and "no signature" in " ".join(missing.output.split())


def test_the_unpacked_bundle_is_removed_once_its_rules_are_built(tmp_path: Path) -> None:
    from vmsentinel.pipeline.compiled import CompiledPolicy

    bundle, public = signed_bundle(tmp_path)
    active = PolicyLoader(bundle=str(bundle), trusted_keys=[str(public)]).load()
    rules = CompiledPolicy.compile(active.policy, active.allowlist)
    active.remove()
    assert active.unpacked is not None and not active.unpacked.exists()
    assert rules.yara is not None  # compiled while the files were there


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("yara/broken.yar", 'rule ok { condition: true }\n\nrule bad {\n  strings: $a = "x"\n  condition: $b\n}\n', 5),
        (
            "sigma/broken.yml",
            "title: t\nlogsource:\n  category: process_creation\ndetection:\n  sel:\n    Image: /x\n  condition: sel and nope\n",
            7,
        ),
        ("sigma/broken.yml", "title: t\nlogsource: [\n", 3),
    ],
)
def test_policy_verify_compiles_every_rule_and_names_the_broken_one(tmp_path: Path, name: str, text: str, line: int) -> None:
    folder = policy_folder(tmp_path)
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    if name.startswith("sigma"):
        (folder / "policy.toml").write_text('[sigma]\nrules = ["sigma"]\n[yara]\nrules = ["yara"]\n')
    secret, public = new_key(tmp_path / "ops")
    bundle = tmp_path / "p.vmspolicy"
    pack_bundle(folder, bundle)
    sign_file(bundle, secret)
    result = runner.invoke(app, ["policy", "verify", str(bundle), "--trusted-key", str(public)])
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and "refused" in message and "accepted" not in message
    assert f"{Path(name).name}:{line}:" in message, message
