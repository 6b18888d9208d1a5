"""NT processes from the kernel's own list (``PsActiveProcessHead`` -> ``_EPROCESS.ActiveProcessLinks``),
with each one's image path and command line read from its PEB through its own page directory.

The list is hostile: the walk stops at a repeated entry or a bound, and says why; a process whose
PEB cannot be read keeps its name (``ImageFileName``, 15 characters) and gets no path.

The profile's pointer size says which NT this is: 4 bytes (32-bit NT, two-level paging) or 8 (x64:
pointers, handles and ``DirectoryTableBase`` are 8 bytes, ``UNICODE_STRING.Buffer`` is at +8, and a
process's own directory is a 4-level PML4). The profile does not say whether 32-bit NT runs PAE: the
caller does (``pae=True``), and then ``DirectoryTableBase`` is the process's page-directory-pointer
table, 32-byte aligned below 4 GiB, read through as three levels.

    procs, problems = list_processes(kernel_space, memory, profile, kernel_base)
"""

from __future__ import annotations

from dataclasses import dataclass

from vmsentinel.arch.address_space import VirtualReads
from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.arch.x86_64 import PagingAddressSpace, cr3_to_root
from vmsentinel.errors import BtfError, TranslationError
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.lists import walk_list

MAX_PATH_BYTES = 0x8000


@dataclass(frozen=True)
class NtProcess:
    pid: int
    ppid: int
    name: str
    eprocess: int
    directory: int
    create_time: int
    image_path: str | None
    command_line: str | None


class _Fields:
    """The offsets the walk reads, looked up once."""

    def __init__(self, profile: NtProfile) -> None:
        t = profile.types
        self.pointer_size = profile.pointer_size
        self.links = t.member_offset("_EPROCESS", "ActiveProcessLinks")
        self.pid = t.member_offset("_EPROCESS", "UniqueProcessId")
        self.ppid = t.member_offset("_EPROCESS", "InheritedFromUniqueProcessId")
        self.name = t.member_offset("_EPROCESS", "ImageFileName")
        self.peb = t.member_offset("_EPROCESS", "Peb")
        self.create = t.member_offset("_EPROCESS", "CreateTime")
        self.directory = t.member_offset("_EPROCESS", "Pcb") + t.member_offset("_KPROCESS", "DirectoryTableBase")
        self.params = t.member_offset("_PEB", "ProcessParameters")
        self.image_path = t.member_offset("_RTL_USER_PROCESS_PARAMETERS", "ImagePathName")
        self.command_line = t.member_offset("_RTL_USER_PROCESS_PARAMETERS", "CommandLine")


def read_unicode_string(space: VirtualReads, address: int, pointer_size: int = 4) -> str | None:
    """A ``UNICODE_STRING`` (length, maximum, buffer) at ``address``; None when it cannot be read. The
    buffer pointer is at +4 on 32-bit NT, at +8 on x64 (after 4 bytes of padding)."""
    try:
        header = space.read(address, 2 * pointer_size)
        length = int.from_bytes(header[:2], "little")
        buffer = int.from_bytes(header[pointer_size:], "little")
        if not length:
            return ""
        if not buffer or length % 2 or length > MAX_PATH_BYTES:
            return None
        return space.read(buffer, length).decode("utf-16-le", "replace")
    except TranslationError:
        return None


def list_processes(
    kernel: VirtualReads, memory: PhysicalMemory, profile: NtProfile, kernel_base: int, *, pae: bool = False
) -> tuple[list[NtProcess], list[str]]:
    """Every process on the kernel's active list, in list order, and what went wrong on the way
    (``pae``: 32-bit NT with PAE paging, whose processes' directories are PDPTs)."""
    try:
        f = _Fields(profile)
    except BtfError as exc:
        return [], [f"the profile lacks what the process list needs: {exc}"]
    head = kernel_base + profile.rva("PsActiveProcessHead")
    objects, problems = walk_list(kernel, head, f.links, "process", pointer_size=f.pointer_size)
    out: list[NtProcess] = []
    for eprocess in objects:
        try:
            out.append(_process(kernel, memory, f, eprocess, pae))
        except TranslationError as exc:
            problems.append(f"the process at {eprocess:#x} cannot be read: {exc}")
    return out, problems


def _process(kernel: VirtualReads, memory: PhysicalMemory, f: _Fields, eprocess: int, pae: bool = False) -> NtProcess:
    wide = f.pointer_size == 8
    pointer = kernel.read_u64 if wide else kernel.read_u32
    pid = pointer(eprocess + f.pid)
    ppid = pointer(eprocess + f.ppid)
    # x64 (Vista on): ImageFileName[15] and PriorityClass after it; 32-bit NT 5 (ReactOS): ImageFileName[16]
    name = kernel.read(eprocess + f.name, 15 if wide else 16).split(b"\0", 1)[0].decode("latin-1")
    directory = pointer(eprocess + f.directory)
    create_time = int.from_bytes(kernel.read(eprocess + f.create, 8), "little")
    peb = pointer(eprocess + f.peb)
    image_path = command_line = None
    if peb and directory:
        own: VirtualReads
        if wide:
            own = PagingAddressSpace(memory, cr3_to_root(directory))
        elif pae:  # the PDPT: 32-byte aligned, its low bits (PWT, PCD...) are no part of the address
            own = PagingAddressSpace32(memory, directory & ~0x1F, pae=True)
        else:
            own = PagingAddressSpace32(memory, directory)
        try:
            params = own.read_u64(peb + f.params) if wide else own.read_u32(peb + f.params)
            if params:
                image_path = read_unicode_string(own, params + f.image_path, f.pointer_size)
                command_line = read_unicode_string(own, params + f.command_line, f.pointer_size)
        except TranslationError:
            pass
    return NtProcess(pid, ppid, name, eprocess, directory, create_time, image_path, command_line)


def process_at(
    kernel: VirtualReads, memory: PhysicalMemory, profile: NtProfile, eprocess: int, *, pae: bool = False
) -> NtProcess:
    """The process whose ``_EPROCESS`` is at ``eprocess`` (found by a scan); raises ``TranslationError``."""
    return _process(kernel, memory, _Fields(profile), eprocess, pae)


def unlisted_processes(
    kernel: VirtualReads,
    memory: PhysicalMemory,
    profile: NtProfile,
    listed: list[NtProcess],
    by_cid: dict[int, int],
    *,
    pae: bool = False,
) -> tuple[list[NtProcess], list[str]]:
    """Processes the client-ID table holds (``by_cid``: pid -> EPROCESS) that are not on the active
    list: unlinked to hide (DKOM), or between leaving the list and being deleted (an exit in
    progress: its ``ExitTime`` is set, and it is left out)."""
    try:
        f = _Fields(profile)
        exit_at = profile.types.member_offset("_EPROCESS", "ExitTime")
    except BtfError as exc:
        return [], [f"the profile lacks what the cross-view needs: {exc}"]
    on_list = {p.eprocess for p in listed}
    out, problems = [], []
    for pid, eprocess in sorted(by_cid.items()):
        if eprocess in on_list:
            continue
        try:
            if int.from_bytes(kernel.read(eprocess + exit_at, 8), "little"):
                continue  # exiting: off the list already, not yet out of the table
            out.append(_process(kernel, memory, f, eprocess, pae))
        except TranslationError as exc:
            problems.append(f"process {pid} of the client-ID table at {eprocess:#x} cannot be read: {exc}")
    return out, problems
