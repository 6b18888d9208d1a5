"""A real NT-family guest: the ReactOS live CD booted by ``lab up --os reactos`` (i386, TCG), its
kernel found in its memory alone and its processes listed from outside. The OS's own word: its debug
build logs the address of winlogon's process object on the serial line, which must be the
``_EPROCESS`` the walk found for winlogon.exe."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.guest.conftest import LabPool, vmsentinel
from tests.guest.helpers import WatchRun
from vmsentinel.access import open_connector
from vmsentinel.arch.x86_32 import PagingAddressSpace32
from vmsentinel.lab.reactos import KernelDebugger, kernel_debug_file, kernel_image_file
from vmsentinel.memory.base import PhysicalMemory
from vmsentinel.os.windows.guest import system_directory
from vmsentinel.os.windows.locate import NtKernel, find_nt_kernel
from vmsentinel.os.windows.profile.profile import NtProfile, profile_from_pe
from vmsentinel.os.windows.views.cid_table import cid_table
from vmsentinel.os.windows.views.idt import read_idt
from vmsentinel.os.windows.views.kernel_code import compare_kernel_code
from vmsentinel.os.windows.views.modules import list_modules
from vmsentinel.os.windows.views.processes import list_processes, unlisted_processes
from vmsentinel.os.windows.views.services import service_table

pytestmark = pytest.mark.guest
BOOT_PROCESSES = {"System", "smss.exe", "csrss.exe", "winlogon.exe", "services.exe", "lsass.exe"}


def nt_kernel(memory: PhysicalMemory, profile: NtProfile) -> NtKernel:
    """The kernel as the guest reads it: found in memory alone, then through the System process's own
    directory (a process directory found first in RAM may be freed while a test reads through it)."""
    return system_directory(memory, find_nt_kernel(memory), profile)


@pytest.fixture(scope="module")
def nt_profile(tmp_path_factory: pytest.TempPathFactory) -> NtProfile:
    """The live CD kernel's profile, made from its DWARF once for the module's tests."""
    folder = tmp_path_factory.mktemp("nt-profile")
    return profile_from_pe(kernel_debug_file(folder), cache=folder / "profiles")


@pytest.fixture(scope="module")
def reactos(lab_pool: LabPool) -> Iterator[dict[str, object]]:
    started = time.monotonic()
    info = json.loads(vmsentinel("lab", "up", "ros-live", "--os", "reactos", "--memory", "512", "--json", timeout=900).stdout)
    info["boot_seconds"] = time.monotonic() - started
    try:
        yield info
    finally:
        vmsentinel("lab", "down", "ros-live", check=False)


def test_the_nt_kernel_and_its_processes_are_seen_from_outside(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    print(f"ReactOS live CD ready in {reactos['boot_seconds']:.0f} s under TCG")  # the boot time the README states
    assert str(reactos["kernel_release"]).startswith("ReactOS 0.4")
    profile = nt_profile
    with open_connector(str(reactos["target"])) as target:
        kernel = nt_kernel(target.memory, profile)
        assert kernel.header.export_name == "ntoskrnl.exe" and kernel.header.layout == profile.identity.layout
        space = PagingAddressSpace32(target.memory, kernel.directory)
        procs, problems = list_processes(space, target.memory, profile, kernel.base)
        modules, module_problems = list_modules(space, profile, kernel.base)
        services, service_problems = service_table(space, profile, kernel.base, modules)
        gates, idt_problems = read_idt(space, profile, kernel.base, modules)
        module_headers = {m.name: space.read(m.base, 2) for m in modules}
    assert not problems and not module_problems and not service_problems and not idt_problems
    # the loader's list: the kernel first, at the base found in memory, then the HAL; each one a PE image
    assert [m.name.lower() for m in modules[:2]] == ["ntoskrnl.exe", "hal.dll"] and modules[0].base == kernel.base
    assert all(head == b"MZ" for head in module_headers.values()), module_headers
    # every system service is one of the kernel's own functions, by name
    assert len(services) > 200 and all(s.symbol and s.symbol.startswith("nt!Nt") for s in services), [
        s for s in services if not (s.symbol or "").startswith("nt!Nt")
    ][:5]
    by_vector = {g.vector: g for g in gates if g.cpu == 0}
    assert by_vector[0x0E].symbol == "nt!KiTrap0E" and by_vector[0x2E].symbol == "nt!KiSystemService"
    # every gate enters the kernel, the HAL or a driver, or a device interrupt's object calling one
    assert all("unknown" not in g.owner for g in gates), [g for g in gates if "unknown" in g.owner][:5]
    assert any(g.owner.startswith("interrupt object -> ") for g in gates)
    by_name = {p.name.lower(): p for p in procs}
    assert {p.name if p.name == "System" else p.name.lower() for p in procs} >= BOOT_PROCESSES, [p.name for p in procs]
    pids = {p.pid for p in procs}
    assert by_name["system"].pid == 4 and by_name["system"].ppid == 0 and by_name["system"].image_path is None
    for p in procs[1:]:  # every process but System was started by one on the list (or one that ended: userinit)
        assert p.ppid in pids or p.name.lower() in {"userinit.exe", "explorer.exe"}, p
    assert by_name["smss.exe"].ppid == 4
    assert by_name["winlogon.exe"].ppid == by_name["csrss.exe"].ppid == by_name["smss.exe"].pid
    assert by_name["services.exe"].ppid == by_name["lsass.exe"].ppid == by_name["winlogon.exe"].pid
    assert by_name["services.exe"].command_line and "services.exe" in by_name["services.exe"].command_line.lower()
    log = Path(str(reactos["console_log"])).read_bytes()
    said = re.search(rb"The process 0x([0-9A-F]{8}) 'winlogon\.exe'", log)
    assert said is not None, "ReactOS did not log winlogon's process object this time"
    assert int(said.group(1), 16) == by_name["winlogon.exe"].eprocess


def test_ps_lists_the_processes_reactos_itself_lists(reactos: dict[str, object]) -> None:
    """ReactOS's own kernel debugger, broken into from the guest's keyboard (Tab+K, through QEMU),
    lists the processes (PID and file name: ``proc list``; it shows no parent) and the loaded modules
    (``mod``) while the system stands still; ``vmsentinel ps`` and ``modules`` from outside at that
    instant list the same ones."""
    with KernelDebugger(str(reactos["qmp_socket"]), str(reactos["console_log"])) as kdb:
        own = kdb.processes()
        seen = json.loads(vmsentinel("ps", str(reactos["target"]), "--json").stdout)
        own_modules = [m for m in kdb.modules() if m[0] >= 0x8000_0000]  # it lists the current process's DLLs after
        modules = json.loads(vmsentinel("modules", str(reactos["target"]), "--json").stdout)
    assert len(own) >= len(BOOT_PROCESSES), own
    assert sorted((p["pid"], p["name"]) for p in seen) == sorted(own)
    assert all(p["sources"] == ["ActiveProcessLinks", "PspCidTable"] for p in seen), seen
    # and the kernel's modules as its debugger lists them ('mod': base, size, name), in load order
    assert len(own_modules) > 40 and own_modules[0][2] == "ntoskrnl.exe", own_modules
    assert [(int(m["base"], 16), m["size"], m["name"]) for m in modules] == own_modules


def test_a_process_unlinked_from_the_active_list_is_found_in_the_client_id_table(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    """DKOM as a rootkit does it from inside, done here through the shared RAM file with the guest
    paused: lsass.exe unlinked from ActiveProcessLinks disappears from the list, and the client-ID
    table still holds it; put back, the two views agree again."""
    profile = nt_profile
    links = profile.types.member_offset("_EPROCESS", "ActiveProcessLinks")
    with open_connector(str(reactos["target"])) as target, open(str(reactos["ram_path"]), "r+b") as ram:
        memory = target.memory
        assert memory.size() < 0xC0000000  # the pc machine: below the PCI hole, a RAM file offset is a physical address
        kernel = nt_kernel(memory, profile)
        space = PagingAddressSpace32(memory, kernel.directory)

        def poke(vaddr: int, value: int) -> None:
            ram.seek(space.translate(vaddr))
            ram.write(value.to_bytes(4, "little"))
            ram.flush()

        def views() -> tuple[list[str], list[str], dict[int, int]]:
            space.new_sweep()
            listed, problems = list_processes(space, memory, profile, kernel.base)
            cids, cid_problems = cid_table(space, profile, kernel.base)
            hidden, hidden_problems = unlisted_processes(space, memory, profile, listed, cids.processes)
            assert not problems and not cid_problems and not hidden_problems
            return [p.name.lower() for p in listed], [p.name.lower() for p in hidden], cids.processes

        target.control.pause()
        try:
            listed, hidden, cids = views()
            assert not hidden and len(cids) == len(listed)  # a clean guest: the two views agree
            procs, _ = list_processes(space, memory, profile, kernel.base)
            victim = next(p for p in procs if p.name.lower() == "lsass.exe")
            entry = victim.eprocess + links
            flink, blink = space.read_u32(entry), space.read_u32(entry + 4)
            poke(blink, flink)  # Blink->Flink skips the victim
            poke(flink + 4, blink)  # Flink->Blink too
            try:
                listed, hidden, cids = views()
                assert "lsass.exe" not in listed and hidden == ["lsass.exe"] and victim.pid in cids
            finally:
                poke(blink, entry)
                poke(flink + 4, entry)
            listed, hidden, _ = views()
            assert "lsass.exe" in listed and not hidden
        finally:
            target.control.resume()


def test_the_kernels_code_equals_its_image_on_the_cd_until_a_function_is_patched(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    """The loaded kernel's executable sections against the CD's own ntoskrnl.exe relocated to where it
    was loaded: only the kernel's own patch (explained), then a patch of NtOpenFile's first byte made
    through the RAM file is the one difference, named; put back, none again."""
    profile = nt_profile
    image = kernel_image_file(tmp_path)
    with open_connector(str(reactos["target"])) as target, open(str(reactos["ram_path"]), "r+b") as ram:
        kernel = nt_kernel(target.memory, profile)
        space = PagingAddressSpace32(target.memory, kernel.directory)
        clean = compare_kernel_code(space, kernel.base, image, profile.symbols)
        assert clean.compared > 1_500_000 and clean.differences == [] and clean.explained <= 1
        victim = kernel.base + profile.rva("NtOpenFile")
        physical = space.translate(victim)
        ram.seek(physical)
        original = ram.read(1)
        target.control.pause()
        try:
            ram.seek(physical)
            ram.write(b"\xcc")
            ram.flush()
            space.new_sweep()
            hooked = compare_kernel_code(space, kernel.base, image, profile.symbols)
        finally:
            ram.seek(physical)
            ram.write(original)
            ram.flush()
            target.control.resume()
        assert [(d.function, d.found) for d in hooked.differences] == [("nt!NtOpenFile+0x0", b"\xcc")]
        space.new_sweep()
        assert compare_kernel_code(space, kernel.base, image, profile.symbols).differences == []


def test_a_service_table_entry_and_an_idt_gate_redirected_through_ram_show_where_they_lead(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    """Service 0 and the breakpoint vector (3) made to point into the HAL, as a hooking driver would;
    the views show each leading out of the kernel's own functions; put back, they are nt! again."""
    profile = nt_profile
    with open_connector(str(reactos["target"])) as target, open(str(reactos["ram_path"]), "r+b") as ram:
        kernel = nt_kernel(target.memory, profile)
        space = PagingAddressSpace32(target.memory, kernel.directory)
        modules, _ = list_modules(space, profile, kernel.base)
        hal = next(m for m in modules if m.name.lower() == "hal.dll")
        table = space.read_u32(kernel.base + profile.rva("KeServiceDescriptorTable"))
        gates, _ = read_idt(space, profile, kernel.base, modules)
        pcr = space.read_u32(kernel.base + profile.rva("KiProcessorBlock")) - profile.types.member_offset("_KIPCR", "PrcbData")
        idt = space.read_u32(pcr + profile.types.member_offset("_KIPCR", "IDT"))
        writes = {table: (hal.base + 0x1000).to_bytes(4, "little")}
        gate = space.read(idt + 3 * 8, 8)
        target_address = hal.base + 0x2000
        writes[idt + 3 * 8] = target_address.to_bytes(4, "little")[:2] + gate[2:6] + target_address.to_bytes(4, "little")[2:]
        originals = {va: space.read(va, len(data)) for va, data in writes.items()}

        def write(values: dict[int, bytes]) -> None:
            for va, data in values.items():
                ram.seek(space.translate(va))
                ram.write(data)
            ram.flush()
            space.new_sweep()

        target.control.pause()
        try:
            write(writes)
            services, _ = service_table(space, profile, kernel.base, modules)
            hooked_gates, _ = read_idt(space, profile, kernel.base, modules)
        finally:
            write(originals)
            target.control.resume()
        assert services[0].owner.lower() == "hal.dll" and not (services[0].symbol or "").startswith("nt!")
        assert all(s.symbol and s.symbol.startswith("nt!") for s in services[1:])
        vector3 = next(g for g in hooked_gates if g.cpu == 0 and g.vector == 3)
        assert vector3.owner.lower() == "hal.dll" and vector3.address == target_address
        before = next(g for g in gates if g.cpu == 0 and g.vector == 3)
        assert before.symbol and before.symbol.startswith("nt!Ki")
        restored, _ = service_table(space, profile, kernel.base, modules)
        assert restored[0].symbol and restored[0].symbol.startswith("nt!Nt")


def _tampering(space: PagingAddressSpace32, profile: NtProfile, kernel_base: int) -> tuple[dict[int, bytes], dict[str, object]]:
    """What a rootkit inside would write, as (virtual address -> bytes), and what each write should be
    reported as: lsass.exe unlinked from ActiveProcessLinks, null.sys's loader entry unlinked from
    PsLoadedModuleList (its driver object stays), service 0 pointed into the HAL, the breakpoint gate
    (vector 3) pointed into a driver, and NtOpenFile's first byte made a breakpoint."""
    procs, _ = list_processes(space, space.phys, profile, kernel_base)
    victim = next(p for p in procs if p.name.lower() == "lsass.exe")
    entry = victim.eprocess + profile.types.member_offset("_EPROCESS", "ActiveProcessLinks")
    flink, blink = space.read_u32(entry), space.read_u32(entry + 4)
    # another one hidden harder: off the active list and out of the client-ID table, left only in RAM (not
    # lsass's neighbour on the list, whose links the first unlinking rewrites)
    links = profile.types.member_offset("_EPROCESS", "ActiveProcessLinks")
    deep = next(
        p
        for p in procs
        if p.name.lower() in ("eventlog.exe", "rpcss.exe", "svchost.exe") and p.eprocess + links not in (flink, blink)
    )
    deep_entry = deep.eprocess + links
    deep_flink, deep_blink = space.read_u32(deep_entry), space.read_u32(deep_entry + 4)
    modules, _ = list_modules(space, profile, kernel_base)
    hal = next(m for m in modules if m.name.lower() == "hal.dll")
    hidden = next(m for m in modules if m.name.lower() == "null.sys")
    driver = next(m for m in modules[2:] if m.name.lower().endswith(".sys") and m is not hidden)
    record_flink, record_blink = space.read_u32(hidden.record), space.read_u32(hidden.record + 4)
    table = space.read_u32(kernel_base + profile.rva("KeServiceDescriptorTable"))
    pcr = space.read_u32(kernel_base + profile.rva("KiProcessorBlock")) - profile.types.member_offset("_KIPCR", "PrcbData")
    idt = space.read_u32(pcr + profile.types.member_offset("_KIPCR", "IDT"))
    gate, handler = space.read(idt + 3 * 8, 8), driver.base + 0x1000
    writes = {
        blink: flink.to_bytes(4, "little"),  # Blink->Flink skips the victim
        flink + 4: blink.to_bytes(4, "little"),  # and Flink->Blink
        table: (hal.base + 0x1000).to_bytes(4, "little"),
        idt + 3 * 8: handler.to_bytes(4, "little")[:2] + gate[2:6] + handler.to_bytes(4, "little")[2:],
        kernel_base + profile.rva("NtOpenFile"): b"\xcc",
        record_blink: record_flink.to_bytes(4, "little"),  # the loader's list skips null.sys
        record_flink + 4: record_blink.to_bytes(4, "little"),
        deep_blink: deep_flink.to_bytes(4, "little"),
        deep_flink + 4: deep_blink.to_bytes(4, "little"),
        cid_entry(space, profile, kernel_base, deep.pid): bytes(8),
    }
    expect = {"pid": victim.pid, "deep_pid": deep.pid, "hal": hal.name, "driver": driver.name, "module": hidden.name}
    return writes, expect


def cid_entry(space: PagingAddressSpace32, profile: NtProfile, kernel_base: int, cid: int) -> int:
    """Where the client-ID table keeps ``cid`` (a one- or two-level NT 5.2 handle table)."""
    table = space.read_u32(kernel_base + profile.rva("PspCidTable"))
    code = space.read_u32(table + profile.types.member_offset("_HANDLE_TABLE", "TableCode"))
    index, levels, top = cid // 4, code & 3, code & ~3
    assert levels in (0, 1), f"a {levels + 1}-level client-ID table"
    leaf = top if levels == 0 else space.read_u32(top + (index // 512) * 4)
    return leaf + (index % 512) * 8


class RamWriter:
    """Writes into the guest's RAM file at virtual addresses, and puts back what was there."""

    def __init__(self, space: PagingAddressSpace32, ram: BinaryIO) -> None:
        self.space, self.ram = space, ram

    def write(self, values: dict[int, bytes]) -> dict[int, bytes]:
        before = {va: self.space.read(va, len(data)) for va, data in values.items()}
        for va, data in values.items():
            self.ram.seek(self.space.translate(va))
            self.ram.write(data)
        self.ram.flush()
        self.space.new_sweep()
        return before


def test_check_reports_each_rootkit_technique_and_nothing_on_the_clean_guest(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    """``vmsentinel check`` on the ReactOS guest, clean (no findings, exit 0), then with a process and a
    driver unlinked, a process out of both the list and the client-ID table, a service-table entry, an
    IDT gate and a kernel function's first byte changed through the RAM file with the guest paused: one
    finding per technique, naming what was changed; put back, clean."""
    target = str(reactos["target"])
    clean = vmsentinel("check", target, "--json")
    assert json.loads(clean.stdout) == [], clean.stdout
    profile = nt_profile
    with open_connector(target) as connector, open(str(reactos["ram_path"]), "r+b") as ram:
        kernel = nt_kernel(connector.memory, profile)
        space = PagingAddressSpace32(connector.memory, kernel.directory)
        writes, expect = _tampering(space, profile, kernel.base)
        writer = RamWriter(space, ram)
        connector.control.pause()
        try:
            originals = writer.write(writes)
            try:
                tampered = vmsentinel("check", target, "--json", check=False)
                ps = json.loads(vmsentinel("ps", target, "--json").stdout)
                syscalls = json.loads(vmsentinel("syscalls", target, "--outside-kernel", "--json").stdout)
            finally:
                writer.write(originals)
        finally:
            connector.control.resume()
    assert tampered.returncode == 1, tampered.stderr
    found = {f["detector"]: f for f in json.loads(tampered.stdout)}
    assert set(found) == {"hidden_process", "hidden_module", "syscall_hook", "idt_hook", "kernel_code_unlike_vendor"}, found
    assert found["hidden_module"]["evidence"]["module"] == expect["module"]
    hidden = {f["evidence"]["pid"]: f for f in json.loads(tampered.stdout) if f["detector"] == "hidden_process"}
    assert sorted(hidden) == sorted([expect["pid"], expect["deep_pid"]]), hidden
    assert hidden[expect["pid"]]["sources"] == ["PspCidTable", "memory_scan"]
    assert hidden[expect["deep_pid"]]["sources"] == ["memory_scan"]  # only RAM itself still has it
    assert found["syscall_hook"]["evidence"]["slot"] == "nt:0"
    assert found["syscall_hook"]["evidence"]["owner"] == f"module:{expect['hal']}"
    assert found["idt_hook"]["evidence"]["slot"] == "cpu0:3"
    assert found["idt_hook"]["evidence"]["owner"] == f"module:{expect['driver']}"
    assert found["kernel_code_unlike_vendor"]["evidence"]["symbol"] == "nt!NtOpenFile"
    assert found["kernel_code_unlike_vendor"]["evidence"]["observed"] == "cc"
    # the views show it too, in the shapes they have for Linux
    unlinked = next(p for p in ps if p["pid"] == expect["pid"])
    assert unlinked["sources"] == ["PspCidTable"] and unlinked["name"].lower() == "lsass.exe"  # ps without --scan
    assert expect["deep_pid"] not in {p["pid"] for p in ps}
    assert [(s["table"], s["index"], s["owner"]) for s in syscalls] == [("nt", 0, f"module:{expect['hal']}")]
    assert json.loads(vmsentinel("check", target, "--json").stdout) == []


def test_watch_finds_a_kernel_function_patched_after_its_baseline(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    """A watch takes the guest's baseline (every executable page of the kernel and its drivers hashed),
    then NtClose's first byte is patched through the RAM file: ``kernel_code_modified`` names it."""
    target = str(reactos["target"])
    profile = nt_profile
    run = WatchRun(target, "--interval", "0.5", "--db", str(tmp_path / "w.db"))
    try:
        run.seen("baseline taken", timeout=120)
        with open_connector(target) as connector, open(str(reactos["ram_path"]), "r+b") as ram:
            kernel = nt_kernel(connector.memory, profile)
            space = PagingAddressSpace32(connector.memory, kernel.directory)
            writer = RamWriter(space, ram)
            connector.control.pause()
            try:
                originals = writer.write({kernel.base + profile.rva("NtClose"): b"\xcc"})
                try:
                    _, line = run.seen("FINDING CRITICAL: kernel text modified at", timeout=60)
                finally:
                    writer.write(originals)
            finally:
                connector.control.resume()
        assert "nt!NtClose+0x0" in line, line
    finally:
        run.end()


MARKER = b"vmsentinel-yara-test-marker-7f3a"


def test_yara_finds_a_marker_in_a_process_and_in_a_driver(
    reactos: dict[str, object], nt_profile: NtProfile, tmp_path: Path
) -> None:
    """The test rule's marker written into lsass.exe's own memory (the last bytes of a page its page
    directory maps below 2 GiB) and into null.sys's image (the end of its first page in memory), through
    the RAM file with the guest paused: ``check`` with the rule reports both, the process by its PID and
    the driver by its image."""
    rules = Path(__file__).parents[1] / "data" / "yara" / "marker.yar"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[yara]\nrules = ["{rules}"]\n')
    target = str(reactos["target"])
    profile = nt_profile
    with open_connector(target) as connector, open(str(reactos["ram_path"]), "r+b") as ram:
        kernel = nt_kernel(connector.memory, profile)
        space = PagingAddressSpace32(connector.memory, kernel.directory)
        procs, _ = list_processes(space, connector.memory, profile, kernel.base)
        victim = next(p for p in procs if p.name.lower() == "lsass.exe")
        own = PagingAddressSpace32(connector.memory, victim.directory & ~0xFFF)
        user = next(m for m in own.walk_mappings(0, 0x8000_0000).mappings if m.writable)
        modules, _ = list_modules(space, profile, kernel.base)
        null = next(m for m in modules if m.name.lower() == "null.sys")
        image_page = next(a for a in range(null.base + 0x1000, null.base + null.size, 0x1000) if space.is_mapped(a))
        places = [own.translate(user.vaddr + 0x1000 - 64), space.translate(image_page + 0x1000 - 64)]
        connector.control.pause()
        try:
            saved = []
            for physical in places:
                ram.seek(physical)
                saved.append(ram.read(len(MARKER)))
                ram.seek(physical)
                ram.write(MARKER)
            ram.flush()
            try:
                result = vmsentinel("check", target, "--policy", str(policy), "--unsigned-policy", "--json", check=False)
            finally:
                for physical, data in zip(places, saved, strict=True):
                    ram.seek(physical)
                    ram.write(data)
                ram.flush()
        finally:
            connector.control.resume()
    yara = [f for f in json.loads(result.stdout) if f["detector"] == "yara"]
    assert {(f["evidence"]["pid"], f["evidence"]["region"]) for f in yara} == {
        (victim.pid, "user memory"),
        (None, "module null.sys"),
    }, result.stdout
