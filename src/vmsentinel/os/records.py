"""The records every guest OS's views fill in: processes, kernel modules, system call and
interrupt table entries, hooks registered through kernel mechanisms, and kernel code hashed per page.

Linux and NT guests give the same records, so the commands print the same JSON shapes for both and
the detectors that make sense across OSes (hidden process, hidden module, table hooks, modified
kernel code) read one model. A field an OS has no such thing for says so in its comment.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from vmsentinel.arch.address_space import PAGE_SIZE, PhysicalRuns
from vmsentinel.os.declare import column

#: the source naming a process on its kernel's own list of processes (Linux's task list, NT's active
#: process list): what a DKOM rootkit unlinks it from, while the other sources still see it
PROCESS_LISTS = frozenset({"task_list", "ActiveProcessLinks"})
#: the same for kernel modules (Linux's module list, NT's loader list)
MODULE_LISTS = frozenset({"module_list", "PsLoadedModuleList"})
#: an interrupt gate's owner when it enters a connected interrupt's object (NT), followed by the owner
#: of the routine the object calls
INTERRUPT_OBJECT = "interrupt object -> "


@dataclass(frozen=True, slots=True)
class Task:
    """One process (thread-group leader) as the kernel holds it."""

    pid: int = column("PID")
    ppid: int = column("PPID")
    tgid: int = column("TGID", table=False)
    name: str = column("NAME")  # as /proc shows it: a kernel thread's full name
    comm: str = column("COMM", table=False)  # task->comm itself (at most 15 characters)
    state: str = column("S")
    kernel_thread: bool = column("KTHREAD", table=False)
    flags: int = column("FLAGS", hex=True, table=False)
    uid: int = column("UID")
    gid: int = column("GID", table=False)
    euid: int = column("EUID")
    egid: int = column("EGID", table=False)
    suid: int = column("SUID", table=False)
    fsuid: int = column("FSUID", table=False)
    cap_effective: int = column("CAPEFF", hex=True, table=False)
    start_time_ns: int = column("START_NS", table=False)
    threads: tuple[int, ...] = column("THREADS", table=False)
    exe: str | None = column("EXE", table=False)
    cmdline: tuple[str, ...] | None = column("ARGS", joiner=" ")
    sources: tuple[str, ...] = column("SEEN BY")
    address: int = column("TASK", hex=True, table=False)
    #: the credentials' address (``real_cred``): two processes, or a process and the kernel, sharing one is a tell
    cred: int = column("CRED", hex=True, table=False, default=0)
    #: the executable is set-uid and owned by root (None: not known)
    exe_setuid_root: bool | None = column("SETUID_ROOT", table=False, default=None)

    @property
    def args(self) -> str | None:
        return " ".join(self.cmdline) if self.cmdline is not None else None


@dataclass
class TaskSweep:
    tasks: list[Task]
    threads: dict[int, list[int]]  # tgid -> tids
    seen_by: dict[int, set[str]]  # task address -> sources (threads included)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Module:
    name: str = column("NAME")
    size: int = column("SIZE")
    refcount: int = column("USED")
    used_by: tuple[str, ...] = column("USED BY")
    state: str = column("STATE")
    base: int = column("ADDRESS", hex=True)
    text_size: int = column("TEXT SIZE", table=False)
    taints: str = column("TAINTS")
    #: the kernel checked its signature when loading it (None: the OS keeps no such mark, as NT does not)
    sig_ok: bool | None = column("SIGNED")
    sources: tuple[str, ...] = column("SEEN BY")
    address: int = column("STRUCT", hex=True, table=False)


@dataclass
class ModuleSweep:
    modules: list[Module]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SyscallEntry:
    table: str = column("TABLE")
    index: int = column("NR")
    handler: int = column("HANDLER", hex=True)
    symbol: str | None = column("SYMBOL")
    owner: str = column("OWNER")


@dataclass(frozen=True, slots=True)
class IdtEntry:
    cpu: int = column("CPU")
    vector: int = column("VECTOR")
    handler: int = column("HANDLER", hex=True)
    symbol: str | None = column("SYMBOL")
    owner: str = column("OWNER")
    gate_type: int = column("TYPE")
    dpl: int = column("DPL")
    ist: int = column("IST")
    present: bool = column("P")


@dataclass(frozen=True, slots=True)
class MechanismHook:
    """A handler registered through a kernel mechanism (kprobe, ftrace) at a kernel address."""

    mechanism: str = column("MECHANISM")
    address: int = column("AT", hex=True)
    at_symbol: str | None = column("AT SYMBOL")
    handler: int = column("HANDLER", hex=True)
    handler_symbol: str | None = column("HANDLER SYMBOL")
    owner: str = column("OWNER")
    #: an ftrace callback's filter: the functions it is called for ("*" alone: every traceable function)
    covers: tuple[str, ...] = column("COVERS", table=False, default=())


@dataclass
class HookSweep:
    syscalls: list[SyscallEntry] = field(default_factory=list)
    idt: list[IdtEntry] = field(default_factory=list)
    mechanisms: list[MechanismHook] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CodeRegion:
    owner: str = column("OWNER")
    start: int = column("START", hex=True)
    size: int = column("SIZE")
    digest: str = column("BLAKE3")
    page_hashes: tuple[str, ...] = column("PAGES", table=False)
    unreadable_pages: tuple[int, ...] = column("UNREADABLE", table=False)
    #: BLAKE3 of the region's bytes read in one piece ("" when it was not: pages unreadable, or only
    #: the written ones read); equal contents mean equal page hashes, so a sweep need not hash pages
    content: str = column("CONTENT", table=False, default="")


class PageBytes(Mapping[int, bytes]):
    """page address -> its bytes, for pages kept one by one and for whole regions kept as the one
    buffer they were read into. A baseline keeps every text page (thousands): as one buffer per
    region they are one allocation, given back whole when the bytes go to the page store, instead
    of thousands of 4 KiB ones that leave the heap in holes. A page is copied out when asked for."""

    def __init__(self) -> None:
        self._pages: dict[int, bytes] = {}
        self._starts: list[int] = []
        self._blobs: list[bytes] = []

    def __setitem__(self, page: int, data: bytes) -> None:
        self._pages[page] = data

    def add_region(self, start: int, data: bytes) -> None:
        """Keep ``data`` (the bytes from page-aligned ``start`` on) as the bytes of each page it covers."""
        at = bisect_right(self._starts, start)
        self._starts.insert(at, start)
        self._blobs.insert(at, data)

    def _blob_of(self, page: int) -> tuple[bytes, int] | None:
        at = bisect_right(self._starts, page) - 1
        if at < 0 or page % PAGE_SIZE:
            return None
        offset = page - self._starts[at]
        blob = self._blobs[at]
        return (blob, offset) if offset < len(blob) else None

    def __getitem__(self, page: int) -> bytes:
        data = self._pages.get(page)
        if data is not None:
            return data
        found = self._blob_of(page)
        if found is None:
            raise KeyError(page)
        blob, offset = found
        return blob[offset : offset + PAGE_SIZE]

    def __contains__(self, page: object) -> bool:
        return isinstance(page, int) and (page in self._pages or self._blob_of(page) is not None)

    def __iter__(self) -> Iterator[int]:
        yield from self._pages
        for start, blob in zip(self._starts, self._blobs, strict=True):
            yield from (page for page in range(start, start + len(blob), PAGE_SIZE) if page not in self._pages)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class CodeSweep:
    regions: list[CodeRegion] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: page address -> its bytes as read for hashing (all pages, or those unlike the reference's)
    page_bytes: PageBytes = field(default_factory=PageBytes, repr=False)


@dataclass(frozen=True)
class CodeDifference:
    """Bytes at ``address`` (the guest's) unlike the vendor's image of the kernel (Linux: the distribution's
    vmlinux; NT: the kernel file relocated to where it was loaded), which the kernel would not have written."""

    address: int
    length: int
    #: the vendor symbol and offset the bytes belong to
    where: str
    #: "text" or "rodata"
    region: str
    #: the patch site the bytes lie in, whose content is not what the kernel writes ("" for none)
    kind: str
    expected: bytes
    observed: bytes


@dataclass
class VendorCheck:
    vendor: str
    slide: int
    compared: int = 0
    #: differences the kernel's own patching explains, by kind of site
    explained: dict[str, int] = field(default_factory=dict)
    differences: list[CodeDifference] = field(default_factory=list)
    #: differences past MAX_REPORTED, counted only
    more: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MemoryRegion:
    """``size`` bytes at virtual ``start`` of process ``pid`` (None: kernel memory, ``name`` the module
    or ``kernel``), described as ``label``; ``read(address, length)`` reads it (zeros where nothing is
    mapped: a scan keeps its offsets)."""

    pid: int | None
    name: str
    label: str
    start: int
    size: int
    read: Callable[[int, int], bytes] = field(compare=False, repr=False)
    #: where a range lies in physical memory, when known: a scan reads through it and scans the bytes of
    #: frames shared by many processes once
    runs: Callable[[int, int], PhysicalRuns] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class YaraMatch:
    """A rule matched in a process (``pid``) or in kernel memory (``pid`` None, ``name`` the module
    or ``kernel``), at ``address`` in the region described as ``region``."""

    pid: int | None
    name: str
    rule: str
    address: int
    region: str
