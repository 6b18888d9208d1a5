"""A QEMU started the plain way, as anyone would: ``qemu-system-x86_64 -accel tcg -m 512 -kernel
... -initrd ...`` with whatever RAM and monitor options a test gives, no shared RAM file and no
monitor unless asked. It boots a lab kernel and initramfs (with the test programs under
``/root/programs``) and keeps the lab's control console on the second serial line, so that a test
can run commands inside::

    with PlainQemu("6.1", tmp_path, ["-m", "512"]) as vm:
        vm.sh("ps"), vm.pid
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from vmsentinel.lab import console, debian, initramfs


class PlainQemu:
    """A booted QEMU of kernel ``series``, its files in ``folder``; killed on close."""

    def __init__(self, series: str, folder: Path, args: list[str], programs: Path | None = None, timeout: float = 180) -> None:
        kernel = debian.fetch_kernel(debian.resolve_kernel_package(series))
        self.release = kernel.release
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        initrd = folder / "initrd.img"
        base = initramfs.base_archive(kernel, debian.fetch_busybox()).read_bytes()
        extra = initramfs.extra_archive([(programs, "/root/programs")]) if programs else b""
        initrd.write_bytes(base + extra)
        self.ctl = folder / "ctl.sock"
        self.console = folder / "console.log"
        qemu = shutil.which("qemu-system-x86_64")
        assert qemu, "qemu-system-x86_64 is not installed"
        self.command = [
            qemu, "-accel", "tcg", "-cpu", "max,la57=off", *args,
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 vmsentinel.name=plain kaslr", "-display", "none", "-no-reboot", "-nodefaults",
            "-chardev", f"file,id=con0,path={self.console}", "-serial", "chardev:con0",
            "-chardev", f"socket,id=ctl0,path={self.ctl},server=on,wait=off", "-serial", "chardev:ctl0",
        ]  # fmt: skip
        log = open(folder / "qemu.log", "wb")  # noqa: SIM115 - QEMU writes it for as long as it runs
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        log.close()
        try:
            self._wait(timeout)
        except BaseException:
            self.close()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ctl.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}): {(self.folder / 'qemu.log').read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("QEMU made no control socket")
            time.sleep(0.02)
        sock = console.connect(self.ctl)
        try:
            release = console.wait_ready(sock, max(1.0, deadline - time.monotonic()))
        finally:
            sock.close()
        assert release == self.release, f"guest runs {release}, expected {self.release}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"qemu-pid:{self.pid}"

    def sh(self, script: str, timeout: float = 120) -> str:
        """Run a shell script as root in the guest; fail on a non-zero status."""
        result = console.run_in_guest(self.ctl, script, self.folder / "exec.lock", timeout)
        assert result.status == 0, f"{script!r} exited {result.status}: {result.stderr.decode(errors='replace')}"
        return result.stdout.decode(errors="replace")

    def freeze(self) -> contextlib.AbstractContextManager[None]:
        """Stop QEMU with SIGSTOP (its vCPUs with it), so that reads from outside see one instant."""
        return _stopped(self.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def __enter__(self) -> PlainQemu:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def _stopped(pid: int):  # type: ignore[no-untyped-def]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
