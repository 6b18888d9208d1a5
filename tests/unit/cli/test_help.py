"""``--help`` reads like a Unix tool's, for every command and group: arguments and values named in
capitals (TARGET, PID, FILE), flags without a type, one name per option, the exit status explained."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from vmsentinel.cli.main import app
from vmsentinel.cli.status import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NO, EXIT_OK

runner = CliRunner()

#: what Typer and Click print when a parameter was left unnamed or untyped
NOT_UNIX = [
    ("{", re.compile(r"\{")),  # {target}: Typer's required argument
    ("<type>", re.compile(r"<[a-z][a-z\[\]|,]*>")),  # <bool>, <str>, <list[str]>
    ("BOOLEAN", re.compile(r"\bBOOLEAN\b")),
    ("TEXT", re.compile(r"\bTEXT\b")),
    ("joined option names", re.compile(r"-\w[\w-]*,-")),  # --policy,--config
]


def every_path(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            paths.extend(every_path(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def _root() -> typer.core.TyperGroup:
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    return root


PATHS = every_path(_root())


def help_of(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, (path, result.output)
    return result.stdout


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "vmsentinel")
def test_help_names_things_as_a_unix_tool_does(path: tuple[str, ...]) -> None:
    text = help_of(path)
    for what, pattern in NOT_UNIX:
        found = pattern.search(text)
        assert found is None, (
            f"{' '.join(path) or 'vmsentinel'} --help shows {what}: {text[max(0, found.start() - 60) : found.end() + 20]!r}"
        )
    usage = text.splitlines()[0]
    assert usage.startswith("Usage: ") and " ".join(path) in usage
    assert not re.search(r" [a-z_]+(\.\.\.)?$| \[[a-z_]+\]", usage), usage  # arguments in capitals


def test_the_root_help_ends_with_the_exit_status_table() -> None:
    text = help_of(())
    table = text[text.index("Exit status:") :].splitlines()
    codes = [line.split()[0] for line in table[1:] if line.strip() and line.split()[0].isdigit()]
    assert codes == [str(c) for c in (EXIT_OK, EXIT_NO, EXIT_ERROR, EXIT_INTERRUPTED)]
    assert "TARGET, where a command takes one, is a memory image" in " ".join(text.split())


def test_a_command_that_speaks_of_its_exit_status_gives_every_code() -> None:
    helps = {path: help_of(path) for path in PATHS if path}
    speaking = {path: text for path, text in helps.items() if "Exit status" in text}
    assert {("check",), ("key", "verify"), ("policy", "verify"), ("alerts", "verify"), ("lab", "exec")} <= set(speaking)
    for path, text in speaking.items():
        line = " ".join(text[text.index("Exit status:") :].split())
        if path == ("lab", "exec"):  # the guest command's own status, relayed
            assert f"{EXIT_ERROR} when it could not be run" in line
            continue
        for code in (EXIT_OK, EXIT_NO, EXIT_ERROR, EXIT_INTERRUPTED):
            assert re.search(rf"\b{code} \w", line), (path, line)


def test_config_is_no_longer_a_second_name_for_policy() -> None:
    text = help_of(("check",))
    assert "--policy BUNDLE" in text and "--config" not in text
    assert runner.invoke(app, ["check", "img", "--config", "x"]).exit_code == EXIT_ERROR  # a usage error
