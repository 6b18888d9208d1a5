"""A small synchronous QMP client for one QEMU, built on ``qemu.qmp``.

The sentinel asks QEMU for what only the hypervisor knows (vCPU registers, the
guest-physical memory layout) and to act (pause, dump, cut the link). It never
asks the guest::

    with Qmp("/run/vm.qmp") as qmp:
        regs = qmp.registers()            # {'CR3': 0x..., 'CR4': 0x..., ...}
        qmp.hmp("gva2gpa 0xffffffff81000000")
"""

from __future__ import annotations

import contextlib
import logging
import re
from types import TracebackType
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import HypervisorError

_REG = re.compile(r"\b([A-Z][A-Z0-9]{1,3})=([0-9a-fA-F]{8,16})\b")


class Qmp:
    """One QMP connection; a context manager. Errors become :class:`HypervisorError`."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.log = logging.getLogger(f"vmsentinel.qmp.{socket_path}")
        self._mon: QEMUMonitorProtocol | None = None

    def __enter__(self) -> Qmp:
        self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        try:
            self._mon = QEMUMonitorProtocol(self.socket_path)
            self._mon.settimeout(self.timeout)
            self._mon.connect()
        except (OSError, QMPError) as exc:
            self._mon = None
            raise HypervisorError(f"cannot connect to QMP socket {self.socket_path}: {exc}") from exc

    def close(self) -> None:
        if self._mon is not None:
            with contextlib.suppress(OSError, QMPError):
                self._mon.close()
            self._mon = None

    def command(self, name: str, /, qmp_timeout: float | None = None, **args: Any) -> Any:
        """Run a QMP command and return its ``return`` value (``name`` is positional: QMP arguments may be
        called ``name`` too)."""
        timeout = qmp_timeout
        if self._mon is None:
            self.connect()
        assert self._mon is not None
        self._mon.settimeout(timeout or self.timeout)
        try:
            reply = self._mon.cmd_obj({"execute": name, "arguments": args} if args else {"execute": name})
        except TimeoutError as exc:
            raise HypervisorError(f"QMP {name} on {self.socket_path}: no answer within {timeout or self.timeout:.0f} s") from exc
        except (OSError, QMPError) as exc:
            raise HypervisorError(f"QMP {name} on {self.socket_path} failed: {exc}") from exc
        if "error" in reply:
            raise HypervisorError(f"QMP {name} {args or ''} refused: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def hmp(self, command_line: str, timeout: float | None = None) -> str:
        """Run a human-monitor command (``info registers``, ``gva2gpa``...)."""
        out = self.command("human-monitor-command", qmp_timeout=timeout, **{"command-line": command_line})
        return str(out).replace("\r\n", "\n")

    def registers(self, cpu: int = 0) -> dict[str, int]:
        """General and control registers of one vCPU, from ``info registers``."""
        if cpu:
            self.hmp(f"cpu {cpu}")
        text = self.hmp("info registers")
        if cpu:
            self.hmp("cpu 0")
        regs = {name: int(value, 16) for name, value in _REG.findall(text)}
        if "CR3" not in regs:
            raise HypervisorError(f"no CR3 in 'info registers' from {self.socket_path}")
        return regs

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
