"""One sweep's snapshot of a guest: every facet a detector may read, whichever OS the guest runs.

The facets every OS fills (processes, modules, system call and interrupt tables, kernel code) hold
the shared records of :mod:`vmsentinel.os.records`; the rest are one OS's own (Linux's eBPF programs,
callbacks, mounts...) and stay None on a guest whose OS has no such thing, so a detector of those
finds nothing there instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmsentinel.os.records import CodeSweep, HookSweep, ModuleSweep, TaskSweep

if TYPE_CHECKING:  # the other views load when first used: a quick 'ps' needs none of them
    from vmsentinel.os.linux.symbols import SymbolResolver
    from vmsentinel.os.linux.views.bpf import BpfSweep
    from vmsentinel.os.linux.views.branches import BranchSweep
    from vmsentinel.os.linux.views.callbacks import CallbackSweep
    from vmsentinel.os.linux.views.dispatchers import DispatcherSweep
    from vmsentinel.os.linux.views.environ import EnvironSweep
    from vmsentinel.os.linux.views.exec_pages import ExecPage
    from vmsentinel.os.linux.views.files import FileSweep
    from vmsentinel.os.linux.views.inventory import Inventory
    from vmsentinel.os.linux.views.memory_maps import MapSweep
    from vmsentinel.os.linux.views.mounts import MountSweep
    from vmsentinel.os.linux.views.page_diffs import PageDiffSweep
    from vmsentinel.os.linux.views.patch_sites import PatchSites
    from vmsentinel.os.linux.views.ptrace import PtraceSweep
    from vmsentinel.os.linux.views.sockets import SocketSweep
    from vmsentinel.os.records import CodeSweep, HookSweep, MemoryRegion, ModuleSweep, VendorCheck, YaraMatch


@dataclass
class GuestSnapshot:
    tasks: TaskSweep
    modules: ModuleSweep
    syscalls: HookSweep
    idt: HookSweep
    #: open files and sockets: Linux's (an NT guest has none read yet: empty and None)
    files: list[FileSweep]
    sockets: SocketSweep | None
    code: CodeSweep | None
    seconds: float
    #: pid -> memory maps of the processes looked into deeply this sweep (see ``snapshot``)
    maps: dict[int, MapSweep] | None = None
    #: YARA matches in the memory looked into this sweep (filled by the pipeline, which scans ``regions``)
    yara: list[YaraMatch] | None = None
    #: the kernel's taint mask (``tainted_mask``), None when unreadable
    taint: int | None = None
    bpf: BpfSweep | None = None
    #: a full sweep: memory scans, and every process and module looked into (not only the new ones)
    full: bool = False
    #: pid -> hashed executable file-backed pages of the processes looked into deeply (with a page hasher)
    exec_pages: dict[int, list[ExecPage]] | None = None
    #: address -> symbol and owner lookups for this boot (pure, in memory: detectors may call them)
    symbols: SymbolResolver | None = field(default=None, repr=False)
    #: where the kernel patches its own text (collected for a sweep that may become a baseline)
    patch_sites: PatchSites | None = field(default=None, repr=False)
    #: memory to scan with YARA: new processes and modules, everything on a full sweep
    regions: list[MemoryRegion] | None = field(default=None, repr=False)
    #: core kernel text and read-only data against the vendor's image (on a first look)
    vendor: VendorCheck | None = None
    #: the syscall dispatchers' direct calls (on a first look)
    dispatchers: DispatcherSweep | None = None
    #: functions the kernel calls back (netfilter, tracepoints, keyboard, tty, /proc, kernel threads):
    #: read on full sweeps and first looks
    callbacks: CallbackSweep | None = None
    #: direct branches out of core kernel text that the kernel did not write (on a first look)
    branches: BranchSweep | None = None
    #: pid -> environment of every user process (unchanged ones read again on full sweeps)
    environ: EnvironSweep | None = None
    #: threads traced with ptrace, and by whom
    ptrace: PtraceSweep | None = None
    #: the mounts of every mount namespace a process lives in (read on full sweeps)
    mounts: MountSweep | None = None
    #: code pages of one file whose bytes differ between the processes mapping them (on full sweeps)
    page_diffs: PageDiffSweep | None = None
    #: what the guest's peers are compared on (made on a first look and on full sweeps when asked for;
    #: the last one is carried by the sweeps between)
    inventory: Inventory | None = None
