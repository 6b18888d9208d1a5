"""Who traces whom (Volatility's ``linux.ptrace``): every thread whose ``task->ptrace`` is set, with its
tracer (``task->parent`` while it is traced; ``real_parent`` stays the process that forked it).

Threads are looked at one by one (a debugger, or an injector, attaches to a thread, not to a
process), from every task the task sweep met, hidden ones included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import KernelReader

PT_PTRACED = 0x1
PT_SEIZED = 0x10000
#: threads looked at per sweep at most
MAX_THREADS = 1 << 17


@dataclass(frozen=True)
class PtraceLink:
    tracee: int = column("TRACEE")  # the traced thread's id
    tracee_tgid: int = column("TGID")
    tracee_name: str = column("NAME")
    tracer: int = column("TRACER")  # the tracing thread's id
    tracer_tgid: int = column("TRACER TGID", table=False)
    tracer_name: str = column("TRACER NAME")
    #: the tracee's real parent (the process that forked it): the tracer too when it started the tracee
    real_parent: int = column("REAL PARENT")
    flags: int = column("FLAGS", hex=True)
    seized: bool = column("SEIZED", table=False)
    task: int = column("TASK", hex=True, table=False)


@dataclass
class PtraceSweep:
    links: list[PtraceLink] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class PtraceReader:
    def __init__(self, reader: KernelReader) -> None:
        r = self.r = reader
        t = "task_struct"
        self.ptrace = r.off(t, "ptrace")
        self.parent = r.off(t, "parent")
        self.real_parent = r.off(t, "real_parent")
        self.pid, self.tgid, self.comm = r.off(t, "pid"), r.off(t, "tgid"), r.off(t, "comm")

    def sweep(self, tasks: Iterable[int]) -> PtraceSweep:
        """The ptrace links of the task_structs at ``tasks`` (threads included)."""
        sweep = PtraceSweep()
        for n, task in enumerate(tasks):
            if n >= MAX_THREADS:
                sweep.problems.append(f"more than {MAX_THREADS} threads: the rest not looked at for ptrace")
                break
            try:
                flags = self.r.u32(task + self.ptrace)
                if not flags:
                    continue
                tracer = self.r.pointer(task + self.parent)
                real = self.r.pointer(task + self.real_parent)
                pid, tgid, name = self._who(task)
                if tracer is None:
                    sweep.problems.append(f"thread {pid} is traced (flags {flags:#x}) by an unreadable tracer")
                    continue
                tracer_pid, tracer_tgid, tracer_name = self._who(tracer)
                real_pid = self._who(real)[1] if real is not None else 0
            except ReadError as exc:
                sweep.problems.append(f"ptrace of task {task:#x}: {exc}")
                continue
            sweep.links.append(
                PtraceLink(pid, tgid, name, tracer_pid, tracer_tgid, tracer_name, real_pid, flags, bool(flags & PT_SEIZED), task)
            )
        sweep.links.sort(key=lambda link: (link.tracee_tgid, link.tracee))
        return sweep

    def _who(self, task: int) -> tuple[int, int, str]:
        """(pid, tgid, comm) of a task_struct."""
        pid, tgid = self.r.s32(task + self.pid), self.r.s32(task + self.tgid)
        comm = self.r.read(task + self.comm, 16).split(b"\0", 1)[0].decode(errors="replace")
        return pid, tgid, comm
