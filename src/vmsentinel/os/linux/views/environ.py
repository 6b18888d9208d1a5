"""The environment of each process (``/proc/PID/environ`` from outside): the bytes between the mm's
``env_start`` and ``env_end``, read through *that process's* page tables.

What the area holds is what the process was started with (``execve``'s ``envp``), whatever libc did
to its copy of ``environ`` since: ``unsetenv("LD_PRELOAD")`` in an injected library leaves the
variable there. A process may write over the area (``setproctitle`` does): the entries are then
whatever it wrote, shown as they are. Every length is bounded; a page that is not present leaves a
gap (the environment is then marked incomplete), never a guess.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.errors import ReadError, TranslationError, UnmappedPhysicalAddress
from vmsentinel.os.declare import column
from vmsentinel.os.linux.views.tasks import PF_KTHREAD, TaskReader
from vmsentinel.os.records import Task

#: bytes of an environment read at most (the kernel allows more with a huge stack limit: cut, and said)
MAX_ENVIRON = 1 << 20
#: entries kept per process
MAX_VARIABLES = 8192
#: user addresses lie below this (5-level paging; 4-level stops lower)
USER_TOP = 1 << 56


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One variable of one process, as ``envars`` lists them."""

    pid: int = column("PID")
    name: str = column("NAME")
    key: str = column("KEY")
    value: str = column("VALUE")


@dataclass(frozen=True, slots=True)
class Environment:
    pid: int
    name: str
    #: the entries as the area holds them (``KEY=VALUE``, or whatever the process wrote there)
    variables: tuple[str, ...]
    #: every page of the area was present and it was within the bounds
    complete: bool = True

    def pairs(self) -> list[tuple[str, str]]:
        """(key, value) of each entry; an entry without ``=`` is a key with an empty value."""
        out = []
        for entry in self.variables:
            key, _, value = entry.partition("=")
            out.append((key, value))
        return out

    def values(self, key: str) -> list[str]:
        """Every value ``key`` has (a hostile environment may set one twice)."""
        return [v for k, v in self.pairs() if k == key]


@dataclass
class EnvironSweep:
    #: pid -> environment of each user process whose area could be read
    environ: dict[int, Environment] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def records(self, pid: int | None = None) -> list[EnvVar]:
        return [
            EnvVar(e.pid, e.name, k, v) for p, e in sorted(self.environ.items()) if pid is None or p == pid for k, v in e.pairs()
        ]


#: (mm, env_start, env_end, start time): an environment read for this key is not read again until a full sweep
_Key = tuple[int, int, int, int]


class EnvironReader:
    """Reads the environments of a guest's processes; build once per guest."""

    def __init__(self, tasks: TaskReader) -> None:
        self.tasks = tasks
        r = self.r = tasks.r
        self.mm = r.off("task_struct", "mm")
        self.env_start = r.off("mm_struct", "env_start")
        self.env_end = r.off("mm_struct", "env_end")
        self._known: dict[int, tuple[_Key, Environment]] = {}

    def sweep(self, tasks: list[Task], everything: bool = True) -> EnvironSweep:
        """The environment of every user process in ``tasks``; unless ``everything``, one whose mm and
        environment area have not moved since the last sweep keeps what that sweep read."""
        sweep = EnvironSweep()
        known, self._known = self._known, {}
        for t in tasks:
            if t.kernel_thread or t.flags & PF_KTHREAD:
                continue
            read = self._read(t, sweep.problems, None if everything else known)
            if read is not None:
                self._known[t.address] = read
                sweep.environ[t.pid] = read[1]
        return sweep

    def environment(self, task: Task, problems: list[str]) -> Environment | None:
        """One process's environment, read now."""
        read = self._read(task, problems, None)
        return read[1] if read is not None else None

    def _read(
        self, t: Task, problems: list[str], known: dict[int, tuple[_Key, Environment]] | None
    ) -> tuple[_Key, Environment] | None:
        try:
            mm = self.r.pointer(t.address + self.mm)
            if mm is None:
                return None  # exiting (or a zombie): no address space, no environment
            if self.env_end == self.env_start + 8:
                start, end = struct.unpack("<QQ", self.r.read(mm + self.env_start, 16))
            else:
                start, end = self.r.u64(mm + self.env_start), self.r.u64(mm + self.env_end)
        except ReadError as exc:
            problems.append(f"pid {t.pid}: environment area unreadable: {exc}")
            return None
        key = (mm, start, end, t.start_time_ns)
        if known is not None:
            old = known.get(t.address)
            if old is not None and old[0] == key:
                return old
        if not 0 <= end - start < 1 << 40 or start >= USER_TOP:
            problems.append(f"pid {t.pid}: implausible environment area {start:#x}-{end:#x}")
            return None
        length = end - start
        complete = True
        if length > MAX_ENVIRON:
            problems.append(f"pid {t.pid}: environment of {length} bytes: only the first {MAX_ENVIRON} read")
            length, complete = MAX_ENVIRON, False
        if length == 0:
            return key, Environment(t.pid, t.name, ())
        try:
            runs = self.tasks.user_space(mm).physical_runs(start, length)
            data = runs.read(0, length)  # pages not present read as zeros: a gap, not a guess
        except (ReadError, TranslationError, UnmappedPhysicalAddress) as exc:
            problems.append(f"pid {t.pid}: environment unreadable: {exc}")
            return None
        if sum(size for _, _, size in runs.runs) < length:
            complete = False
        entries = [p for p in data.split(b"\0") if p]
        if len(entries) > MAX_VARIABLES:
            problems.append(f"pid {t.pid}: more than {MAX_VARIABLES} environment entries: the rest not kept")
            entries, complete = entries[:MAX_VARIABLES], False
        variables = tuple(p.decode(errors="replace") for p in entries)
        return key, Environment(t.pid, t.name, variables, complete)
