"""Helpers for real-guest tests (and the benchmarks): tools installed with the test interpreter,
memory dumps that do not outlive their test, pausing a guest, QEMU's own views."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmsentinel.access import Connector
from vmsentinel.access.qmp import Qmp
from vmsentinel.access.qmp_control import QmpControl


def qmp_of(target: Connector) -> Qmp:
    """The connector's own QMP connection (QEMU serves one client at a time), for QEMU-only commands."""
    assert isinstance(target.control, QmpControl), f"{target.spec} has no QMP control"
    return target.control.qmp


#: what a memory dump is called here: QEMU ELF cores, raw pmemsave copies, LiME copies
DUMP_SUFFIXES = (".core", ".raw", ".lime")
#: a file this large is a memory copy whatever its name (a pmemsave of one region, say)
LARGE_FILE = 50 << 20


def installed_tool(name: str) -> str | None:
    """An executable installed with the interpreter running the tests (``.venv/bin/NAME``, which
    ``.venv/bin/python -m pytest`` does not put on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def remove_dumps(folder: Path, min_size: int = 0) -> list[Path]:
    """Delete the memory dumps under ``folder`` (of ``min_size`` bytes or more), and any file of
    :data:`LARGE_FILE` or more; return what was deleted. ``VMSENTINEL_KEEP_DUMPS=1`` keeps them."""
    if os.environ.get("VMSENTINEL_KEEP_DUMPS") == "1" or not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob("*"):
        try:
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if (path.suffix in DUMP_SUFFIXES and size >= min_size) or size >= LARGE_FILE:
                path.unlink()
                removed.append(path)
        except OSError:  # gone already, or not ours to delete
            continue
    return removed


@contextmanager
def paused(qmp: Qmp) -> Iterator[None]:
    """Freeze the guest so that our reads and QEMU's see the same instant."""
    qmp.stop()
    try:
        yield
    finally:
        qmp.cont()


def qemu_info_mem(qmp: Qmp) -> list[tuple[int, int, bool, bool]]:
    """QEMU's ``info mem``: (start, end, user, writable) ranges."""
    ranges = []
    for line in qmp.hmp("info mem", timeout=120).splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) [0-9a-f]+ ([u-])r([w-])$", line.strip())
        if m:
            ranges.append((int(m[1], 16), int(m[2], 16), m[3] == "u", m[4] == "w"))
    return ranges


def qemu_info_tlb(qmp: Qmp) -> dict[int, tuple[int, str]]:
    """QEMU's ``info tlb``: virtual page -> (physical address, flag letters)."""
    pages = {}
    for line in qmp.hmp("info tlb", timeout=120).splitlines():
        m = re.match(r"([0-9a-f]+): ([0-9a-f]+) (\S+)$", line.strip())
        if m:
            pages[int(m[1], 16)] = (int(m[2], 16), m[3])
    return pages


#: what /proc inside a guest says of each process, one line each (what ``ps`` reads); shell builtins read
#: what is text, so a pid costs three programs, not a dozen (500 processes under TCG: seconds, not tens)
INSIDE = r"""
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  { read -r stat < $d/stat; } 2>/dev/null || continue
  rest=${stat##*) }
  set -- $rest
  ppid=$2
  uid=
  { while read -r key value _; do [ "$key" = Uid: ] && { uid=$value; break; }; done < $d/status; } 2>/dev/null
  comm=
  { IFS= read -r comm < $d/comm; } 2>/dev/null
  args=$(od -An -tx1 -v $d/cmdline 2>/dev/null | tr -d ' \n')
  exe=$(readlink $d/exe 2>/dev/null)
  tids=
  for t in $d/task/[0-9]*; do [ -e "$t" ] && tids="$tids${t##*/},"; done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pid" "$ppid" "$uid" "$comm" "$args" "$exe" "$tids"
done
"""
#: (ppid, uid, comm, argv or None, exe or None, thread ids) of a process, as /proc shows it
InsideProcess = tuple[int, int, str, tuple[str, ...] | None, str | None, tuple[int, ...]]


def parse_inside(text: str) -> dict[int, InsideProcess]:
    """The output of :data:`INSIDE`, by pid."""
    out = {}
    for line in text.splitlines():
        pid, ppid, uid, comm, args_hex, exe, tids = line.split("\t")
        raw = bytes.fromhex(args_hex).decode(errors="replace")
        args = tuple(a for a in raw.split("\x00")) if raw else None
        if args and args[-1] == "":
            args = args[:-1]
        threads = tuple(sorted(int(t) for t in tids.split(",") if t))  # the glob lists them as text sorts
        out[int(pid)] = (int(ppid), int(uid), comm, args, exe or None, threads)
    return out


class WatchRun:
    """``vmsentinel watch ARGS...`` in a subprocess, its stderr lines collected as they come with the time
    each arrived, for tests that act on a guest while the watch runs and then read what it said."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        import subprocess
        import threading

        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmsentinel", "watch", *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**(env or os.environ), "COLUMNS": "400"},
        )
        stream = self.proc.stderr
        assert stream is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend((time.monotonic(), ln.rstrip()) for ln in stream))
        self._reader.daemon = True
        self._reader.start()

    @property
    def log(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def seen(self, text: str, after: float = 0.0, timeout: float = 90.0, target: str | None = None) -> tuple[float, str]:
        """(when, line) of the first line from ``after`` on that holds ``text`` (and is about ``target``,
        when given); fails the test if the watch exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if at >= after and text in line and (target is None or line.startswith(f"{target}: ")):
                    return at, line
            assert self.proc.poll() is None, self.log
            time.sleep(0.05)
        raise AssertionError(f"no {text!r}{f' for {target}' if target else ''} within {timeout:.0f} s:\n{self.log}")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        import signal

        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def end(self) -> None:
        """Kill it if it still runs; wait for every line it wrote."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
