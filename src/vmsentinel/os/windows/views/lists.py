"""NT's doubly linked lists (``LIST_ENTRY``: ``Flink``, ``Blink``), walked from their head the way a
hostile guest cannot turn into a hang: an entry seen before ends the walk, so does a bound, and an
entry that cannot be read ends it with the reason. ``Flink`` is 4 bytes on 32-bit NT, 8 on x64.

    objects, problems = walk_list(space, head, link_offset=0x98, what="process")
    objects, problems = walk_list(space64, head, link_offset=0x2E8, what="process", pointer_size=8)
"""

from __future__ import annotations

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.errors import TranslationError

MAX_ENTRIES = 65536


def walk_list(
    space: VirtualReads, head: int, link_offset: int, what: str, limit: int = MAX_ENTRIES, *, pointer_size: int = 4
) -> tuple[list[int], list[str]]:
    """The addresses of the objects on the list at ``head`` (each entry minus ``link_offset``), in
    ``Flink`` order, and what stopped the walk early."""
    if pointer_size not in (4, 8):
        raise ValueError(f"a LIST_ENTRY pointer is 4 or 8 bytes, not {pointer_size}")
    read_pointer = space.read_u64 if pointer_size == 8 else space.read_u32
    objects: list[int] = []
    seen = {head}
    try:
        entry = read_pointer(head)
    except TranslationError as exc:
        return [], [f"the {what} list's head at {head:#x} cannot be read: {exc}"]
    while entry != head:
        if entry in seen:
            return objects, [f"the {what} list loops back to {entry:#x} after {len(objects)} entries"]
        if len(objects) >= limit:
            return objects, [f"stopped after {limit} {what} entries"]
        try:
            following = read_pointer(entry)
        except TranslationError as exc:
            return objects, [f"the {what} list breaks at {entry:#x}: {exc}"]
        seen.add(entry)
        objects.append(entry - link_offset)
        entry = following
    return objects, []
