"""Benign load on a watched guest gives zero findings: process
storms, loading and unloading Debian's own signed modules, memory pressure and
network traffic, on 6.1 and 6.12 (KASLR on, interval 1 s)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, LabPool, guest_sh
from vmsentinel.sinks.console import ConsoleSink
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.watch.watcher import Watcher

pytestmark = pytest.mark.guest
# one minute per kernel in the suite; VMSENTINEL_BENIGN_SECONDS=300 runs the five minutes issue 5 asks for
SECONDS = float(os.environ.get("VMSENTINEL_BENIGN_SECONDS", "60"))

LOAD = r"""
end=$(( $(date +%s) + {seconds} ))
( while [ $(date +%s) -lt $end ]; do for i in $(seq 1 50); do true & done; wait; done ) &
( while [ $(date +%s) -lt $end ]; do rmmod veth 2>/dev/null; rmmod dummy 2>/dev/null;
    insmod /lib/modules/$(uname -r)/kernel/drivers/net/dummy.ko 2>/dev/null;
    insmod /lib/modules/$(uname -r)/kernel/drivers/net/veth.ko 2>/dev/null; sleep 1; done ) &
( while [ $(date +%s) -lt $end ]; do dd if=/dev/zero of=/tmp/pressure bs=1M count=64 2>/dev/null;
    rm -f /tmp/pressure; sleep 0.5; done ) &
( while [ $(date +%s) -lt $end ]; do nc -l -p 6000 >/dev/null 2>&1 & sleep 0.2;
    head -c 200000 /dev/zero | nc 127.0.0.1 6000; wait; done ) &
echo started
"""


@pytest.mark.parametrize("series", KERNEL_SERIES)
def test_benign_load_gives_no_findings(lab_pool: LabPool, tmp_path: Path, series: str) -> None:
    guest = lab_pool.fresh(series, "benign")
    store = SqliteStore(tmp_path / "benign.db")
    events: list[str] = []
    watcher = Watcher([guest.target], 1.0, [store, ConsoleSink(lambda t, m: events.append(m))])
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not watcher.states[0].baselined and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watcher.states[0].baselined, events
    guest_sh(guest, LOAD.format(seconds=int(SECONDS)))
    time.sleep(SECONDS + 3)
    watcher.stop()
    thread.join(timeout=60)
    watcher.close()
    findings = store.findings()
    store.close()
    assert watcher.states[0].sweeps >= SECONDS * 0.5, events  # it really watched all along
    assert findings == [], [f["title"] for f in findings]
