"""The layer rules hold (import-linter contracts in pyproject.toml), and the questions that belong
to one layer are asked only there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "vmsentinel"


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"  # installed with the test interpreter
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    assert "broken" not in proc.stdout.lower().split("contracts:")[-1].replace("0 broken", "")


def test_only_access_asks_whether_a_guest_is_live_through_its_qmp_socket() -> None:
    asked = [
        f"{path.relative_to(ROOT)}:{n}"
        for base in (ROOT / "src", ROOT / "tests", ROOT / "benchmarks")
        for path in base.rglob("*.py")
        if SRC / "access" not in path.parents and path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "qmp_socket is not None" in line
    ]
    assert asked == []


def test_the_public_api_names_what_it_exports() -> None:
    import vmsentinel

    public = set(vmsentinel.__all__) - {"__version__"}
    assert public == set(vmsentinel._PUBLIC)
    for name in public:
        assert getattr(vmsentinel, name) is not None
