"""The examples in docs/architecture.md (adding a connector, a detector, a sink, an OS) run as
written, and what they register is taken back afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmsentinel.access import registry as schemes
from vmsentinel.detect import registry as detectors
from vmsentinel.os import OPENERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture
def clean_registries():  # type: ignore[no-untyped-def]
    detectors.names()  # the built-ins are in before we note what was there
    saved = (dict(detectors.REGISTRY), dict(OPENERS), dict(schemes._schemes))
    yield
    for live, before in zip((detectors.REGISTRY, OPENERS, schemes._schemes), saved, strict=True):
        live.clear()
        live.update(before)  # type: ignore[arg-type]


def test_the_documentation_has_an_example_for_each_extension_point() -> None:
    headings = re.findall(r"^### (.+)$", DOC.read_text(), re.M)
    assert headings == ["A connector", "A detector", "A sink", "An OS"] and len(examples()) == 4


def test_the_examples_run(clean_registries: None) -> None:
    namespace: dict[str, object] = {"__name__": "architecture_doc"}
    for code in examples():  # in order: the OS example opens the connector example's scheme
        exec(compile(code, str(DOC), "exec"), namespace)
    assert "root_shell" in detectors.names() and "toyos" in OPENERS
