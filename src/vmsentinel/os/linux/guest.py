"""A Linux guest opened for introspection: its memory, its located kernel and
the view readers, built once and reused sweep after sweep.

    with LinuxGuest.open("lab:web1") as guest:
        guest.tasks().tasks
        guest.modules().modules
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from vmsentinel.access import Connector
from vmsentinel.errors import ProfileError, ReadError, RegistersUnavailable, TargetError, VmSentinelError
from vmsentinel.os.guest import Opened
from vmsentinel.os.linux.kernel_profile import ResolvedKernel, resolve_kernel
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.views.tasks import TaskReader
from vmsentinel.os.records import TaskSweep
from vmsentinel.os.snapshot import GuestSnapshot

if TYPE_CHECKING:  # the other views load when first used: a quick 'ps' needs none of them
    from vmsentinel.arch.x86_64 import PagingAddressSpace
    from vmsentinel.os.linux.symbols import SymbolResolver, TextRange
    from vmsentinel.os.linux.views.bpf import BpfReader, BpfSweep
    from vmsentinel.os.linux.views.branches import BranchSweep
    from vmsentinel.os.linux.views.callbacks import CallbackReader, CallbackSweep
    from vmsentinel.os.linux.views.environ import EnvironReader, EnvironSweep
    from vmsentinel.os.linux.views.files import FileSweep
    from vmsentinel.os.linux.views.inventory import Inventory, InventoryReader
    from vmsentinel.os.linux.views.kernel_code import Reference
    from vmsentinel.os.linux.views.memory_maps import MapSweep
    from vmsentinel.os.linux.views.modules import ModuleReader
    from vmsentinel.os.linux.views.mounts import MountSweep
    from vmsentinel.os.linux.views.page_diffs import PageDiffSweep
    from vmsentinel.os.linux.views.patch_sites import PatchSites
    from vmsentinel.os.linux.views.ptrace import PtraceSweep
    from vmsentinel.os.linux.views.sockets import SocketSweep
    from vmsentinel.os.records import CodeSweep, HookSweep, MechanismHook, Module, ModuleSweep, VendorCheck

T = TypeVar("T")


#: code pages are compared on every how-many-th full sweep (the first always): see ``_process_facets``
PAGE_DIFFS_EVERY = 3

#: a guest's inventory (what its peers compare) is made again on a full sweep at most this often, in
#: seconds: it reads every process's code pages and canonicalises changed kernel text, too much to do
#: for dozens of guests every few seconds; the first look always makes one
INVENTORY_EVERY = 60.0

#: what a sweep can collect; a sweep asks for the facets its detectors need (None: every one)
FACETS = frozenset(
    {
        "tasks",
        "modules",
        "syscalls",
        "mechanisms",
        "idt",
        "sockets",
        "maps",
        "code",
        "exec_pages",
        "regions",
        "taint",
        "bpf",
        "vendor",
        "dispatchers",
        "callbacks",
        "branches",
        "environ",
        "ptrace",
        "mounts",
        "page_diffs",
        "inventory",
    }
)


class LinuxGuest(Opened):
    #: the OS name detectors declare they apply to
    os = "linux"

    def __init__(self, target: Connector, resolved: ResolvedKernel) -> None:
        self.target = target
        self.resolved = resolved
        self.reader = KernelReader(resolved.location)
        self._tasks: TaskReader | None = None
        self._modules: ModuleReader | None = None
        self._resolver: SymbolResolver | None = None
        self._bpf: BpfReader | None = None
        self._callbacks: CallbackReader | None = None
        self._environ: EnvironReader | None = None
        self._page_diffs: PageDiffSweep | None = None
        self._full_sweeps = 0
        #: (incremental, why): whether kernel text is hashed again only where the host saw writes
        self.code_tracking: tuple[bool, str] | None = None
        self._last_canary: int | None = None
        self._last_code: CodeSweep | None = None
        self._inventory_reader: InventoryReader | None = None
        self._inventory: Inventory | None = None
        self._inventory_at: float | None = None

    @classmethod
    def attach(cls, connector: Connector) -> LinuxGuest:
        """The Linux guest in an opened connector (raises ``KernelNotFound`` if no Linux kernel is there);
        the guest owns the connector from then on."""
        return cls(connector, resolve_kernel(connector.memory, connector.spec))

    @property
    def release(self) -> str:
        return self.resolved.profile.identity.release

    def identity(self) -> tuple[str, ...]:
        """What must be the same for a kept baseline to apply: kernel build, where its text is, and which
        boot of it this is (a boot id derived from a per-boot secret of the guest's, when it has one)."""
        profile = self.resolved.profile.identity
        return (profile.release, str(profile.build_id or ""), f"{self.resolver.text_start:x}", self.boot_id())

    def about(self) -> dict[str, Any]:
        """The guest itself: kernel, where its profile came from, paging, how its memory is reached."""
        resolved = self.resolved
        identity = resolved.profile.identity
        return {
            "os": self.os,
            "release": identity.release,
            "build_id": identity.build_id,
            "profile": resolved.how,
            "profile_sources": dict(resolved.profile.sources),
            "paging_levels": resolved.location.paging_levels,
            "access": self.target.memory.describe(),
            "layout_source": self.target.layout_source,
            "live": self.target.live,
            "code_tracking": None
            if self.code_tracking is None
            else {"incremental": self.code_tracking[0], "reason": self.code_tracking[1]},
        }

    def tasks(self, with_paths: bool = True, scan: bool = False) -> TaskSweep:
        if self._tasks is None:
            self._tasks = TaskReader(self.reader)
        return self._tasks.sweep(with_paths, scan)

    def modules(self, scan: bool = False) -> ModuleSweep:
        from vmsentinel.os.linux.views.modules import ModuleReader

        if self._modules is None:
            self._modules = ModuleReader(self.reader)
        return self._modules.sweep(scan)

    def _task_address(self, pid: int) -> int:
        sweep = self.tasks(with_paths=False)
        for addr, sources in sweep.seen_by.items():
            del sources
            try:
                if self.reader.s32(addr + self.reader.off("task_struct", "pid")) == pid:
                    return addr
            except ReadError:
                continue
        raise TargetError(f"no process {pid} in {self.target.spec}")

    def maps(self, pid: int) -> MapSweep:
        from vmsentinel.os.linux.views.memory_maps import MapReader, MapSweep

        task = self._task_address(pid)
        mm = self.reader.pointer(task + self.reader.off("task_struct", "mm"))
        if mm is None:
            return MapSweep()  # a kernel thread has no user address space
        return MapReader(self.reader, self.task_reader().namer).maps(pid, mm)

    def files(self, pid: int) -> FileSweep:
        from vmsentinel.os.linux.views.files import FileReader

        return FileReader(self.reader, self.task_reader().namer).open_files(pid, self._task_address(pid))

    def sockets(self, tasks: TaskSweep | None = None) -> SocketSweep:
        """Every socket held by any process (found through their file tables)."""
        return self._sockets_and_files(tasks or self.tasks(with_paths=False))[0]

    def _sockets_and_files(self, tasks: TaskSweep) -> tuple[SocketSweep, list[FileSweep]]:
        from vmsentinel.os.linux.views.callbacks import network_namespaces
        from vmsentinel.os.linux.views.files import FileReader
        from vmsentinel.os.linux.views.sockets import SocketReader

        reader = FileReader(self.reader, self.task_reader().namer)
        sweeps = [reader.open_files(t.pid, t.address) for t in tasks.tasks]
        problems: list[str] = []
        namespaces = [net for net, _inum in network_namespaces(self.reader, problems)]
        result = SocketReader(self.reader).sockets(sweeps, namespaces)
        result.problems.extend(problems)
        for fs in sweeps:
            result.problems.extend(fs.problems)
        return result, sweeps

    def environ(self, tasks: TaskSweep | None = None, everything: bool = True) -> EnvironSweep:
        """The environment of every user process (``everything``: read again even where nothing moved)."""
        from vmsentinel.os.linux.views.environ import EnvironReader

        if self._environ is None:
            self._environ = EnvironReader(self.task_reader())
        return self._environ.sweep((tasks or self.tasks()).tasks, everything)

    def ptrace(self, tasks: TaskSweep | None = None) -> PtraceSweep:
        """Every thread traced with ptrace, and its tracer."""
        from vmsentinel.os.linux.views.ptrace import PtraceReader

        return PtraceReader(self.reader).sweep(list((tasks or self.tasks(with_paths=False)).seen_by))

    def mounts(self, tasks: TaskSweep | None = None) -> MountSweep:
        """The mounts of every mount namespace a process lives in."""
        from vmsentinel.os.linux.views.mounts import MountReader

        return MountReader(self.reader, self.task_reader().namer).sweep((tasks or self.tasks(with_paths=False)).tasks)

    def _process_facets(
        self,
        wanted: frozenset[str],
        tasks: TaskSweep,
        everything: bool,
        maps: dict[int, MapSweep],
        spaces: dict[int, PagingAddressSpace],
    ) -> tuple[EnvironSweep | None, PtraceSweep | None, MountSweep | None, PageDiffSweep | None]:
        """The process-side facets a sweep asks for; code pages are compared only when every process's
        maps were read (``everything``). A profile that lacks a type one of them needs leaves that one
        empty, with the reason among its problems."""
        from vmsentinel.os.linux.views.environ import EnvironSweep
        from vmsentinel.os.linux.views.mounts import MountSweep
        from vmsentinel.os.linux.views.page_diffs import FrameKinds, code_page_diffs
        from vmsentinel.os.linux.views.ptrace import PtraceSweep

        environ = ptrace = mounts = diffs = None
        try:
            # an environment is read once per exec (what the loader saw is what counts): a full sweep need not
            # read every process's again
            environ = self.environ(tasks, everything=False) if "environ" in wanted else None
        except ProfileError as exc:
            environ = EnvironSweep(problems=[f"environments: {exc}"])
        try:
            ptrace = self.ptrace(tasks) if "ptrace" in wanted else None
        except ProfileError as exc:
            ptrace = PtraceSweep(problems=[f"ptrace: {exc}"])
        try:
            mounts = self.mounts(tasks) if "mounts" in wanted and everything else None  # full sweeps only
        except ProfileError as exc:
            mounts = MountSweep(problems=[f"mounts: {exc}"])
        if "page_diffs" in wanted and everything:
            # walking every process's code mappings is most of a full sweep's cost: the comparison is made
            # on the first full sweep and every PAGE_DIFFS_EVERY-th after it, and the others carry its result
            self._full_sweeps += 1
            if self._page_diffs is None or self._full_sweeps % PAGE_DIFFS_EVERY == 0:
                try:
                    kinds = FrameKinds(self.reader).anonymous
                except ProfileError:
                    kinds = None  # copies are still compared, only not told apart from the file's own page
                self._page_diffs = code_page_diffs(spaces, {pid: m.maps for pid, m in maps.items()}, kinds)
            diffs = self._page_diffs
        return environ, ptrace, mounts, diffs

    def snapshot(
        self,
        with_code: bool = False,
        scan: bool = False,
        since: GuestSnapshot | None = None,
        page_hasher: Callable[[bytes], str] | None = None,
        *,
        reference: Reference | None = None,
        patch_sites: bool | None = None,
        regions: bool = False,
        facets: frozenset[str] | None = None,
        first_look: bool = False,
        inventory: bool = False,
    ) -> GuestSnapshot:
        """Every view a sweep asks for, at one instant (as close to one as a running guest allows).

        The deep looks (memory maps, memory to scan) are the heaviest part, so they cover everything
        only on a full sweep (``scan``, which also scans memory for unlinked objects); otherwise they
        cover what is new since the snapshot ``since``: a process or module that appears is looked
        into on the first sweep that sees it. With a ``page_hasher`` (an allowlist to check), every
        process's maps and present code pages are read on every sweep; pages shared between
        processes are hashed once. With ``with_code``, kernel and module text is hashed per page;
        the bytes of every page are kept unless a ``reference`` (a baseline's page hashes) says which
        ones changed, and the kernel's patch sites are read when the sweep may become a baseline
        (``patch_sites``, by default: no reference). ``regions`` lists the memory to scan with YARA.
        ``facets`` (default: all of :data:`FACETS`) leaves out what no detector will look at. On a
        ``first_look`` (no baseline to compare with), core kernel text and read-only data are compared
        with the vendor's image of this build, when one can be found, and the syscall dispatchers'
        calls are checked. With ``inventory`` (and the ``inventory`` facet wanted), the guest's inventory
        for comparison with its peers is made on a first look and on a full sweep once
        ``INVENTORY_EVERY`` seconds have passed (see :mod:`vmsentinel.os.linux.views.inventory`); the
        sweeps between carry the last one.
        """
        from vmsentinel.os.linux.symbols import TextRange
        from vmsentinel.os.linux.views.dispatchers import read_dispatcher_calls
        from vmsentinel.os.linux.views.hooks import read_idt, read_mechanism_hooks, read_syscalls
        from vmsentinel.os.linux.views.kernel_code import read_kernel_code
        from vmsentinel.os.linux.views.memory_maps import MapReader
        from vmsentinel.os.linux.views.sockets import SocketSweep
        from vmsentinel.os.records import HookSweep

        wanted = FACETS if facets is None else facets
        due = self._inventory_at is None or time.monotonic() - self._inventory_at >= INVENTORY_EVERY
        take_inventory = inventory and "inventory" in wanted and (first_look or (scan and due))
        if take_inventory:  # what the inventory is made of, whichever detectors read it otherwise
            wanted = wanted | {"syscalls", "idt", "sockets", "taint", "bpf"}
        started = time.perf_counter()
        tasks = self.tasks(scan=scan)
        modules = self.modules(scan=scan)
        text = [TextRange(m.name, m.base, m.base + m.text_size) for m in modules.modules]
        syscalls = read_syscalls(self.reader, self.resolver, text) if "syscalls" in wanted else HookSweep()
        if "mechanisms" in wanted:
            syscalls.mechanisms, more = read_mechanism_hooks(self.reader, self.resolver, text)
            syscalls.problems.extend(more)
        idt = read_idt(self.reader, self.resolver, text, self._idtr_bases()) if "idt" in wanted else HookSweep()
        sockets, files = self._sockets_and_files(tasks) if "sockets" in wanted else (SocketSweep(), [])
        user = [t for t in tasks.tasks if not t.kernel_thread]
        new = _new_since(user, since.tasks.tasks if since else None, scan, lambda t: (t.pid, t.start_time_ns))
        # checking code against an allowlist means every process's code pages on every sweep: their maps too
        if take_inventory:
            new = user  # the inventory names every program that runs and its code pages
        deep = user if page_hasher is not None else new if wanted & {"maps", "regions", "page_diffs", "inventory"} else []
        maps_reader = MapReader(self.reader, self.task_reader().namer)
        maps: dict[int, MapSweep] = {}
        spaces: dict[int, PagingAddressSpace] = {}  # one address space per process, shared by the deep looks
        for t in deep:
            try:
                mm = self.reader.pointer(t.address + self.reader.off("task_struct", "mm"))
            except ReadError:
                continue  # the process is gone or its task unreadable: the task view says so
            if mm is None:
                continue
            maps[t.pid] = maps_reader.maps(t.pid, mm)
            try:
                spaces[t.pid] = self.task_reader().user_space(mm)
            except ReadError as exc:  # its maps stand; its pages cannot be read
                maps[t.pid].problems.append(f"address space of pid {t.pid}: {exc}")
        code = sites = None
        if with_code:
            core = TextRange("kernel", self.resolver.text_start, self.resolver.text_end)
            # the log covers the time since this guest's last read of its text (a confirming read included)
            before = self._last_code if reference is not None else None
            written = self._written_text([core, *text], incremental=before is not None and not scan)
            code = read_kernel_code(self.reader, core, text, reference, before if written is not None else None, written)
            self._last_code = code
            if patch_sites if patch_sites is not None else reference is None:
                from vmsentinel.os.linux.views.patch_sites import read_patch_sites

                sites = read_patch_sites(self.reader, modules.modules)
        pages = None
        if page_hasher is not None:
            from vmsentinel.os.linux.views.exec_pages import exec_pages

            cache: dict[int, str] = {}  # physical page -> hash: shared code is hashed once per sweep
            pages = {
                pid: exec_pages(space, maps[pid].maps, page_hasher, cache, maps[pid].problems) for pid, space in spaces.items()
            }
        scan_regions = None
        if regions:
            from vmsentinel.os.linux.views.memory_regions import kernel_regions, process_regions

            new_modules = _new_since(modules.modules, since.modules.modules if since else None, scan, lambda m: (m.name, m.base))
            blocks = []
            for m in new_modules:
                try:
                    blocks.append((m.name, self.module_memory(m)))
                except VmSentinelError:
                    continue  # the module went away while we looked
            kernel = self.kernel_memory() if scan else []
            scan_regions = process_regions(new, maps, spaces) + kernel_regions(self.reader.space.read_present, kernel, blocks)
        environ, ptrace, mounts, page_diffs = self._process_facets(wanted, tasks, scan or page_hasher is not None, maps, spaces)
        taint = self.taint() if "taint" in wanted else None
        bpf = self.bpf_programs() if "bpf" in wanted else None
        if take_inventory:
            if self._inventory_reader is None:
                from vmsentinel.os.linux.views.inventory import InventoryReader

                self._inventory_reader = InventoryReader(self.reader, self.resolver, self.resolved.profile)
            self._inventory_at = time.monotonic()
            self._inventory = self._inventory_reader.inventory(
                modules.modules,
                syscalls,
                idt,
                taint,
                bpf,
                sockets,
                tasks.tasks,
                maps,
                spaces,
                sites.jump_targets if sites is not None else None,
            )
        return GuestSnapshot(
            tasks,
            modules,
            syscalls,
            idt,
            files,
            sockets,
            code,
            time.perf_counter() - started,
            maps,
            None,
            taint,
            bpf,
            full=scan,
            exec_pages=pages,
            symbols=self.resolver,
            patch_sites=sites,
            regions=scan_regions,
            vendor=self.vendor_check() if first_look and "vendor" in wanted else None,
            dispatchers=read_dispatcher_calls(self.reader, self.resolver, text)
            if first_look and "dispatchers" in wanted
            else None,
            callbacks=self.callbacks(text, tasks) if (scan or first_look) and "callbacks" in wanted else None,
            branches=self.foreign_branches(text, modules.modules, sites, syscalls.mechanisms)
            if first_look and "branches" in wanted
            else None,
            environ=environ,
            ptrace=ptrace,
            mounts=mounts,
            page_diffs=page_diffs,
            inventory=self._inventory if inventory and "inventory" in wanted else None,
        )

    def foreign_branches(
        self, text: list[TextRange], modules: list[Module], sites: PatchSites | None, mechanisms: list[MechanismHook]
    ) -> BranchSweep:
        """Direct branches out of core kernel text (see :mod:`vmsentinel.os.linux.views.branches`), except
        at the places the kernel patches itself: its jump labels, ftrace and static call sites, kprobes."""
        from vmsentinel.os.linux.views.branches import read_foreign_branches, static_call_sites
        from vmsentinel.os.linux.views.patch_sites import read_patch_sites

        problems: list[str] = []
        if sites is None:
            sites = read_patch_sites(self.reader, modules)
        known = set(sites.jump_targets) | sites.ftrace | static_call_sites(self.reader, problems)
        known |= {m.address for m in mechanisms if m.mechanism == "kprobe"}
        found = read_foreign_branches(self.reader, self.resolver, text, known)
        found.problems[:0] = problems + sites.problems
        return found

    def callbacks(self, text: list[TextRange], tasks: TaskSweep) -> CallbackSweep:
        """Every function the kernel calls back (see :mod:`vmsentinel.os.linux.views.callbacks`)."""
        from vmsentinel.os.linux.views.callbacks import CallbackReader

        if self._callbacks is None:
            self._callbacks = CallbackReader(self.reader, self.resolver)
        return self._callbacks.sweep(text, [(t.pid, t.name, t.address) for t in tasks.tasks if t.kernel_thread])

    def vendor_check(self) -> VendorCheck:
        """This kernel's core text and read-only data against the vendor image of its build (see
        :mod:`vmsentinel.os.linux.vendor`); without one, a check that says where it looked."""
        from vmsentinel.os.linux.vendor.compare import compare_with_vendor
        from vmsentinel.os.linux.vendor.locate import find_vendor, search_folders
        from vmsentinel.os.records import VendorCheck

        identity = self.resolved.profile.identity
        vendor = find_vendor(identity.build_id, identity.release)
        if vendor is None:
            folders = ", ".join(str(f) for f in search_folders())
            build = f"build id {identity.build_id}" if identity.build_id else "no build id"
            return VendorCheck("", 0, problems=[f"no vendor image of {identity.release} ({build}) in {folders}"])
        slide = (self.reader.symbol("_text") - vendor.symbol("_text")) & ((1 << 64) - 1)
        return compare_with_vendor(self.reader.read, vendor, slide)

    def _written_text(self, ranges: list[TextRange], incremental: bool) -> set[int] | None:
        """The text pages (virtual addresses) written since the last sweep, by the host's dirty log; None
        when every page must be read (no usable log, a full sweep, the log failed its check). Whatever
        is read now, the log starts a new interval here."""
        if self.code_tracking is None:
            self.code_tracking = self._tracking_verdict()
        from vmsentinel.os.linux.views.kernel_code import text_chunks

        log = self.target.dirty_log
        if not self.code_tracking[0] or log is None:
            return None
        # each hashed chunk and the physical pages it lies on (two when it does not start on a page); on a
        # full sweep none is needed: only the canary is checked, and the log cleared
        chunks = {a: (self._physical(a), self._physical(a + n - 1)) for a, n in text_chunks(ranges)} if incremental else {}
        canary = self._canary()
        asked = {p for pages in chunks.values() for p in pages if p is not None}
        if canary is not None:
            asked.add(canary[1])
        try:
            dirty = log.dirty(asked)
            log.clear()
        except OSError as exc:
            self.code_tracking = (False, f"the dirty log failed: {exc}")
            return None
        missed = canary is not None and self._last_canary not in (None, canary[0]) and canary[1] not in dirty
        if missed:  # the guest wrote jiffies since the last look: the log must say so, or it cannot be trusted
            self.code_tracking = (False, "the host missed a write the guest made (jiffies changed, its page stayed clean)")
            return None
        self._last_canary = canary[0] if canary is not None else None
        if not incremental:
            return None
        return {a for a, pages in chunks.items() if any(p is None or p in dirty for p in pages)}

    def _tracking_verdict(self) -> tuple[bool, str]:
        log = self.target.dirty_log
        if log is None:
            return (False, "a memory image: nothing changes" if not self.target.live else "no QEMU process known to track")
        problem = log.problem()
        if problem is not None:
            return (False, problem)
        return (True, f"soft-dirty bits of QEMU pid {log.pid}, checked against the guest's jiffies every sweep")

    def _physical(self, vaddr: int) -> int | None:
        try:
            return self.reader.space.translate(vaddr) & ~0xFFF
        except VmSentinelError:
            return None

    def _canary(self) -> tuple[int, int] | None:
        """(value, physical page) of ``jiffies``: the guest writes it on every timer tick."""
        if not self.reader.has_symbol("jiffies"):
            return None
        address = self.reader.symbol("jiffies")
        phys = self._physical(address)
        if phys is None:
            return None
        try:
            return self.reader.u64(address), phys
        except ReadError:
            return None

    def boot_id(self) -> str:
        """Which boot of its kernel the guest is in: a digest of the boot task's stack canary, a random
        value the kernel draws once at boot and the guest cannot rewrite without crashing its idle loop.
        The digest (not the canary, a secret of the guest's) is what is kept. "" when there is none."""
        if not self.reader.has_symbol("init_task"):
            return ""
        try:
            canary = self.reader.u64(self.reader.symbol("init_task") + self.reader.off("task_struct", "stack_canary"))
        except VmSentinelError:  # no stack protector in this build, or unreadable
            return ""
        if not canary:
            return ""
        return hashlib.blake2b(canary.to_bytes(8, "little"), digest_size=8, person=b"vms-boot-id").hexdigest()

    def taint(self) -> int | None:
        """The kernel's taint mask (``tainted_mask``): proprietary, unsigned, out-of-tree modules, oopses..."""
        if not self.reader.has_symbol("tainted_mask"):
            return None
        try:
            return self.reader.u64(self.reader.symbol("tainted_mask"))
        except ReadError:
            return None

    def bpf_programs(self) -> BpfSweep:
        from vmsentinel.os.linux.views.bpf import BpfReader

        if self._bpf is None:
            self._bpf = BpfReader(self.reader)
        return self._bpf.sweep()

    def module_memory(self, module: Module) -> list[tuple[int, int]]:
        """(start, size) of each memory block of a loaded module (text, data, read-only data...)."""
        if self._modules is None:
            self.modules()
        assert self._modules is not None
        return self._modules.memory_ranges(module.address)

    def kernel_memory(self) -> list[tuple[str, int, int]]:
        """(label, start, size) of the core kernel's text and read-only data."""
        regions = [("kernel text", self.resolver.text_start, self.resolver.text_end - self.resolver.text_start)]
        r = self.reader
        if r.has_symbol("__start_rodata") and r.has_symbol("__end_rodata"):
            start = r.symbol("__start_rodata")
            regions.append(("kernel rodata", start, r.symbol("__end_rodata") - start))
        return regions

    def task_reader(self) -> TaskReader:
        if self._tasks is None:
            self._tasks = TaskReader(self.reader)
        return self._tasks

    @property
    def resolver(self) -> SymbolResolver:
        from vmsentinel.os.linux.symbols import SymbolResolver

        if self._resolver is None:
            self._resolver = SymbolResolver(self.resolved.location)
        return self._resolver

    def module_text(self) -> list[TextRange]:
        from vmsentinel.os.linux.symbols import TextRange

        return [TextRange(m.name, m.base, m.base + m.text_size) for m in self.modules().modules]

    def syscalls(self) -> HookSweep:
        from vmsentinel.os.linux.views.hooks import read_syscalls

        return read_syscalls(self.reader, self.resolver, self.module_text())

    def idt(self) -> HookSweep:
        from vmsentinel.os.linux.views.hooks import read_idt

        bases = self._idtr_bases()
        return read_idt(self.reader, self.resolver, self.module_text(), bases)

    def _idtr_bases(self) -> dict[int, int] | None:
        """IDTR base of every vCPU from the hypervisor; None without one (a memory image) or when it reads
        no registers (libvirt without its monitor): then the IDT is ``idt_table``, as in an image."""
        control = self.target.control
        if control is None:
            return None
        try:
            registers = control.registers()
        except RegistersUnavailable:
            return None
        return {r.cpu: r.idtr_base for r in registers if r.idtr_base is not None}

    def kernel_code(self) -> CodeSweep:
        from vmsentinel.os.linux.symbols import TextRange
        from vmsentinel.os.linux.views.kernel_code import read_kernel_code

        core = TextRange("kernel", self.resolver.text_start, self.resolver.text_end)
        return read_kernel_code(self.reader, core, self.module_text())

    def forget_sweep(self) -> None:
        """Drop what the last sweep cached (translations, names of files): it is cleared before the
        next one anyway, and a process watching many guests should not hold each one's between sweeps."""
        self.reader.space.new_sweep()
        if self._tasks is not None:
            self._tasks.namer.new_sweep()

    def close(self) -> None:
        try:
            from vmsentinel.os.linux.profile.store import ProfileStore

            ProfileStore().save_hot(self.resolved.profile)
        except OSError:
            pass  # a read-only cache only costs the next look some milliseconds
        self.target.close()


def _new_since(items: list[T], before: list[T] | None, everything: bool, key: Callable[[T], Hashable]) -> list[T]:
    """All ``items`` on a full sweep; else those not in ``before`` (none when there is no before)."""
    if everything:
        return items
    if before is None:
        return []
    seen = {key(x) for x in before}
    return [x for x in items if key(x) not in seen]
