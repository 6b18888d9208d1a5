"""NT processes found in physical memory itself: the third view beside the active list and the
client-ID table, for a process unlinked from both (a rootkit that also clears its client-ID entry).

Every ``_EPROCESS`` starts with its ``_KPROCESS``'s dispatcher header: type 3 (a process object) and
the size of ``_KPROCESS`` in 32-bit words. Each place in RAM holding those four bytes is a candidate,
kept only when the rest agrees: not signalled and no exit time (a live process), a page directory
that is a page of RAM mapping itself at entry 0x300 (as every NT process's does), a process ID that is
a handle value, a printable image name. The object's kernel address comes from the kernel's own
mappings (physical page -> the system-half address that maps it).

The scan is bounded in candidates and reads RAM in chunks; a forged header is at most a candidate
that fails its checks.

    eprocesses, problems = scan_processes(kernel_space, memory, profile)
"""

from __future__ import annotations

import struct
from bisect import bisect_right

from vmsentinel.arch.x86_32 import P, PagingAddressSpace32
from vmsentinel.errors import BtfError, UnmappedPhysicalAddress
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.windows.locate import SELF_MAP_INDEX, SYSTEM_END, SYSTEM_START
from vmsentinel.os.windows.profile.profile import NtProfile

PROCESS_OBJECT = 3
CHUNK = 1 << 22
#: candidates checked at most (a hostile guest can fill RAM with headers)
MAX_CANDIDATES = 1 << 14
MAX_PID = 1 << 24
#: runs looked back through for one frame's address; the self-map's window, where page tables show again
MAX_ALIASES, PAGE_TABLES, PAGE_TABLES_END = 64, 0xC000_0000, 0xC040_0000


def _system_map(space: PagingAddressSpace32) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The kernel's mappings sorted by physical address: (paddr, vaddr, size)."""
    runs = sorted((m.paddr, m.vaddr, m.size) for m in space.walk_mappings(SYSTEM_START, SYSTEM_END).mappings)
    return [r[0] for r in runs], runs


def _virtual(starts: list[int], runs: list[tuple[int, int, int]], paddr: int) -> int | None:
    """The system-half address of ``paddr``: the nearest runs starting at or below it are looked at
    (several map the same frame: the self-map shows page tables again), the page-table window skipped."""
    at = bisect_right(starts, paddr) - 1
    for index in range(at, max(at - MAX_ALIASES, -1), -1):
        start, vaddr, size = runs[index]
        if paddr < start + size and not PAGE_TABLES <= vaddr < PAGE_TABLES_END:
            return vaddr + paddr - start
    return None


def scan_processes(space: PagingAddressSpace32, memory: PhysicalMemory, profile: NtProfile) -> tuple[list[int], list[str]]:
    """The kernel addresses of the live ``_EPROCESS`` objects in RAM, and what cut the scan short."""
    t = profile.types
    try:
        header = bytes([PROCESS_OBJECT, 0, t.struct_size("_KPROCESS") // 4, 0])
        signal = t.member_offset("_DISPATCHER_HEADER", "SignalState")
        directory_at = t.member_offset("_EPROCESS", "Pcb") + t.member_offset("_KPROCESS", "DirectoryTableBase")
        pid_at = t.member_offset("_EPROCESS", "UniqueProcessId")
        name_at = t.member_offset("_EPROCESS", "ImageFileName")
        exit_at = t.member_offset("_EPROCESS", "ExitTime")
        size = t.struct_size("_EPROCESS")
    except BtfError as exc:
        return [], [f"the profile lacks what the process scan needs: {exc}"]
    starts, runs = _system_map(space)
    found: list[int] = []
    problems: list[str] = []
    candidates = 0
    for rng in memory.ranges():
        for chunk in range(rng.start, rng.end, CHUNK):
            length = min(CHUNK + size, rng.end - chunk)  # objects across the chunk's end are read whole
            try:
                data = memory.read(chunk, length)
            except UnmappedPhysicalAddress:
                continue
            at = data.find(header, 0, CHUNK)
            while at != -1:
                candidates += 1
                if candidates > MAX_CANDIDATES:
                    return found, [*problems, f"the process scan stopped after {MAX_CANDIDATES} candidates"]
                body = data[at : at + size]
                if len(body) == size and at % 8 == 0 and _live(body, memory, signal, directory_at, pid_at, name_at, exit_at):
                    vaddr = _virtual(starts, runs, chunk + at)
                    if vaddr is None:
                        problems.append(f"a process object at physical {chunk + at:#x} is mapped nowhere in the kernel")
                    else:
                        found.append(vaddr)
                at = data.find(header, at + 4, CHUNK)
    return found, problems


def _live(body: bytes, memory: PhysicalMemory, signal: int, directory_at: int, pid_at: int, name_at: int, exit_at: int) -> bool:
    """Does this candidate hold together as a live process?"""
    (signalled,) = struct.unpack_from("<i", body, signal)
    (directory,) = struct.unpack_from("<I", body, directory_at)
    (pid,) = struct.unpack_from("<I", body, pid_at)
    (exited,) = struct.unpack_from("<Q", body, exit_at)
    name = body[name_at : name_at + 16].split(b"\0", 1)[0]
    if signalled or exited or pid % 4 or pid >= MAX_PID or not name or not all(0x20 <= c < 0x7F for c in name):
        return False
    if not directory or directory & 0xFFF or not memory.is_valid(directory):
        return False
    try:
        (self_entry,) = struct.unpack("<I", memory.read(directory + SELF_MAP_INDEX * 4, 4))
    except UnmappedPhysicalAddress:
        return False
    return bool(self_entry & P) and self_entry & ~0xFFF == directory
