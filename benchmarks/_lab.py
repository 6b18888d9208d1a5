"""What every benchmark does around its measurement: a lab guest, a scratch folder
(deleted afterwards, with the memory dumps in it), the tools installed with this
interpreter (:func:`installed_tool`, shared with the tests).

A guest of the benchmark's name that already runs is reused (and left running);
otherwise one is booted for the run and stopped afterwards, whatever happens.
"""

from __future__ import annotations

import argparse
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

__all__ = ["crowd", "guest_arguments", "image_of_lab_guest", "installed_tool", "lab_guest", "scratch"]


def guest_arguments(doc: str | None, rounds: int) -> argparse.Namespace:
    """The options of a benchmark on a crowded lab guest: --kernel, --processes, --rounds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()


def crowd(name: str, processes: int) -> None:
    """Start ``processes`` sleepers in lab guest ``name``."""
    lab.run(name, f"for i in $(seq 1 {processes}); do sleep 100000 & done")


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


def image_of_lab_guest(core: Path, processes: int, name: str = "bench-image") -> Path:
    """A memory image (QEMU ELF core) of a lab guest (6.1) running ``processes`` sleepers."""
    from vmsentinel.access import open_connector

    with lab_guest(lab.LabSpec(name, kernel="6.1")) as guest:
        crowd(guest.name, processes)
        with open_connector(f"lab:{guest.name}") as target:
            assert target.control is not None
            target.control.dump(core)
    return core
