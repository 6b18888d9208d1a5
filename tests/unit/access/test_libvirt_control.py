"""LibvirtControl over a recorded domain (no monitor: no registers and no monitor commands; with it:
every vCPU through qemuMonitorCommand), libvirt calls bounded in time, and LibvirtDomains' lifecycle
events on libvirt's built-in test driver (``test:///default``: in-process, no daemon, no QEMU)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.access.test_qmp_control import RECORDED

from vmsentinel.access import Connector, expand_targets, open_connector
from vmsentinel.access import libvirt as lvs
from vmsentinel.access.libvirt import LibvirtControl, LibvirtDomains, LibvirtTarget
from vmsentinel.errors import HypervisorError, RegistersUnavailable, TargetError
from vmsentinel.memory.buffer import BufferMemory

TEST_URI = "test:///default"
libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (scripts/setup installs it)")


class RecordedDomain:
    """Answers like a running libvirt domain, and remembers what it was asked."""

    XML = """<domain type='qemu' id='3'><name>web1</name><devices>
      <interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/><alias name='net0'/></interface>
      <interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/><link state='up'/></interface>
    </devices></domain>"""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def name(self) -> str:
        return "web1"

    def suspend(self) -> int:
        self.calls.append(("suspend",))
        return 0

    def resume(self) -> int:
        self.calls.append(("resume",))
        return 0

    def state(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_PAUSED, 1]

    def coreDumpWithFormat(self, path: str, fmt: int, flags: int) -> int:  # noqa: N802 - libvirt's name
        self.calls.append(("dump", path, fmt, flags))
        return 0

    def XMLDesc(self, flags: int) -> str:  # noqa: N802
        return self.XML

    def updateDeviceFlags(self, xml: str, flags: int) -> int:  # noqa: N802
        self.calls.append(("update", xml, flags))
        return 0


class ClosingConn:
    closed = False

    def close(self) -> int:
        self.closed = True
        return 0


def _control(monitor: bool) -> tuple[LibvirtControl, RecordedDomain, ClosingConn]:
    dom, conn = RecordedDomain(), ClosingConn()
    return LibvirtControl(conn, dom, LibvirtTarget("web1", "qemu:///system", monitor)), dom, conn


def test_without_the_monitor_there_are_no_registers_and_no_monitor_commands() -> None:
    control, _, _ = _control(monitor=False)
    with pytest.raises(RegistersUnavailable, match=r"libvirt:web1,monitor=yes\?uri=qemu:///system allows it"):
        control.registers()
    with pytest.raises(HypervisorError, match=r"QEMU monitor commands are off .*tainted: custom-monitor"):
        control.hmp("info mtree -f")
    # the connector treats that as "registers unknown", like an image: the kernel is found from memory
    connector = Connector("libvirt:web1", BufferMemory({0: bytearray(4096)}), control)
    assert connector.live and connector.registers() is None


def test_with_the_monitor_every_vcpu_through_qemu_monitor_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import libvirt_qemu

    asked: list[tuple[str, int]] = []

    def monitor(dom: Any, command: str, flags: int) -> str:
        asked.append((command, flags))
        return RECORDED.replace("\n", "\r\n")

    monkeypatch.setattr(libvirt_qemu, "qemuMonitorCommand", monitor)
    control, _, _ = _control(monitor=True)
    cpus = control.registers()
    assert asked == [("info registers -a", libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)]
    assert [hex(c.cr3) for c in cpus] == ["0x1d0a000", "0xea22000"] and {c.source for c in cpus} == {"libvirt monitor"}
    assert cpus[0].idtr_base == 0xFFFFFE0000000000


def test_control_calls_go_through_libvirt(tmp_path: Path) -> None:
    control, dom, conn = _control(monitor=False)
    control.pause()
    assert control.status() == "paused"
    control.resume()
    control.dump(tmp_path / "d.core")
    assert control.set_links(False) == ["net0", "52:54:00:00:00:02"]
    assert dom.calls[:3] == [
        ("suspend",),
        ("resume",),
        ("dump", str(tmp_path / "d.core"), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY),
    ]
    updates = [c for c in dom.calls if c[0] == "update"]
    assert all(flags == libvirt.VIR_DOMAIN_AFFECT_LIVE and '<link state="down" />' in xml for _, xml, flags in updates)
    assert len(updates) == 2 and "52:54:00:00:00:01" in updates[0][1] and '<alias name="net0" />' in updates[0][1]
    assert control.describe() == "libvirt domain web1 on qemu:///system" and control.kind == "libvirt"
    control.close()
    assert conn.closed


def test_a_call_that_hangs_is_given_up_and_errors_say_which_call() -> None:
    started = time.monotonic()
    with pytest.raises(HypervisorError, match="suspend: no answer from libvirt within 0 s"):
        lvs.bounded("suspend", time.sleep, 5, timeout=0.2)
    assert time.monotonic() - started < 2

    def refuse() -> None:
        raise libvirt.libvirtError("Requested operation is not valid: domain is not running")

    with pytest.raises(HypervisorError, match="resume: Requested operation is not valid"):
        lvs.bounded("resume", refuse)


def test_test_driver_targets_are_refused_clearly() -> None:
    with pytest.raises(TargetError, match=r"libvirt:\?uri=test:///default names every running domain .*running: .*test"):
        open_connector(f"libvirt:?uri={TEST_URI}")
    with pytest.raises(TargetError, match="is a TEST connection; libvirt targets are QEMU domains"):
        open_connector(f"libvirt:test?uri={TEST_URI}")
    with pytest.raises(TargetError, match="cannot connect to libvirt at nosuchdriver:///"):
        open_connector("libvirt:web1?uri=nosuchdriver:///")


TEST_DOMAIN = """<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"""


@pytest.fixture
def test_conn() -> Iterator[Any]:
    conn = libvirt.open(TEST_URI)
    made: list[Any] = []

    def define(name: str) -> Any:
        dom = conn.defineXML(TEST_DOMAIN.format(name=name))
        made.append(dom)
        return dom

    conn.define = define  # type: ignore[attr-defined]
    yield conn
    for dom in made:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    conn.close()


def _name() -> str:
    return f"vmst-{uuid.uuid4().hex[:8]}"


def test_running_domains_are_targets_and_libvirt_colon_expands_to_them(test_conn: Any) -> None:
    a, b = _name(), _name()
    test_conn.define(a).create()
    test_conn.define(b)  # defined, not running
    domains = LibvirtDomains(TEST_URI)
    try:
        running = domains.running()
    finally:
        domains.close()
    assert f"libvirt:{a}?uri={TEST_URI}" in running and not any(b in t for t in running)
    assert f"libvirt:test?uri={TEST_URI}" in running
    assert expand_targets(f"libvirt:?uri={TEST_URI}") == running
    assert f"libvirt:{a},monitor=yes?uri={TEST_URI}" in expand_targets(f"libvirt:,monitor=yes?uri={TEST_URI}")


async def _next(changes: Any, timeout: float = 2.0) -> tuple[str, str, str]:
    item: tuple[str, str, str] = await asyncio.wait_for(changes.__anext__(), timeout)
    return item


def test_changes_report_starts_and_stops_as_they_happen(test_conn: Any, caplog: pytest.LogCaptureFixture) -> None:
    name = _name()
    dom = test_conn.define(name)
    target = f"libvirt:{name}?uri={TEST_URI}"

    async def scenario() -> list[tuple[str, str, str]]:
        domains = LibvirtDomains(TEST_URI)
        domains.running()
        changes = domains.changes()
        seen = []
        try:
            first = asyncio.ensure_future(_next(changes))
            await asyncio.sleep(0.3)  # subscribed by now
            dom.create()
            seen.append(await first)
            dom.destroy()
            seen.append(await _next(changes))
            _loop, queue = domains._queues[0]
            queue.put_nowait(lvs._CLOSED)  # what the close callback posts when libvirtd goes away
            pending = asyncio.ensure_future(_next(changes))
            await asyncio.sleep(0.5)  # subscribed again, and the listing agrees with what was said
            dom.create()
            dom.shutdown()  # the test driver stops at once
            seen += [await pending, await _next(changes)]
            domains.close()
            with pytest.raises(StopAsyncIteration):
                await _next(changes)
        finally:
            await changes.aclose()
        return seen

    started = time.monotonic()
    with caplog.at_level("WARNING", logger="vmsentinel.libvirt"):
        seen = asyncio.run(scenario())
    assert "libvirt connection to test:///default closed; reconnecting" in caplog.text
    assert seen == [
        ("started", target, "booted"),
        ("stopped", target, "destroyed"),
        ("started", target, "booted"),
        ("stopped", target, "shutdown"),
    ]
    assert time.monotonic() - started < 6


def test_what_changed_before_the_subscription_is_reported_once(test_conn: Any) -> None:
    early, gone = _name(), _name()
    test_conn.define(gone).create()
    early_dom = test_conn.define(early)

    async def scenario() -> list[tuple[str, str, str]]:
        domains = LibvirtDomains(TEST_URI, monitor=True)
        domains.running()  # sees `gone` running, not `early`
        early_dom.create()
        test_conn.lookupByName(gone).destroy()
        changes = domains.changes()
        try:
            return sorted([await _next(changes), await _next(changes)])
        finally:
            domains.close()
            await changes.aclose()

    # each asyncio.run is a new loop: libvirt's event loop is the process's own, not the first caller's
    for _ in range(2):
        assert asyncio.run(scenario()) == [
            ("started", f"libvirt:{early},monitor=yes?uri={TEST_URI}", "running"),
            ("stopped", f"libvirt:{gone},monitor=yes?uri={TEST_URI}", "gone"),
        ]
        test_conn.lookupByName(early).destroy()
        test_conn.lookupByName(gone).create()
