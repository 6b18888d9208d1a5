"""Build the lab's busybox initramfs: a gzip'd ``newc`` cpio archive.

The base archive (busybox, init, the control agent, a set of kernel modules) is
cached per kernel build; files given with ``--add`` go into a second archive
that is appended, which the kernel unpacks over the first. That keeps
``lab up`` with new test files cheap.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vmsentinel.lab.debian import KernelBuild, read_module
from vmsentinel.paths import cache_dir
from vmsentinel.trust.kernel_modules import modinfo_field

#: Modules loaded at boot by default: the NIC and its PCI transport (so the network can be
#: cut from outside) and a few small ones that give the module views something real to see.
DEFAULT_MODULES = ("virtio_pci", "virtio_net", "dummy", "tun", "veth")


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink in the archive."""

    path: str
    mode: int
    data: bytes = b""


class CpioWriter:
    """Writes the SVR4 ``newc`` format the kernel unpacks."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _header(self, name: str, mode: int, size: int, nlink: int = 1) -> None:
        namez = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(namez), 0]
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + namez)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def add(self, entry: Entry) -> None:
        path = entry.path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.mkdir("/".join(parts[:i]))
        if stat.S_ISDIR(entry.mode):
            self.mkdir(path, entry.mode)
            return
        self._header(path, entry.mode, len(entry.data))
        self._buf.write(entry.data)
        self._pad()

    def mkdir(self, path: str, mode: int = stat.S_IFDIR | 0o755) -> None:
        if path in self._dirs:
            return
        self._dirs.add(path)
        self._header(path, mode, 0, nlink=2)

    def finish(self) -> bytes:
        self._header("TRAILER!!!", 0, 0)
        return self._buf.getvalue()


def _resource(name: str) -> bytes:
    return resources.files("vmsentinel.lab").joinpath("guest", name).read_bytes()


def _modinfo_depends(data: bytes) -> list[str]:
    """The ``depends=`` entry of a module's ``.modinfo`` strings, as a list of module names."""
    value = modinfo_field(data, "depends")
    return [d for d in value.split(",") if d] if value else []


def _module_closure(kernel: KernelBuild, names: Iterable[str]) -> list[str]:
    """Module files (relative to the modules dir) for ``names`` and their deps, deps first.

    Debian's package carries no ``modules.dep`` (depmod makes it at install), so
    dependencies come from each module's own ``.modinfo``.
    """
    by_name: dict[str, str] = {}
    for path in kernel.modules_dir.rglob("*.ko*"):
        by_name[path.name.split(".ko")[0].replace("-", "_")] = path.relative_to(kernel.modules_dir).as_posix()
    builtin_file = kernel.modules_dir / "modules.builtin"
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (builtin_file.read_text().split() if builtin_file.exists() else [])
    }
    # a module built into this kernel needs no loading (virtio_pci is =m on 6.1, =y on 6.12)
    wanted = list(by_name) if "all" in names else [n for n in names if n.replace("-", "_") not in builtin]
    order: list[str] = []

    def visit(name: str, depth: int) -> None:
        mod = by_name.get(name.replace("-", "_"))
        if mod is None:
            raise KeyError(name)
        if mod in order or depth > 64:
            return
        for dep in _modinfo_depends(read_module(kernel.modules_dir / mod)):
            visit(dep, depth + 1)
        order.append(mod)

    for name in wanted:
        visit(name, 0)
    return order


def base_archive(kernel: KernelBuild, busybox: Path, modules: Iterable[str] = DEFAULT_MODULES) -> Path:
    """The cached, compressed base initramfs for this kernel build and module set."""
    modules = tuple(modules)
    key = hashlib.sha256(
        b"|".join(
            [
                kernel.package.encode(),
                busybox.read_bytes()[:4096],
                ",".join(modules).encode(),
                _resource("init"),
                _resource("agent"),
            ]
        )
    ).hexdigest()[:16]
    out = cache_dir() / "initramfs" / f"{kernel.package}-{key}.cpio.gz"
    if out.exists():
        return out
    cpio = CpioWriter()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc", "var/log"):
        cpio.mkdir(d)
    cpio.add(Entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    cpio.add(Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    cpio.add(Entry("init", stat.S_IFREG | 0o755, _resource("init")))
    cpio.add(Entry("sbin/vmsentinel-agent", stat.S_IFREG | 0o755, _resource("agent")))
    moddir = f"lib/modules/{kernel.release}"
    order = _module_closure(kernel, modules)
    for mod in order:
        cpio.add(Entry(f"{moddir}/{mod.removesuffix('.xz')}", stat.S_IFREG | 0o644, read_module(kernel.modules_dir / mod)))
    load = "\n".join(m.removesuffix(".xz") for m in order) + "\n"
    cpio.add(Entry("etc/vmsentinel/modules.load", stat.S_IFREG | 0o644, load.encode()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio.finish(), compresslevel=6))
    tmp.rename(out)
    return out


def extra_archive(files: Iterable[tuple[Path, str]]) -> bytes:
    """A compressed archive of ``--add`` files (host path, guest path), to append to the base."""
    cpio = CpioWriter()
    for host, guest in files:
        if host.is_dir():
            for sub in sorted(host.rglob("*")):
                rel = sub.relative_to(host).as_posix()
                if sub.is_file():
                    cpio.add(Entry(f"{guest}/{rel}", stat.S_IFREG | (sub.stat().st_mode & 0o777), sub.read_bytes()))
        else:
            cpio.add(Entry(guest, stat.S_IFREG | (host.stat().st_mode & 0o777), host.read_bytes()))
    return gzip.compress(cpio.finish(), compresslevel=6)
