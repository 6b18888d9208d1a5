"""Where events go. A sink takes each batch of events (one sweep's, in order) and
keeps the kinds it cares about: OCSF JSON lines and SQLite keep findings (and
the store keeps responses and process events too), the console prints a line
per event a person wants to see, metrics count sweeps and findings.

    class ListSink:                      # the whole protocol
        def handle(self, events): ...
        def close(self): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vmsentinel.events import Event


class Sink(Protocol):
    def handle(self, events: Sequence[Event]) -> None:
        """Take one batch of events; a sink ignores the kinds it does not keep."""

    def close(self) -> None:
        """Write what is pending and release the file or connection."""


__all__ = ["Sink"]
