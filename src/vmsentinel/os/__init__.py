"""Guest operating systems: each subpackage turns a connector's physical memory
into that OS's view of itself (processes, modules, hooks...). An OS registers an
opener; :func:`open_guest` reaches the guest through ``access`` and asks each
OS in turn whether its kernel is in that memory: Linux, then the NT family
(``os/windows/``).

    register_os("linux", open_linux)     # open_linux(connector) -> guest, or raises KernelNotFound
    guest = open_guest("lab:web1")       # the first OS whose kernel is found
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmsentinel.errors import KernelNotFound

if TYPE_CHECKING:
    from vmsentinel.access.connector import Connector

#: OS name -> opener, tried in registration order
OPENERS: dict[str, Callable[[Connector], Any]] = {}


def register_os(name: str, opener: Callable[[Connector], Any]) -> None:
    """Add an OS: ``opener(connector)`` returns its guest, or raises ``KernelNotFound`` if the memory
    holds no kernel of that OS."""
    OPENERS[name] = opener


def _open_linux(connector: Connector) -> Any:
    from vmsentinel.os.linux.guest import LinuxGuest

    return LinuxGuest.attach(connector)


def _open_windows(connector: Connector) -> Any:
    from vmsentinel.os.windows.guest import WindowsGuest

    return WindowsGuest.attach(connector)


register_os("linux", _open_linux)
register_os("windows", _open_windows)


def open_guest(spec: str, os: str | None = None) -> Any:
    """Open TARGET ``spec`` and find which OS runs in it (or only try ``os``)."""
    from vmsentinel.access.registry import open_connector

    connector = open_connector(spec)
    tried: list[str] = []
    try:
        for name, opener in OPENERS.items():
            if os is not None and name != os:
                continue
            try:
                return opener(connector)
            except KernelNotFound as exc:
                tried.append(f"{name}: {exc}")
        if os is not None and os not in OPENERS:
            raise KernelNotFound(f"{spec}: no OS named {os!r} (known: {', '.join(OPENERS)})")
        raise KernelNotFound(f"{spec}: no known kernel in this memory ({'; '.join(tried)})")
    except BaseException:
        connector.close()
        raise
