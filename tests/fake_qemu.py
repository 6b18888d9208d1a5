"""A process that looks like a QEMU from outside, for unit tests without a VM: its program is
called ``qemu-system-x86_64`` (a link to Python), its command line carries the QEMU options a test
gives (it runs in the folder it is given), and it maps RAM blocks the way QEMU does (a mapping of
exactly the block's size followed by a guard page), each filled with known bytes. On its stdin it
takes ``unmap BLOCK OFFSET LENGTH`` and ``write BLOCK OFFSET HEX``::

    with FakeQemu(tmp_path, ["-m", "6M"], ["anon:6M"]) as qemu:
        qemu.pid, qemu.addresses[0], qemu.data[0][:16]
        qemu.command("write 0 0 cafe")
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from vmsentinel.access.qemu_cmdline import parse_size

CHILD = r"""
import ctypes, os, random, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE, SHARED, PRIVATE, ANON, FIXED, NORESERVE = 4096, 0x01, 0x02, 0x20, 0x10, 0x4000
blocks = []
for n, spec in enumerate(os.environ["FAKE_QEMU_BLOCKS"].split()):
    kind, size, *path = spec.split(":")
    size = int(size)
    # reserve the block and its guard page, then map the block over the start of it
    base = libc.mmap(None, size + PAGE, 0, PRIVATE | ANON | NORESERVE, -1, 0)
    fd, flags = -1, PRIVATE | ANON
    if kind == "memfd":
        fd, flags = os.memfd_create("memory-backend-memfd", 0), SHARED
    elif kind == "shared-anon":
        flags = SHARED | ANON
    elif kind in ("file", "shared-file"):
        fd, flags = os.open(path[0], os.O_RDWR | os.O_CREAT, 0o600), SHARED if kind == "shared-file" else PRIVATE
    if fd >= 0:
        os.ftruncate(fd, size)
    addr = libc.mmap(base, size, 3, flags | FIXED, fd, 0)
    assert addr == base, ctypes.get_errno()
    ctypes.memmove(addr, random.Random(n).randbytes(size), size)
    blocks.append(addr)
print(" ".join(hex(a) for a in blocks), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "unmap":
        libc.munmap(blocks[int(args[0])] + int(args[1]), int(args[2]))
    elif cmd == "write":
        data = bytes.fromhex(args[2])
        ctypes.memmove(blocks[int(args[0])] + int(args[1]), data, len(data))
    print("ok", flush=True)
"""


class FakeQemu:
    """A child process named qemu-system-x86_64 with QEMU options and RAM blocks (``KIND:SIZE[:PATH]``,
    KIND one of anon, memfd, shared-anon, file, shared-file)."""

    def __init__(self, folder: Path, qemu_args: list[str], blocks: list[str]) -> None:
        exe = folder / "qemu-system-x86_64"
        if not exe.exists():
            exe.symlink_to(os.path.realpath(sys.executable))
        specs = []
        for spec in blocks:
            kind, size, *path = spec.split(":")
            specs.append(":".join([kind, str(parse_size(size)), *path]))
        self.sizes = [int(s.split(":")[1]) for s in specs]
        self.data = [random.Random(n).randbytes(size) for n, size in enumerate(self.sizes)]
        env = {**os.environ, "FAKE_QEMU_BLOCKS": " ".join(specs)}
        self.proc = subprocess.Popen(
            [str(exe), "-c", CHILD, *qemu_args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=folder
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("the fake QEMU did not start")
        self.addresses = [int(a, 16) for a in line.split()]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> FakeQemu:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
