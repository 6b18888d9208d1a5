"""Processes and threads, seen from several independent places in kernel memory.

Sources (a rootkit unlinks a task from one of them at a time):

* ``task_list``: the ``init_task.tasks`` list of thread-group leaders;
* ``pid_table``: the PID namespace's IDR (an XArray of ``struct pid``), which
  holds every thread;
* ``thread_list``: each process's ``signal->thread_head`` list;
* ``run_queue``: what each CPU's run queue is running now (``rq->curr``);
* ``memory_scan`` (on request): task_structs found in the slab pages themselves.

Each :class:`Task` says which sources saw it. Fields come from one read of the
task_struct prefix; credentials from one read of ``cred``; the command line is
read through *that process's* page tables and is ``None`` when a page of it is
not present (never a guess).
"""

from __future__ import annotations

import struct

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.errors import ReadError, TranslationError, UnmappedPhysicalAddress
from vmsentinel.os.linux.reader import Fields, KernelReader
from vmsentinel.os.linux.views.files import FileName, FileNamer
from vmsentinel.os.linux.views.scan import scan_task_structs
from vmsentinel.os.records import Task, TaskSweep

PF_KTHREAD = 0x00200000
PF_WQ_WORKER = 0x00000020
STATE_LETTERS = "RSDTtXZPI"
MAX_CMDLINE = 128 * 1024
MAX_TASKS = 1 << 16


#: (mm, exe_file, argument area), exe, command line, set-uid root: a process's identity as a sweep read it
Identity = tuple[tuple[int, int, int, int], str | None, tuple[str, ...] | None, bool | None]
S_ISUID = 0o4000


class _Layout:
    def __init__(self, r: KernelReader) -> None:
        t = "task_struct"
        self.pid = r.off(t, "pid")
        self.tgid = r.off(t, "tgid")
        self.comm = r.off(t, "comm")
        self.tasks = r.off(t, "tasks")
        self.real_parent = r.off(t, "real_parent")
        self.group_leader = r.off(t, "group_leader")
        self.real_cred = r.off(t, "real_cred")
        self.mm = r.off(t, "mm")
        self.flags = r.off(t, "flags")
        _, self.state = r.off_any(t, "__state", "state")
        self.exit_state = r.off(t, "exit_state")
        _, self.start = r.off_any(t, "start_boottime", "real_start_time", "start_time")
        self.signal = r.off(t, "signal")
        self.thread_node = r.off(t, "thread_node")
        self.pid_links = r.off(t, "pid_links")
        # kernel threads keep their full name (comm holds 15 chars) in struct kthread, which /proc shows
        self.worker_private = r.off(t, "worker_private") if r.has(t, "worker_private") else None
        self.kthread_full_name = r.off("kthread", "full_name") if r.has("kthread", "full_name") else None
        self.span = (
            max(
                self.pid,
                self.tgid,
                self.comm + 16,
                self.real_parent,
                self.group_leader,
                self.real_cred,
                self.mm,
                self.flags,
                self.state,
                self.exit_state,
                self.start,
                self.signal,
            )
            + 8
        )
        c = "cred"
        self.cred = {
            k: r.off(c, f"{k}.val") if r.has(c, f"{k}.val") else r.off(c, k)
            for k in ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid")
        }
        self.cap_effective = r.off(c, "cap_effective")
        self.cred_span = max(*self.cred.values(), self.cap_effective) + 8
        self.cred_fields = Fields([*((o, "I") for o in self.cred.values()), (self.cap_effective, "Q")])
        self.task_fields = Fields(
            [
                (self.flags, "I"),
                (self.real_parent, "Q"),
                (self.state, "I"),
                (self.exit_state, "I"),
                (self.real_cred, "Q"),
                (self.mm, "Q"),
                (self.start, "Q"),
            ]
        )
        m = "mm_struct"
        self.arg_start = r.off(m, "arg_start")
        self.arg_end = r.off(m, "arg_end")
        self.exe_file = r.off(m, "exe_file")
        self.pgd = r.off(m, "pgd")


class TaskReader:
    """Reads tasks of one guest; build once per guest, call :meth:`sweep` each time."""

    def __init__(self, reader: KernelReader) -> None:
        self.r = reader
        self.lay = _Layout(reader)
        self.namer = FileNamer(reader)
        # task address -> ((mm, exe_file, argument area), exe, cmdline) as the last sweep read them: a
        # process whose mm, executable file and argument area are the same keeps its path and command
        # line until the next full sweep reads them again (an exec changes the mm, prctl the exe_file)
        self._identities: dict[int, Identity] = {}
        self._seen_identities: dict[int, Identity] = {}
        self._full = True

    # -- sources ------------------------------------------------------------
    def _from_task_list(self, problems: list[str]) -> list[int]:
        head = self.r.symbol("init_task") + self.lay.tasks
        walk = self.r.list_walk(head, "task_struct", "tasks", limit=MAX_TASKS)
        problems.extend(walk.problems)
        return walk.items

    def _from_pid_table(self, problems: list[str]) -> list[int]:
        ns = self.r.symbol("init_pid_ns")
        xa_head = ns + self.r.off("pid_namespace", "idr") + self.r.off("idr", "idr_rt") + self.r.off("xarray", "xa_head")
        try:
            entries, xa_problems = self.r.xarray_entries(xa_head, limit=MAX_TASKS)
        except ReadError as exc:
            problems.append(f"pid table: {exc}")
            return []
        problems.extend(f"pid table: {p}" for p in xa_problems)
        tasks_off = self.r.off("pid", "tasks")  # hlist_head tasks[PIDTYPE_MAX]; [0] is PIDTYPE_PID
        out = []
        for _nr, pid_struct in entries:
            try:
                walk = self.r.hlist_walk(pid_struct + tasks_off, "task_struct", "pid_links", limit=4)
            except ReadError as exc:
                problems.append(f"pid table: {exc}")
                continue
            problems.extend(walk.problems)
            out.extend(walk.items)
        return out

    def _from_thread_lists(self, leaders: list[int], problems: list[str]) -> list[int]:
        out = []
        head_off = self.r.off("signal_struct", "thread_head")
        for task in leaders:
            try:
                signal = self.r.pointer(task + self.lay.signal)
                if signal is None:
                    continue
                walk = self.r.list_walk(signal + head_off, "task_struct", "thread_node", limit=MAX_TASKS)
            except ReadError as exc:
                problems.append(f"thread list of task {task:#x}: {exc}")
                continue
            problems.extend(walk.problems)
            out.extend(walk.items)
        return out

    def _from_run_queues(self, problems: list[str]) -> list[int]:
        if not (self.r.has_symbol("runqueues") and self.r.has_symbol("__per_cpu_offset")):
            return []
        try:
            ncpu = self.r.u32(self.r.symbol("nr_cpu_ids")) if self.r.has_symbol("nr_cpu_ids") else 1
            curr_off = self.r.off("rq", "curr")
            out = []
            for cpu in range(min(ncpu, 8192)):
                per_cpu = self.r.u64(self.r.symbol("__per_cpu_offset") + cpu * 8)
                curr = self.r.pointer((self.r.symbol("runqueues") + per_cpu + curr_off) & ((1 << 64) - 1))
                if curr is not None:
                    out.append(curr)
            return out
        except ReadError as exc:
            problems.append(f"run queues: {exc}")
            return []

    # -- the sweep ------------------------------------------------------------
    def sweep(self, with_paths: bool = True, scan: bool = False) -> TaskSweep:
        """Read every task; ``scan`` adds the (slower) memory scan of the task_struct slabs."""
        self.r.space.new_sweep()  # a running guest changes its page tables between sweeps
        self.namer.new_sweep()
        self._identities, self._seen_identities = self._seen_identities, {}
        self._full = scan or not with_paths
        problems: list[str] = []
        seen_by: dict[int, set[str]] = {}

        def saw(addrs: list[int], source: str) -> None:
            for a in addrs:
                seen_by.setdefault(a, set()).add(source)

        listed = self._from_task_list(problems)
        saw(listed, "task_list")
        saw(self._from_pid_table(problems), "pid_table")
        saw(self._from_run_queues(problems), "run_queue")
        if scan:
            scanned = scan_task_structs(self.r)
            problems.extend(scanned.problems)
            saw(scanned.found, "memory_scan")
        raw: dict[int, tuple[int, ...]] = {}
        for addr in list(seen_by):
            fields = self._raw(addr, problems)
            if fields is not None:
                raw[addr] = fields
        leaders = [a for a, f in raw.items() if f[0] == f[1]]
        saw(self._from_thread_lists(leaders, problems), "thread_list")
        for addr in seen_by:
            if addr not in raw and (fields := self._raw(addr, problems)) is not None:
                raw[addr] = fields
        threads: dict[int, list[int]] = {}
        for f in raw.values():
            threads.setdefault(f[1], []).append(f[0])
        tasks = []
        for addr, f in raw.items():
            pid, tgid = f[0], f[1]
            if pid != tgid or pid == 0:
                continue
            task = self._task(addr, f, sorted(threads.get(tgid, [pid])), tuple(sorted(seen_by[addr])), problems, with_paths)
            if task is not None:
                tasks.append(task)
        tasks.sort(key=lambda t: t.pid)
        return TaskSweep(tasks, {k: sorted(v) for k, v in threads.items()}, seen_by, problems)

    def _raw(self, addr: int, problems: list[str]) -> tuple[int, ...] | None:
        """(pid, tgid) of a task_struct, validated enough to trust as a task."""
        try:
            if self.lay.tgid == self.lay.pid + 4:  # adjacent, as in every kernel so far: one read
                pid, tgid = struct.unpack("<ii", self.r.read(addr + self.lay.pid, 8))
            else:
                pid, tgid = self.r.s32(addr + self.lay.pid), self.r.s32(addr + self.lay.tgid)
        except ReadError as exc:
            problems.append(f"task {addr:#x}: {exc}")
            return None
        if not (0 <= pid < 1 << 22 and 0 <= tgid < 1 << 22):
            problems.append(f"task {addr:#x}: implausible pid {pid}/tgid {tgid}")
            return None
        return pid, tgid

    def _task(
        self, addr: int, ids: tuple[int, ...], threads: list[int], sources: tuple[str, ...], problems: list[str], with_paths: bool
    ) -> Task | None:
        lay = self.lay
        try:
            raw = self.r.read(addr, lay.span)
        except ReadError as exc:
            problems.append(f"task {addr:#x}: {exc}")
            return None

        flags, parent, task_state, exit_state, cred_ptr, mm, start_time = lay.task_fields.unpack(raw)
        comm = raw[lay.comm : lay.comm + 16].split(b"\0", 1)[0].decode(errors="replace")
        # /proc names workqueue workers by comm (plus the current work), other kernel threads by full name
        name = comm
        if (
            flags & PF_KTHREAD
            and not flags & PF_WQ_WORKER
            and lay.worker_private is not None
            and lay.kthread_full_name is not None
        ):
            name = self._kthread_name(addr, comm, problems)
        ppid = 0
        try:
            if self.r.is_kernel_pointer(parent) and parent != addr:
                ppid = self.r.s32(parent + lay.tgid)
        except ReadError as exc:
            problems.append(f"task {ids[0]}: parent unreadable: {exc}")
        state_bits = (task_state & 0x7F) | exit_state
        state = "I" if task_state == 0x402 else STATE_LETTERS[min(state_bits.bit_length(), 8)]
        creds = dict.fromkeys(("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid"), -1)
        cap = 0
        try:
            if self.r.is_kernel_pointer(cred_ptr):
                craw = self.r.read(cred_ptr, lay.cred_span)
                *ids8, cap = lay.cred_fields.unpack(craw)
                creds = dict(zip(lay.cred, ids8, strict=True))
        except ReadError as exc:
            problems.append(f"task {ids[0]}: cred unreadable: {exc}")
        exe, cmdline, setuid_root = None, None, None
        if mm and self.r.is_kernel_pointer(mm) and not flags & PF_KTHREAD:
            exe, cmdline, setuid_root = self._identity(addr, mm, problems, ids[0], with_paths)
        return Task(
            pid=ids[0],
            ppid=ppid,
            tgid=ids[1],
            name=name,
            comm=comm,
            state=state,
            kernel_thread=bool(flags & PF_KTHREAD),
            flags=flags,
            uid=creds["uid"],
            gid=creds["gid"],
            euid=creds["euid"],
            egid=creds["egid"],
            suid=creds["suid"],
            fsuid=creds["fsuid"],
            cap_effective=cap,
            start_time_ns=start_time,
            threads=tuple(threads),
            exe=exe,
            cmdline=cmdline,
            sources=sources,
            address=addr,
            cred=cred_ptr,
            exe_setuid_root=setuid_root,
        )

    def _kthread_name(self, task: int, comm: str, problems: list[str]) -> str:
        """The full name of a kernel thread when its comm was cut at 15 characters."""
        assert self.lay.worker_private is not None and self.lay.kthread_full_name is not None
        try:
            kthread = self.r.pointer(task + self.lay.worker_private)
            full = self.r.pointer(kthread + self.lay.kthread_full_name) if kthread else None
            return self.r.cstring(full, 64) if full else comm
        except ReadError as exc:
            problems.append(f"kernel thread {comm}: full name unreadable: {exc}")
            return comm

    def _identity(
        self, task: int, mm: int, problems: list[str], pid: int, with_paths: bool
    ) -> tuple[str | None, tuple[str, ...] | None, bool | None]:
        """The process's executable path, command line and whether its executable is set-uid root: read
        again on a full sweep, or when its mm, executable file or argument area moved; else as the last
        sweep read them."""
        try:
            exe_file = self.r.u64(mm + self.lay.exe_file)
            if self.lay.arg_end == self.lay.arg_start + 8:
                start, end = struct.unpack("<QQ", self.r.read(mm + self.lay.arg_start, 16))
            else:
                start, end = self.r.u64(mm + self.lay.arg_start), self.r.u64(mm + self.lay.arg_end)
        except ReadError as exc:
            problems.append(f"task {pid}: mm unreadable: {exc}")
            return None, None, None
        key = (mm, exe_file, start, end)
        known = self._identities.get(task)
        if known is not None and known[0] == key and not self._full:
            self._seen_identities[task] = known
            return known[1], known[2], known[3]
        named = self._exe(exe_file, problems, pid) if with_paths else None
        exe = named.path if named is not None else None
        setuid_root = bool(named.mode & S_ISUID and named.owner == 0) if named is not None and named.owner >= 0 else None
        cmdline = self._cmdline(mm, start, end, problems, pid)
        if cmdline is not None and (exe is not None or not exe_file):  # what could not be read is tried again
            self._seen_identities[task] = (key, exe, cmdline, setuid_root)
        return exe, cmdline, setuid_root

    def _exe(self, exe_file: int, problems: list[str], pid: int) -> FileName | None:
        if not exe_file or not self.r.is_kernel_pointer(exe_file):
            return None
        try:
            return self.namer.name(exe_file)
        except ReadError as exc:
            problems.append(f"task {pid}: exe path: {exc}")
            return None

    def user_space(self, mm: int) -> PagingAddressSpace:
        """The address space of a process, from ``mm->pgd`` (a direct-map address)."""
        pgd = self.r.u64(mm + self.lay.pgd)
        base = self.r.location.page_offset_base
        if base is None or pgd < base:
            raise ReadError(f"mm {mm:#x}: pgd {pgd:#x} is not in the direct map")
        return PagingAddressSpace(self.r.location.memory, pgd - base, self.r.location.paging_levels)

    def _cmdline(self, mm: int, start: int, end: int, problems: list[str], pid: int) -> tuple[str, ...] | None:
        try:
            if not 0 <= end - start <= MAX_CMDLINE:
                problems.append(f"task {pid}: implausible argument area {start:#x}-{end:#x}")
                return None
            if end == start:
                return ()
            data = self.user_space(mm).read(start, end - start)
        except (ReadError, TranslationError, UnmappedPhysicalAddress):
            return None  # not present (swapped out, or not yet faulted in): no guess
        parts = data.split(b"\0")
        if parts and parts[-1] == b"":
            parts.pop()
        return tuple(p.decode(errors="replace") for p in parts)
