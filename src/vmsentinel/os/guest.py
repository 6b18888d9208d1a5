"""What the sweep pipeline, the watch and the commands ask of a guest, whichever OS it runs: the
one face :class:`~vmsentinel.os.linux.guest.LinuxGuest` and :class:`~vmsentinel.os.windows.guest.WindowsGuest`
both show, so nothing above ``os`` needs to know which one it holds.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from vmsentinel.access.connector import Connector
    from vmsentinel.os.records import HookSweep, ModuleSweep, TaskSweep
    from vmsentinel.os.snapshot import GuestSnapshot


class Guest(Protocol):
    #: the OS name detectors are registered for ("linux", "windows")
    os: str
    target: Connector
    #: (incremental, why) once the sweep decided how kernel code is hashed; None before, or for an OS
    #: whose code is always hashed whole
    code_tracking: tuple[bool, str] | None

    @property
    def release(self) -> str:
        """The kernel's release or build, as people name it."""
        ...

    def identity(self) -> tuple[str, ...]:
        """What must be the same for a kept baseline to apply: build, where the kernel is, which boot."""
        ...

    def about(self) -> dict[str, Any]:
        """The guest itself, as JSON: kernel, profile, paging, how its memory is reached."""
        ...

    def tasks(self, with_paths: bool = True, scan: bool = False) -> TaskSweep: ...

    def modules(self, scan: bool = False) -> ModuleSweep: ...

    def syscalls(self) -> HookSweep: ...

    def idt(self) -> HookSweep: ...

    def snapshot(self, *args: Any, **options: Any) -> GuestSnapshot:
        """Every view a sweep asks for (``with_code``, ``scan``, ``since``, ``facets``, ``first_look``...); an OS
        fills the facets it has and leaves the others empty."""
        ...

    def forget_sweep(self) -> None: ...

    def close(self) -> None: ...


class Opened:
    """Opening by TARGET and closing with ``with``, the same for every OS's guest: ``attach`` (the
    subclass's) finds the kernel in an opened connector; the guest owns the connector from then on."""

    @classmethod
    def attach(cls, connector: Connector) -> Self:  # pragma: no cover - every OS has its own
        raise NotImplementedError

    @classmethod
    def open(cls, spec: str) -> Self:
        """Open TARGET ``spec`` and find this OS's kernel in it (``vmsentinel.os.open_guest`` tries every OS)."""
        from vmsentinel.access.registry import open_connector

        connector = open_connector(spec)
        try:
            return cls.attach(connector)
        except BaseException:
            connector.close()
            raise

    def close(self) -> None:  # pragma: no cover - every OS has its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
