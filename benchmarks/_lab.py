"""What every benchmark does around its measurement: a lab guest, a scratch folder
(deleted afterwards, with the memory dumps in it), the tools installed with this
interpreter (:func:`installed_tool`, shared with the tests).

A guest of the benchmark's name that already runs is reused (and left running);
otherwise one is booted for the run and stopped afterwards, whatever happens.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmsentinel import lab
from vmsentinel.errors import LabNotFound
from vmsentinel.lab import LabGuest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for the tests' helpers
from tests.guest.helpers import installed_tool

__all__ = ["installed_tool", "lab_guest", "scratch"]


@contextmanager
def lab_guest(spec: lab.LabSpec) -> Iterator[LabGuest]:
    try:
        running: LabGuest | None = lab.load(spec.name)
    except LabNotFound:
        running = None
    if running is not None:
        yield running
        return
    print(f"booting lab guest {spec.name!r} ...", file=sys.stderr)
    guest = lab.up(spec)
    try:
        yield guest
    finally:
        lab.down(spec.name)


@contextmanager
def scratch() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="vms-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
