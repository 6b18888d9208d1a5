"""The fleet as a detector, on real guests: five lab guests of one kernel build (6.12, 6.1), each at
its own KASLR slide, booted in parallel. With a busy shell loop, dd and idle processes in one of
them, a watch's first looks give five inventories that agree on every kernel facet (text and
read-only data page by page, syscall table, IDT, modules, taint, eBPF) and on what the clones run,
and no ``fleet_outlier``. With the test rootkit loaded in one guest before a new watch's first look
(``vmsentinel watch``, worker processes), that guest and only that one is a ``fleet_outlier``, in its
modules, taint, syscall table and kernel text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, STATE, Guest, LabPool, guest_sh, kill_matching, vmsentinel
from vmsentinel.detect.fleet import CLONE_FACETS, SPARSE_FACETS
from vmsentinel.detect.registry import specs
from vmsentinel.events import Event, FindingRaised, GuestInventory, SweepDone
from vmsentinel.lab.kmod import build_module, insert_module
from vmsentinel.os.linux.guest import LinuxGuest
from vmsentinel.os.linux.views import build_masks
from vmsentinel.watch.watcher import Watcher

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
PEERS = 5
MEMORY_MIB = "192"
#: what a sweep collects for the fleet's detector alone
FLEET_FACETS = frozenset({"tasks", "modules"}) | specs(["fleet_outlier"])[0].facets
LOAD = r"""
setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &
setsid sh -c 'while :; do dd if=/dev/zero of=/tmp/p bs=1M count=16 2>/dev/null; rm -f /tmp/p; done' </dev/null >/dev/null 2>&1 &
for i in 1 2 3 4 5; do setsid sleep 100000 </dev/null >/dev/null 2>&1 & done
echo started
"""


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def peers(request: pytest.FixtureRequest, lab_pool: LabPool) -> Iterator[list[Guest]]:
    """Five guests of one build, booted at once (TCG boots them in parallel), shut down afterwards."""
    series = str(request.param)
    names = [f"t{os.getpid()}-peer{series.replace('.', '')}-{i}" for i in range(PEERS)]

    def up(name: str) -> Guest:
        proc = vmsentinel("lab", "up", name, "--kernel", series, "--memory", MEMORY_MIB, "--json")
        return Guest(name, series, 4, json.loads(proc.stdout))

    with ThreadPoolExecutor(PEERS) as pool:
        guests = list(pool.map(up, names))
    try:
        yield guests
    finally:
        for g in guests:
            vmsentinel("lab", "down", g.name, check=False)


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def handle(self, events: list[Event]) -> None:
        with self.lock:
            self.events.extend(events)

    def close(self) -> None:
        pass


def test_clean_peers_agree_and_the_rootkit_guest_alone_is_an_outlier(peers: list[Guest], tmp_path: Path) -> None:
    assert len({g.info["kernel_release"] for g in peers}) == 1
    busy = peers[0]
    assert "started" in guest_sh(busy, LOAD)

    # five clean guests (one busy): equal inventories, nothing raised
    sink = Collect()
    watcher = Watcher([g.target for g in peers], interval=1.0, sinks=[sink], workers=2)
    started = time.monotonic()
    watcher.run(max_sweeps=2)
    watcher.close()
    took = time.monotonic() - started
    inventories = {e.target: e for e in sink.events if isinstance(e, GuestInventory)}
    assert set(inventories) == {g.target for g in peers}, [type(e).__name__ for e in sink.events]
    outliers = [e.finding for e in sink.events if isinstance(e, FindingRaised) and e.finding.detector == "fleet_outlier"]
    assert outliers == [], [(f.target, f.evidence) for f in outliers]
    reference = inventories[peers[1].target]
    for inv in inventories.values():
        assert inv.build_id == reference.build_id and inv.build_id
        for facet, items in reference.facets.items():
            theirs = inv.facets[facet]
            if facet in SPARSE_FACETS:  # a page one guest has not in memory is no difference
                assert all(theirs[k] == v for k, v in items.items() if k in theirs), (inv.target, facet)
            elif facet in CLONE_FACETS and inv.target == busy.target:
                assert set(items) <= set(theirs), (inv.target, facet)  # the busy one runs no other program
            else:
                unlike = sorted(k for k in set(items) | set(theirs) if items.get(k) != theirs.get(k))
                assert not unlike, (inv.target, facet, unlike[:5])
    sizes = [len(json.dumps(asdict(e))) for e in inventories.values()]
    first: dict[str, float] = {}  # each guest's first inventory (the later ones refresh it)
    for e in sink.events:
        if isinstance(e, SweepDone) and "fleet_outlier" in e.detector_seconds:
            first.setdefault(e.target, e.detector_seconds["fleet_outlier"])
    seconds = list(first.values())
    print(
        f"\n{busy.series}: {len(reference.facets['kernel_text'])} text pages, {len(reference.facets['kernel_rodata'])} "
        f"rodata pages; inventory {max(sizes) // 1024} KiB; first inventories took "
        f"{', '.join(f'{s:.2f}' for s in sorted(seconds))} s; watch {took:.0f} s"
    )
    assert max(sizes) < 500_000 and len(seconds) == PEERS

    # the busy loops have done their part (first looks of a guest whose CPU never rests); what follows
    # needs no busy guest, and a TCG vCPU spinning for the rest of the test takes a core from it
    kill_matching(busy, "while :; do :; done")
    kill_matching(busy, "of=/tmp/p bs=1M")

    # the same inventories made here, one guest after the other: the first decodes its text, the
    # others take its mask (what each costs, with five idle TCG guests on the machine)
    build_masks.forget(files=True)
    costs = []
    for g in peers:
        with LinuxGuest.open(g.target) as guest:
            snap = guest.snapshot(scan=True, inventory=True, facets=FLEET_FACETS)
        assert snap.inventory is not None and not snap.inventory.problems, snap.inventory
        costs.append(f"{snap.inventory.seconds:.2f} s ({snap.inventory.cpu_seconds:.2f} s CPU)")
        for facet in ("kernel_text", "kernel_rodata", "syscalls", "idt", "modules"):
            assert snap.inventory.facets[facet] == inventories[g.target].facets[facet], (g.target, facet)
    print(f"{busy.series}: inventories made one after another: {', '.join(costs)}")

    # the rootkit in one guest before a new watch's first look: that guest alone differs
    victim = peers[2]
    ko = build_module(str(victim.info["kernel_package"]), ROOTKIT, tmp_path)
    insert_module(
        victim.name,
        ko,
        "hide_self=1 syscall_table=0x$(sym sys_call_table) syscall_nr=39 patch_addr=0x$(sym __x64_sys_getpid)",
    )
    jsonl = tmp_path / "peers.jsonl"
    env = {**os.environ, "VMSENTINEL_STATE": STATE["dir"], "COLUMNS": "400"}
    proc = subprocess.run(
        [sys.executable, "-m", "vmsentinel", "watch", *(g.target for g in peers), "--interval", "1", "--sweeps", "2",
         "--workers", "2", "--db", str(tmp_path / "peers.db"), "--ocsf", str(jsonl)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    fleet = [r for r in records if r["finding_info"]["analytic"]["name"] == "fleet_outlier"]
    flagged = {r["device"]["name"] for r in fleet}
    assert flagged == {victim.target}, (flagged, proc.stderr[-3000:])
    facets = {r["evidences"][0]["data"]["facet"] for r in fleet}
    assert {"modules", "taint", "syscalls", "kernel_text"} <= facets, facets
    print(f"{victim.series}: the rootkit guest differs in {sorted(facets)}")
    guest_sh(peers[0], "true")  # the guest that was busy is alive and answering
