"""The service's commands: users from standard input, tokens printed once, a refusal to serve plain
HTTP beyond this host, and the hardened systemd unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmsentinel.cli.main import app
from vmsentinel.errors import VmSentinelError
from vmsentinel.service.accounts import ServiceDb
from vmsentinel.service.runner import check_listen, parse_listen
from vmsentinel.service.systemd import unit_text

runner = CliRunner()


def test_user_and_token_commands_keep_only_hashes_and_audit_every_change(tmp_path: Path) -> None:
    state = str(tmp_path)
    added = runner.invoke(
        app, ["user", "add", "ana", "--role", "analyst", "--state-dir", state], input="a long enough password\n"
    )
    assert added.exit_code == 0, added.output
    short = runner.invoke(app, ["user", "add", "bob", "--state-dir", state], input="short\n")
    assert short.exit_code == 2 and "12 characters" in short.output
    made = runner.invoke(app, ["token", "new", "--user", "ana", "--expires", "3", "--state-dir", state, "--json"])
    assert made.exit_code == 0, made.output
    secret = json.loads(made.stdout)["token"]
    db = ServiceDb(tmp_path / "service.db")
    who = db.by_token(secret)
    assert who is not None and (who.name, who.role) == ("ana", "analyst")
    raw = (tmp_path / "service.db").read_bytes()
    assert secret.encode() not in raw and b"a long enough password" not in raw
    assert db.check_password("ana", "a long enough password") is not None
    listed = json.loads(runner.invoke(app, ["token", "list", "--state-dir", state, "--json"]).stdout)
    assert [t["user"] for t in listed] == ["ana"] and "token" not in listed[0]
    revoked = runner.invoke(app, ["token", "revoke", listed[0]["id"], "--state-dir", state, "--json"])
    assert revoked.exit_code == 0 and json.loads(revoked.stdout) == {"revoked": listed[0]["id"]}
    assert db.by_token(secret) is None
    assert runner.invoke(app, ["user", "add", "ana", "--state-dir", state], input="a long enough password\n").exit_code == 2
    actions = [a["action"] for a in db.audit_log()]
    assert actions.count("user.add") == 1 and "token.new" in actions and "token.revoke" in actions


def test_plain_http_beyond_this_host_needs_to_be_asked_for_by_name() -> None:
    assert check_listen(parse_listen("127.0.0.1:8787"), None, False) is None
    assert check_listen(parse_listen("[::1]:8787"), None, False) is None
    with pytest.raises(VmSentinelError, match="needs TLS"):
        check_listen(parse_listen("0.0.0.0:8787"), None, False)
    assert check_listen(parse_listen("0.0.0.0:8787"), ("c.pem", "k.pem"), False) is None
    warning = check_listen(parse_listen("10.0.0.5:8443"), None, True)
    assert warning is not None and "unencrypted" in warning
    with pytest.raises(VmSentinelError, match="ADDR:PORT"):
        parse_listen("8787")
    refused = runner.invoke(app, ["serve", "--listen", "0.0.0.0:8799"])
    assert refused.exit_code == 2 and "needs TLS" in refused.output


def test_the_systemd_unit_takes_away_what_the_sentinel_does_not_need(tmp_path: Path) -> None:
    text = unit_text(Path("/usr/local/bin/vmsentinel"), "libvirt: --workers 2", Path("/var/lib/vmsentinel"))
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert lines["ExecStart"] == "/usr/local/bin/vmsentinel serve libvirt: --workers 2 --state-dir /var/lib/vmsentinel"
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "/var/lib/vmsentinel"),
    ):
        assert lines[key] == value
    assert set(lines["CapabilityBoundingSet"].split()) == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE"}
    written = runner.invoke(app, ["service", "install", "--unit-dir", str(tmp_path), "--json"])
    assert written.exit_code == 0, written.output
    assert "NoNewPrivileges=yes" in (tmp_path / "vmsentinel.service").read_text()
