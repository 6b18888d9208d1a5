"""The NT guest's views as the records every OS shares, on synthetic 32-bit memory: a process unlinked
from the active list is still seen through the client-ID table and is the one ``hidden_process``
reports; a service-table entry outside every module is the one ``syscall_hook`` reports; the
Linux-only detectors do not run on it; and a stored profile is found again by the kernel's layout."""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.unit.windows.test_nt_memory import BASE, HEAD_RVA, KPHYS, OFF, PD, isf, ldr_isf, nt_memory, put

from vmsentinel.arch.x86_32 import RW, P
from vmsentinel.detect.registry import run_detectors, specs
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.types import IsfTypes
from vmsentinel.os.windows.guest import WindowsGuest, system_directory
from vmsentinel.os.windows.locate import find_nt_kernel
from vmsentinel.os.windows.profile.profile import ImageIdentity, NtProfile
from vmsentinel.os.windows.profile.store import image_for, profile_for

CID_AT = 0x1EC


def k(va: int) -> int:
    return va - BASE + KPHYS


def guest_memory() -> tuple[bytearray, list[int], dict[str, Any]]:
    """System, smss (unlinked from the active list: hidden), winlogon with one thread; the kernel and
    the HAL on the loader's list; a service table of two kernel functions and one entry outside."""
    names = [(4, 0, "System"), (80, 4, "smss.exe"), (140, 80, "winlogon.exe")]
    ram, eprocs = nt_memory(names)
    for e in eprocs:
        ram[k(e)] = 3
    table, leaf, thread = BASE + 0xA000, BASE + 0xB000, BASE + 0xC000
    put(ram, k(BASE + 0x9800), "<I", table)
    put(ram, k(table), "<I", leaf)
    for (pid, _, _), e in zip(names, eprocs, strict=True):
        put(ram, k(leaf) + (pid // 4) * 8, "<II", e | 1, 0x1F0FFF)
    ram[k(thread)] = 6
    put(ram, k(leaf) + 36 * 8, "<II", thread, 0x1F03FF)  # thread 144
    put(ram, k(thread) + CID_AT, "<II", 140, 144)  # of winlogon
    put(ram, k(eprocs[0] + OFF["links"]), "<I", eprocs[2] + OFF["links"])  # smss unlinked
    head, records = BASE + 0x3000, [BASE + 0x3100, BASE + 0x3200]
    chain = [head, *records, head]
    for i in range(len(chain) - 1):
        put(ram, k(chain[i]), "<I", chain[i + 1])
    for record, (name, base, size) in zip(
        records, [("ntoskrnl.exe", BASE, 0x200000), ("hal.dll", BASE + 0x200000, 0x20000)], strict=True
    ):
        text = name.encode("utf-16-le")
        put(ram, k(record) + 24, "<III", base, base + 0x1000, size)
        put(ram, k(record) + 44, "<HHI", len(text), len(text), record + 0x80)
        ram[k(record) + 0x80 : k(record) + 0x80 + len(text)] = text
    services = BASE + 0x5000
    put(ram, k(BASE + 0x4000), "<IIII", services, 0, 3, 0)
    put(ram, k(services), "<III", BASE + 0x2000, BASE + 0x2100, 0x90000000)
    doc = ldr_isf()
    plain = {"kind": "base", "name": "unsigned long"}
    doc["user_types"]["_EPROCESS"]["fields"]["ExitTime"] = {"offset": 0x78, "type": plain}
    doc["user_types"]["_HANDLE_TABLE"] = {"kind": "struct", "size": 0x44, "fields": {"TableCode": {"offset": 0, "type": plain}}}
    doc["user_types"]["_ETHREAD"] = {"kind": "struct", "size": 0x250, "fields": {"Cid": {"offset": CID_AT, "type": plain}}}
    symbols = {"PsActiveProcessHead": HEAD_RVA, "PspCidTable": 0x9800, "PsLoadedModuleList": 0x3000}
    symbols.update(KeServiceDescriptorTable=0x4000, NtClose=0x2000, NtOpenFile=0x2100)
    return ram, eprocs, {"doc": doc, "symbols": symbols}


def open_synthetic() -> WindowsGuest:
    ram, _, parts = guest_memory()
    memory = BufferMemory({0: ram})
    connector: Any = SimpleNamespace(memory=memory, spec="synthetic", live=False, layout_source="none", close=lambda: None)
    prof = NtProfile(IsfTypes(parts["doc"], "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    return WindowsGuest(connector, find_nt_kernel(memory), prof, None)


def test_processes_threads_and_the_hidden_one_in_the_shared_records() -> None:
    guest = open_synthetic()
    sweep = guest.tasks()
    by_pid = {t.pid: t for t in sweep.tasks}
    assert sorted(by_pid) == [4, 80, 140]
    assert by_pid[4].sources == ("ActiveProcessLinks", "PspCidTable") and by_pid[4].kernel_thread
    assert by_pid[80].sources == ("PspCidTable",)  # the list lost it; the table did not
    assert by_pid[140].threads == (144,) and by_pid[140].ppid == 80 and by_pid[140].uid == -1
    modules = guest.modules()
    assert [(m.name, m.sources) for m in modules.modules] == [
        ("ntoskrnl.exe", ("PsLoadedModuleList",)),
        ("hal.dll", ("PsLoadedModuleList",)),
    ]
    assert [(e.table, e.index, e.symbol, e.owner) for e in guest.syscalls().syscalls] == [
        ("nt", 0, "nt!NtClose", "kernel"),
        ("nt", 1, "nt!NtOpenFile", "kernel"),
        ("nt", 2, None, "unknown"),
    ]


def test_the_cross_os_detectors_find_the_hidden_process_and_the_hooked_service() -> None:
    guest = open_synthetic()
    snap = guest.snapshot(facets=frozenset({"tasks", "modules", "syscalls", "idt"}))
    findings = run_detectors("synthetic", snap, None, None, os=guest.os)
    assert sorted((f.detector, f.title) for f in findings) == [
        ("hidden_process", "process 80 (smss.exe) is hidden from the task list"),
        ("syscall_hook", "syscall entry nt:2 points into unknown"),
    ]
    windows = {s.name for s in specs(os="windows")}
    assert {"hidden_process", "hidden_module", "syscall_hook", "idt_hook", "kernel_code_modified", "yara"} <= windows
    assert not windows & {"privilege_escalation", "bpf_program", "kernel_taint", "packet_socket"}


def test_a_stored_profile_is_found_by_the_kernels_layout_and_no_other(tmp_path: Path) -> None:
    layout = "ab12cd34ef56" + "0" * 20
    doc = isf()
    doc["symbols"] = {"PsActiveProcessHead": {"address": HEAD_RVA}}
    doc["metadata"] = {
        "format": "6.2.0",
        "windows": {"pe": {"file": "ntoskrnl.exe", "timestamp": 1, "size_of_image": 2, "layout": layout}},
    }
    (tmp_path / f"ntoskrnl-00000001-2-{layout[:12]}.json.xz").write_bytes(lzma.compress(json.dumps(doc).encode()))
    found = profile_for(layout, tmp_path)
    assert found is not None and found.rva("PsActiveProcessHead") == HEAD_RVA
    assert profile_for(layout[:12] + "1" * 20, tmp_path) is None  # same prefix, another build
    assert profile_for("short", tmp_path) is None and image_for(layout, tmp_path) is None
    (tmp_path / f"ntoskrnl-00000001-2-{layout[:12]}.json.xz").write_bytes(b"not xz")  # damaged: not believed
    assert profile_for(layout, tmp_path) is None


def add_object_directory(ram: bytearray, doc: dict[str, Any], symbols: dict[str, int]) -> None:
    """The object manager's root with \\Driver (Null, whose image is the listed hal.dll, and Evil, whose
    image no listed module holds) and \\FileSystem (RAW, built in, on a chain that loops onto itself)."""
    plain = {"kind": "base", "name": "unsigned long"}

    def struct(name: str, size: int, **fields: int) -> None:
        doc["user_types"][name] = {
            "kind": "struct",
            "size": size,
            "fields": {n: {"offset": o, "type": plain} for n, o in fields.items()},
        }

    struct("_OBJECT_DIRECTORY", 0xA0, HashBuckets=0)
    struct("_OBJECT_DIRECTORY_ENTRY", 12, ChainLink=0, Object=4)
    struct("_OBJECT_HEADER", 32, Type=8, NameInfoOffset=12, Body=24)
    struct("_OBJECT_HEADER_NAME_INFO", 24, Name=4)
    struct("_DRIVER_OBJECT", 0xA8, DriverStart=12, DriverSize=16, DriverSection=20)
    dir_type, drv_type = BASE + 0x20000, BASE + 0x20100

    def obj(body: int, name: str, kind: int) -> None:
        header = body - 24
        put(ram, k(header) + 8, "<I", kind)
        ram[k(header) + 12] = 24
        text = name.encode("utf-16-le")
        put(ram, k(header - 24) + 4, "<HHI", len(text), len(text), body + 0x100)
        ram[k(body) + 0x100 : k(body) + 0x100 + len(text)] = text

    def entry(at: int, chain: int, body: int) -> None:
        put(ram, k(at), "<II", chain, body)

    root, drivers, filesystems = BASE + 0x21000, BASE + 0x22000, BASE + 0x23000
    obj(drivers, "Driver", dir_type)
    obj(filesystems, "FileSystem", dir_type)
    entry(BASE + 0x24000, BASE + 0x24010, drivers)
    entry(BASE + 0x24010, 0, filesystems)
    put(ram, k(root) + 5 * 4, "<I", BASE + 0x24000)
    null, evil, raw = BASE + 0x25000, BASE + 0x26000, BASE + 0x26800
    for body, name, start, size in (
        (null, "Null", BASE + 0x200000, 0x1000),
        (evil, "Evil", BASE + 0x300000, 0x5000),
        (raw, "RAW", 0, 0),
    ):
        obj(body, name, drv_type)
        put(ram, k(body) + 12, "<III", start, size, 0)
    entry(BASE + 0x24020, BASE + 0x24030, null)
    entry(BASE + 0x24030, 0, evil)
    put(ram, k(drivers), "<I", BASE + 0x24020)
    entry(BASE + 0x24040, BASE + 0x24040, raw)  # a chain whose entry names itself: read once
    put(ram, k(filesystems) + 36 * 4, "<I", BASE + 0x24040)
    put(ram, k(BASE + 0x27000), "<III", root, drv_type, dir_type)
    symbols.update(ObpRootDirectoryObject=0x27000, IoDriverObjectType=0x27004, ObpDirectoryObjectType=0x27008)


def test_a_driver_whose_loader_entry_is_gone_is_a_hidden_module_by_its_driver_object() -> None:
    ram, _, parts = guest_memory()
    add_object_directory(ram, parts["doc"], parts["symbols"])
    memory = BufferMemory({0: ram})
    connector: Any = SimpleNamespace(memory=memory, spec="synthetic", live=False, layout_source="none", close=lambda: None)
    prof = NtProfile(IsfTypes(parts["doc"], "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    guest = WindowsGuest(connector, find_nt_kernel(memory), prof, None)
    sweep = guest.modules()
    assert not sweep.problems, sweep.problems
    assert [(m.name, m.base, m.sources) for m in sweep.modules] == [
        ("ntoskrnl.exe", BASE, ("PsLoadedModuleList",)),
        ("hal.dll", BASE + 0x200000, ("PsLoadedModuleList", "driver_object")),
        ("Evil", BASE + 0x300000, ("driver_object",)),
    ]
    snap = guest.snapshot(facets=frozenset({"modules"}))
    assert [
        (f.detector, f.evidence["module"]) for f in run_detectors("s", snap, None, None, ["hidden_module"], os="windows")
    ] == [("hidden_module", "Evil")]


def test_an_x64_guest_gives_the_same_records_and_says_what_it_does_not_read_yet() -> None:
    """Windows 10 x64 (synthetic memory, 17763 layouts): found behind its randomised self-map, processes
    and modules in the shared records, the relative service table resolved, and the entry outside every
    module is a ``syscall_hook``; the views x64 does not have yet are named in the problems."""
    from tests.unit.windows import test_nt_x64 as x64

    memory = BufferMemory({0: x64.x64_memory(0x1ED)})
    connector: Any = SimpleNamespace(memory=memory, spec="synthetic-x64", live=False, layout_source="none", close=lambda: None)
    from vmsentinel.os.windows.locate64 import find_nt_kernel_x64

    guest = WindowsGuest(connector, find_nt_kernel_x64(memory), x64.profile(), None)
    assert guest.wide and guest.about()["paging_levels"] == 4
    tasks = guest.tasks()
    assert [(t.pid, t.ppid, t.name, t.sources) for t in tasks.tasks] == [
        (pid, ppid, name, ("ActiveProcessLinks",)) for pid, ppid, name in x64.NAMES
    ]
    assert any("client-ID table of x64" in p for p in tasks.problems)
    assert [m.name for m in guest.modules().modules] == [name for name, _, _ in x64.MODULES]
    entries = guest.syscalls().syscalls
    assert [(e.index, e.symbol, e.owner) for e in entries][:3] == [
        (0, "nt!NtClose", "kernel"),
        (1, "nt!NtOpenFile", "kernel"),
        (2, None, "unknown"),
    ]
    snap = guest.snapshot(facets=frozenset({"tasks", "modules", "syscalls", "idt"}))
    assert any("IDT of x64" in p for p in snap.idt.problems)
    found = run_detectors("synthetic-x64", snap, None, None, ["syscall_hook", "hidden_process"], os=guest.os)
    assert sorted(f.evidence["slot"] for f in found) == ["nt:2", "nt:3"]  # the outside entry and the one into the HAL


def test_the_memory_scan_finds_a_process_left_only_in_ram_and_refuses_forgeries() -> None:
    """Each _EPROCESS starts with a process object's dispatcher header; a candidate counts only when it
    holds together (its directory maps itself, a handle-valued PID, a printable name, not exited)."""
    ram, eprocs, parts = guest_memory()
    doc = parts["doc"]
    doc["user_types"]["_DISPATCHER_HEADER"] = {"kind": "struct", "size": 16, "fields": {"SignalState": {"offset": 4, "type": {}}}}
    header = bytes([3, 0, doc["user_types"]["_KPROCESS"]["size"] // 4, 0])
    ghost, forged, exited = BASE + 0x14000, BASE + 0x14800, BASE + 0x15000
    for e in [*eprocs, ghost, forged, exited]:
        ram[k(e) : k(e) + 4] = header
    for e, pid, name in ((ghost, 300, "ghost.exe"), (forged, 304, "forged.exe"), (exited, 308, "gone.exe")):
        put(ram, k(e) + OFF["pid"], "<I", pid)
        ram[k(e) + OFF["name"] : k(e) + OFF["name"] + 16] = name.encode().ljust(16, b"\0")
        put(ram, k(e) + OFF["dtb"], "<I", 0x2000 if e == forged else 0x1000)  # 0x2000 maps nothing
    put(ram, k(exited) + 0x78, "<Q", 132_000_000_000_000_000)  # ExitTime
    ram[0x3000:0x3004] = header  # a header in memory the kernel maps nowhere: no address to give it
    memory = BufferMemory({0: ram})
    connector: Any = SimpleNamespace(memory=memory, spec="s", live=False, layout_source="none", close=lambda: None)
    prof = NtProfile(IsfTypes(doc, "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    guest = WindowsGuest(connector, find_nt_kernel(memory), prof, None)
    by_pid = {t.pid: t for t in guest.tasks(scan=True).tasks}
    assert by_pid[300].sources == ("memory_scan",) and by_pid[300].name == "ghost.exe"
    assert by_pid[80].sources == ("PspCidTable", "memory_scan")
    assert 304 not in by_pid and 308 not in by_pid
    snap = guest.snapshot(scan=True, facets=frozenset({"tasks"}))
    assert sorted(f.evidence["pid"] for f in run_detectors("s", snap, None, None, ["hidden_process"], os="windows")) == [80, 300]


def test_the_guest_reads_through_the_system_processs_own_directory_when_it_maps_the_kernel() -> None:
    """Memory alone gave one directory; the System process names another (its ``DirectoryTableBase``)
    mapping the kernel as fully: the guest reads through System's. A System directory that maps less of
    the kernel (forged or stale) is not taken."""
    ram, eprocs, parts = guest_memory()
    own = 0x5000
    ram[own : own + 0x1000] = ram[PD : PD + 0x1000]
    put(ram, own + 0x300 * 4, "<I", own | P | RW)
    put(ram, k(BASE + 0x9900), "<I", eprocs[0])
    put(ram, k(eprocs[0]) + OFF["dtb"], "<I", own | 0x18)
    memory = BufferMemory({0: ram})
    prof = NtProfile(
        IsfTypes(parts["doc"], "s"),
        {**parts["symbols"], "PsInitialSystemProcess": 0x9900},
        ImageIdentity("ntoskrnl.exe", 0, 0),
        "synthetic",
    )
    found = find_nt_kernel(memory)
    assert found.directory == PD
    assert system_directory(memory, found, prof).directory == own
    put(ram, own + (BASE >> 22) * 4, "<I", 0)  # System's directory no longer maps the kernel
    assert system_directory(memory, found, prof) == found
    assert (
        system_directory(
            memory, found, NtProfile(IsfTypes(parts["doc"], "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "s")
        )
        == found
    )
