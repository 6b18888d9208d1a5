"""What the sentinel tells the world, as typed events.

The pipeline and the watcher produce events; sinks (OCSF JSON lines, SQLite, the
console, metrics) consume them, each taking the kinds it cares about. An event
is a frozen record: easy to queue, serialise and test. ``target`` is always the
guest the event is about (``sentinel`` for the sentinel itself).

    for event in result.events:
        match event:
            case FindingRaised(finding=f): print(f.title)
            case ProcessStarted(pid=pid, name=name): print("started", pid, name)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vmsentinel.detect.finding import Finding
from vmsentinel.respond.actions import ResponseRecord


@dataclass(frozen=True)
class FindingRaised:
    """A new finding, confirmed by a second read where the guest is live."""

    finding: Finding

    @property
    def target(self) -> str:
        return self.finding.target


@dataclass(frozen=True)
class FindingCleared:
    """A finding reported earlier that a full sweep no longer sees."""

    target: str
    key: str
    detector: str
    title: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class _ProcessEvent:
    target: str
    pid: int
    ppid: int
    name: str
    exe: str | None
    args: str | None
    uid: int
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ProcessStarted(_ProcessEvent):
    """A process that the previous sweep did not see (same pid and start time)."""


@dataclass(frozen=True)
class ProcessStopped(_ProcessEvent):
    """A process that the previous sweep saw and this one does not."""


@dataclass(frozen=True)
class _ModuleEvent:
    target: str
    name: str
    base: int
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ModuleLoaded(_ModuleEvent):
    """A kernel module that the previous sweep did not see."""


@dataclass(frozen=True)
class ModuleUnloaded(_ModuleEvent):
    """A kernel module that the previous sweep saw and this one does not."""


@dataclass(frozen=True)
class ResponseDone:
    """A response carried out (or attempted) for a finding, with its outcome."""

    record: ResponseRecord

    @property
    def target(self) -> str:
        return self.record.target


@dataclass(frozen=True)
class GuestWatched:
    """A guest was opened and its kernel found (``release``); ``access`` says how its memory is read."""

    target: str
    release: str
    access: str = ""


@dataclass(frozen=True)
class GuestAdded:
    """A guest joined the watch (a domain started, or was running when the watch began)."""

    target: str
    reason: str


@dataclass(frozen=True)
class GuestRemoved:
    """A guest left the watch for good (its domain stopped or migrated away); ``reason`` says how."""

    target: str
    reason: str


@dataclass(frozen=True)
class BaselineTaken:
    target: str
    seconds: float


@dataclass(frozen=True)
class BaselineRestored:
    """A guest's baseline was found in the alert store, taken earlier in this boot of its kernel (record
    ``seq``, at ``taken``): the guest is compared with it instead of being trusted anew. ``refused``: why
    the stored one could not be used (it did not verify), and a new first look is taken instead."""

    target: str
    taken: float
    seq: int
    refused: str = ""


@dataclass(frozen=True)
class GuestUnreachable:
    """A guest could not be opened or read; the next try is ``retry_in`` seconds away."""

    target: str
    reason: str
    retry_in: float


@dataclass(frozen=True)
class PolicyReloaded:
    description: str
    target: str = "sentinel"


@dataclass(frozen=True)
class PolicyRejected:
    """A new policy was refused; the previous one stays. ``finding`` is the alert that says so."""

    finding: Finding

    @property
    def target(self) -> str:
        return self.finding.target


@dataclass(frozen=True)
class SweepDone:
    """One sweep of one guest: how long it and each detector took, and what it could not read."""

    target: str
    seconds: float
    full: bool
    findings: int
    problems: int
    detector_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepMissed:
    """Rounds in which a guest was due but not looked at (unreachable, or its last sweep overran)."""

    target: str
    count: int = 1


@dataclass(frozen=True)
class WorkerRestarted:
    """A worker process of the watch died and a new one took its place; its guests are opened again
    there, each with the baseline it had."""

    worker: int
    #: how the old one ended ("killed by SIGKILL", "exited 1")
    how: str
    pid: int
    guests: tuple[str, ...]
    target: str = "sentinel"


@dataclass(frozen=True)
class CodeTracking:
    """How a guest's kernel and module text is followed from sweep to sweep: host-side dirty tracking
    (only written pages are read and hashed again) or every page hashed on every sweep, and why."""

    target: str
    incremental: bool
    reason: str


@dataclass(frozen=True)
class FirstLook:
    """What a guest's first look compared its kernel with: the vendor image of its build (``vendor``, how
    many bytes, how many differences), or why there was none (``note``)."""

    target: str
    vendor: str
    compared: int
    differences: int
    note: str = ""


@dataclass(frozen=True)
class GuestInventory:
    """What a guest's peers are compared on (see ``detect/fleet.py``): its kernel build and, by facet
    (``kernel_text``, ``kernel_rodata``, ``syscalls``, ``idt``, ``modules``, ``taint``, ``bpf``, and for
    clones of one image ``executables``, ``code_pages``, ``listening``), item name -> a 16-hex-character
    digest or a short value, computed so that two clean guests of one build give equal values whatever
    their KASLR slides (``os/linux/views/inventory.py``). Taken with a guest's first look, and again on
    full sweeps when it changed. Plain data: ``GuestInventory(**json.loads(json.dumps(asdict(e))))``
    rebuilds it."""

    target: str
    #: the kernel's GNU build id: peers share it ("" when the kernel has none: then ``release`` groups)
    build_id: str
    release: str
    #: facet name -> {item name -> short digest or value}
    facets: dict[str, dict[str, str]]
    time: float = field(default_factory=time.time)


Event = (
    FindingRaised
    | FindingCleared
    | ProcessStarted
    | ProcessStopped
    | ModuleLoaded
    | ModuleUnloaded
    | ResponseDone
    | GuestWatched
    | GuestAdded
    | GuestRemoved
    | BaselineTaken
    | BaselineRestored
    | GuestUnreachable
    | PolicyReloaded
    | PolicyRejected
    | SweepDone
    | SweepMissed
    | WorkerRestarted
    | CodeTracking
    | FirstLook
    | GuestInventory
)
