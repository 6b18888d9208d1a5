"""One exit-status scheme for every command (vmsentinel.cli.status): each command, given a target or
file that does not exist, exits 2 with one ``error:`` line; the quick JSON path answers the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vmsentinel.cli import entry
from vmsentinel.cli.main import app
from vmsentinel.cli.status import EXIT_ERROR, EXIT_INTERRUPTED

runner = CliRunner()


def command_paths(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command under ``group``, and every group that runs on its own (``alerts``)."""
    paths: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            if command.invoke_without_command:
                paths.append((*prefix, name))
            paths.extend(command_paths(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def failing_args(tmp: Path) -> dict[tuple[str, ...], list[str] | None]:
    """For each command, arguments that name something missing (None: nothing it is given can fail)."""
    missing, key = str(tmp / "missing"), str(tmp / "missing.pub")
    (tmp / "a-file").write_text("")  # a unit folder below a file cannot be made
    return {
        **{(view,): [missing] for view in ("info", "ps", "pstree", "modules", "syscalls", "idt", "sockets", "check")},
        ("maps",): [missing, "1"],
        ("files",): [missing, "1"],
        **{(view,): [missing] for view in ("callbacks", "mounts", "envars", "ptrace")},
        # an unreachable target is something watch waits out; a record key it cannot read stops it
        ("watch",): [missing, "--record-key", str(tmp / "missing.key"), "--sweeps", "1"],
        ("demo",): ["--name", "x"],  # no QEMU on PATH
        ("alerts",): ["--db", missing],
        ("alerts", "verify"): ["--db", missing, "--key", key],
        ("lab", "up"): ["x"],
        ("lab", "exec"): ["ghost", "--", "true"],
        ("lab", "ls"): None,
        ("lab", "down"): ["ghost"],
        ("profile", "build"): [missing],
        ("profile", "show"): [missing],
        ("profile", "nt"): [missing],
        ("key", "new"): [str(tmp / "no-such-folder" / "k")],
        ("key", "sign"): [missing, "--key", str(tmp / "missing.key")],
        ("key", "verify"): [missing, "--key", key],
        ("policy", "pack"): [missing, "-o", str(tmp / "p.vmspolicy")],
        ("policy", "verify"): [missing, "--trusted-key", key],
        ("allowlist", "build"): ["--from", missing, "-o", str(tmp / "a.json")],
        ("allowlist", "show"): [missing],
        ("serve",): [missing, "--listen", "0.0.0.0:1"],  # beyond this host without TLS
        ("user", "add"): ["bad name!", "--state-dir", str(tmp / "svc")],
        ("user", "passwd"): ["ghost", "--state-dir", str(tmp / "svc")],
        ("user", "remove"): ["ghost", "--state-dir", str(tmp / "svc")],
        ("user", "list"): None,
        ("token", "new"): ["--user", "ghost", "--state-dir", str(tmp / "svc")],
        ("token", "list"): None,
        ("token", "revoke"): ["nope", "--state-dir", str(tmp / "svc")],
        ("service", "install"): ["--unit-dir", str(tmp / "a-file" / "sub")],
        ("fleet", "creds"): ["bad id!", "-o", str(tmp / "fleet")],
    }


def assert_one_error_line(stderr: str, what: object) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), (what, stderr)
    assert "Traceback" not in stderr, (what, stderr)


def test_every_command_exits_2_with_one_error_line_on_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSENTINEL_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("VMSENTINEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMSENTINEL_TRUSTED_KEYS", str(tmp_path / "no-keys"))
    table = failing_args(tmp_path)
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    commands = command_paths(root)
    assert sorted(commands) == sorted(table), "a new command? say here how it fails"
    for path in commands:
        args = table[path]
        if args is None:
            continue
        result = runner.invoke(app, [*path, *args], env={"PATH": str(tmp_path)})
        assert result.exit_code == EXIT_ERROR, (path, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (path, result.exception)
        assert_one_error_line(result.stderr, path)


def test_the_quick_json_path_exits_as_the_full_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ps", str(tmp_path / "missing"), "--json"]
    args = entry.quick_view_args(argv)
    assert args is not None
    assert entry._quick(args) == EXIT_ERROR
    quick = capsys.readouterr()
    full = runner.invoke(app, argv)
    assert full.exit_code == EXIT_ERROR and quick.out == full.stdout == ""
    assert quick.err == full.stderr and quick.err.startswith("error: ") and quick.err.count("\n") == 1


def test_an_interrupted_command_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("vmsentinel.cli.view_records.read_view", interrupted)
    monkeypatch.setattr("vmsentinel.cli.views_cmd.read_view", interrupted)
    args = entry.quick_view_args(["ps", "img", "--json"])
    assert args is not None
    assert entry._quick(args) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"
    result = runner.invoke(app, ["ps", "img"])
    assert result.exit_code == EXIT_INTERRUPTED and result.stderr == "interrupted\n"
