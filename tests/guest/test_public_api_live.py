"""The README's Python example runs as written on a real guest (6.1 and 6.12): a baseline, a second
sweep, no findings on a clean guest, and the processes the guest itself lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.guest.conftest import Guest, guest_sh

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.guest


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a Python example"
    return str(blocks[0])


def test_the_readme_example_runs_on_a_real_guest(guest: Guest, capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10 and '"lab:web1"' in code
    exec(compile(code.replace('"lab:web1"', repr(guest.target)), str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    inside = int(guest_sh(guest, "ls -d /proc/[0-9]* | wc -l").strip())
    counted = [int(m.group(1)) for line in printed if (m := re.fullmatch(r"(\d+) processes", line))]
    assert counted and abs(counted[0] - inside) <= 5, (printed, inside)  # the shell that counts comes and goes meanwhile
    assert [line for line in printed if not line.endswith("processes")] == []  # a clean guest: no findings
