"""vmsentinel: a security sentinel that watches virtual machines from outside,
through their memory.

The public API (everything else is internal and may change)::

    import vmsentinel

    policy = vmsentinel.load_policy()                   # built-in detectors (or a signed bundle + keys)
    with vmsentinel.open_guest("lab:web1") as guest:
        first = vmsentinel.sweep_once(guest, policy, take_baseline=True)
        later = vmsentinel.sweep_once(guest, policy, first.snapshot, first.baseline)
        for finding in later.new:
            print(finding.severity.name, finding.title)

Names load on first use, so ``import vmsentinel`` costs nothing (the quick
``ps --json`` path depends on it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vmsentinel.version import __version__

if TYPE_CHECKING:
    from vmsentinel._api import load_policy, open_guest
    from vmsentinel.detect.finding import Finding, Severity
    from vmsentinel.errors import VmSentinelError
    from vmsentinel.events import (
        BaselineTaken,
        Event,
        FindingCleared,
        FindingRaised,
        GuestAdded,
        GuestRemoved,
        GuestUnreachable,
        GuestWatched,
        ModuleLoaded,
        ModuleUnloaded,
        PolicyRejected,
        PolicyReloaded,
        ProcessStarted,
        ProcessStopped,
        ResponseDone,
        SweepDone,
        SweepMissed,
    )
    from vmsentinel.pipeline.compiled import CompiledPolicy
    from vmsentinel.pipeline.sweep import SweepResult, sweep_once
    from vmsentinel.watch.watcher import Watcher

_PUBLIC = {
    "open_guest": "vmsentinel._api",
    "load_policy": "vmsentinel._api",
    "sweep_once": "vmsentinel.pipeline.sweep",
    "SweepResult": "vmsentinel.pipeline.sweep",
    "CompiledPolicy": "vmsentinel.pipeline.compiled",
    "Watcher": "vmsentinel.watch.watcher",
    "Finding": "vmsentinel.detect.finding",
    "Severity": "vmsentinel.detect.finding",
    "VmSentinelError": "vmsentinel.errors",
    **dict.fromkeys(
        [
            "Event",
            "FindingRaised",
            "FindingCleared",
            "ProcessStarted",
            "ProcessStopped",
            "ModuleLoaded",
            "ModuleUnloaded",
            "ResponseDone",
            "GuestWatched",
            "GuestAdded",
            "GuestRemoved",
            "GuestUnreachable",
            "BaselineTaken",
            "PolicyReloaded",
            "PolicyRejected",
            "SweepDone",
            "SweepMissed",
        ],
        "vmsentinel.events",
    ),
}

__all__ = [
    "BaselineTaken",
    "CompiledPolicy",
    "Event",
    "Finding",
    "FindingCleared",
    "FindingRaised",
    "GuestAdded",
    "GuestRemoved",
    "GuestUnreachable",
    "GuestWatched",
    "ModuleLoaded",
    "ModuleUnloaded",
    "PolicyRejected",
    "PolicyReloaded",
    "ProcessStarted",
    "ProcessStopped",
    "ResponseDone",
    "Severity",
    "SweepDone",
    "SweepMissed",
    "SweepResult",
    "VmSentinelError",
    "Watcher",
    "__version__",
    "load_policy",
    "open_guest",
    "sweep_once",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vmsentinel' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
