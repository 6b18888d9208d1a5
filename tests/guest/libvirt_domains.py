"""libvirt domains for real-guest tests, booted from the lab's kernels.

Each domain is what ``lab up`` boots (the Debian kernel package, the lab's busybox initramfs with the
test programs, the same kernel command line with ``kaslr``, ``-cpu max,la57=off`` under TCG), but
defined and started through libvirt the way people run VMs: ``<domain type='qemu'>`` on the ``pc``
machine, RAM as libvirt allocates it (anonymous unless a variant says otherwise), QEMU running as
libvirt's ``libvirt-qemu`` user, its QMP monitor libvirt's. The lab's control console is the second
serial line, a Unix socket, so ``lab.console`` runs commands inside to compare with ``/proc``.

Only domains named ``vmst-<pid>-...`` are defined, and all of them are destroyed and undefined at
the end (their files and libvirt's logs of them deleted).

``/etc/libvirt/qemu.conf`` is left alone (QEMU keeps running as ``libvirt-qemu``, as on the hosts
the sentinel watches): the kernel and initramfs are copied into a folder that user can reach, since
it cannot read root's cache; libvirt gives it the files while the domain runs and takes them back
after. The CPU is ``<cpu mode='maximum'>`` with ``la57`` off, which is the lab's ``-cpu
max,la57=off``: host-model and host-passthrough need KVM, and 4-level paging is what most guests run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsentinel.access.libvirt import libvirt_target
from vmsentinel.lab import console, debian, initramfs
from vmsentinel.lab.libvirt_host import SYSTEM_URI, ensure_libvirt

PREFIX = f"vmst-{os.getpid()}-"
LIBVIRT_LOGS = Path("/var/log/libvirt/qemu")


@dataclass(frozen=True)
class Variant:
    """How a test domain differs from the plain one."""

    memory_mib: int = 512
    smp: int = 1
    #: RAM in a memfd shared with... nobody but us (libvirt's <memoryBacking> memfd source)
    memfd: bool = False
    #: MiB per NUMA node, a vCPU each
    numa: tuple[int, ...] = ()


VARIANTS = {
    "plain": Variant(),
    "memfd": Variant(memfd=True),
    "big": Variant(memory_mib=4608),
    # nodes of different sizes: without the monitor, each node's RAM is told apart by its size
    "numa": Variant(memory_mib=1280, smp=2, numa=(512, 768)),
    # nodes alike: only QEMU's monitor can say which mapping is which node
    "numa-alike": Variant(memory_mib=1024, smp=2, numa=(512, 512)),
    "events": Variant(memory_mib=256),
    # for the rootkit (changed for good: a module that hides itself cannot be unloaded)
    "rootkit": Variant(),
    # destroyed in the middle of a watch
    "leaver": Variant(memory_mib=256),
}


@dataclass
class LibvirtGuest:
    name: str
    series: str
    variant: str
    uri: str
    workdir: Path
    info: dict[str, object] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return libvirt_target(self.name, self.uri)

    def monitor_target(self) -> str:
        return libvirt_target(self.name, self.uri, monitor=True)

    @property
    def ctl_socket(self) -> Path:
        return self.workdir / "ctl.sock"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def run(self, script: str, timeout: float = 120.0) -> console.ExecResult:
        return console.run_in_guest(self.ctl_socket, script, self.workdir / "exec.lock", timeout)

    def sh(self, script: str) -> str:
        """Run a script in the guest over its control console; fail the test on a non-zero status."""
        result = self.run(script)
        if result.status != 0:
            raise AssertionError(f"{script!r} exited {result.status} in {self.name}: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")


def domain_xml(name: str, workdir: Path, cmdline: str, variant: Variant) -> str:
    """The domain: TCG, the pc machine, direct kernel boot, a file console on ttyS0 and the lab's
    control console on ttyS1 (a socket libvirt creates), a virtio NIC on user networking."""
    numa = "".join(f"<cell id='{i}' cpus='{i}' memory='{mib}' unit='MiB'/>" for i, mib in enumerate(variant.numa))
    backing = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>" if variant.memfd else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{variant.memory_mib}</memory>
  <vcpu>{variant.smp}</vcpu>
  {backing}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{workdir / "vmlinuz"}</kernel>
    <initrd>{workdir / "initrd.img"}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='maximum' check='none'>
    <feature policy='disable' name='la57'/>
    {f"<numa>{numa}</numa>" if numa else ""}
  </cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='{workdir / "console.log"}'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{workdir / "ctl.sock"}'/><target port='1'/></serial>
    <interface type='user'><model type='virtio'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _binding() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


class LibvirtDomainPool:
    """Test domains by (kernel series, variant), booted on first use; one series at a time (the
    machine has two cores): asking for another series stops the domains of the previous one."""

    def __init__(self, root: Path, programs: Path, uri: str = SYSTEM_URI) -> None:
        ensure_libvirt(uri)
        self.root = root
        self.programs = programs
        self.uri = uri
        self.root.chmod(0o755)  # libvirt-qemu reaches the kernel, the initramfs and the console through it
        self.conn = _binding().open(uri)
        self.guests: dict[tuple[str, str], LibvirtGuest] = {}
        self.boot_seconds: dict[str, float] = {}

    def get(self, series: str, variant: str = "plain", boot: bool = True) -> LibvirtGuest:
        key = (series, variant)
        if key in self.guests:
            return self.guests[key]
        for other in [k for k in self.guests if k[0] != series]:
            self.remove(self.guests.pop(other))
        guest = self.define(series, variant)
        self.guests[key] = guest
        if boot:
            self.start(guest)
        return guest

    def define(self, series: str, variant: str) -> LibvirtGuest:
        """Define (not start) a domain: its files in a folder of its own."""
        name = f"{PREFIX}{series.replace('.', '')}-{variant}"
        package = debian.resolve_kernel_package(series)
        kernel = debian.fetch_kernel(package)
        base = initramfs.base_archive(kernel, debian.fetch_busybox())
        workdir = self.root / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(mode=0o755)
        shutil.copyfile(kernel.vmlinuz, workdir / "vmlinuz")
        extra = initramfs.extra_archive([(self.programs, "/root/programs")])
        (workdir / "initrd.img").write_bytes(base.read_bytes() + extra)
        for path in (workdir / "vmlinuz", workdir / "initrd.img"):
            path.chmod(0o644)
        cmdline = f"console=ttyS0 panic=-1 vmsentinel.name={name} kaslr"
        self.conn.defineXML(domain_xml(name, workdir, cmdline, VARIANTS[variant]))
        return LibvirtGuest(
            name, series, variant, self.uri, workdir, {"kernel_package": package, "kernel_release": kernel.release}
        )

    def start(self, guest: LibvirtGuest, timeout: float = 180.0) -> None:
        """Start the domain paused, attach to its control console, let it run, wait for the agent."""
        lv = _binding()
        dom = self.conn.lookupByName(guest.name)
        started = time.monotonic()
        dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED)
        sock = console.connect(guest.ctl_socket)
        try:
            dom.resume()
            release = console.wait_ready(sock, timeout)
        except BaseException:
            tail = guest.console_log.read_text(errors="replace").splitlines()[-15:] if guest.console_log.exists() else []
            print(f"{guest.name} did not come up; console tail:\n" + "\n".join(tail))
            raise
        finally:
            sock.close()
        assert release == guest.info["kernel_release"], (release, guest.info)
        self.boot_seconds[guest.name] = time.monotonic() - started

    def domain(self, guest: LibvirtGuest) -> Any:
        return self.conn.lookupByName(guest.name)

    def remove(self, guest: LibvirtGuest) -> None:
        lv = _binding()
        try:
            dom = self.conn.lookupByName(guest.name)
        except lv.libvirtError:
            dom = None
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        shutil.rmtree(guest.workdir, ignore_errors=True)

    def close(self) -> None:
        """Destroy and undefine every domain this test process defined (by its name prefix)."""
        lv = _binding()
        for guest in list(self.guests.values()):
            self.remove(guest)
        self.guests.clear()
        for dom in self.conn.listAllDomains(0):
            if dom.name().startswith(PREFIX):
                if dom.isActive():
                    dom.destroy()
                with contextlib.suppress(lv.libvirtError):  # transient: gone with the destroy
                    dom.undefine()
        self.conn.close()
        shutil.rmtree(self.root, ignore_errors=True)
        for log in LIBVIRT_LOGS.glob(f"{PREFIX}*.log"):  # libvirt keeps a domain's log after undefine
            log.unlink(missing_ok=True)


def make_pool(programs: Path) -> LibvirtDomainPool:
    root = Path(tempfile.mkdtemp(prefix="vmst-libvirt-"))
    return LibvirtDomainPool(root, programs)
