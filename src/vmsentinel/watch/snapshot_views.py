"""What the service shows of a watched guest, taken from its latest snapshot (what the last
sweep saw) without reading the guest again: a hung or hostile guest cannot stall whoever asks.
The records are the same JSON the CLI's views print (``vmsentinel ps TARGET --json``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from vmsentinel.os.declare import records_to_json

if TYPE_CHECKING:
    from vmsentinel.os.guest import Guest
    from vmsentinel.os.snapshot import GuestSnapshot

#: each view's records and what its sweep could not read
_VIEWS: dict[str, Callable[[GuestSnapshot], tuple[Sequence[Any], list[str]]]] = {
    "processes": lambda s: (s.tasks.tasks, s.tasks.problems),
    "modules": lambda s: (s.modules.modules, s.modules.problems),
    "syscalls": lambda s: (s.syscalls.syscalls, s.syscalls.problems),
    "hooks": lambda s: (s.syscalls.mechanisms, s.syscalls.problems),
    "idt": lambda s: (s.idt.idt, s.idt.problems),
    "sockets": lambda s: (s.sockets.sockets, s.sockets.problems) if s.sockets is not None else ([], []),
    "callbacks": lambda s: (s.callbacks.callbacks, s.callbacks.problems) if s.callbacks else ([], []),
    "mounts": lambda s: (s.mounts.mounts, s.mounts.problems) if s.mounts else ([], []),
    "ptrace": lambda s: (s.ptrace.links, s.ptrace.problems) if s.ptrace else ([], []),
}
#: the views a snapshot answers, as the API names them
SNAPSHOT_VIEWS = tuple(_VIEWS)


def snapshot_view(snap: GuestSnapshot, name: str) -> dict[str, Any]:
    """One view of ``snap``: ``{"records": [...], "problems": [...], "full": bool}``."""
    pick = _VIEWS.get(name)
    if pick is None:
        raise ValueError(f"no view {name!r}: one of {', '.join(SNAPSHOT_VIEWS)}")
    records, problems = pick(snap)
    return {"records": records_to_json(records), "problems": list(problems)[:200], "full": snap.full}


def about(target: str, guest: Guest | None, snap: GuestSnapshot | None) -> dict[str, Any]:
    """The guest itself: kernel, where its profile came from, paging, how its memory is reached."""
    out: dict[str, Any] = {"target": target, "open": guest is not None}
    if guest is not None:
        out.update(guest.about())
    if snap is not None:
        out.update(processes=len(snap.tasks.tasks), modules=len(snap.modules.modules), last_sweep_seconds=snap.seconds)
    return out
