"""NT's doubly linked lists (``LIST_ENTRY``: ``Flink``, ``Blink``), walked from their head the way a
hostile guest cannot turn into a hang: an entry seen before ends the walk, so does a bound, and an
entry that cannot be read ends it with the reason.

    objects, problems = walk_list(space, head, link_offset=0x98, what="process")
"""

from __future__ import annotations

from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.errors import TranslationError

MAX_ENTRIES = 65536


def walk_list(
    space: PagingAddressSpace32, head: int, link_offset: int, what: str, limit: int = MAX_ENTRIES
) -> tuple[list[int], list[str]]:
    """The addresses of the objects on the list at ``head`` (each entry minus ``link_offset``), in
    ``Flink`` order, and what stopped the walk early."""
    objects: list[int] = []
    seen = {head}
    try:
        entry = space.read_u32(head)
    except TranslationError as exc:
        return [], [f"the {what} list's head at {head:#x} cannot be read: {exc}"]
    while entry != head:
        if entry in seen:
            return objects, [f"the {what} list loops back to {entry:#x} after {len(objects)} entries"]
        if len(objects) >= limit:
            return objects, [f"stopped after {limit} {what} entries"]
        try:
            following = space.read_u32(entry)
        except TranslationError as exc:
            return objects, [f"the {what} list breaks at {entry:#x}: {exc}"]
        seen.add(entry)
        objects.append(entry - link_offset)
        entry = following
    return objects, []
