"""The quick JSON entry takes only what it fully understands; the rest goes to Typer."""

from __future__ import annotations

import pytest

from vmsentinel.cli.entry import quick_view_args
from vmsentinel.cli.jsonout import json_text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ps", "img", "--json"], ("ps", "img", None, {})),
        (["ps", "--json", "img", "--no-kernel-threads", "--scan"], ("ps", "img", None, {"kernel_threads": False, "scan": True})),
        (["modules", "lab:web", "--json", "--scan"], ("modules", "lab:web", None, {"scan": True})),
        (["syscalls", "img", "--outside-kernel", "--json"], ("syscalls", "img", None, {"outside_kernel": True})),
        (["maps", "img", "42", "--json"], ("maps", "img", 42, {})),
        (["files", "qemu:/dev/shm/x,qmp=/s", "1", "--json"], ("files", "qemu:/dev/shm/x,qmp=/s", 1, {})),
    ],
)
def test_views_with_json_take_the_quick_path(argv: list[str], expected: object) -> None:
    assert quick_view_args(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["ps", "img"],  # a table: Rich is needed anyway
        ["ps", "img", "--json", "--help"],
        ["ps", "img", "--json", "--frobnicate"],
        ["-v", "ps", "img", "--json"],
        ["ps", "img", "other", "--json"],
        ["maps", "img", "--json"],  # no pid: Typer explains
        ["maps", "img", "x1", "--json"],
        ["maps", "img", "-1", "--json"],
        ["modules", "img", "--json", "--outside-kernel"],  # an option of another view
        ["check", "img", "--json"],
        ["watch", "img", "--json"],
    ],
)
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    assert quick_view_args(argv) is None


def test_json_text_puts_one_record_per_line() -> None:
    text = json_text([{"pid": 1, "name": "init"}, {"pid": 2, "name": "k\nthread"}])
    assert text.splitlines() == ["[", '{"pid": 1, "name": "init"},', '{"pid": 2, "name": "k\\nthread"}', "]"]
    assert json_text([]) == "[]\n"
    assert json_text({"a": 1}) == '{\n  "a": 1\n}\n'
