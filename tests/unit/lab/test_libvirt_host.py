"""lab.libvirt_host with stand-ins for virsh and the daemons: nothing is started when the connection
answers; otherwise virtlogd, then libvirtd, each once, and the wait until it answers; the errors say
what to install; /dev/kvm given what udev would give it."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from vmsentinel.errors import GuestTimeout, LabError, MissingTool
from vmsentinel.lab import libvirt_host

VIRSH = """#!/bin/sh
# answers once the fake libvirtd has run
[ -f "{dir}/libvirtd.ran" ] || exit 1
echo "Compiled against library: libvirt 9.0.0"
echo "Running against daemon: 9.0.0"
"""
DAEMON = """#!/bin/sh
echo "$0 $*" >> "{dir}/started"
touch "{dir}/$(basename $0).ran"
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with fake virsh, virtlogd and libvirtd; pid files in tmp_path; no /dev/kvm to touch."""
    for name, text in (("virsh", VIRSH), ("virtlogd", DAEMON), ("libvirtd", DAEMON)):
        tool = tmp_path / name
        tool.write_text(text.format(dir=tmp_path))
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")  # ours first: the real virsh is in /usr/bin
    daemons = (("virtlogd", tmp_path / "virtlogd.pid"), ("libvirtd", tmp_path / "libvirtd.pid"))
    monkeypatch.setattr(libvirt_host, "DAEMONS", daemons)
    monkeypatch.setattr(libvirt_host, "KVM_NODE", tmp_path / "no-kvm")
    return tmp_path


def _started(host: Path) -> list[str]:
    path = host / "started"
    return [Path(line.split()[0]).name for line in path.read_text().splitlines()] if path.exists() else []


def test_nothing_is_started_when_libvirt_answers(host: Path) -> None:
    (host / "libvirtd.ran").touch()
    assert libvirt_host.ensure_libvirt() == "9.0.0"
    assert _started(host) == []


def test_virtlogd_then_libvirtd_then_the_wait(host: Path) -> None:
    assert libvirt_host.libvirt_version() is None
    assert libvirt_host.ensure_libvirt(timeout=5) == "9.0.0"
    assert _started(host) == ["virtlogd", "libvirtd"]


def test_a_running_daemon_is_not_started_again(host: Path) -> None:
    (host / "virtlogd.pid").write_text(f"{os.getpid()}\n")  # alive: this very process
    libvirt_host.ensure_libvirt(timeout=5)
    assert _started(host) == ["libvirtd"]


def test_a_daemon_that_never_answers_is_a_timeout(host: Path) -> None:
    (host / "libvirtd").write_text("#!/bin/sh\nexit 0\n")  # starts, but the connection never answers
    with pytest.raises(GuestTimeout, match=r"qemu:///system did not answer within 1 s"):
        libvirt_host.ensure_libvirt(timeout=1)


def test_errors_say_what_to_install(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (host / "libvirtd").write_text("#!/bin/sh\necho 'cannot bind' >&2; exit 6\n")
    with pytest.raises(LabError, match=r"libvirtd -d failed \(6\): cannot bind"):
        libvirt_host.ensure_libvirt(timeout=1)
    (host / "libvirtd").unlink()
    monkeypatch.setattr(libvirt_host, "_which", lambda tool: str(host / tool) if (host / tool).exists() else None)
    with pytest.raises(MissingTool, match=r"libvirtd is not installed: apt-get install .*libvirt-daemon-system"):
        libvirt_host.ensure_libvirt(timeout=1)
    (host / "virsh").unlink()
    with pytest.raises(MissingTool, match="virsh is not installed"):
        libvirt_host.libvirt_version()


def test_the_kvm_node_gets_what_udev_gives_it(tmp_path: Path) -> None:
    try:
        kvm = grp.getgrnam("kvm").gr_gid
    except KeyError:
        pytest.skip("no kvm group on this host")
    node = tmp_path / "kvm"
    node.touch(mode=0o600)
    assert libvirt_host.kvm_node_as_udev_makes_it(node)
    st = node.stat()
    assert st.st_gid == kvm and stat.S_IMODE(st.st_mode) == 0o660
    assert not libvirt_host.kvm_node_as_udev_makes_it(node)  # once
    assert not libvirt_host.kvm_node_as_udev_makes_it(tmp_path / "absent")


def test_a_root_folder_only_its_owner_may_enter_is_opened_to_all(tmp_path: Path) -> None:
    """As in a chroot made with mktemp -d: libvirt's QEMU, run as libvirt-qemu, could not load its modules."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    root.chmod(0o700)
    assert libvirt_host.root_folder_open_to_all(root) and root.stat().st_mode & 0o777 == 0o755
    assert not libvirt_host.root_folder_open_to_all(root)  # a real host's / is left as it is


def test_qemu_mount_namespaces_are_turned_off_in_a_chroot_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "libvirt-qemu"\n')
    monkeypatch.setattr(libvirt_host, "root_is_no_mount_point", lambda: False)
    assert not libvirt_host.no_qemu_mount_namespace_in_chroot(conf) and "namespaces" not in conf.read_text()
    monkeypatch.setattr(libvirt_host, "root_is_no_mount_point", lambda: True)
    assert libvirt_host.no_qemu_mount_namespace_in_chroot(conf)
    assert conf.read_text().startswith('user = "libvirt-qemu"\n') and conf.read_text().rstrip().endswith("namespaces = []")
    assert not libvirt_host.no_qemu_mount_namespace_in_chroot(conf)  # once


def test_a_root_that_is_no_mount_point_is_told_from_mountinfo(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.write_text("22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n26 22 0:5 / /proc rw - proc proc rw\n")
    chroot = tmp_path / "chroot"
    chroot.write_text("26 22 0:5 / /proc rw - proc proc rw\n27 22 0:6 / /dev rw - devtmpfs udev rw\n")
    assert not libvirt_host.root_is_no_mount_point(host) and libvirt_host.root_is_no_mount_point(chroot)
