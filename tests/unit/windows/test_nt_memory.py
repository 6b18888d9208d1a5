"""The NT kernel found in synthetic 32-bit memory alone (a self-mapping page directory, a PE image in
the system half whose exports name ntoskrnl.exe), and its process list walked: in order, with each
process's path and command line from its PEB through its own directory; a list that loops, breaks
or names unmapped memory stops with the reason, never hangs."""

from __future__ import annotations

import struct

import pytest

from vmsentinel.arch.x86_32 import PS, RW, US, P, PagingAddressSpace32
from vmsentinel.errors import ProfileError
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.types import IsfTypes
from vmsentinel.os.windows.locate import find_nt_kernel, image_pages_mapped, self_mapping_directories
from vmsentinel.os.windows.profile.profile import ImageIdentity, NtProfile
from vmsentinel.os.windows.views.processes import list_processes

BASE, KPHYS, PD = 0x80400000, 0x400000, 0x1000
HEAD_RVA, EPROC_RVA = 0x1000, 0x10000
OFF = {"links": 0x98, "pid": 0x94, "ppid": 0x14C, "name": 0x174, "peb": 0x1B0, "create": 0x70, "dtb": 0x18}


def isf() -> dict:
    def fields(**offsets: int) -> dict:
        return {name: {"offset": off, "type": {"kind": "base", "name": "unsigned long"}} for name, off in offsets.items()}

    return {
        "user_types": {
            "_EPROCESS": {
                "kind": "struct",
                "size": 0x260,
                "fields": {
                    **fields(
                        UniqueProcessId=OFF["pid"],
                        ActiveProcessLinks=OFF["links"],
                        InheritedFromUniqueProcessId=OFF["ppid"],
                        ImageFileName=OFF["name"],
                        Peb=OFF["peb"],
                        CreateTime=OFF["create"],
                    ),
                    "Pcb": {"offset": 0, "type": {"kind": "struct", "name": "_KPROCESS"}},
                },
            },
            "_KPROCESS": {"kind": "struct", "size": 0x6C, "fields": fields(DirectoryTableBase=OFF["dtb"])},
            "_PEB": {"kind": "struct", "size": 0x200, "fields": fields(ProcessParameters=0x10)},
            "_RTL_USER_PROCESS_PARAMETERS": {
                "kind": "struct",
                "size": 0x90,
                "fields": fields(ImagePathName=0x38, CommandLine=0x40),
            },
        },
        "enums": {},
    }


def pe_header(size_of_image: int = 0x200000) -> bytes:
    """A minimal PE32 header with an export directory whose name is ntoskrnl.exe."""
    head = bytearray(0x1000)
    head[0:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x80)
    head[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", head, 0x84, 0x14C, 1, 0x6B0F45C6, 0, 0, 0xE0, 0x0102)
    opt = 0x98
    struct.pack_into("<HBB", head, opt, 0x10B, 2, 0)
    struct.pack_into("<I", head, opt + 16, 0x1000)  # entry point
    struct.pack_into("<I", head, opt + 28, 0x400000)  # image base
    struct.pack_into("<II", head, opt + 32, 0x1000, 0x200)  # alignments
    struct.pack_into("<I", head, opt + 56, size_of_image)
    struct.pack_into("<I", head, opt + 60, 0x400)  # size of headers
    struct.pack_into("<I", head, opt + 92, 16)  # number of data directories
    struct.pack_into("<II", head, opt + 96, 0x800, 0x40)  # export directory at RVA 0x800
    section = opt + 0xE0
    head[section : section + 8] = b".text\0\0\0"
    struct.pack_into("<IIII", head, section + 8, 0x1000, 0x1000, 0x1000, 0x400)
    struct.pack_into("<I", head, 0x800 + 12, 0x900)  # export directory: Name RVA
    head[0x900:0x90D] = b"ntoskrnl.exe\0"
    return bytes(head)


def put(ram: bytearray, at: int, fmt: str, *values: int) -> None:
    struct.pack_into(fmt, ram, at, *values)


def nt_memory(names: list[tuple[int, int, str]]) -> tuple[bytearray, list[int]]:
    """8 MiB of RAM: the directory (self-mapped, the kernel's 4 MiB page), the kernel image, and one
    _EPROCESS per (pid, ppid, name) on the active list."""
    ram = bytearray(0x800000)
    put(ram, PD + 0x300 * 4, "<I", PD | P | RW)
    put(ram, PD + (BASE >> 22) * 4, "<I", KPHYS | P | RW | PS)
    ram[KPHYS : KPHYS + 0x1000] = pe_header()
    head = BASE + HEAD_RVA
    eprocs = [BASE + EPROC_RVA + i * 0x400 for i in range(len(names))]
    links = [head] + [e + OFF["links"] for e in eprocs] + [head]
    for i, (pid, ppid, name) in enumerate(names):
        e = eprocs[i] - BASE + KPHYS
        put(ram, e + OFF["pid"], "<I", pid)
        put(ram, e + OFF["ppid"], "<I", ppid)
        ram[e + OFF["name"] : e + OFF["name"] + 16] = name.encode().ljust(16, b"\0")
        put(ram, e + OFF["dtb"], "<I", PD)
    for i in range(len(links) - 1):  # Flink of each entry names the next
        put(ram, links[i] - BASE + KPHYS, "<I", links[i + 1])
    return ram, eprocs


def profile() -> NtProfile:
    return NtProfile(
        IsfTypes(isf(), "synthetic"), {"PsActiveProcessHead": HEAD_RVA}, ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic"
    )


def test_the_kernel_is_found_from_memory_alone() -> None:
    ram, _ = nt_memory([(4, 0, "System")])
    mem = BufferMemory({0: ram})
    assert self_mapping_directories(mem) == [PD]
    kernel = find_nt_kernel(mem)
    assert (kernel.base, kernel.directory, kernel.header.export_name, kernel.header.timestamp) == (
        BASE,
        PD,
        "ntoskrnl.exe",
        0x6B0F45C6,
    )


def test_no_kernel_is_said_plainly() -> None:
    with pytest.raises(ProfileError, match="no NT kernel"):
        find_nt_kernel(BufferMemory({0: bytearray(0x10000)}))


def test_the_process_list_in_order_with_a_peb_read_through_the_processs_own_directory() -> None:
    ram, eprocs = nt_memory([(4, 0, "System"), (80, 4, "smss.exe"), (140, 80, "winlogon.exe")])
    # winlogon's own directory maps a user page at 0x7FFD0000 holding its PEB, parameters and strings
    own, table, user = 0x5000, 0x6000, 0x7000
    ram[own : own + 0x1000] = ram[PD : PD + 0x1000]  # the system half is shared
    put(ram, own + 0x300 * 4, "<I", own | P | RW)
    put(ram, own + (0x7FFD0000 >> 22) * 4, "<I", table | P | RW | US)
    put(ram, table + ((0x7FFD0000 >> 12) & 0x3FF) * 4, "<I", user | P | RW | US)
    path, line = "\\??\\X:\\reactos\\system32\\winlogon.exe".encode("utf-16-le"), "winlogon.exe -v".encode("utf-16-le")
    put(ram, user + 0x10, "<I", 0x7FFD0100)  # PEB.ProcessParameters
    put(ram, user + 0x100 + 0x38, "<HHI", len(path), len(path) + 2, 0x7FFD0200)
    put(ram, user + 0x100 + 0x40, "<HHI", len(line), len(line) + 2, 0x7FFD0400)
    ram[user + 0x200 : user + 0x200 + len(path)] = path
    ram[user + 0x400 : user + 0x400 + len(line)] = line
    e = eprocs[2] - BASE + KPHYS
    put(ram, e + OFF["dtb"], "<I", own)
    put(ram, e + OFF["peb"], "<I", 0x7FFD0000)
    mem = BufferMemory({0: ram})
    procs, problems = list_processes(PagingAddressSpace32(mem, PD), mem, profile(), BASE)
    assert not problems
    assert [(p.pid, p.ppid, p.name) for p in procs] == [(4, 0, "System"), (80, 4, "smss.exe"), (140, 80, "winlogon.exe")]
    assert procs[2].image_path == "\\??\\X:\\reactos\\system32\\winlogon.exe" and procs[2].command_line == "winlogon.exe -v"
    assert procs[0].image_path is None  # System has no PEB


def test_a_looping_or_broken_list_stops_with_the_reason() -> None:
    ram, eprocs = nt_memory([(4, 0, "System"), (80, 4, "smss.exe"), (140, 80, "winlogon.exe")])
    put(ram, eprocs[2] - BASE + KPHYS + OFF["links"], "<I", eprocs[1] + OFF["links"])  # winlogon -> smss again
    mem = BufferMemory({0: ram})
    procs, problems = list_processes(PagingAddressSpace32(mem, PD), mem, profile(), BASE)
    assert [p.pid for p in procs] == [4, 80, 140] and "loops back" in problems[0]
    put(ram, eprocs[1] - BASE + KPHYS + OFF["links"], "<I", 0x10000000)  # smss -> unmapped memory
    procs, problems = list_processes(PagingAddressSpace32(mem, PD), mem, profile(), BASE)
    assert [p.pid for p in procs] == [4, 80] and "breaks at" in problems[0]


def test_a_profile_without_the_needed_members_says_so() -> None:
    ram, _ = nt_memory([(4, 0, "System")])
    mem = BufferMemory({0: ram})
    bare = NtProfile(IsfTypes({"user_types": {}}, "empty"), {"PsActiveProcessHead": HEAD_RVA}, ImageIdentity("x", 0, 0), "empty")
    procs, problems = list_processes(PagingAddressSpace32(mem, PD), mem, bare, BASE)
    assert procs == [] and "lacks" in problems[0]


def ldr_isf() -> dict:
    doc = isf()
    plain = {"kind": "base", "name": "unsigned long"}
    doc["user_types"]["_LDR_DATA_TABLE_ENTRY"] = {
        "kind": "struct",
        "size": 0x50,
        "fields": {
            "InLoadOrderLinks": {"offset": 0, "type": plain},
            "DllBase": {"offset": 24, "type": plain},
            "EntryPoint": {"offset": 28, "type": plain},
            "SizeOfImage": {"offset": 32, "type": plain},
            "FullDllName": {"offset": 36, "type": plain},
            "BaseDllName": {"offset": 44, "type": plain},
        },
    }
    doc["user_types"]["_KSERVICE_TABLE_DESCRIPTOR"] = {
        "kind": "struct",
        "size": 16,
        "fields": {
            "Base": {"offset": 0, "type": plain},
            "Count": {"offset": 4, "type": plain},
            "Limit": {"offset": 8, "type": plain},
        },
    }
    return doc


def test_modules_and_the_service_table_resolve_to_the_kernels_own_functions() -> None:
    from vmsentinel.os.windows.views.modules import list_modules
    from vmsentinel.os.windows.views.services import service_table

    ram, _ = nt_memory([(4, 0, "System")])
    k = lambda va: va - BASE + KPHYS  # noqa: E731 - kernel virtual -> physical in the synthetic RAM
    head, records = BASE + 0x3000, [BASE + 0x3100, BASE + 0x3200]
    names = [("ntoskrnl.exe", BASE, 0x200000), ("hal.dll", BASE + 0x200000, 0x20000)]
    chain = [head, *records, head]
    for i in range(len(chain) - 1):
        put(ram, k(chain[i]), "<I", chain[i + 1])
    for record, (name, base, size) in zip(records, names, strict=True):
        text = name.encode("utf-16-le")
        put(ram, k(record) + 24, "<III", base, base + 0x1000, size)
        put(ram, k(record) + 44, "<HHI", len(text), len(text), record + 0x80)
        ram[k(record) + 0x80 : k(record) + 0x80 + len(text)] = text
    table = BASE + 0x5000
    entries = [BASE + 0x2000, BASE + 0x2100, 0x90000000]  # NtClose, NtOpenFile, and one outside every module
    put(ram, k(BASE + 0x4000), "<IIII", table, 0, len(entries), 0)
    for i, address in enumerate(entries):
        put(ram, k(table) + 4 * i, "<I", address)
    symbols = {"PsActiveProcessHead": HEAD_RVA, "PsLoadedModuleList": 0x3000, "KeServiceDescriptorTable": 0x4000}
    symbols.update(NtClose=0x2000, NtOpenFile=0x2100)
    prof = NtProfile(IsfTypes(ldr_isf(), "synthetic"), symbols, ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    space = PagingAddressSpace32(BufferMemory({0: ram}), PD)
    modules, problems = list_modules(space, prof, BASE)
    assert not problems and [(m.name, m.base, m.size) for m in modules] == names
    services, problems = service_table(space, prof, BASE, modules)
    assert not problems
    assert [(s.number, s.symbol, s.owner) for s in services] == [
        (0, "nt!NtClose", "ntoskrnl.exe"),
        (1, "nt!NtOpenFile", "ntoskrnl.exe"),
        (2, None, "unknown"),
    ]
    put(ram, k(BASE + 0x4000) + 8, "<I", 1_000_000)  # a hostile limit is cut, not read
    services, problems = service_table(PagingAddressSpace32(BufferMemory({0: ram}), PD), prof, BASE, modules)
    assert "claims 1000000 entries" in problems[0]


def test_each_cpus_idt_resolves_to_kernel_functions_and_names_task_gates() -> None:
    from vmsentinel.os.windows.views.idt import read_idt
    from vmsentinel.os.windows.views.modules import NtModule

    ram, _ = nt_memory([(4, 0, "System")])
    k = lambda va: va - BASE + KPHYS  # noqa: E731
    pcr, idt, block = BASE + 0x6000, BASE + 0x7000, BASE + 0x8000
    put(ram, k(block), "<II", pcr + 0x120, 0)  # one CPU
    put(ram, k(pcr) + 0x1C, "<I", pcr)  # SelfPcr
    put(ram, k(pcr) + 0x38, "<I", idt)
    handler = BASE + 0x2200
    put(ram, k(idt) + 0x0E * 8, "<HHHH", handler & 0xFFFF, 8, 0x8E00, handler >> 16)  # page fault: KiTrap0E
    put(ram, k(idt) + 0x08 * 8, "<HHHH", 0, 0x50, 0x8500, 0)  # double fault: a task gate
    put(ram, k(idt) + 0x2E * 8, "<HHHH", 0x1234, 8, 0xEE00, 0x9000)  # system calls: somewhere no module is
    kint = (
        BASE + 0x300000
    )  # a device interrupt (in pool, past every module): the gate enters its interrupt object's dispatch code
    put(ram, k(kint), "<hh", 22, 0x1E4)
    put(ram, k(kint) + 12, "<I", BASE + 0x2300)  # ServiceRoutine, in the kernel
    entry = kint + 60
    put(ram, k(idt) + 0x31 * 8, "<HHHH", entry & 0xFFFF, 8, 0x8E00, entry >> 16)
    doc = isf()
    plain = {"kind": "base", "name": "unsigned long"}
    doc["user_types"]["_KPCR"] = {
        "kind": "struct",
        "size": 0x200,
        "fields": {n: {"offset": o, "type": plain} for n, o in (("SelfPcr", 0x1C), ("IDT", 0x38), ("PrcbData", 0x120))},
    }
    doc["user_types"]["_KINTERRUPT"] = {
        "kind": "struct",
        "size": 0x1E4,
        "fields": {n: {"offset": o, "type": plain} for n, o in (("ServiceRoutine", 12), ("DispatchCode", 60))},
    }
    prof = NtProfile(
        IsfTypes(doc, "synthetic"), {"KiProcessorBlock": 0x8000, "KiTrap0E": 0x2200}, ImageIdentity("ntoskrnl.exe", 0, 0), "s"
    )
    modules = [NtModule("ntoskrnl.exe", None, BASE, 0x200000, BASE, 0)]
    entries, problems = read_idt(PagingAddressSpace32(BufferMemory({0: ram}), PD), prof, BASE, modules)
    assert not problems
    assert [(e.vector, e.kind, e.symbol, e.owner) for e in entries] == [
        (0x08, "task", None, "task gate"),
        (0x0E, "interrupt", "nt!KiTrap0E", "ntoskrnl.exe"),
        (0x2E, "interrupt", None, "unknown"),
        (0x31, "interrupt", None, "interrupt object -> ntoskrnl.exe"),
    ]
    assert entries[-1].service_routine == BASE + 0x2300
    put(ram, k(pcr) + 0x1C, "<I", 0)  # a processor block that does not name itself is skipped, and said
    entries, problems = read_idt(PagingAddressSpace32(BufferMemory({0: ram}), PD), prof, BASE, modules)
    assert entries == [] and "SelfPcr" in problems[0]


def test_the_client_id_table_holds_a_process_the_list_lost_but_not_one_that_is_exiting() -> None:
    from vmsentinel.os.windows.views.cid_table import cid_table
    from vmsentinel.os.windows.views.processes import unlisted_processes

    names = [(4, 0, "System"), (80, 4, "smss.exe"), (140, 80, "winlogon.exe"), (200, 80, "gone.exe")]
    ram, eprocs = nt_memory(names)
    k = lambda va: va - BASE + KPHYS  # noqa: E731
    for e in eprocs:
        ram[k(e)] = 3  # the dispatcher header says: a process
    table, leaf = BASE + 0xA000, BASE + 0xB000
    put(ram, k(BASE + 0x9800), "<I", table)  # PspCidTable -> its handle table
    put(ram, k(table), "<I", leaf)  # TableCode: one level
    for (pid, _, _), e in zip(names, eprocs, strict=True):
        put(ram, k(leaf) + (pid // 4) * 8, "<II", e | 1, 0x1F0FFF)  # the object, with a flag bit
    thread = BASE + 0xC000
    ram[k(thread)] = 6  # a thread, at client ID 8
    put(ram, k(leaf) + 2 * 8, "<II", thread, 0x1F03FF)
    put(ram, k(leaf) + 3 * 8, "<II", 5, 0)  # a free entry: the next free index, no pointer
    # smss and gone.exe are unlinked; gone.exe is exiting (ExitTime set), smss is hidden
    put(ram, k(eprocs[0] + OFF["links"]), "<I", eprocs[2] + OFF["links"])
    put(ram, k(eprocs[2] + OFF["links"]), "<I", BASE + HEAD_RVA)
    put(ram, k(eprocs[3]) + 0x78, "<Q", 132_000_000_000_000_000)
    doc = isf()
    doc["user_types"]["_EPROCESS"]["fields"]["ExitTime"] = {"offset": 0x78, "type": {"kind": "base", "name": "unsigned long"}}
    doc["user_types"]["_HANDLE_TABLE"] = {"kind": "struct", "size": 0x44, "fields": {"TableCode": {"offset": 0, "type": {}}}}
    prof = NtProfile(
        IsfTypes(doc, "s"), {"PsActiveProcessHead": HEAD_RVA, "PspCidTable": 0x9800}, ImageIdentity("ntoskrnl.exe", 0, 0), "s"
    )
    mem = BufferMemory({0: ram})
    space = PagingAddressSpace32(mem, PD)
    listed, problems = list_processes(space, mem, prof, BASE)
    assert not problems and [p.pid for p in listed] == [4, 140]
    cids, problems = cid_table(space, prof, BASE)
    assert not problems and cids.processes == {4: eprocs[0], 80: eprocs[1], 140: eprocs[2], 200: eprocs[3]}
    assert cids.threads == {8: thread}
    hidden, problems = unlisted_processes(space, mem, prof, listed, cids.processes)
    assert not problems and [(p.pid, p.name) for p in hidden] == [(80, "smss.exe")]
    put(ram, k(table), "<I", leaf | 3)  # four levels: refused, not walked
    assert "four levels" in cid_table(PagingAddressSpace32(BufferMemory({0: ram}), PD), prof, BASE)[1][0]


def test_of_the_directories_mapping_the_kernels_header_the_one_mapping_its_code_is_kept() -> None:
    """A stale directory first in RAM (the boot loader's, an exited process's) maps the kernel's header
    page and nothing else; the live one after it maps the whole image: the live one is kept, so the
    views do not read the kernel's code as 'not in memory'."""
    ram, _ = nt_memory([(4, 0, "System")])
    live, table = 0x3000, 0x2000
    ram[live : live + 0x1000] = ram[PD : PD + 0x1000]
    put(ram, live + 0x300 * 4, "<I", live | P | RW)
    put(ram, PD + (BASE >> 22) * 4, "<I", table | P | RW)  # the stale one: a page table, one page in it
    put(ram, table, "<I", KPHYS | P | RW)
    mem = BufferMemory({0: ram})
    assert self_mapping_directories(mem) == [PD, live]
    kernel = find_nt_kernel(mem)
    assert (kernel.base, kernel.directory) == (BASE, live)
    assert image_pages_mapped(PagingAddressSpace32(mem, PD), BASE, 0x200000) == 1
    assert image_pages_mapped(PagingAddressSpace32(mem, live), BASE, 0x200000) == 0x200
