"""libvirt's daemons on a host without an init system to start them (containers, CI), for the tests
and the lab: ``virtlogd -d`` (libvirt's QEMU writes its logs through it), then ``libvirtd -d``, and
wait until the connection answers. A host that runs libvirt under systemd has both already; then
this does nothing. The sentinel itself never starts a hypervisor: it watches what the host runs::

    ensure_libvirt()                      # '9.0.0' once qemu:///system answers
    python -m vmsentinel.lab.libvirt_host  # the same from a shell

Without udev, ``/dev/kvm`` also stays as the kernel made it (root only), while libvirt checks KVM
as the user its QEMU runs as: it then finds KVM "enabled when probing, but not available now" on
every look at QEMU's capabilities and probes QEMU again, a dozen times (about 50 s under TCG) for
each domain defined or started. :func:`ensure_libvirt` gives the node what Debian's udev rule
gives it (group ``kvm``, mode 0660; ``libvirt-qemu`` is in that group); lab domains still use TCG.

The lab leaves ``/etc/libvirt/qemu.conf`` as it is: libvirt's QEMU keeps running as
``libvirt-qemu``, as on the hosts the sentinel watches, so lab files it must open are made readable
to that user instead (see ``tests/guest/libvirt_domains.py``).
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vmsentinel.errors import GuestTimeout, LabError, MissingTool
from vmsentinel.lab.console import pid_alive

SYSTEM_URI = "qemu:///system"
#: each daemon and the pid file it writes when run as root with -d
DAEMONS = (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid")))
KVM_NODE = Path("/dev/kvm")
INSTALL = "apt-get install --no-install-recommends libvirt-daemon-system libvirt-clients"


def _which(tool: str) -> str | None:
    """A tool on PATH or in the sbin folders (a test's PATH may lack them)."""
    return shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def libvirt_version(uri: str = SYSTEM_URI, timeout: float = 10.0) -> str | None:
    """The daemon's version if ``uri`` answers now, else None."""
    virsh = _which("virsh")
    if virsh is None:
        raise MissingTool(f"virsh is not installed: {INSTALL}")
    try:
        proc = subprocess.run([virsh, "-c", uri, "version", "--daemon"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    daemon = [line for line in proc.stdout.splitlines() if line.startswith("Running against daemon:")]
    return daemon[0].rsplit(" ", 1)[-1] if daemon else "unknown"


def _running(pid_file: Path) -> bool:
    try:
        return pid_alive(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def kvm_node_as_udev_makes_it(node: Path) -> bool:
    """Give ``/dev/kvm`` group ``kvm`` and mode 0660 when it is root's alone (no udev ran); True if changed."""
    try:
        st = node.stat()
        gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return False  # no KVM device, or no kvm group (libvirt-daemon-system makes it)
    if st.st_gid == gid and st.st_mode & 0o060 == 0o060:
        return False
    os.chown(node, -1, gid)
    node.chmod((st.st_mode & 0o7777) | 0o060)
    return True


def root_folder_open_to_all(root: Path = Path("/")) -> bool:
    """Let every user enter the root folder when it is its owner's alone; True if changed.

    A real host's ``/`` is 0755. A chroot made with ``mktemp -d`` (a fresh system for tests) has a
    0700 root, and then QEMU, which libvirt runs as ``libvirt-qemu``, cannot load its own modules
    ("accel-tcg-x86_64.so: Permission denied") and libvirt finds no emulator at all."""
    mode = root.stat().st_mode & 0o7777
    if mode & 0o005 == 0o005:
        return False
    root.chmod(mode | 0o055)
    return True


QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def root_is_no_mount_point(mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Is this process's ``/`` a plain folder, not a mount point (a chroot, such as a fresh system
    for tests)? Then no line of its mountinfo has ``/`` as its mount point."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    return bool(lines) and not any(len(fields) > 4 and fields[4] == "/" for fields in map(str.split, lines))


def no_qemu_mount_namespace_in_chroot(conf: Path = QEMU_CONF) -> bool:
    """In a chroot, turn off the mount namespace libvirt gives each QEMU; True if changed.

    There ``/`` is no mount point, and every domain fails to start with "Failed disable mount
    propagation out of the root filesystem: Invalid argument". Only there: a host's qemu.conf is
    left as it is, and so is one that says something about namespaces already."""
    if not root_is_no_mount_point() or not conf.parent.is_dir():
        return False
    text = conf.read_text() if conf.exists() else ""
    if any(line.strip().startswith("namespaces") for line in text.splitlines()):
        return False
    conf.write_text(
        text + "\n# vmsentinel.lab: in a chroot, / is no mount point for QEMU's own mount namespace\nnamespaces = []\n"
    )
    return True


def ensure_libvirt(uri: str = SYSTEM_URI, timeout: float = 30.0) -> str:
    """Start virtlogd and libvirtd unless ``uri`` answers already; return the daemon's version."""
    kvm_node_as_udev_makes_it(KVM_NODE)
    root_folder_open_to_all()
    no_qemu_mount_namespace_in_chroot()
    version = libvirt_version(uri)
    if version is not None:
        return version
    for daemon, pid_file in DAEMONS:
        binary = _which(daemon)
        if binary is None:
            raise MissingTool(f"{daemon} is not installed: {INSTALL}")
        if _running(pid_file):
            continue
        proc = subprocess.run([binary, "-d"], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise LabError(f"{daemon} -d failed ({proc.returncode}): {proc.stderr.strip()[-300:] or 'no message'}")
    deadline = time.monotonic() + timeout
    while True:
        version = libvirt_version(uri)
        if version is not None:
            return version
        if time.monotonic() > deadline:
            raise GuestTimeout(f"libvirtd started but {uri} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def main() -> int:
    try:
        print(f"libvirt {ensure_libvirt()} answers on {SYSTEM_URI}")
    except (LabError, MissingTool, GuestTimeout) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
