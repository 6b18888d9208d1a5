"""Stand-in guests for worker-process tests. The pool pickles the opener by reference, so it lives in
a module a spawned worker can import; how a guest behaves is spelt in its TARGET (nothing is shared
with the test process but the state folder): ``hooked-NAME`` has system call 0 hooked after its very
first snapshot (the baseline), in whichever worker it is read; ``tainted-NAME`` has its kernel tainted
after its first snapshot (a change only a baseline taken before it sees); ``broken-NAME`` has a
hypervisor control whose every action raises (a bug, not a HypervisorError); any other name stays clean.
A file ``NAME.boot`` in the state folder holds the guest's boot id (a reboot: another one)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from tests.unit.detect.test_detectors import snapshot, task
from tests.unit.watch.test_watcher import HOOK, KERNEL, NoKernel

from vmsentinel.os.records import SyscallEntry
from vmsentinel.os.snapshot import GuestSnapshot


class BrokenControl:
    """A control with a bug: what a request the worker cannot carry out looks like."""

    kind = "broken"

    def pause(self) -> None:
        raise RuntimeError("This event loop is already running")

    def close(self) -> None:
        pass


class PoolGuest:
    """Looks like a LinuxGuest to a GuestRuntime: snapshots, an identity, no memory behind them."""

    os = "linux"

    def __init__(self, target: str) -> None:
        self.name = target
        self.hooked = target.startswith("hooked-")
        self.tainted = target.startswith("tainted-")
        self.sweeps = 0
        self._since: object = None
        self.reader = NoKernel()
        self.resolver = SimpleNamespace(describe=lambda _a: None, owner=lambda _a: "kernel", text_start=KERNEL)
        control = BrokenControl() if target.startswith("broken-") else None
        self.target = SimpleNamespace(control=control, live=False, spec=target)
        self.release = "6.1-test"

    def snapshot(self, with_code: bool = False, scan: bool = False, since: object = None, **_facets: object) -> GuestSnapshot:
        if since is not self._since:  # a new sweep (a confirming read repeats `since`)
            self.sweeps += 1
            self._since = since
        seen = Path(os.environ["VMSENTINEL_STATE"]) / f"{self.name}.seen"
        later = seen.exists()  # the first snapshot ever is the baseline: clean
        seen.touch()
        handler, owner = (HOOK, "module:evil") if self.hooked and later else (KERNEL, "kernel")
        snap = snapshot([task(1)], syscalls=[SyscallEntry("x64", 0, handler, "read", owner)])
        return replace(snap, full=True, taint=0x3000 if self.tainted and later else 0)

    def identity(self) -> tuple[str, ...]:
        boot = Path(os.environ["VMSENTINEL_STATE"]) / f"{self.name}.boot"
        return (self.release, "feedface", f"{KERNEL:x}", boot.read_text() if boot.exists() else "boot-1")

    def about(self) -> dict[str, object]:
        return {"os": self.os, "release": self.release}

    def close(self) -> None:
        pass


def open_pool_guest(target: str) -> PoolGuest:
    return PoolGuest(target)
