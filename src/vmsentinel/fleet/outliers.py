"""The fleet as a detector, on the central side: every host's guest inventories meet here, and a
guest unlike most of its peers of one build (wherever they run) is ``fleet_outlier``. The hosts
publishing to the bus do not compare their own guests (their watch runs with ``peer_compare`` off):
the comparison over the whole fleet is the one that counts, and it is made once."""

from __future__ import annotations

from vmsentinel import events as ev
from vmsentinel.detect.fleet import FleetChange, FleetComparer


class FleetComparison:
    """Fed every event the hub keeps (guests named HOST/GUEST); returns what the comparison raised
    and cleared."""

    def __init__(self) -> None:
        self.comparer = FleetComparer()

    def __call__(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.GuestInventory):
            change = self.comparer.update(event, name=event.target)
        elif isinstance(event, ev.GuestRemoved):
            change = self.comparer.remove(event.target)
        else:
            return []
        return events_of(change)


def events_of(change: FleetChange) -> list[ev.Event]:
    out: list[ev.Event] = [ev.FindingCleared(f.target, f.key, f.detector, f.title) for f in change.cleared]
    out += [ev.FindingRaised(f) for f in change.raised]
    return out
