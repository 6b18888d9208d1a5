"""Why the kernel refuses to let us read another process, in one line.

Reading a running QEMU takes one of two kernel permissions:

* ``process_vm_readv`` (and ``/proc/PID/mem``) is a ptrace *attach* check: the same user as the
  target (which must be dumpable) or ``CAP_SYS_PTRACE``, and Yama's ``ptrace_scope`` on top
  (0 classic, 1 only descendants, 2 only CAP_SYS_PTRACE, 3 nobody);
* ``/proc/PID/map_files/`` needs ``CAP_SYS_ADMIN`` or ``CAP_CHECKPOINT_RESTORE`` besides a ptrace
  *read* check (the one ``/proc/PID/maps`` needs: same user or ``CAP_SYS_PTRACE``; Yama does not
  apply to it).

::

    ptrace_refusal(1234, "process_vm_readv on QEMU pid 1234")
    # 'process_vm_readv on QEMU pid 1234 was refused: it needs CAP_SYS_PTRACE, which this process lacks
    #  (QEMU runs as uid 0, this process as uid 65534); Yama ptrace_scope is 1 ...'
"""

from __future__ import annotations

import os

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_CHECKPOINT_RESTORE = 40

YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"

#: what each Yama ptrace_scope value allows
YAMA_MEANING = {
    0: "classic: the same user may read a dumpable process",
    1: "restricted: without CAP_SYS_PTRACE only an ancestor may read a process, even as the same user",
    2: "admin-only: only a process with CAP_SYS_PTRACE may read another",
    3: "no attach: nobody may read another process, root included, until a reboot",
}


def effective_capabilities(status_path: str = "/proc/self/status") -> set[int]:
    """The capability numbers in this process's effective set."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    mask = int(line.split()[1], 16)
                    return {bit for bit in range(64) if mask >> bit & 1}
    except (OSError, ValueError, IndexError):
        pass
    return set()


def yama_ptrace_scope(path: str = YAMA_SCOPE) -> int | None:
    """Yama's ptrace_scope, or None when Yama is not active on this kernel."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def process_uid(pid: int) -> int | None:
    """The real uid a process runs as (from ``/proc/PID/status``, which anyone may read), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _who(pid: int) -> str:
    owner, me = process_uid(pid), os.geteuid()
    if owner is None:
        return f"this process runs as uid {me}"
    if owner == me:
        return f"QEMU and this process both run as uid {me}"
    return f"QEMU runs as uid {owner}, this process as uid {me}"


def yama_text(scope: int | None) -> str:
    if scope is None:
        return "Yama is not active on this kernel"
    return f"Yama ptrace_scope is {scope} ({YAMA_MEANING.get(scope, 'unknown value')})"


def ptrace_refusal(pid: int, action: str) -> str:
    """One line saying why ``action``, a ptrace-attach-checked read of ``pid``, was refused."""
    scope = yama_ptrace_scope()
    has = CAP_SYS_PTRACE in effective_capabilities()
    if scope == 3:
        return f"{action} was refused: {yama_text(scope)}; not even CAP_SYS_PTRACE helps"
    lack = "which this process has" if has else "which this process lacks"
    tail = f"{_who(pid)}; {yama_text(scope)}"
    if has:
        tail += "; a security module (AppArmor, SELinux) or a non-dumpable QEMU may be in the way"
    return f"{action} was refused: it needs CAP_SYS_PTRACE, {lack} ({tail})"


def ptrace_read_refusal(pid: int, action: str) -> str:
    """One line saying why ``action``, a ptrace-read-checked ``/proc/PID`` file, was refused."""
    has = CAP_SYS_PTRACE in effective_capabilities()
    lack = "which this process has" if has else "which this process lacks"
    return f"{action} was refused: it needs the same user as QEMU or CAP_SYS_PTRACE, {lack} ({_who(pid)})"


def map_files_refusal(pid: int, action: str) -> str:
    """One line saying why opening ``/proc/PID/map_files/...`` was refused."""
    caps = effective_capabilities()
    if caps & {CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE}:
        return f"{action} was refused although this process has CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE ({_who(pid)})"
    return f"{action} was refused: it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, which this process lacks"
