"""ReactOS lab guests: an NT-family kernel (Windows Server 2003 compatible, i386) from its live CD.

The live CD (``livecd.iso.xz``, built from source: see its ``BUILD.md``) is unpacked once into the
cache and booted under ``qemu-system-i386`` (``-M pc``), RAM shared under ``/dev/shm`` as for Linux
lab guests, its debug build logging to the first serial line (the guest's console log). The guest
is ready when its service control manager runs (``services.exe``, started by ``winlogon.exe``).
There is no command console: ``lab exec`` refuses.

Where the CD is: ``$VMSENTINEL_REACTOS`` (a folder with ``livecd.iso.xz`` and ``symbols/``), else
``../shared/guests/reactos`` from the working folder or from the source tree.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vmsentinel.errors import GuestTimeout, LabError, MissingTool
from vmsentinel.paths import cache_dir, write_atomic

ENVIRONMENT = "VMSENTINEL_REACTOS"
#: a line the service control manager logs once it runs (winlogon starts it)
READY = re.compile(rb"/base/system/services/")
BANNER = re.compile(rb"(ReactOS \d+\.\d+\.\d+[-\w.]*)")


def reactos_folder() -> Path:
    """The folder with the live CD and the kernel's debug files."""
    tried = []
    env = os.environ.get(ENVIRONMENT)
    candidates = [Path(env)] if env else []
    candidates += [
        Path.cwd().parent / "shared" / "guests" / "reactos",
        Path(__file__).resolve().parents[4] / "shared" / "guests" / "reactos",
    ]
    for folder in candidates:
        tried.append(str(folder))
        if (folder / "livecd.iso.xz").is_file():
            return folder
    raise LabError(f"no ReactOS live CD (livecd.iso.xz) found; set {ENVIRONMENT} to its folder (looked in {', '.join(tried)})")


def livecd(progress: Callable[[str], None] = lambda _m: None) -> Path:
    """The live CD's ISO, unpacked into the cache on first use."""
    packed = reactos_folder() / "livecd.iso.xz"
    stat = packed.stat()
    iso = cache_dir() / "reactos" / f"livecd-{stat.st_size:x}.iso"
    if iso.is_file():
        return iso
    progress(f"unpacking {packed} (once)")
    iso.parent.mkdir(parents=True, exist_ok=True)
    part = iso.with_suffix(".part")
    with lzma.open(packed) as src, part.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    part.rename(iso)
    return iso


def kernel_debug_file(cache: Path | None = None) -> Path:
    """``ntoskrnl.exe`` with its DWARF, unpacked into the cache on first use."""
    packed = reactos_folder() / "symbols" / "ntoskrnl.exe.xz"
    if not packed.is_file():
        raise LabError(f"{packed}: the ReactOS kernel's debug file is missing")
    out = (cache or cache_dir() / "reactos") / f"ntoskrnl-{packed.stat().st_size:x}.exe"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lzma.decompress(packed.read_bytes()))
    return out


def kernel_image_file(cache: Path | None = None) -> Path:
    """The live CD's own ``ntoskrnl.exe`` (the loaded kernel's image, code and relocations included),
    taken out of the ISO into the cache on first use: what the loaded kernel's code is compared with."""
    import pycdlib

    iso_path = livecd()
    out = (cache or cache_dir() / "reactos") / f"ntoskrnl-image-{iso_path.stat().st_size:x}.exe"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        iso = pycdlib.PyCdlib()
        iso.open(str(iso_path))
        try:
            image = io.BytesIO()
            iso.get_file_from_iso_fp(image, iso_path="/reactos/system32/ntoskrnl.exe")
        finally:
            iso.close()
        write_atomic(out, image.getvalue())
    return out


def qemu_i386() -> str:
    binary = shutil.which("qemu-system-i386")
    if binary is None:
        raise MissingTool("qemu-system-i386 is not installed: apt-get install --no-install-recommends qemu-system-x86")
    return binary


def qemu_command(name: str, memory_mib: int, smp: int, accel: str, iso: Path, paths: dict[str, Path]) -> list[str]:
    return [
        qemu_i386(),
        "-name",
        f"vmsentinel-{name}",
        "-machine",
        "pc,memory-backend=ram0",
        "-accel",
        accel,
        "-smp",
        str(smp),
        "-m",
        f"{memory_mib}M",
        "-object",
        f"memory-backend-file,id=ram0,size={memory_mib}M,mem-path={paths['ram']},share=on",
        "-cdrom",
        str(iso),
        "-boot",
        "d",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "none",
        "-chardev",
        f"file,id=con0,path={paths['console']}",
        "-serial",
        "chardev:con0",
        "-qmp",
        f"unix:{paths['qmp']},server=on,wait=off",
    ]


def wait_ready(proc: subprocess.Popen[bytes], console: Path, log: Path, timeout: float) -> str:
    """The release the kernel logs, once the service control manager runs."""
    deadline = time.monotonic() + timeout
    while True:
        text = console.read_bytes() if console.exists() else b""
        if READY.search(text):
            banner = BANNER.search(text)
            return banner.group(1).decode() if banner else "ReactOS"
        if proc.poll() is not None:
            raise LabError(f"QEMU exited while ReactOS booted ({proc.returncode}): {log.read_text(errors='replace')[-500:]}")
        if time.monotonic() > deadline:
            tail = b"\n".join(text.splitlines()[-10:]).decode("latin-1")
            raise GuestTimeout(f"ReactOS did not start its services within {timeout:.0f} s; console tail:\n{tail}")
        time.sleep(0.5)


#: the kernel debugger's prompt, and its pager's question
KDB_PROMPT, KDB_MORE = b"kdb:> ", b"--- Press q to abort, any other key to continue ---"
#: QEMU's key names for the characters a debugger command uses besides letters and digits
_KEYS = {" ": "spc", "\n": "ret", "-": "minus", ".": "dot", "_": "shift-minus", "!": "shift-1", "*": "shift-8"}
#: how a process is listed by ``proc list``: its PID, state and file name (the current one marked *)
_PROC_LINE = re.compile(r"^\s*\*?0x([0-9a-fA-F]+)\s+(.+?)\s{2,}(\S.*?)\s*$")
#: how a module is listed by ``mod``: its base, size and name
_MOD_LINE = re.compile(r"^\s*([0-9a-fA-F]{8})\s+([0-9a-fA-F]{8})\s+(\S+)\s*$")


class KernelDebugger:
    """ReactOS's own kernel debugger (KDBG), as a person at the guest's keyboard uses it: Tab+K breaks
    in and freezes the system, commands are typed through QEMU's keyboard and answered on the serial
    line (the console log). What the OS says about itself, to check the view from outside against,
    at the one instant both read: the guest stands still until ``resume``.

        with KernelDebugger(guest.qmp_socket, guest.console_log) as kdb:
            kdb.processes()     # [(pid, file name), ...] as 'proc list' says
    """

    def __init__(self, qmp_socket: str, console_log: str, timeout: float = 60.0) -> None:
        from vmsentinel.access.qmp import Qmp

        self.console = Path(console_log)
        self.timeout = timeout
        self.qmp = Qmp(qmp_socket)

    def _type(self, text: str) -> None:
        for ch in text:
            key = _KEYS.get(ch, ch.lower() if ch.isalnum() else None)
            if key is None:
                raise LabError(f"no key for {ch!r} in a debugger command")
            self.qmp.hmp(f"sendkey {('shift-' + key) if ch.isupper() else key}")
            time.sleep(0.03)

    def _wait(self, start: int, ready: Callable[[bytes], bool]) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            said = self.console.read_bytes()[start:]
            if ready(said):
                return said
            if time.monotonic() > deadline:
                raise GuestTimeout(f"the kernel debugger did not answer within {self.timeout:.0f} s: {said[-300:]!r}")
            time.sleep(0.2)

    def break_in(self) -> None:
        start = self.console.stat().st_size
        self.qmp.hmp("sendkey tab-k")
        said = self._wait(start, lambda s: KDB_PROMPT in s or KDB_MORE in s)
        while KDB_MORE in said and KDB_PROMPT not in said:  # the backtrace it shows first: not wanted
            start += len(said)
            self._type("q")
            said = self._wait(start, lambda s: KDB_PROMPT in s or KDB_MORE in s)

    def command(self, line: str) -> str:
        """What the debugger prints for ``line``, every page of it."""
        start = self.console.stat().st_size
        self._type(line + "\n")
        out = b""
        while True:
            said = self._wait(start, lambda s: KDB_PROMPT in s or KDB_MORE in s)
            start += len(said)
            if KDB_PROMPT in said:
                out += said.split(KDB_PROMPT, 1)[0]
                break
            out += said.replace(KDB_MORE, b"")
            self._type(" ")
        text = out.decode("latin-1").replace("\r", "")
        return text.split("\n", 1)[1] if text.startswith(line) else text

    def processes(self) -> list[tuple[int, str]]:
        """(PID, file name) of every process, as ``proc list`` lists them."""
        rows = [_PROC_LINE.match(line) for line in self.command("proc list").splitlines()[1:]]
        return [(int(m.group(1), 16), m.group(3)) for m in rows if m]

    def modules(self) -> list[tuple[int, int, str]]:
        """(base, size, name) of every loaded module, as ``mod`` lists them: the kernel's, then those of
        the process the debugger stopped in (below 2 GiB)."""
        rows = [_MOD_LINE.match(line) for line in self.command("mod").splitlines()]
        return [(int(m.group(1), 16), int(m.group(2), 16), m.group(3)) for m in rows if m]

    def resume(self) -> None:
        self._type("cont\n")

    def __enter__(self) -> KernelDebugger:
        self.break_in()
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.resume()
        finally:
            self.qmp.close()
