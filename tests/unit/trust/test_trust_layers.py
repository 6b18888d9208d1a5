"""The layer rule of vmsentinel.trust: it imports nothing from the layers that use it."""

from __future__ import annotations

import ast
from pathlib import Path

TRUST = Path(__file__).resolve().parents[3] / "src" / "vmsentinel" / "trust"
FORBIDDEN = ("os", "access", "detect", "pipeline", "watch", "cli", "lab", "sinks", "respond")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_trust_imports_no_higher_layer() -> None:
    files = sorted(TRUST.glob("*.py"))
    assert len(files) > 5
    bad = [
        f"{path.name}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] == "vmsentinel" and len(name.split(".")) > 1 and name.split(".")[1] in FORBIDDEN
    ]
    assert bad == []
