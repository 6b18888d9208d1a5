"""libvirt domains read from outside (6.1 and 6.12, KASLR on), booted from the lab's kernels
(tests/guest/libvirt_domains.py) and reached as ``libvirt:NAME`` the way people run them: RAM as
libvirt allocates it (anonymous by default, read with process_vm_readv; a memfd, mapped zero-copy),
QEMU as libvirt-qemu, no monitor unless the TARGET allows it. What we see equals /proc inside;
RAM above 4 GiB and in a second NUMA node is where the guest's own pagemap says; responses go
through libvirt; ``libvirt:`` is every running domain, and their starts and stops arrive as events.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, kill_matching, vmsentinel
from tests.guest.helpers import WatchRun
from tests.guest.libvirt_domains import LibvirtDomainPool, LibvirtGuest
from tests.guest.test_qemu_pid_live import SEED, check_pages, physpages
from tests.guest.test_views_live import (
    check_modules_equal_proc_modules,
    check_processes_equal_the_inside_view,
    check_syscalls_and_idt_resolve_to_the_kernels_own_symbols,
    start_crowd,
    stop_crowd,
)
from vmsentinel.access import expand_targets, open_connector
from vmsentinel.access.libvirt import LibvirtControl, LibvirtDomains
from vmsentinel.detect.finding import PRIV_ESC, Finding, Severity
from vmsentinel.errors import LayoutUnknown, TargetError
from vmsentinel.memory import open_image
from vmsentinel.os.linux.guest import LinuxGuest
from vmsentinel.respond.actions import respond

pytestmark = pytest.mark.guest
GiB = 1 << 30


@pytest.fixture(scope="session", params=KERNEL_SERIES)
def series(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def domain(libvirt_pool: LibvirtDomainPool, series: str) -> LibvirtGuest:
    """The plain domain: default anonymous RAM, one vCPU, no monitor."""
    return libvirt_pool.get(series, "plain")


def _libvirt_log(guest: LibvirtGuest) -> str:
    return Path(f"/var/log/libvirt/qemu/{guest.name}.log").read_text(errors="replace")


def test_processes_equal_the_inside_view(domain: LibvirtGuest) -> None:
    with open_connector(domain.target) as target:
        assert target.memory.kind == "process_vm_readv" and target.layout_source.startswith("command line")
        assert isinstance(target.control, LibvirtControl) and target.live
        assert target.registers() is None  # no monitor: the kernel and its page tables come from memory
    start_crowd(domain)
    try:
        check_processes_equal_the_inside_view(domain)
    finally:
        stop_crowd(domain)
    assert "tainted" not in _libvirt_log(domain)  # nothing went through QEMU's monitor


def test_modules_equal_proc_modules(domain: LibvirtGuest) -> None:
    check_modules_equal_proc_modules(domain)


def test_syscalls_and_idt_resolve_to_the_kernels_own_symbols(domain: LibvirtGuest) -> None:
    check_syscalls_and_idt_resolve_to_the_kernels_own_symbols(domain)  # the IDT from idt_table: no registers


def test_check_finds_what_proc_shows(domain: LibvirtGuest) -> None:
    clean = vmsentinel("check", domain.target, "--json", check=False)
    assert clean.returncode == 0 and json.loads(clean.stdout) == [], clean.stderr
    domain.sh("cp /bin/busybox /dev/shm/sleep; /dev/shm/sleep 100003 >/dev/null 2>&1 &")
    try:
        script = 'sleep 0.3; for p in $(pidof sleep); do [ "$(readlink /proc/$p/exe)" = /dev/shm/sleep ] && echo $p; done; true'
        pid = int(domain.sh(script).split()[0])
        found = vmsentinel("check", domain.target, "--json", check=False)
        assert found.returncode == 1, found.stderr
        suspicious = [f for f in json.loads(found.stdout) if f["detector"] == "injected_code"]
        assert [(f["evidence"]["pid"], f["evidence"]["exe"]) for f in suspicious] == [(pid, "/dev/shm/sleep")]
        assert all(f["confirmed"] for f in suspicious)  # a live target: confirmed by a second read
    finally:
        kill_matching(domain, "/dev/shm/sleep 100003")
        domain.sh("rm -f /dev/shm/sleep")


def _pages_read_back(guest: LibvirtGuest, mib: int, seed: int, cpu: int | None = None, target: str = "") -> list[int]:
    """physpages fills MIB MiB inside (on vCPU ``cpu``'s node); each page is read through the TARGET
    where the guest's pagemap says it is, and must hold its pattern. The pages' addresses."""
    pages = physpages(guest, mib, seed, cpu)  # typed for a PlainQemu: it only calls .sh()
    try:
        with open_connector(target or guest.target) as opened:
            check_pages(opened.memory, pages, seed)
    finally:
        kill_matching(guest, "physpages")
    return [address for _, address in pages]


def test_a_memfd_domain_is_mapped_zero_copy_and_the_monitor_is_opt_in(libvirt_pool: LibvirtDomainPool, series: str) -> None:
    guest = libvirt_pool.get(series, "memfd")
    with open_connector(guest.target) as target:
        assert target.memory.kind == "map_files", target.layout_source
        assert [(r.start, r.end) for r in target.memory.ranges()] == [(0, 512 << 20)]
    _pages_read_back(guest, 16, SEED)
    with LinuxGuest.open(guest.target) as lg:
        assert lg.resolved.location.paging_levels == 4 and not lg.tasks().problems
    assert "tainted" not in _libvirt_log(guest)
    # with monitor=yes: QEMU's own layout and live registers of the vCPU, and libvirt says so in its log
    with open_connector(guest.monitor_target()) as target:
        assert target.layout_source.startswith("monitor") and target.memory.kind == "map_files"
        regs = target.registers()
        assert regs is not None and regs.source == "libvirt monitor" and regs.paging_levels == 4
        assert regs.idtr_base is not None and regs.idtr_base >> 47 == 0x1FFFF  # a kernel address
    assert "tainted: custom-monitor" in _libvirt_log(guest)


def test_ram_above_4_gib_is_where_the_guest_put_it(libvirt_pool: LibvirtDomainPool, series: str) -> None:
    guest = libvirt_pool.get(series, "big")  # 4.5 GiB on pc: 3 GiB below the PCI hole, 1.5 GiB from 4 GiB
    with open_connector(guest.target) as target:
        assert [(r.start, r.end) for r in target.memory.ranges()] == [(0, 3 * GiB), (4 * GiB, 5 * GiB + GiB // 2)]
    addresses = _pages_read_back(guest, 64, SEED + 1)
    high = [a for a in addresses if a >= 4 * GiB]
    assert len(high) > len(addresses) // 2, "the guest put too few of the test pages above 4 GiB"
    with LinuxGuest.open(guest.target) as lg:
        assert not lg.tasks().problems and not lg.modules().problems


def _nodes_read_back(guest: LibvirtGuest, nodes: list[tuple[int, int]], target: str) -> None:
    """Pages the guest put on each node (a vCPU each) are where its pagemap says, read through ``target``."""
    assert guest.sh("ls -d /sys/devices/system/node/node*").split() == [
        f"/sys/devices/system/node/node{n}" for n in range(len(nodes))
    ]
    for node, (low, high) in enumerate(nodes):
        addresses = _pages_read_back(guest, 16, SEED + 2 + node, cpu=node, target=target)
        assert all(low <= a < high for a in addresses), f"pages off node {node}"


def test_the_second_numa_node_is_read_where_it_is(libvirt_pool: LibvirtDomainPool, series: str) -> None:
    guest = libvirt_pool.get(series, "numa")  # nodes of 512 and 768 MiB, a vCPU each
    with open_connector(guest.target) as target:
        assert [(r.start, r.end) for r in target.memory.ranges()] == [(0, 1280 << 20)]
        assert target.layout_source.startswith("command line")
    _nodes_read_back(guest, [(0, 512 << 20), (512 << 20, 1280 << 20)], guest.target)
    with LinuxGuest.open(guest.target) as lg:
        sweep = lg.tasks()
        assert not sweep.problems and {1} <= {t.pid for t in sweep.tasks}


def test_nodes_alike_need_the_monitor(libvirt_pool: LibvirtDomainPool, series: str) -> None:
    guest = libvirt_pool.get(series, "numa-alike")  # two nodes of 512 MiB: two anonymous mappings alike
    with pytest.raises(LayoutUnknown, match=r"cannot tell which mapping .*,monitor=yes\?uri=qemu:///system asks QEMU"):
        open_connector(guest.target)
    with open_connector(guest.monitor_target()) as target:
        assert target.layout_source.startswith("monitor") and [(r.start, r.end) for r in target.memory.ranges()] == [(0, GiB)]
    _nodes_read_back(guest, [(0, 512 << 20), (512 << 20, GiB)], guest.monitor_target())


def test_responses_go_through_libvirt(domain: LibvirtGuest, tmp_path: Path) -> None:
    finding = Finding("privilege_escalation", "test finding", Severity.CRITICAL, PRIV_ESC, domain.target, {"pid": 1})
    with open_connector(domain.target) as target:
        control = target.control
        assert isinstance(control, LibvirtControl)
        try:
            records = respond(domain.target, control, finding, ["dump", "cut_network", "pause"], tmp_path / "dumps")
            assert [(r.action, r.ok) for r in records] == [("dump", True), ("cut_network", True), ("pause", True)], records
            assert records[1].detail == "link down: net0" and records[2].detail == "VM status paused"
            assert control.status() == "paused"
        finally:
            control.resume()
        assert control.status() == "running"
        with open_image(records[0].detail) as core:
            assert core.kind == "elf-core" and core.size() >= 512 << 20
        with LinuxGuest.open(records[0].detail) as dumped:
            assert dumped.resolved.profile.identity.release == domain.info["kernel_release"]
            assert {t.pid for t in dumped.tasks().tasks} >= {1}
        try:
            assert domain.sh("cat /sys/class/net/eth0/carrier").strip() == "0"  # the link stays cut after resume
        finally:
            assert control.set_links(True) == ["net0"]
    assert domain.sh("cat /sys/class/net/eth0/carrier").strip() == "1"


def test_libvirt_colon_is_every_running_domain(libvirt_pool: LibvirtDomainPool, domain: LibvirtGuest, series: str) -> None:
    ours = {g.target for (s, _), g in libvirt_pool.guests.items() if s == series}
    ours.add(libvirt_pool.get(series, "memfd").target)
    listed = expand_targets("libvirt:")
    assert ours <= set(listed), (ours, listed)
    assert listed == LibvirtDomains().running()
    with pytest.raises(TargetError, match=f"names every running domain of qemu:///system .*{domain.name}"):
        open_connector("libvirt:")


def test_starts_and_stops_arrive_as_events(libvirt_pool: LibvirtDomainPool, series: str) -> None:
    guest = libvirt_pool.get(series, "events", boot=False)
    dom = libvirt_pool.domain(guest)

    async def scenario() -> list[tuple[tuple[str, str, str], float, float]]:
        """Each event, and the seconds from the call's start and from its return to the event."""
        loop = asyncio.get_running_loop()
        domains = LibvirtDomains()
        assert guest.target not in domains.running()
        changes = domains.changes()
        seen = []
        try:
            first = asyncio.ensure_future(changes.__anext__())  # subscribes; events queue from then on
            await asyncio.sleep(1.0)
            for call in (dom.create, dom.destroy):
                called = time.monotonic()
                await loop.run_in_executor(None, call)
                returned = time.monotonic()
                event = await asyncio.wait_for(first if call == dom.create else changes.__anext__(), 2.0)
                seen.append((event, time.monotonic() - called, time.monotonic() - returned))
                await asyncio.sleep(1.0)
        finally:
            domains.close()
            await changes.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert [event for event, _, _ in seen] == [("started", guest.target, "booted"), ("stopped", guest.target, "destroyed")]
    # within 2 s of libvirt having done it (a destroy itself takes libvirt about 1.6 s: SIGTERM, then wait)
    assert all(after < 2.0 for _, _, after in seen), seen
    print(f"events: started {seen[0][1]:.2f} s after create was called, stopped {seen[1][1]:.2f} s after destroy")


def test_watch_follows_domains_that_start_and_stop_and_the_others_go_on(
    libvirt_pool: LibvirtDomainPool, series: str, tmp_path: Path
) -> None:
    """``watch libvirt:``: a domain started mid-watch joins within 2 s and is swept once it has booted;
    one destroyed mid-watch leaves with an event; the domain running all along misses nothing."""
    stays, leaver = libvirt_pool.get(series, "plain"), libvirt_pool.get(series, "leaver")
    joiner = libvirt_pool.get(series, "events", boot=False)
    watch = WatchRun("libvirt:", "--interval", "1", "--db", str(tmp_path / "w.db"), "--ocsf", str(tmp_path / "w.jsonl"))

    def seen(target: str, text: str, after: float = 0.0) -> float:
        return watch.seen(text, after, target=target)[0]

    try:
        seen(stays.target, "baseline taken")
        seen(leaver.target, "baseline taken")
        asked = time.monotonic()
        libvirt_pool.start(joiner)  # created (the 'started' event), then booted until its agent answers
        assert seen(joiner.target, "added to the watch (booted)", asked) - asked < 2.0
        seen(joiner.target, "baseline taken", asked)  # retried while it booted, then watched
        destroyed = time.monotonic()
        libvirt_pool.domain(leaver).destroy()
        assert seen(leaver.target, "left the watch (destroyed)", destroyed) - destroyed < 4.0  # libvirt's destroy ~2 s
        time.sleep(3)
        assert watch.stop() == 0
    finally:
        watch.end()
        libvirt_pool.domain(joiner).destroy()  # as the events test expects to find it: defined, not running
    lines = watch.lines
    summary = {line.split(": ")[0]: line for _, line in lines if " sweeps every " in line}
    # the domain running all along was never lost: no failure, no retry, swept all the while (sweeps that
    # overran while three TCG guests shared two cores count as missed, which is load, not loss)
    assert not [line for _, line in lines if line.startswith(stays.target) and ("unreachable" in line or "left" in line)]
    stayed = "\n".join(line for _, line in lines if line.startswith(stays.target))
    assert int(summary[stays.target].split(": ")[1].split()[0]) >= 8 and " 0 findings" in summary[stays.target], stayed
    assert int(summary[joiner.target].split(": ")[1].split()[0]) >= 2
    # the leaver's last sweeps may have failed as its QEMU went away; it was not retried after it left
    left = next(at for at, line in lines if line.startswith(leaver.target) and "left the watch" in line)
    assert not [line for at, line in lines if at > left + 1.5 and line.startswith(leaver.target) and "retrying" in line]


def test_without_privileges_libvirt_says_what_it_needs_in_one_line(domain: LibvirtGuest) -> None:
    from tests.guest.test_qemu_pid_live import NOBODY, SETPRIV, as_user

    if SETPRIV is None:
        pytest.skip("setpriv is not installed")
    proc = as_user(NOBODY, "ps", domain.target, "--json")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {domain.target}: cannot connect to libvirt at qemu:///system")
    assert "needs root" in proc.stderr
