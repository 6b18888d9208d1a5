"""The object manager's namespace: the root directory's ``\\Driver`` and ``\\FileSystem`` folders hold
a ``DRIVER_OBJECT`` for every driver that runs (where its image starts, how large it is). A driver
that unlinks its loader entry from ``PsLoadedModuleList`` to hide keeps its driver object, or it stops
receiving I/O: the second view of kernel modules beside the loader's list.

A directory is 37 hash buckets of singly linked entries (``ChainLink``, ``Object``); an object's
name sits in the ``_OBJECT_HEADER_NAME_INFO`` before its header, and its type is a pointer to the
type object (``IoDriverObjectType``, ``ObpDirectoryObjectType``). Chains are hostile: each walk is
bounded and stops at an entry seen before.

    drivers, problems = driver_objects(kernel_space, profile, kernel_base)
"""

from __future__ import annotations

from dataclasses import dataclass

from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.errors import BtfError, ProfileError, TranslationError
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.processes import read_unicode_string

BUCKETS = 37
#: entries read from one directory at most (a real \Driver holds a few hundred)
MAX_ENTRIES = 4096
#: the folders of the root directory that hold driver objects
DRIVER_FOLDERS = ("Driver", "FileSystem")


@dataclass(frozen=True)
class NtDriver:
    name: str  # \Driver\NAME or \FileSystem\NAME
    start: int
    size: int
    section: int  # its loader entry (_LDR_DATA_TABLE_ENTRY), 0 for a driver the kernel built in
    address: int  # the DRIVER_OBJECT


class _Layout:
    def __init__(self, profile: NtProfile) -> None:
        t = profile.types
        self.buckets = t.member_offset("_OBJECT_DIRECTORY", "HashBuckets")
        self.chain = t.member_offset("_OBJECT_DIRECTORY_ENTRY", "ChainLink")
        self.object = t.member_offset("_OBJECT_DIRECTORY_ENTRY", "Object")
        self.body = t.member_offset("_OBJECT_HEADER", "Body")
        self.type = t.member_offset("_OBJECT_HEADER", "Type")
        self.name_offset = t.member_offset("_OBJECT_HEADER", "NameInfoOffset")
        self.name = t.member_offset("_OBJECT_HEADER_NAME_INFO", "Name")
        self.start = t.member_offset("_DRIVER_OBJECT", "DriverStart")
        self.size = t.member_offset("_DRIVER_OBJECT", "DriverSize")
        self.section = t.member_offset("_DRIVER_OBJECT", "DriverSection")


def _entries(space: PagingAddressSpace32, f: _Layout, directory: int, problems: list[str]) -> list[tuple[str, int, int]]:
    """(name, object, type object) of every entry of ``directory``."""
    try:
        buckets = [space.read_u32(directory + f.buckets + 4 * i) for i in range(BUCKETS)]
    except TranslationError as exc:
        problems.append(f"the object directory at {directory:#x} cannot be read: {exc}")
        return []
    out: list[tuple[str, int, int]] = []
    seen: set[int] = set()
    for entry in buckets:
        while entry and entry not in seen:
            if len(seen) >= MAX_ENTRIES:
                problems.append(
                    f"the object directory at {directory:#x} has more than {MAX_ENTRIES} entries; the rest are not read"
                )
                return out
            seen.add(entry)
            try:
                body = space.read_u32(entry + f.object)
                following = space.read_u32(entry + f.chain)
                header = body - f.body
                kind = space.read_u32(header + f.type)
                name_at = space.read(header + f.name_offset, 1)[0]
                name = read_unicode_string(space, header - name_at + f.name) if name_at else ""
            except TranslationError as exc:
                problems.append(f"an entry of the object directory at {directory:#x} cannot be read: {exc}")
                break
            out.append((name or "", body, kind))
            entry = following
    return out


def driver_objects(space: PagingAddressSpace32, profile: NtProfile, kernel_base: int) -> tuple[list[NtDriver], list[str]]:
    """Every driver object of ``\\Driver`` and ``\\FileSystem``, and what could not be read."""
    problems: list[str] = []
    try:
        f = _Layout(profile)
        root = space.read_u32(kernel_base + profile.rva("ObpRootDirectoryObject"))
        driver_type = space.read_u32(kernel_base + profile.rva("IoDriverObjectType"))
        directory_type = space.read_u32(kernel_base + profile.rva("ObpDirectoryObjectType"))
    except (BtfError, ProfileError) as exc:
        return [], [f"the profile lacks what the object directory needs: {exc}"]
    except TranslationError as exc:
        return [], [f"the object manager's root cannot be read: {exc}"]
    folders = {name: body for name, body, kind in _entries(space, f, root, problems) if kind == directory_type}
    drivers: list[NtDriver] = []
    for folder in DRIVER_FOLDERS:
        if folder not in folders:
            problems.append(f"the object directory has no \\{folder}")
            continue
        for name, body, kind in _entries(space, f, folders[folder], problems):
            if kind != driver_type:
                continue
            try:
                start, size, section = (space.read_u32(body + off) for off in (f.start, f.size, f.section))
            except TranslationError as exc:
                problems.append(f"the driver object \\{folder}\\{name} at {body:#x} cannot be read: {exc}")
                continue
            drivers.append(NtDriver(f"\\{folder}\\{name}", start, size, section, body))
    return drivers, problems
