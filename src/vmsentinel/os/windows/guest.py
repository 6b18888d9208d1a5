"""An NT-family guest opened for introspection: its kernel found in memory alone, its profile chosen
by the kernel's PE layout, and its views turned into the records every OS shares
(:mod:`vmsentinel.os.records`), so ``ps``, ``modules``, ``syscalls``, ``idt``, ``check`` and ``watch``
print the same JSON shapes and run the same cross-OS detectors as for Linux.

What an NT process has no word for in those records says so: the POSIX ids (uid, gid...) are -1,
the state is empty; ``start_time_ns`` is the process's ``CreateTime`` in ns since 1601.

    with WindowsGuest.open("lab:ros") as guest:
        guest.tasks().tasks; guest.syscalls().syscalls
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blake3 import blake3

from vmsentinel.access import Connector
from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.errors import BtfError, KernelNotFound, ProfileError, TranslationError
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.guest import Opened
from vmsentinel.os.records import (
    INTERRUPT_OBJECT,
    CodeDifference,
    CodeRegion,
    CodeSweep,
    HookSweep,
    IdtEntry,
    MemoryRegion,
    Module,
    ModuleSweep,
    SyscallEntry,
    Task,
    TaskSweep,
    VendorCheck,
)
from vmsentinel.os.snapshot import GuestSnapshot
from vmsentinel.os.windows.locate import NtKernel, find_nt_kernel, image_pages_mapped
from vmsentinel.os.windows.profile.profile import NtProfile
from vmsentinel.os.windows.views.images import MAX_IMAGE
from vmsentinel.os.windows.views.modules import NtModule, list_modules
from vmsentinel.os.windows.views.processes import NtProcess
from vmsentinel.os.windows.views.services import KernelSymbols

#: the records' source names: what a DKOM rootkit unlinks from, and the views beside it
ACTIVE_LIST, CID_TABLE, MEMORY_SCAN = "ActiveProcessLinks", "PspCidTable", "memory_scan"
MODULE_LIST, DRIVER_OBJECT = "PsLoadedModuleList", "driver_object"
#: POSIX ids an NT process has none of
NO_ID = -1
#: modules whose code is the kernel's own on NT (the HAL is loaded with the kernel and handles traps too)
KERNEL_PROPER = ("hal.dll", "halacpi.dll", "halmacpi.dll", "halaacpi.dll", "halapic.dll")
GATE_TYPES = {"interrupt": 0xE, "trap": 0xF, "task": 0x5}
#: the facets an NT guest fills (the rest stay empty in its snapshots)
FACETS = frozenset({"tasks", "modules", "syscalls", "idt", "code", "vendor", "regions"})
#: user memory of one process scanned at most, and the end of the user half (32-bit NT, 2 GiB split)
MAX_BYTES_PER_PROCESS, USER_END_32 = 64 << 20, 0x8000_0000


class _Symbols:
    """Address -> ``nt!NAME+0xOFF`` and owner, for detectors (the shape of Linux's resolver they call)."""

    def __init__(self, symbols: KernelSymbols, modules: list[NtModule]) -> None:
        self.symbols = symbols
        self.modules = modules

    def describe(self, address: int) -> str | None:
        if not self.modules or not self.modules[0].contains(address):
            return None
        return self.symbols.describe(address)

    def owner(self, address: int) -> str:
        return owner_name(self.modules, address)


def owner_name(modules: list[NtModule], address: int) -> str:
    """``kernel`` for the kernel's own image, ``module:NAME`` for another loaded image, else ``unknown``
    (the words Linux's records use)."""
    for index, m in enumerate(modules):
        if m.contains(address):
            return "kernel" if index == 0 else f"module:{m.name}"
    return "unknown"


class WindowsGuest(Opened):
    os = "windows"

    def __init__(self, target: Connector, kernel: NtKernel, profile: NtProfile, image: Path | None) -> None:
        self.target = target
        self.kernel = kernel
        self.profile = profile
        self.image = image
        #: x64 (a PE32+ kernel): 4-level paging; 32-bit NT: two-level, or three with PAE (``kernel.pae``)
        self.wide = profile.pointer_size == 8
        self.space: Any = kernel_space(target.memory, kernel, self.wide)
        self.code_tracking: tuple[bool, str] | None = None
        #: the kernel's symbols by address (its base is fixed for the guest's life): one sort, every sweep's views
        self.symbols = KernelSymbols(profile.symbols, kernel.base)

    @classmethod
    def attach(cls, connector: Connector) -> WindowsGuest:
        """The NT kernel in ``connector``'s memory, with its stored profile (``KernelNotFound`` when the
        memory holds no NT kernel; ``ProfileError`` naming the build when no profile of it is stored)."""
        from vmsentinel.os.windows.locate64 import find_nt_kernel_x64
        from vmsentinel.os.windows.profile.store import image_for, profile_for, profile_for_pdb, store_folder

        try:
            kernel = find_nt_kernel(connector.memory)
        except ProfileError as narrow:
            try:
                kernel = find_nt_kernel_x64(connector.memory)
            except ProfileError as wide:
                raise KernelNotFound(f"{narrow}; {wide}") from None
        header = kernel.header
        profile = profile_for(header.layout) or profile_for_pdb(header.pdb, header.pdb_id)
        if profile is None:
            pdb = f", {header.pdb} {header.pdb_id}" if header.pdb_id else ""
            raise ProfileError(
                f"{connector.spec}: NT kernel {header.export_name} (time stamp {header.timestamp:#x}, layout"
                f" {header.layout[:12]}{pdb}) at {kernel.base:#x}, but no profile of that build in {store_folder()}:"
                " add its debug file with 'vmsentinel profile nt FILE', or its Volatility ISF with 'vmsentinel profile nt"
                " --isf FILE' (or name a Volatility symbols folder in $VMSENTINEL_NT_SYMBOLS)"
            )
        return cls(connector, system_directory(connector.memory, kernel, profile), profile, image_for(kernel.header.layout))

    # -- what the guest is ------------------------------------------------------------------------

    @property
    def release(self) -> str:
        h = self.kernel.header
        return f"{h.export_name} {h.timestamp:08x}-{h.size_of_image:x}"

    def boot_id(self) -> str:
        """A digest of the boot time the kernel keeps (``KeBootTime``): another boot, another id."""
        try:
            raw = self.space.read(self.kernel.base + self.profile.rva("KeBootTime"), 8)
        except (TranslationError, ProfileError):
            return ""
        return blake3(raw).hexdigest(length=16)

    def identity(self) -> tuple[str, ...]:
        """What must be the same for a kept baseline to apply: build, where the kernel is, which boot."""
        return (self.release, self.kernel.header.layout, f"{self.kernel.base:x}", self.boot_id())

    def about(self) -> dict[str, Any]:
        return {
            "os": self.os,
            "release": self.release,
            "build_id": self.kernel.header.layout,
            "profile": self.profile.source,
            "paging_levels": 4 if self.wide else 3 if self.kernel.pae else 2,
            "kernel_base": f"{self.kernel.base:#x}",
            "access": self.target.memory.describe(),
            "layout_source": self.target.layout_source,
            "live": self.target.live,
            "kernel_image": str(self.image) if self.image is not None else None,
        }

    # -- views --------------------------------------------------------------------------------------

    def _modules(self) -> tuple[list[NtModule], list[str]]:
        return list_modules(self.space, self.profile, self.kernel.base)

    def tasks(self, with_paths: bool = True, scan: bool = False) -> TaskSweep:
        """Processes from the active list and the client-ID table (and their threads); with ``scan``, also
        the process objects found in RAM itself."""
        from vmsentinel.os.windows.views.cid_table import CidTable, cid_table
        from vmsentinel.os.windows.views.processes import list_processes, process_at, unlisted_processes

        memory = self.target.memory
        pae = self.kernel.pae
        listed, problems = list_processes(self.space, memory, self.profile, self.kernel.base, pae=pae)
        if self.wide:
            cids, cid_problems = CidTable(), ["the client-ID table of x64 NT is not read yet: the active list only"]
        else:
            cids, cid_problems = cid_table(self.space, self.profile, self.kernel.base)
        unlisted, unlisted_problems = unlisted_processes(self.space, memory, self.profile, listed, cids.processes, pae=pae)
        problems += cid_problems + unlisted_problems
        scanned: set[int] = set()
        if scan and self.wide:
            problems.append("no memory scan for x64 NT processes yet: the active list only")
        elif scan and pae:  # the scan's check of a process's directory is a non-PAE self-map
            problems.append("no memory scan for PAE NT processes yet: the active list and the client-ID table only")
        elif scan:
            from vmsentinel.os.windows.views.process_scan import scan_processes

            found, scan_problems = scan_processes(self.space, memory, self.profile)
            problems += scan_problems
            scanned = set(found)
            known = {p.eprocess for p in listed + unlisted} | {self._idle_process()}  # Idle is on no list
            for eprocess in sorted(scanned - known):
                try:
                    unlisted.append(process_at(self.space, memory, self.profile, eprocess, pae=pae))
                except TranslationError as exc:
                    problems.append(f"the process object the scan found at {eprocess:#x} cannot be read: {exc}")
        threads = self._threads(cids.threads, problems)
        in_table = set(cids.processes.values())
        seen_by: dict[int, set[str]] = {}
        tasks = []
        for process, sources in [(p, [ACTIVE_LIST]) for p in listed] + [(p, []) for p in unlisted]:
            if process.eprocess in in_table:
                sources.append(CID_TABLE)
            if process.eprocess in scanned:
                sources.append(MEMORY_SCAN)
            seen_by[process.eprocess] = set(sources)
            tasks.append(_task(process, tuple(sources), tuple(threads.get(process.pid, ()))))
        return TaskSweep(tasks, threads, seen_by, problems)

    def _idle_process(self) -> int:
        """The Idle process's object (``PsIdleProcess``), which no list holds; 0 when unreadable."""
        try:
            return int(self.space.read_u32(self.kernel.base + self.profile.rva("PsIdleProcess")))
        except (ProfileError, TranslationError):
            return 0

    def _threads(self, by_tid: dict[int, int], problems: list[str]) -> dict[int, list[int]]:
        """pid -> tids, from the client-ID table's threads (each names its process in its ``Cid``)."""
        try:
            cid = self.profile.types.member_offset("_ETHREAD", "Cid")
        except Exception as exc:  # the profile's own gap, said once
            problems.append(f"the profile lacks the thread's Cid: {exc}")
            return {}
        out: dict[int, list[int]] = {}
        for tid, ethread in sorted(by_tid.items()):
            try:
                pid = self.space.read_u32(ethread + cid)
            except TranslationError:
                continue
            out.setdefault(pid, []).append(tid)
        return out

    def modules(self, scan: bool = False, listed: list[NtModule] | None = None) -> ModuleSweep:
        """Kernel modules from the loader's list (``listed``: as a sweep already walked it, its problems
        said there) and from the driver objects of the object manager's namespace: a driver whose image
        no listed module holds has hidden its loader entry. (A scan of kernel memory for PE headers is
        no third view: the system half holds the boot loader's copies of every boot driver and image
        files in the cache too.)"""
        from vmsentinel.os.windows.views.objects import NtDriver, driver_objects

        problems: list[str] = []
        if listed is None:
            listed, problems = self._modules()
        drivers: list[NtDriver]
        if self.wide:
            drivers, more = [], ["the driver objects of x64 NT are not read yet: the loader's list only"]
        else:
            drivers, more = driver_objects(self.space, self.profile, self.kernel.base)
        problems += more
        seen_by = {m.base: [MODULE_LIST] for m in listed}
        unlisted: dict[int, Module] = {}
        for d in drivers:
            if not d.start:  # built into the kernel (PnpManager, RAW...): no image of its own
                continue
            holder = next((m for m in listed if m.contains(d.start)), None)
            if holder is not None:
                if DRIVER_OBJECT not in seen_by[holder.base]:
                    seen_by[holder.base].append(DRIVER_OBJECT)
            elif d.start not in unlisted:
                name = self._image_name(d.section) or d.name.rsplit("\\", 1)[-1]
                unlisted[d.start] = Module(
                    name, d.size, 0, (), "unlisted", d.start, d.size, "", None, (DRIVER_OBJECT,), d.section
                )
        mods = [_module(m, tuple(seen_by[m.base])) for m in listed] + list(unlisted.values())
        return ModuleSweep(mods, problems)

    def _image_name(self, record: int) -> str | None:
        """The file name in a loader entry (``BaseDllName``) a driver object points at, None when unreadable."""
        from vmsentinel.os.windows.views.processes import read_unicode_string

        if not record:
            return None
        try:
            at = self.profile.types.member_offset("_LDR_DATA_TABLE_ENTRY", "BaseDllName")
        except BtfError:
            return None
        return read_unicode_string(self.space, record + at) or None

    def syscalls(self, modules: list[NtModule] | None = None) -> HookSweep:
        from vmsentinel.os.windows.views.services import service_table

        problems: list[str] = []
        if modules is None:
            modules, problems = self._modules()
        entries, more = service_table(self.space, self.profile, self.kernel.base, modules, self.symbols)
        out = [SyscallEntry("nt", e.number, e.address, e.symbol, owner_name(modules, e.address)) for e in entries]
        return HookSweep(syscalls=out, problems=problems + more)

    def idt(self, modules: list[NtModule] | None = None) -> HookSweep:
        from vmsentinel.os.windows.views.idt import read_idt

        problems: list[str] = []
        if modules is None:
            modules, problems = self._modules()
        if self.wide:
            return HookSweep(problems=[*problems, "the IDT of x64 NT is not read yet"])
        gates, more = read_idt(self.space, self.profile, self.kernel.base, modules, self.symbols)
        out = []
        for g in gates:
            if g.kind == "task":
                owner = "kernel"  # a task gate (double fault) switches to a TSS the kernel set up
            elif g.service_routine is not None:
                owner = INTERRUPT_OBJECT + _kernel_proper(owner_name(modules, g.service_routine))
            else:
                owner = _kernel_proper(owner_name(modules, g.address))
            out.append(IdtEntry(g.cpu, g.vector, g.address, g.symbol, owner, GATE_TYPES.get(g.kind, 0), 0, 0, True))
        return HookSweep(idt=out, problems=problems + more)

    def kernel_code(
        self, modules: list[NtModule] | None = None, reference: dict[tuple[str, int], CodeRegion] | None = None
    ) -> CodeSweep:
        """The executable sections of the kernel and of every listed module, hashed per page; the bytes
        of every page are kept for a sweep that may become a baseline (no ``reference``), else only of
        the pages whose hash is not the reference's."""
        from vmsentinel.os.windows.views.images import image_sections

        sweep = CodeSweep()
        if modules is None:
            modules, sweep.problems = self._modules()
        for index, m in enumerate(modules):
            owner = "kernel" if index == 0 else f"module:{m.name}"
            for section in image_sections(self.space, m.base):
                if not section.executable:
                    continue
                before = reference.get((owner, section.start)) if reference is not None else None
                sweep.regions.append(self._hash(owner, section.start, section.size, sweep, before, keep=reference is None))
        return sweep

    def _hash(self, owner: str, start: int, size: int, sweep: CodeSweep, before: CodeRegion | None, keep: bool) -> CodeRegion:
        hashes, unreadable = [], []
        whole = blake3()
        for index, page in enumerate(range(start & ~0xFFF, start + size, 0x1000)):
            try:
                data = self.space.read(page, 0x1000)
            except TranslationError:  # paged out (pageable code) or discarded (INIT after boot)
                hashes.append("")
                unreadable.append(index)
                continue
            digest = blake3(data).hexdigest(length=16)
            hashes.append(digest)
            whole.update(data)
            old = before.page_hashes[index] if before is not None and index < len(before.page_hashes) else None
            if keep or (old is not None and old != digest):
                sweep.page_bytes[page] = data
        return CodeRegion(owner, start & ~0xFFF, size, whole.hexdigest(length=32), tuple(hashes), tuple(unreadable))

    def vendor_check(self) -> VendorCheck:
        """The loaded kernel's code against its own image file, relocated to where it was loaded."""
        from vmsentinel.os.windows.views.kernel_code import compare_kernel_code

        if self.image is None:
            return VendorCheck(
                "", 0, problems=[f"no image of {self.release} stored: add it with 'vmsentinel profile nt --image'"]
            )
        found = compare_kernel_code(self.space, self.kernel.base, self.image, self.profile.symbols)
        check = VendorCheck(str(self.image), 0, found.compared, {"kernel patch": found.explained} if found.explained else {})
        check.problems = found.problems[:20] + ([f"... and {len(found.problems) - 20} more"] if len(found.problems) > 20 else [])
        for d in found.differences:
            check.differences.append(
                CodeDifference(d.address, len(d.found), d.function or f"{d.address:#x}", d.section, "", d.expected, d.found)
            )
        return check

    def snapshot(
        self,
        with_code: bool = False,
        scan: bool = False,
        since: GuestSnapshot | None = None,
        page_hasher: Callable[[bytes], str] | None = None,
        *,
        reference: dict[tuple[str, int], CodeRegion] | None = None,
        facets: frozenset[str] | set[str] | None = None,
        first_look: bool = False,
        regions: bool = False,
        **_linux_only: object,
    ) -> GuestSnapshot:
        """Every view a sweep asks for that an NT guest has (the Linux-only facets stay empty)."""
        started = time.monotonic()
        wanted = FACETS if facets is None else FACETS & set(facets)
        listed, problems = self._modules()
        tasks = self.tasks(scan=scan) if "tasks" in wanted else TaskSweep([], {}, {})
        mods = self.modules(scan, listed) if "modules" in wanted else ModuleSweep([])
        syscalls = self.syscalls(listed) if "syscalls" in wanted else HookSweep()
        idt = self.idt(listed) if "idt" in wanted else HookSweep()
        code = self.kernel_code(listed, reference) if with_code else None
        vendor = self.vendor_check() if first_look and "vendor" in wanted else None
        memory_regions = self.regions(tasks, listed) if regions and "regions" in wanted else None
        mods.problems[:0] = problems
        return GuestSnapshot(
            tasks,
            mods,
            syscalls,
            idt,
            [],
            None,
            code,
            time.monotonic() - started,
            full=scan,
            symbols=_Symbols(self.symbols, listed),  # type: ignore[arg-type]
            vendor=vendor,
            regions=memory_regions,
        )

    def regions(self, tasks: TaskSweep, modules: list[NtModule]) -> list[MemoryRegion]:
        """Memory to scan with YARA: every listed module's image, and each process's user memory (what
        its own page directory maps below 2 GiB, capped per process) read through that directory."""
        out = [
            MemoryRegion(
                None,
                m.name,
                f"module {m.name}",
                m.base,
                min(m.size, MAX_IMAGE),
                self.space.read_present,
                self.space.physical_runs,
            )
            for m in modules
        ]
        if self.wide:  # x64 user memory: 4-level, the process's own PML4 (not read yet)
            return out
        directories = {t.pid: self._directory(t.address) for t in tasks.tasks if not t.kernel_thread}
        for t in tasks.tasks:
            directory = directories.get(t.pid)
            if not directory:
                continue
            space = PagingAddressSpace32(self.target.memory, directory, pae=self.kernel.pae)
            budget = MAX_BYTES_PER_PROCESS
            for mapping in space.walk_mappings(0, USER_END_32).mappings:
                if budget <= 0:
                    break
                size = min(mapping.size, budget)
                budget -= size
                out.append(
                    MemoryRegion(t.pid, t.name, "user memory", mapping.vaddr, size, space.read_present, space.physical_runs)
                )
        return out

    def _directory(self, eprocess: int) -> int:
        """A process's page directory (``DirectoryTableBase``; with PAE its PDPT, 32-byte aligned), 0 when
        unreadable."""
        try:
            return process_directory(self.space, self.profile, self.kernel, eprocess)
        except (BtfError, TranslationError):
            return 0

    def forget_sweep(self) -> None:
        self.space.new_sweep()

    def close(self) -> None:
        self.target.close()


def _kernel_proper(owner: str) -> str:
    """The HAL's gates are the kernel's own on NT: ``module:hal.dll`` becomes ``kernel``."""
    return "kernel" if owner.startswith("module:") and owner[7:].lower() in KERNEL_PROPER else owner


def _task(p: NtProcess, sources: tuple[str, ...], threads: tuple[int, ...]) -> Task:
    system = p.pid in (0, 4)  # Idle and System: the kernel's own, no image
    return Task(
        pid=p.pid,
        ppid=p.ppid,
        tgid=p.pid,
        name=p.name,
        comm=p.name,
        state="",
        kernel_thread=system,
        flags=0,
        uid=NO_ID,
        gid=NO_ID,
        euid=NO_ID,
        egid=NO_ID,
        suid=NO_ID,
        fsuid=NO_ID,
        cap_effective=0,
        start_time_ns=p.create_time * 100,
        threads=threads,
        exe=p.image_path,
        cmdline=(p.command_line,) if p.command_line else None,
        sources=sources,
        address=p.eprocess,
    )


def _module(m: NtModule, sources: tuple[str, ...]) -> Module:
    return Module(m.name, m.size, 0, (), "live", m.base, m.size, "", None, sources, m.record)


def kernel_space(memory: PhysicalMemory, kernel: NtKernel, wide: bool) -> Any:
    """The address space ``kernel.directory`` gives: x64 4-level, 32-bit NT two-level or PAE."""
    if wide:
        return PagingAddressSpace(memory, kernel.directory, levels=4)
    return PagingAddressSpace32(memory, kernel.directory, pae=kernel.pae)


def process_directory(space: Any, profile: NtProfile, kernel: NtKernel, eprocess: int) -> int:
    """A process's page-table root (``DirectoryTableBase``: x64 its PML4, PAE its PDPT, 32-byte aligned,
    else its page directory), read through ``space``; raises what the read or the profile raises."""
    types = profile.types
    at = eprocess + types.member_offset("_EPROCESS", "Pcb") + types.member_offset("_KPROCESS", "DirectoryTableBase")
    if profile.pointer_size == 8:
        return int(space.read_u64(at)) & 0x000F_FFFF_FFFF_F000
    return int(space.read_u32(at)) & (~0x1F if kernel.pae else ~0xFFF)


def system_directory(memory: PhysicalMemory, kernel: NtKernel, profile: NtProfile) -> NtKernel:
    """``kernel`` read through the System process's own page directory (``PsInitialSystemProcess``'s
    ``DirectoryTableBase``), the kernel's word for its address space and the one directory that lives as
    long as the kernel, when it maps the kernel at least as fully as the one memory alone gave (a process's
    directory found first in RAM can be freed the next moment); otherwise ``kernel`` as found. When the
    found directory no longer reads, memory is searched once more."""
    wide = profile.pointer_size == 8
    for attempt in range(2):
        found = kernel_space(memory, kernel, wide)
        read = found.read_u64 if wide else found.read_u32
        try:
            directory = process_directory(found, profile, kernel, int(read(kernel.base + profile.rva("PsInitialSystemProcess"))))
        except (BtfError, ProfileError):
            return kernel
        except TranslationError:
            if attempt:
                return kernel
            from vmsentinel.os.windows.locate64 import find_nt_kernel_x64

            try:
                kernel = find_nt_kernel_x64(memory) if wide else find_nt_kernel(memory)
            except ProfileError:
                return kernel
            continue
        own = dataclasses.replace(kernel, directory=directory)
        if own.directory == kernel.directory:
            return kernel
        size = kernel.header.size_of_image
        if image_pages_mapped(kernel_space(memory, own, wide), kernel.base, size) < image_pages_mapped(found, kernel.base, size):
            return kernel
        return own
    return kernel
