"""The client-ID table (``PspCidTable``): every process and thread by its ID, the kernel's second
record of processes beside the active list. A process unlinked from ``ActiveProcessLinks`` (the
classic DKOM hiding) is still here, so the two views compared find it.

The table is NT 5.2's three-level handle table: ``TableCode``'s low two bits say how many levels;
a leaf page holds 512 eight-byte entries (object pointer with three flag bits, access), a middle or
top page 1024 pointers. Every level is read bounded; an entry whose object is not a process or a
thread (its dispatcher header's type) is left out.

    objects, problems = cid_table(kernel_space, profile, kernel_base)   # {pid: EPROCESS}, threads apart
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.errors import BtfError, ProfileError, TranslationError
from vmsentinel.os.windows.profile.profile import NtProfile

LEAF_ENTRIES, POINTERS = 512, 1024
PROCESS_OBJECT, THREAD_OBJECT = 3, 6  # KOBJECTS: a dispatcher header's Type
MAX_HANDLES = 1 << 20


@dataclass
class CidTable:
    processes: dict[int, int] = field(default_factory=dict)  # pid -> EPROCESS
    threads: dict[int, int] = field(default_factory=dict)  # tid -> ETHREAD


def cid_table(kernel: PagingAddressSpace32, profile: NtProfile, kernel_base: int) -> tuple[CidTable, list[str]]:
    out = CidTable()
    try:
        table = kernel.read_u32(kernel_base + profile.rva("PspCidTable"))
        code = kernel.read_u32(table + profile.types.member_offset("_HANDLE_TABLE", "TableCode"))
    except (TranslationError, BtfError, ProfileError) as exc:
        return out, [f"the client-ID table cannot be read: {exc}"]
    levels, top = code & 3, code & ~3
    if levels == 3:
        return out, [f"the client-ID table's TableCode {code:#x} names four levels (NT has three at most)"]
    problems: list[str] = []
    leaves: list[tuple[int, int]] = []  # (first handle index, leaf page)
    pages = [(0, top, levels)]
    while pages:
        first, page, level = pages.pop()
        if level == 0:
            leaves.append((first, page))
            continue
        try:
            pointers = struct.unpack(f"<{POINTERS}I", kernel.read(page, POINTERS * 4))
        except TranslationError as exc:
            problems.append(f"a level-{level} page of the client-ID table at {page:#x} cannot be read: {exc}")
            continue
        span = LEAF_ENTRIES * POINTERS ** (level - 1)
        for i, pointer in enumerate(pointers):
            if pointer and first + i * span < MAX_HANDLES:
                pages.append((first + i * span, pointer, level - 1))
    for first, leaf in sorted(leaves):
        try:
            entries = struct.unpack(f"<{LEAF_ENTRIES * 2}I", kernel.read(leaf, LEAF_ENTRIES * 8))
        except TranslationError as exc:
            problems.append(f"a leaf of the client-ID table at {leaf:#x} cannot be read: {exc}")
            continue
        for i in range(LEAF_ENTRIES):
            value = entries[2 * i] & ~7
            if not value or value < 0x80000000:  # free entries hold the next free index, not a pointer
                continue
            cid = (first + i) * 4
            try:
                kind = kernel.read(value, 1)[0]
            except TranslationError:
                problems.append(f"client ID {cid} names unreadable memory at {value:#x}")
                continue
            if kind == PROCESS_OBJECT:
                out.processes[cid] = value
            elif kind == THREAD_OBJECT:
                out.threads[cid] = value
    return out, problems
