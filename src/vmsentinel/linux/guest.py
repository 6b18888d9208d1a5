"""A Linux guest opened for introspection: its memory, its located kernel and
the view readers, built once and reused sweep after sweep.

    with LinuxGuest.open("lab:web1") as guest:
        guest.tasks().tasks
        guest.modules().modules
"""

from __future__ import annotations

from types import TracebackType

from ..targets import Target, open_target
from .kernel_profile import ResolvedKernel, resolve_kernel
from .reader import KernelReader
from .views.modules import ModuleReader, ModuleSweep
from .views.tasks import TaskReader, TaskSweep


class LinuxGuest:
    def __init__(self, target: Target, resolved: ResolvedKernel) -> None:
        self.target = target
        self.resolved = resolved
        self.reader = KernelReader(resolved.location)
        self._tasks: TaskReader | None = None
        self._modules: ModuleReader | None = None

    @classmethod
    def open(cls, spec: str) -> LinuxGuest:
        target = open_target(spec)
        try:
            return cls(target, resolve_kernel(target.memory, spec))
        except BaseException:
            target.close()
            raise

    def tasks(self, with_paths: bool = True) -> TaskSweep:
        if self._tasks is None:
            self._tasks = TaskReader(self.reader)
        return self._tasks.sweep(with_paths)

    def modules(self) -> ModuleSweep:
        if self._modules is None:
            self._modules = ModuleReader(self.reader)
        return self._modules.sweep()

    def close(self) -> None:
        self.target.close()

    def __enter__(self) -> LinuxGuest:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
