"""Events as one line each for a person watching: ``(target, message)`` pairs to a
writer (the CLI prints them on stderr; tests collect them).

    sink = ConsoleSink(lambda target, line: print(f"{target}: {line}"))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from vmsentinel.events import (
    BaselineRestored,
    BaselineTaken,
    CodeTracking,
    Event,
    FindingCleared,
    FindingRaised,
    FirstLook,
    GuestAdded,
    GuestRemoved,
    GuestUnreachable,
    GuestWatched,
    PolicyRejected,
    PolicyReloaded,
    ResponseDone,
    WorkerRestarted,
)


def describe(event: Event) -> str | None:
    """The line a person sees for ``event``, or None for events not worth a line (sweeps, processes)."""
    match event:
        case FindingRaised(finding=f) | PolicyRejected(finding=f):
            return f"FINDING {f.severity.name}: {f.title}"
        case FindingCleared(title=title):
            return f"cleared: {title}"
        case GuestWatched(release=release):
            return f"watching {release}"
        case GuestAdded(reason=reason):
            return f"added to the watch ({reason})"
        case GuestRemoved(reason=reason):
            return f"left the watch ({reason})"
        case BaselineTaken(seconds=seconds):
            return f"baseline taken in {seconds * 1000:.1f} ms"
        case BaselineRestored(refused=refused, seq=seq) if refused:
            return f"the stored baseline (record {seq}) was REFUSED: {refused}; taking a new first look"
        case BaselineRestored(taken=taken, seq=seq):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(taken))
            return f"compared with its stored baseline of {when} (record {seq}), not trusted anew"
        case GuestUnreachable(reason=reason, retry_in=delay):
            return f"unreachable ({reason}); retrying in {delay:.0f} s"
        case PolicyReloaded(description=description):
            return f"policy reloaded: {description}"
        case WorkerRestarted(worker=n, how=how, pid=pid, guests=guests):
            again = f"; opening again: {', '.join(guests)}" if guests else ""
            return f"worker {n} {how}; restarted as pid {pid}{again}"
        case CodeTracking(incremental=True, reason=reason):
            return f"kernel code: only pages written since the last sweep are hashed again ({reason})"
        case CodeTracking(incremental=False, reason=reason):
            return f"kernel code: every page hashed on every sweep ({reason})"
        case FirstLook(vendor="", note=note):
            return f"first look: {note or 'no vendor image'}: kernel code not compared with the vendor's"
        case FirstLook(vendor=vendor, compared=compared, differences=differences, note=note):
            problems = f" ({note})" if note else ""
            return f"first look: kernel compared with {vendor}: {compared >> 20} MiB, {differences} differences{problems}"
        case ResponseDone(record=r) if r.action != "alert":
            return f"response {r.action}: {'ok' if r.ok else 'FAILED'} ({r.detail})"
    return None


class ConsoleSink:
    def __init__(self, write: Callable[[str, str], None]) -> None:
        self.write = write

    def handle(self, events: Sequence[Event]) -> None:
        for event in events:
            line = describe(event)
            if line is not None:
                self.write(event.target, line)

    def close(self) -> None:
        pass
