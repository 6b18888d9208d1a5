"""Build kernel modules for a lab kernel against Debian's headers packages.

Debian splits the headers of one build into ``linux-headers-RELEASE`` (config,
Module.symvers), ``linux-headers-…-common`` (the headers) and ``linux-kbuild-…``
(the build tools); all three are fetched with ``apt-get download``, unpacked
under one cache folder, and the absolute ``/usr/src`` paths Debian writes into
the Makefile are pointed there. The host's gcc builds the module (Debian's
kernels are built with gcc-12, which Debian 12 ships)::

    ko = build_module("linux-image-6.1.0-56-amd64", Path("tests/guest/modules/vmsrootkit"), Path("/tmp/out"))
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from vmsentinel.errors import LabError, MissingTool
from vmsentinel.lab.console import ExecResult
from vmsentinel.lab.debian import _depends_of, download_deb
from vmsentinel.paths import cache_dir


def headers_package(image_package: str) -> str:
    if not image_package.startswith("linux-image-"):
        raise LabError(f"{image_package} is not a linux-image package")
    return "linux-headers-" + image_package.removeprefix("linux-image-").removesuffix("-unsigned")


def fetch_headers(image_package: str) -> Path:
    """The build directory (``…/usr/src/linux-headers-RELEASE``) for this kernel, cached."""
    pkg = headers_package(image_package)
    root = cache_dir() / "headers" / pkg
    build_dir = root / "usr" / "src" / pkg
    if (build_dir / "Makefile").exists():
        return build_dir
    packages = [pkg] + [d for d in _depends_of(pkg) if d.startswith(("linux-headers-", "linux-kbuild-"))]
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in packages:
        proc = subprocess.run(["dpkg-deb", "-x", str(download_deb(p)), str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"dpkg-deb -x {p} failed: {proc.stderr.strip()}")
    makefile = tmp / "usr" / "src" / pkg / "Makefile"
    if not makefile.exists():
        raise LabError(f"{pkg} has no Makefile; is it a kernel headers package?")
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return build_dir


def build_module(image_package: str, source: Path, out_dir: Path) -> Path:
    """Compile the module in ``source`` (a folder with its .c files and a Kbuild/Makefile) for this kernel."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise MissingTool("building modules needs make and gcc: apt-get install make gcc")
    build_dir = fetch_headers(image_package)
    work = out_dir / f"build-{image_package}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    # module BTF needs pahole and a vmlinux with debug info; test modules do without it
    proc = subprocess.run(
        ["make", "-C", str(build_dir), f"M={work}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"], capture_output=True, text=True
    )
    modules = sorted(work.glob("*.ko"))
    if proc.returncode != 0 or not modules:
        raise LabError(f"building {source.name} for {image_package} failed:\n{(proc.stdout + proc.stderr)[-1500:]}")
    return modules[0]


ROOTKIT_SYMBOL_HELPER = 'sym() { grep " $1$" /proc/kallsyms | cut -d" " -f1; }\n'


def insert_module(guest_name: str, ko: Path, params: str = "", run_in_guest: Callable[[str], ExecResult] | None = None) -> str:
    """Copy a module into a lab guest over its console and ``insmod`` it; ``params`` may use
    ``$(sym NAME)`` for a kernel symbol's address from the guest's ``/proc/kallsyms``. Returns insmod's
    stderr (empty on success). ``run_in_guest`` reaches a guest that is no lab guest (a libvirt domain
    booted with the lab's console), else the lab guest ``guest_name``."""
    import base64

    from vmsentinel.lab.machine import run as run_in_lab

    def run(_name: str, script: str) -> ExecResult:
        return run_in_guest(script) if run_in_guest is not None else run_in_lab(guest_name, script)

    data = base64.b64encode(ko.read_bytes()).decode()
    copied = run(guest_name, f"echo '{data}' | base64 -d > /tmp/{ko.name}")
    if copied.status != 0:
        raise LabError(f"copying {ko.name} into {guest_name} failed: {copied.stderr.decode(errors='replace')}")
    loaded = run(guest_name, f"{ROOTKIT_SYMBOL_HELPER}insmod /tmp/{ko.name} {params}")
    if loaded.status != 0:
        raise LabError(f"insmod {ko.name} in {guest_name} failed: {loaded.stderr.decode(errors='replace').strip()}")
    return loaded.stderr.decode(errors="replace")
