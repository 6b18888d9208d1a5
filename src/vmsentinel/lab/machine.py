"""Disposable lab guests: boot, list, run commands in, tear down.

A lab guest is a Debian kernel with a busybox initramfs under
``qemu-system-x86_64`` (TCG by default), its RAM a shared file under
``/dev/shm`` that the sentinel maps from outside, a QMP socket, and a control
console on the second serial line. Its state lives in
``state_dir()/labs/NAME/lab.json`` so every process sees the same labs::

    lab = up(LabSpec(name="web1", kernel="6.12"))
    print(run(lab.name, "uname -r").stdout)
    down(lab.name)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmsentinel.errors import GuestTimeout, LabError, LabExists, LabNotFound, MissingTool
from vmsentinel.lab import console, debian, initramfs
from vmsentinel.lab.accel import choose_accel
from vmsentinel.paths import state_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class LabSpec:
    """What the user asked for in ``lab up``."""

    name: str
    kernel: str | None = None
    memory_mib: int = 512
    smp: int = 1
    kaslr: bool = True
    paging_levels: int = 4
    accel: str = "tcg"
    machine: str = "q35"
    add: tuple[tuple[str, str], ...] = ()
    modules: tuple[str, ...] = initramfs.DEFAULT_MODULES
    timeout: float = 180.0
    #: the guest OS: a Debian kernel (linux) or the ReactOS live CD (reactos)
    os: str = "linux"


@dataclass
class LabGuest:
    """A booted lab guest, as stored in ``lab.json``."""

    name: str
    pid: int
    ram_path: str
    qmp_socket: str
    ctl_socket: str
    console_log: str
    kernel_release: str
    kernel_package: str
    vmlinuz: str
    memory_mib: int
    smp: int
    kaslr: bool
    paging_levels: int
    machine: str
    started: float = field(default_factory=time.time)
    os: str = "linux"

    @property
    def target(self) -> str:
        return f"lab:{self.name}"

    @property
    def initrd(self) -> Path:
        """The initramfs the guest booted (what an allowlist for it is built from)."""
        return Path(self.console_log).parent / "initrd.img"

    @property
    def alive(self) -> bool:
        return console.pid_alive(self.pid)

    def public(self) -> dict[str, object]:
        """The keys ``lab up --json`` promises, plus the rest."""
        data: dict[str, object] = {
            "name": self.name,
            "target": self.target,
            "ram_path": self.ram_path,
            "qmp_socket": self.qmp_socket,
            "kernel_release": self.kernel_release,
            "pid": self.pid,
        }
        data.update({k: v for k, v in asdict(self).items() if k not in data})
        data["status"] = "running" if self.alive else "dead"
        return data


def _lab_dir(name: str) -> Path:
    return state_dir() / "labs" / name


def load(name: str) -> LabGuest:
    path = _lab_dir(name) / "lab.json"
    if not path.exists():
        known = ", ".join(g.name for g in list_labs()) or "none"
        raise LabNotFound(f"no lab guest named {name!r} (running: {known})")
    return LabGuest(**json.loads(path.read_text()))


def list_labs() -> list[LabGuest]:
    root = state_dir() / "labs"
    guests = []
    for path in sorted(root.glob("*/lab.json")) if root.exists() else []:
        try:
            guests.append(LabGuest(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue
    return guests


def _qemu_binary() -> str:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        raise MissingTool("qemu-system-x86_64 is not installed: apt-get install --no-install-recommends qemu-system-x86")
    return binary


def _parse_add(add: tuple[tuple[str, str], ...]) -> list[tuple[Path, str]]:
    files = []
    for host, guest in add:
        path = Path(host)
        if not path.exists():
            raise LabError(f"--add {host}: no such file or folder")
        files.append((path, guest or f"/root/{path.name}"))
    return files


def parse_add_option(value: str) -> tuple[str, str]:
    """``HOST_PATH[:GUEST_PATH]`` → (host, guest)."""
    host, sep, guest = value.partition(":")
    return host, guest if sep else ""


def qemu_command(spec: LabSpec, kernel: debian.KernelBuild, initrd: Path, paths: dict[str, Path]) -> list[str]:
    """The QEMU command line for a lab guest."""
    # KVM runs the host's CPU ('max' asks KVM for MSRs it may refuse); TCG emulates every feature it has
    model = "host,arch-capabilities=off" if spec.accel == "kvm" else "max"
    cpu = model if spec.paging_levels == 5 else f"{model},la57=off"
    append = f"console=ttyS0 panic=-1 vmsentinel.name={spec.name} {'kaslr' if spec.kaslr else 'nokaslr'}"
    return [
        _qemu_binary(),
        "-name",
        f"vmsentinel-{spec.name}",
        "-machine",
        f"{spec.machine},memory-backend=ram0",
        "-accel",
        spec.accel,
        "-cpu",
        cpu,
        "-smp",
        str(spec.smp),
        "-m",
        f"{spec.memory_mib}M",
        "-object",
        f"memory-backend-file,id=ram0,size={spec.memory_mib}M,mem-path={paths['ram']},share=on",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-display",
        "none",
        "-no-reboot",
        "-nodefaults",
        "-chardev",
        f"file,id=con0,path={paths['console']}",
        "-serial",
        "chardev:con0",
        "-chardev",
        f"socket,id=ctl0,path={paths['ctl']},server=on,wait=off",
        "-serial",
        "chardev:ctl0",
        "-qmp",
        f"unix:{paths['qmp']},server=on,wait=off",
        "-netdev",
        "user,id=net0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=net0",
    ]


def up(spec: LabSpec, progress: Callable[[str], None] = lambda _msg: None) -> LabGuest:
    """Boot a lab guest and return once its agent answers; ``progress`` hears each step."""
    if not _NAME.match(spec.name):
        raise LabError(f"lab name {spec.name!r}: use 1-32 letters, digits, '-' or '_'")
    if spec.os not in ("linux", "reactos"):
        raise LabError(f"--os {spec.os!r}: linux or reactos")
    if spec.paging_levels not in (4, 5) and spec.os == "linux":
        raise LabError("--paging takes 4 or 5")
    choose_accel(spec.accel)  # KVM only where /dev/kvm runs a guest: a clear refusal beats a hung boot
    labdir = _lab_dir(spec.name)
    if (labdir / "lab.json").exists():
        old = load(spec.name)
        if old.alive:
            raise LabExists(
                f"lab guest {spec.name!r} is already running (pid {old.pid}); 'vmsentinel lab down {spec.name}' first"
            )
        _cleanup(old)
    if spec.os == "reactos":
        return _up_reactos(spec, labdir, progress)
    _qemu_binary()
    progress(f"resolving kernel {spec.kernel or 'default'}")
    package = debian.resolve_kernel_package(spec.kernel)
    progress(f"fetching {package} (cached after the first time)")
    kernel = debian.fetch_kernel(package)
    busybox = debian.fetch_busybox()
    progress("building the initramfs")
    try:
        base = initramfs.base_archive(kernel, busybox, spec.modules)
    except KeyError as exc:
        raise LabError(f"--modules: {kernel.release} has no module {exc.args[0]!r}") from None
    labdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "ram": SHM_DIR / f"vmsentinel-{spec.name}.ram",
        "qmp": labdir / "qmp.sock",
        "ctl": labdir / "ctl.sock",
        "console": labdir / "console.log",
        "initrd": labdir / "initrd.img",
        "log": labdir / "qemu.log",
    }
    for key in ("qmp", "ctl", "console"):
        paths[key].unlink(missing_ok=True)
    paths["initrd"].write_bytes(base.read_bytes() + initramfs.extra_archive(_parse_add(spec.add)))
    cmd = qemu_command(spec, kernel, paths["initrd"], paths)
    progress(f"booting {kernel.release} ({spec.accel}, {spec.paging_levels}-level paging, KASLR {'on' if spec.kaslr else 'off'})")
    proc = _start(cmd, paths["log"])
    guest = LabGuest(
        spec.name,
        proc.pid,
        str(paths["ram"]),
        str(paths["qmp"]),
        str(paths["ctl"]),
        str(paths["console"]),
        kernel.release,
        package,
        str(kernel.vmlinuz),
        spec.memory_mib,
        spec.smp,
        spec.kaslr,
        spec.paging_levels,
        spec.machine,
    )
    (labdir / "lab.json").write_text(json.dumps(asdict(guest), indent=2))
    try:
        _wait_for_agent(guest, proc, paths, spec.timeout)
    except BaseException:
        _kill(proc.pid)
        _cleanup(guest, keep_logs=True)
        raise
    return guest


def _up_reactos(spec: LabSpec, labdir: Path, progress: Callable[[str], None]) -> LabGuest:
    """The ReactOS live CD under qemu-system-i386, ready when its services run (no command console)."""
    from vmsentinel.lab import reactos

    reactos.qemu_i386()
    iso = reactos.livecd(progress)
    labdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "ram": SHM_DIR / f"vmsentinel-{spec.name}.ram",
        "qmp": labdir / "qmp.sock",
        "console": labdir / "console.log",
        "log": labdir / "qemu.log",
    }
    for key in ("qmp", "console"):
        paths[key].unlink(missing_ok=True)
    cmd = reactos.qemu_command(spec.name, spec.memory_mib, spec.smp, spec.accel, iso, paths)
    progress(f"booting the ReactOS live CD ({spec.accel}, i386, {spec.memory_mib} MiB)")
    started = time.monotonic()
    proc = _start(cmd, paths["log"])
    guest = LabGuest(
        name=spec.name,
        pid=proc.pid,
        ram_path=str(paths["ram"]),
        qmp_socket=str(paths["qmp"]),
        ctl_socket="",
        console_log=str(paths["console"]),
        kernel_release="ReactOS",
        kernel_package="reactos-livecd",
        vmlinuz=str(iso),
        memory_mib=spec.memory_mib,
        smp=spec.smp,
        kaslr=False,
        paging_levels=2,
        machine="pc",
        os="reactos",
    )
    (labdir / "lab.json").write_text(json.dumps(asdict(guest), indent=2))
    try:
        guest.kernel_release = reactos.wait_ready(proc, paths["console"], paths["log"], spec.timeout)
    except BaseException:
        _kill(proc.pid)
        _cleanup(guest, keep_logs=True)
        raise
    progress(f"{guest.kernel_release} up in {time.monotonic() - started:.0f} s")
    (labdir / "lab.json").write_text(json.dumps(asdict(guest), indent=2))
    return guest


def _start(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """QEMU in a session of its own (a Ctrl-C of the caller does not reach it), its output in ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_agent(guest: LabGuest, proc: subprocess.Popen[bytes], paths: dict[str, Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not paths["ctl"].exists():
        if proc.poll() is not None:
            raise LabError(f"QEMU exited at once ({proc.returncode}): {_tail(paths['log'])}")
        if time.monotonic() > deadline:
            raise GuestTimeout(f"QEMU made no control socket within {timeout:.0f} s: {_tail(paths['log'])}")
        time.sleep(0.02)
    sock = console.connect(paths["ctl"])
    try:
        release = console.wait_ready(sock, max(1.0, deadline - time.monotonic()))
    except OSError as exc:  # QEMU closed the console: it died while booting
        proc.wait(timeout=5)
        raise LabError(f"QEMU exited while the guest booted ({exc.strerror}): {_tail(paths['log'])}") from None
    except GuestTimeout:
        state = "QEMU exited" if proc.poll() is not None else "still no answer"
        raise GuestTimeout(
            f"lab guest {guest.name!r} did not come up within {timeout:.0f} s ({state}); console tail:\n"
            f"{_tail(paths['console'], 15)}"
        ) from None
    finally:
        sock.close()
    if release != guest.kernel_release:
        raise LabError(f"guest reports kernel {release}, expected {guest.kernel_release}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def _kill(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while console.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if console.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _cleanup(guest: LabGuest, keep_logs: bool = False) -> None:
    Path(guest.ram_path).unlink(missing_ok=True)
    labdir = _lab_dir(guest.name)
    if keep_logs:
        (labdir / "lab.json").unlink(missing_ok=True)
    else:
        shutil.rmtree(labdir, ignore_errors=True)


def down(name: str) -> LabGuest:
    """Stop a lab guest (or clean up after one whose QEMU died)."""
    guest = load(name)
    if guest.alive:
        _kill(guest.pid)
    _cleanup(guest)
    return guest


def run(name: str, script: str, timeout: float = 120.0) -> console.ExecResult:
    """Run a shell script as root in the guest over the control console."""
    guest = load(name)
    if not guest.alive:
        raise LabError(f"lab guest {name!r} is not running (QEMU pid {guest.pid} is gone); 'lab down {name}' cleans up")
    if guest.os != "linux":
        raise LabError(f"lab guest {name!r} runs {guest.kernel_release}, which has no command console (only Linux lab guests do)")
    return console.run_in_guest(Path(guest.ctl_socket), script, _lab_dir(name) / "exec.lock", timeout)
