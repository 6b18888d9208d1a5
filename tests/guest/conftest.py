"""Real lab guests for integration tests.

Guests are booted through the real CLI (``vmsentinel lab up --json``) once per
(kernel series, paging levels) for the whole session and torn down at the end.
State lives in a private folder so tests never touch a user's labs; the
download cache is shared so a second run is offline. The memory dumps a test
writes into its ``tmp_path`` (each as large as the guest's RAM) are deleted
when the test is done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.guest.helpers import remove_dumps

KERNEL_SERIES = ("6.1", "6.12")
ADDED_FILE_TEXT = "added through --add\n"


class Shell(Protocol):
    """A running guest a test can read from outside (its TARGET) and run scripts in (its console)."""

    @property
    def target(self) -> str: ...

    def sh(self, script: str) -> str: ...


@dataclass
class Guest:
    name: str
    series: str
    paging: int
    info: dict[str, object]

    @property
    def target(self) -> str:
        return f"lab:{self.name}"

    def sh(self, script: str) -> str:
        """Run a script in the guest through ``lab exec``; fail the test on a non-zero status."""
        return vmsentinel("lab", "exec", self.name, "--", script).stdout


#: the pool's private lab state folder, passed explicitly so no test can point the CLI at a user's labs
STATE: dict[str, str] = {}


def vmsentinel(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (with the test session's private lab state)."""
    env = {**os.environ, **({"VMSENTINEL_STATE": STATE["dir"]} if "dir" in STATE else {})}
    proc = subprocess.run([sys.executable, "-m", "vmsentinel", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"vmsentinel {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def guest_sh(guest: Shell, script: str) -> str:
    """Run a script in the guest (a lab guest: through ``lab exec``); fail the test on a non-zero status."""
    return guest.sh(script)


def kill_matching(guest: Shell, pattern: str) -> None:
    """Kill every process in the guest whose command line contains ``pattern``, and fail the test if one
    survives (busybox has no ``pkill``: a ``pkill ...; true`` left the processes running, unseen)."""
    script = f"""
        matching() {{
            for d in /proc/[0-9]*; do
                p=${{d#/proc/}}; [ "$p" = "$$" ] && continue
                case "$(tr '\\0' ' ' < $d/cmdline 2>/dev/null)" in *'{pattern}'*) echo $p;; esac
            done
        }}
        for p in $(matching); do kill -9 $p 2>/dev/null; done
        sleep 0.2; matching
    """
    left = guest.sh(script).split()
    assert not left, f"still running in the guest after kill -9: {left} ({pattern!r})"


PROGRAMS = Path(__file__).parent / "programs"


def build_programs(dest: Path) -> Path:
    """Compile the test programs (static, so they run on busybox) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in PROGRAMS.glob("*.c"):
        subprocess.run(["gcc", "-static", "-O2", "-pthread", "-o", str(dest / source.stem), str(source)], check=True)
    return dest


class LabPool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.guests: dict[tuple[str, int], Guest] = {}
        self.added = root / "added.txt"
        self.added.write_text(ADDED_FILE_TEXT)
        self.programs = build_programs(root / "programs")
        #: fresh guests' keys -> the test modules that asked for them
        self.owners: dict[tuple[str, int], set[str]] = {}

    def module_done(self, module: str) -> None:
        """Shut down the fresh guests no module still to run asked for."""
        for key, modules in list(self.owners.items()):
            modules.discard(module)
            if not modules and key in self.guests:
                vmsentinel("lab", "down", self.guests.pop(key).name, check=False)
                del self.owners[key]

    def get(self, series: str, paging: int = 4) -> Guest:
        key = (series, paging)
        if key not in self.guests:
            name = f"t{os.getpid()}-{series.replace('.', '')}-{paging}"
            proc = vmsentinel(
                "lab",
                "up",
                name,
                "--kernel",
                series,
                "--paging",
                str(paging),
                "--smp",
                "1",
                "--add",
                f"{self.added}:/root/added.txt",
                "--add",
                f"{self.programs}:/root/programs",
                "--json",
            )
            self.guests[key] = Guest(name, series, paging, json.loads(proc.stdout))
        return self.guests[key]

    def fresh(self, series: str, tag: str) -> Guest:
        """A guest of its own, for tests that change the guest for good (rootkits). It is shut down once
        the last test of the module that asked for it is done (an idle TCG guest still costs a few
        percent of a core, and a dozen of them slow every later test)."""
        key = (f"{series}-{tag}", 4)
        self.owners.setdefault(key, set()).add(_RUNNING.get("module", ""))
        if key not in self.guests:
            name = f"t{os.getpid()}-{tag}-{series.replace('.', '')}"
            proc = vmsentinel("lab", "up", name, "--kernel", series, "--add", f"{self.programs}:/root/programs", "--json")
            self.guests[key] = Guest(name, series, 4, json.loads(proc.stdout))
        return self.guests[key]

    def close(self) -> None:
        vmsentinel("lab", "down", "--all", check=False)


#: the module of the test running now, and the pool (when a test has made it)
_RUNNING: dict[str, Any] = {}


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _RUNNING["module"] = _module_of(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last test of a module (in the order the session runs them, which groups tests by
    session-scoped parameters across modules), its fresh guests go."""
    yield
    pool: LabPool | None = _RUNNING.get("pool")
    module = _module_of(item)
    if pool is None or (nextitem is not None and _module_of(nextitem) == module):
        return
    last = _RUNNING.get("last")
    if last is None:
        last = _RUNNING["last"] = {_module_of(i): n for n, i in enumerate(item.session.items)}
    if last.get(module, -1) <= item.session.items.index(item):
        pool.module_done(module)


@pytest.fixture(autouse=True)
def _no_dumps_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete the QEMU cores, pmemsave and LiME copies and response dumps a test (or its fixtures)
    wrote into its tmp_path, once it and its fixtures are done; pytest would keep them for three runs."""
    folder: Path | None = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        remove_dumps(folder)


@pytest.fixture(scope="session")
def lab_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPool]:
    # not under pytest's basetemp: a concurrent pytest run prunes old basetemps, and with them the
    # state of guests still running, which then could not be shut down
    root = Path(tempfile.mkdtemp(prefix="vmsentinel-tests-"))
    old = os.environ.get("VMSENTINEL_STATE")
    os.environ["VMSENTINEL_STATE"] = STATE["dir"] = str(root / "state")
    pool = _RUNNING["pool"] = LabPool(root)
    try:
        yield pool
    finally:
        _RUNNING.pop("pool", None)
        pool.close()
        STATE.clear()
        shutil.rmtree(root, ignore_errors=True)
        if old is None:
            os.environ.pop("VMSENTINEL_STATE", None)
        else:
            os.environ["VMSENTINEL_STATE"] = old


@pytest.fixture(scope="session", params=KERNEL_SERIES)
def guest(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    """A running 4-level guest, KASLR on, once per kernel series."""
    return lab_pool.get(request.param, 4)


@pytest.fixture(scope="session", params=[(s, p) for s in KERNEL_SERIES for p in (4, 5)], ids=lambda sp: f"{sp[0]}-{sp[1]}level")
def paged_guest(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    """A running guest per kernel series and paging mode (4 and 5 levels)."""
    series, paging = request.param
    return lab_pool.get(series, paging)


@pytest.fixture(scope="session")
def libvirt_pool(lab_pool: LabPool) -> Iterator[Any]:
    """libvirt domains booted from the lab's kernels (libvirtd started if it is not running)."""
    from tests.guest.libvirt_domains import make_pool

    pool = make_pool(lab_pool.programs)
    try:
        yield pool
    finally:
        pool.close()
