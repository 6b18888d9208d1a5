"""A small synchronous QMP client for one QEMU, built on ``qemu.qmp``.

The sentinel asks QEMU for what only the hypervisor knows (vCPU registers, the
guest-physical memory layout) and to act (pause, dump, cut the link). It never
asks the guest. :class:`~vmsentinel.access.qmp_control.QmpControl` puts it behind
the hypervisor-control protocol; the raw client stays for what only QEMU has::

    with Qmp("/run/vm.qmp") as qmp:
        qmp.hmp("info mtree -f")
        qmp.gva2gpa(0xFFFFFFFF81000000)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from types import TracebackType
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from vmsentinel.errors import HypervisorError


class Qmp:
    """A QMP client for one socket; a context manager. Errors become :class:`HypervisorError`.

    QEMU serves one client per QMP socket and queues the others until it is free, so a
    connection is held only for the duration of a call: a watch and a user's ``ps`` on the
    same guest take turns, each waiting milliseconds. ``with Qmp(...)`` (or ``connect()``)
    holds one connection for a batch of calls. Every call, connecting included, has a
    timeout: a sentinel must never hang on a busy or dead hypervisor. One object is safe to
    share between threads (a sweep reading registers while a person pauses the guest): its
    calls take turns, since the event loop under them runs one call at a time.
    """

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.log = logging.getLogger(f"vmsentinel.qmp.{socket_path}")
        self._client: QMPClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn = threading.RLock()  # reentrant: command() connects and closes inside its turn

    def __enter__(self) -> Qmp:
        self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _run(self, coro: Any, timeout: float | None) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout or self.timeout))

    def connect(self) -> None:
        with self._turn:
            self._connect()

    def _connect(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"vmsentinel-{self.socket_path}")
        # a failed connection is our one-line HypervisorError; qemu.qmp would also log it, in two more
        library_log = self._client.logger
        level = library_log.level
        library_log.setLevel(logging.CRITICAL)
        try:
            self._run(self._client.connect(self.socket_path), self.timeout)
        except (OSError, EOFError, QMPError, TimeoutError) as exc:
            self._close()
            why = (
                f"no answer within {self.timeout:.0f} s (another client holding it?)"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            raise HypervisorError(f"cannot connect to QMP socket {self.socket_path}: {why}") from exc
        finally:
            library_log.setLevel(level)

    def close(self) -> None:
        with self._turn:
            self._close()

    def _close(self) -> None:
        if self._client is not None and self._loop is not None:
            with contextlib.suppress(OSError, EOFError, QMPError, TimeoutError, RuntimeError):
                self._run(self._client.disconnect(), 5.0)
        self._client = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def command(self, name: str, /, qmp_timeout: float | None = None, **args: Any) -> Any:
        """Run a QMP command and return its ``return`` value (``name`` is positional: QMP arguments may be
        called ``name`` too)."""
        with self._turn:
            return self._command(name, qmp_timeout, args)

    def _command(self, name: str, qmp_timeout: float | None, args: dict[str, Any]) -> Any:
        opened = self._client is None
        if opened:
            self._connect()
        assert self._client is not None
        try:
            return self._run(self._client.execute(name, args or None), qmp_timeout)
        except TimeoutError as exc:
            raise HypervisorError(
                f"QMP {name} on {self.socket_path}: no answer within {qmp_timeout or self.timeout:.0f} s"
            ) from exc
        except ExecuteError as exc:
            raise HypervisorError(f"QMP {name} {args or ''} refused: {exc}") from exc
        except (OSError, EOFError, QMPError) as exc:  # EOFError: QEMU went away mid-command
            raise HypervisorError(f"QMP {name} on {self.socket_path} failed: {exc!r}") from exc
        finally:
            if opened:  # the next caller, maybe another vmsentinel, gets the socket
                self._close()

    def hmp(self, command_line: str, timeout: float | None = None) -> str:
        """Run a human-monitor command (``info registers``, ``gva2gpa``...)."""
        out = self.command("human-monitor-command", qmp_timeout=timeout, **{"command-line": command_line})
        return str(out).replace("\r\n", "\n")

    def gva2gpa(self, vaddr: int) -> int | None:
        """QEMU's own translation of a guest-virtual address (current vCPU), or None."""
        text = self.hmp(f"gva2gpa {vaddr:#x}")
        m = re.search(r"gpa:\s*(0x[0-9a-fA-F]+)", text)
        return int(m.group(1), 16) if m else None

    def stop(self) -> None:
        self.command("stop")

    def cont(self) -> None:
        self.command("cont")

    def status(self) -> str:
        return str(self.command("query-status").get("status", "unknown"))

    def dump_guest_memory(self, path: str) -> None:
        """Write an ELF core of guest memory (synchronous, paging off: physical view)."""
        self.command("dump-guest-memory", qmp_timeout=600, paging=False, protocol=f"file:{path}")

    def nics(self) -> list[str]:
        """Names of the guest's network cards (what ``set_link`` takes)."""
        return [str(x["name"]) for x in self.command("query-rx-filter") or [] if "name" in x]

    def set_link(self, nic: str, up: bool) -> None:
        self.command("set_link", name=nic, up=up)
