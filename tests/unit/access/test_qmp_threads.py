"""One :class:`Qmp` shared by threads, against a real QEMU's monitor: a sweep reading the vCPUs'
registers while a person pauses the guest must take turns on the one connection, not find its
event loop busy (the service answered such a pause with a bare 500)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsentinel.access.qmp import Qmp

QEMU = shutil.which("qemu-system-x86_64")


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Path]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup installs it)")
    path = tmp_path / "qmp.sock"
    qemu = subprocess.Popen([QEMU, "-machine", "none", "-display", "none", "-qmp", f"unix:{path},server=on,wait=off"])
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and qemu.poll() is None, "QEMU did not open its QMP socket"
            time.sleep(0.05)
        yield path
    finally:
        qemu.kill()
        qemu.wait()


@pytest.mark.parametrize("held", [False, True], ids=["per-call", "held"])
def test_threads_sharing_one_client_take_turns(monitor: Path, held: bool) -> None:
    qmp = Qmp(str(monitor), timeout=10.0)
    if held:  # a batch connection one thread opened: the others use it, in turn
        qmp.connect()
    errors: list[str] = []
    answers: list[str] = []

    def ask(kind: int) -> None:
        for _ in range(25):
            try:
                answers.append(qmp.status() if kind else qmp.hmp("info version").strip())
            except BaseException as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=ask, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    qmp.close()
    assert errors == []
    assert len(answers) == 100
    assert {a for a in answers if not a[0].isdigit()} <= {"running", "prelaunch"}
    assert any(a[0].isdigit() for a in answers)  # the HMP answers are QEMU's version, not a status
