"""The one sweep pipeline: collect a snapshot, run the enabled detectors, confirm
what is new by a second read, and say what changed. ``watch``, ``check``, the
demo and library users all call :func:`sweep_once`; where the results go is
theirs to decide (the watcher hands the events to its sinks).

    result = sweep_once(guest, compiled, take_baseline=True)        # first sight
    result = sweep_once(guest, compiled, result.snapshot, result.baseline)
    result.new        # findings not reported before, confirmed by a second read
    result.events     # FindingRaised, ProcessStarted/Stopped, ModuleLoaded/Unloaded
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vmsentinel.detect.baseline import Baseline
from vmsentinel.detect.finding import Finding
from vmsentinel.detect.registry import run_detectors
from vmsentinel.events import (
    Event,
    FindingRaised,
    FirstLook,
    GuestInventory,
    ModuleLoaded,
    ModuleUnloaded,
    ProcessStarted,
    ProcessStopped,
)
from vmsentinel.pipeline.compiled import CompiledPolicy
from vmsentinel.pipeline.memory_scan import scan_regions

if TYPE_CHECKING:
    from vmsentinel.os.guest import Guest
    from vmsentinel.os.snapshot import GuestSnapshot


@dataclass
class SweepResult:
    target: str
    snapshot: GuestSnapshot
    #: every finding of this sweep, reported before or not
    found: list[Finding] = field(default_factory=list)
    #: the findings not in ``reported``, confirmed by a second read when asked
    new: list[Finding] = field(default_factory=list)
    #: the baseline this sweep took (``take_baseline`` with none given), else the one given
    baseline: Baseline | None = None
    events: list[Event] = field(default_factory=list)
    #: seconds per detector
    timings: dict[str, float] = field(default_factory=dict)

    #: this sweep took the baseline (a first look: its detectors ran with no history)
    took_baseline: bool = False

    @property
    def problems(self) -> int:
        """What this sweep could not read (unreadable tasks or modules, broken lists)."""
        return len(self.snapshot.tasks.problems) + len(self.snapshot.modules.problems)


def collect(
    guest: Guest,
    compiled: CompiledPolicy,
    full: bool,
    previous: GuestSnapshot | None,
    baseline: Baseline | None,
    for_baseline: bool,
    inventory: bool = False,
) -> GuestSnapshot:
    """The snapshot the compiled policy's detectors need, with YARA's matches in it (and, with
    ``inventory``, what the guest's peers are compared on)."""
    facets = compiled.facets
    with_code = "code" in facets and (baseline is not None or for_baseline)
    yara = compiled.yara
    more = {"inventory": True} if inventory else {}  # an OS without inventories need not know the word
    snap = guest.snapshot(
        with_code=with_code,
        scan=full,
        since=previous,
        page_hasher=compiled.page_hasher,
        reference=baseline.code if baseline is not None and not for_baseline else None,
        regions=yara is not None,
        facets=facets,
        first_look=baseline is None,  # trusting nothing: the vendor's image and the kernel's own rules say what it should be
        **more,
    )
    if yara is not None and snap.regions is not None:
        snap.yara = scan_regions(yara, snap.regions)
    return snap


def sweep_once(
    guest: Guest,
    compiled: CompiledPolicy,
    previous: GuestSnapshot | None = None,
    baseline: Baseline | None = None,
    *,
    target: str | None = None,
    full: bool = True,
    reported: Collection[str] = (),
    confirm_new: bool = True,
    take_baseline: bool = False,
    inventory: bool = False,
) -> SweepResult:
    """One sweep of ``guest`` under ``compiled``.

    With ``take_baseline`` and no ``baseline``, this sweep becomes the baseline; it is a first look
    all the same (the kernel against its vendor's image, the dispatchers, credentials, hidden
    objects: every detector that needs no history), so what is wrong before the sentinel started is
    found, not blessed. Every enabled detector runs against ``previous`` and ``baseline``; findings
    whose key is in ``reported`` are not new; new ones are confirmed by a second read
    (``confirm_new``) so that a race with the running guest is no finding: the detectors that found
    them run again on a snapshot of what they read.

    With ``inventory`` (a watch: the fleet compares its guests) and ``fleet_outlier`` enabled, the
    guest's inventory is made on its first look and on full sweeps, and a :class:`GuestInventory`
    event says it whenever it is not the one the previous sweep had; its cost counts as
    ``fleet_outlier``'s in the timings."""
    name = target or guest.target.spec
    for_baseline = take_baseline and baseline is None
    snap = collect(guest, compiled, full, previous, baseline, for_baseline, inventory)
    events = _changes(name, previous, snap)
    timings: dict[str, float] = {}
    inv = getattr(snap, "inventory", None)
    before = getattr(previous, "inventory", None) if previous is not None else None
    if inv is not None and inv is not before:  # made by this sweep, not carried
        timings["fleet_outlier"] = getattr(inv, "seconds", 0.0)
        if before is None or (inv.build_id, inv.release, inv.facets) != (before.build_id, before.release, before.facets):
            events.append(GuestInventory(name, inv.build_id, inv.release, inv.facets))
    taken = Baseline.take(snap) if for_baseline else None
    if snap.vendor is not None:  # a first look (check, or a watch's baseline): say what the kernel was compared with
        check = snap.vendor
        events.append(
            FirstLook(name, check.vendor, check.compared, len(check.differences) + check.more, "; ".join(check.problems))
        )
    found = run_detectors(name, snap, previous, baseline, compiled.enabled, compiled.rules, timings, guest.os)
    new = [f for f in found if f.key not in reported]
    if new and confirm_new:  # only the detectors that found something look again, at only what they read
        narrow = compiled.narrowed({f.detector for f in new})
        again = collect(guest, narrow, full, previous, baseline, False)
        new = confirm(new, run_detectors(name, again, previous, baseline, narrow.enabled, narrow.rules, os=guest.os))
    events += [FindingRaised(f) for f in new]
    if taken is not None:  # the first look's findings stand: the baseline is no blessing of what was found
        return SweepResult(name, snap, found, new, taken, events, timings, took_baseline=True)
    return SweepResult(name, snap, found, new, baseline, events, timings)


def confirm(first: list[Finding], second: list[Finding]) -> list[Finding]:
    """Findings seen in two consecutive reads: a race with the running guest is not a finding."""
    again = {f.key for f in second}
    return [replace(f, confirmed=True) for f in first if f.key in again]


def _changes(target: str, previous: GuestSnapshot | None, snap: GuestSnapshot) -> list[Event]:
    """Processes and modules that came or went since ``previous``."""
    if previous is None:
        return []
    now = time.time()
    before = {(t.pid, t.start_time_ns): t for t in previous.tasks.tasks}
    after = {(t.pid, t.start_time_ns): t for t in snap.tasks.tasks}
    events: list[Event] = [
        ProcessStarted(target, t.pid, t.ppid, t.name, t.exe, t.args, t.uid, now) for k, t in after.items() if k not in before
    ]
    events += [
        ProcessStopped(target, t.pid, t.ppid, t.name, t.exe, t.args, t.uid, now) for k, t in before.items() if k not in after
    ]
    mods_before = {(m.name, m.base) for m in previous.modules.modules}
    mods_after = {(m.name, m.base) for m in snap.modules.modules}
    events += [ModuleLoaded(target, n, b, now) for n, b in sorted(mods_after - mods_before)]
    events += [ModuleUnloaded(target, n, b, now) for n, b in sorted(mods_before - mods_after)]
    return events
