"""Stand-in guests for worker-process tests. The pool pickles the opener by reference, so it lives in
a module a spawned worker can import; how a guest behaves is spelt in its TARGET (nothing is shared
with the test process but the state folder): ``hooked-NAME`` has system call 0 hooked after its very
first snapshot (the baseline), in whichever worker it is read; any other name stays clean."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from tests.unit.detect.test_detectors import snapshot, task
from tests.unit.watch.test_watcher import HOOK, KERNEL, NoKernel

from vmsentinel.os.linux.guest import GuestSnapshot
from vmsentinel.os.linux.views.hooks import SyscallEntry


class PoolGuest:
    """Looks like a LinuxGuest to a GuestRuntime: snapshots, an identity, no memory behind them."""

    os = "linux"

    def __init__(self, target: str) -> None:
        self.name = target
        self.hooked = target.startswith("hooked-")
        self.sweeps = 0
        self._since: object = None
        self.reader = NoKernel()
        self.resolver = SimpleNamespace(describe=lambda _a: None, owner=lambda _a: "kernel", text_start=KERNEL)
        self.target = SimpleNamespace(control=None, live=False, spec=target)
        identity = SimpleNamespace(release="6.1-test", build_id="feedface")
        self.resolved = SimpleNamespace(profile=SimpleNamespace(identity=identity))

    def snapshot(self, with_code: bool = False, scan: bool = False, since: object = None, **_facets: object) -> GuestSnapshot:
        if since is not self._since:  # a new sweep (a confirming read repeats `since`)
            self.sweeps += 1
            self._since = since
        seen = Path(os.environ["VMSENTINEL_STATE"]) / f"{self.name}.seen"
        hooked = self.hooked and seen.exists()  # the first snapshot ever is the baseline: clean
        seen.touch()
        handler, owner = (HOOK, "module:evil") if hooked else (KERNEL, "kernel")
        return replace(snapshot([task(1)], syscalls=[SyscallEntry("x64", 0, handler, "read", owner)]), full=True)

    def close(self) -> None:
        pass


def open_pool_guest(target: str) -> PoolGuest:
    return PoolGuest(target)
