"""A Windows 10 x64 kernel found in synthetic memory alone: a PML4 whose self-map entry is random (two
indexes tried), a KASLR'd ntoskrnl.exe (PE32+) on 2 MiB pages, and its structures at the offsets of
Windows 10 build 17763 (tests/data/windows/win10_x64_17763_layout.json, taken from Volatility 2's
profile of that build): the process and module lists with 8-byte links, the relative x64 service
table, and the encoded KdDebuggerDataBlock. Hostile memory (a looping list, a page with two
self-maps, a service table claiming a million entries, a KDBG claiming a huge size) is cut short
with the reason, never followed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmsentinel.arch.x86_64 import NX, RW, US, P, PagingAddressSpace
from vmsentinel.errors import ProfileError
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.types import IsfTypes, load_isf
from vmsentinel.os.windows.locate64 import (
    KDBG_OFFSETS,
    KDBG_OWNER_TAG,
    KDBG_SIZE,
    decode_kdbg,
    encode_kdbg,
    find_nt_kernel_x64,
    kdbg_fields,
    read_kdbg,
    self_map_index_x64,
)
from vmsentinel.os.windows.profile.profile import ImageIdentity, NtProfile
from vmsentinel.os.windows.views.lists import walk_list
from vmsentinel.os.windows.views.modules import list_modules
from vmsentinel.os.windows.views.processes import list_processes
from vmsentinel.os.windows.views.services import service_table

LAYOUT = Path(__file__).parents[2] / "data" / "windows" / "win10_x64_17763_layout.json"
PS = 1 << 7
FLAGS = P | RW | (1 << 5) | (1 << 6)  # present, writable, accessed, dirty
BASE, KPHYS = 0xFFFF_F804_5A20_0000, 0x40_0000  # the kernel: 4 MiB on two 2 MiB pages
KSIZE = 0x40_0000
TIMESTAMP = 0x5BC2_F4A1
#: physical pages: the system PML4 and its kernel tables; a decoy PML4 without a kernel; a page with two
#: self-maps; winlogon's own PML4 and the tables of its user page
SYSTEM, PDPT, PD, DECOY, DOUBLE, OWN, UPDPT, UPD, UPT, USER = (0x10000 + i * 0x1000 for i in range(10))
DECOY_INDEX = 0x1C4
PEB = 0x0000_004F_2C5E_7000
RVA = {
    "NtClose": 0x2000,
    "NtOpenFile": 0x2100,
    "NtReadFile": 0x2200,
    "PsLoadedModuleList": 0x3000,
    "KeServiceDescriptorTable": 0x4000,
    "KiServiceTable": 0x5000,
    "PsActiveProcessHead": 0x6000,
    "KdDebuggerDataBlock": 0x20000,
    "KdpDataBlockEncoded": 0x21000,
    "KiWaitNever": 0x21008,
    "KiWaitAlways": 0x21010,
}
EPROCS = [BASE + 0x10000 + i * 0x1000 for i in range(3)]
RECORDS = [BASE + 0x3100, BASE + 0x3400]
NAMES = [(4, 0, "System"), (388, 4, "smss.exe"), (612, 520, "winlogon.exe")]
MODULES = [("ntoskrnl.exe", BASE, KSIZE), ("hal.dll", 0xFFFF_F804_59C0_0000, 0x10_0000)]
NEVER, ALWAYS = 0x8642_0975_31FE_DCBA, 0x0F1E_2D3C_4B5A_6978  # boot-random keys (NEVER & 0xFF = 186: a rotation of 58)
HAL_ENTRY = MODULES[1][1] + 0x3000
OUTSIDE = BASE + RVA["KiServiceTable"] + 0x700_0000  # past every module


def layout() -> dict:
    return load_isf(LAYOUT)


def off(struct_name: str, member: str) -> int:
    return IsfTypes(layout(), "17763").member_offset(struct_name, member)


def k(va: int) -> int:
    """Kernel virtual -> physical in the synthetic RAM."""
    assert BASE <= va < BASE + KSIZE
    return va - BASE + KPHYS


def put(ram: bytearray, at: int, fmt: str, *values: int) -> None:
    struct.pack_into(fmt, ram, at, *values)


def pe32plus_header() -> bytes:
    """A PE32+ (AMD64) header whose export directory names ntoskrnl.exe."""
    head = bytearray(0x1000)
    head[0:2] = b"MZ"
    put(head, 0x3C, "<I", 0x80)
    head[0x80:0x84] = b"PE\0\0"
    put(head, 0x84, "<HHIIIHH", 0x8664, 1, TIMESTAMP, 0, 0, 0xF0, 0x22)
    opt = 0x98
    put(head, opt, "<HBB", 0x20B, 14, 0)
    put(head, opt + 16, "<I", 0x1000)  # entry point
    put(head, opt + 24, "<Q", 0x1_4000_0000)  # image base
    put(head, opt + 32, "<II", 0x1000, 0x200)  # alignments
    put(head, opt + 56, "<II", KSIZE, 0x400)  # size of image, size of headers
    put(head, opt + 68, "<H", 1)  # subsystem: native
    put(head, opt + 108, "<I", 16)  # number of data directories
    put(head, opt + 112, "<II", 0x800, 0x40)  # export directory at RVA 0x800
    section = opt + 0xF0
    head[section : section + 8] = b".text\0\0\0"
    put(head, section + 8, "<IIII", 0x1000, 0x1000, 0x1000, 0x400)
    put(head, 0x800 + 12, "<I", 0x900)  # export directory: Name RVA
    head[0x900:0x90D] = b"ntoskrnl.exe\0"
    return bytes(head)


def table_entry(target: int, arguments: int = 0) -> int:
    """An x64 KiServiceTable entry: the target's offset from the table, shifted left 4, and the count of
    stack arguments in the low 4 bits (a signed 32-bit value)."""
    return ((target - (BASE + RVA["KiServiceTable"])) << 4) | arguments


def kdbg_plain(claimed: int = 0x380) -> bytes:
    """A Windows 10 17763 debugger data block (0x380 bytes) whose header claims ``claimed`` bytes."""
    block = bytearray(0x380)
    put(block, 0, "<QQ", BASE + 0x22000, BASE + 0x22000)  # Header.List
    block[KDBG_OWNER_TAG : KDBG_OWNER_TAG + 4] = b"KDBG"
    put(block, KDBG_SIZE, "<I", claimed)
    put(block, KDBG_OFFSETS["KernBase"], "<Q", BASE)
    put(block, KDBG_OFFSETS["PsLoadedModuleList"], "<Q", BASE + RVA["PsLoadedModuleList"])
    put(block, KDBG_OFFSETS["PsActiveProcessHead"], "<Q", BASE + RVA["PsActiveProcessHead"])
    put(block, KDBG_OFFSETS["PspCidTable"], "<Q", BASE + 0x23000)
    return bytes(block)


def unicode_string(ram: bytearray, at: int, text: str, buffer: int, buffer_phys: int) -> None:
    """An x64 UNICODE_STRING at physical ``at``: Length, MaximumLength, 4 bytes of padding, Buffer at +8."""
    data = text.encode("utf-16-le")
    put(ram, at, "<HHIQ", len(data), len(data) + 2, 0xCCCCCCCC, buffer)
    ram[buffer_phys : buffer_phys + len(data)] = data


def x64_memory(self_map: int) -> bytearray:
    """16 MiB of RAM holding a Windows 10 x64 kernel whose PML4 maps itself at entry ``self_map``."""
    ram = bytearray(0x100_0000)
    # the system PML4: self-map, and the kernel on two 2 MiB pages
    put(ram, SYSTEM + self_map * 8, "<Q", SYSTEM | FLAGS | NX)
    put(ram, SYSTEM + ((BASE >> 39) & 0x1FF) * 8, "<Q", PDPT | FLAGS)
    put(ram, PDPT + ((BASE >> 30) & 0x1FF) * 8, "<Q", PD | FLAGS)
    for i in range(2):
        put(ram, PD + (((BASE >> 21) & 0x1FF) + i) * 8, "<Q", (KPHYS + i * 0x20_0000) | FLAGS | PS)
    # a decoy (a self-mapped page that maps no kernel, found first) and a page that names itself twice
    put(ram, DECOY + DECOY_INDEX * 8, "<Q", DECOY | FLAGS)
    put(ram, DOUBLE + 0x150 * 8, "<Q", DOUBLE | FLAGS)
    put(ram, DOUBLE + 0x1D0 * 8, "<Q", DOUBLE | FLAGS)
    put(ram, DOUBLE + ((BASE >> 39) & 0x1FF) * 8, "<Q", PDPT | FLAGS)  # it would even map the kernel
    ram[k(BASE) : k(BASE) + 0x1000] = pe32plus_header()
    # the process list: PsActiveProcessHead -> _EPROCESS.ActiveProcessLinks, 8-byte Flink
    links_at = off("_EPROCESS", "ActiveProcessLinks")
    head = BASE + RVA["PsActiveProcessHead"]
    chain = [head, *(e + links_at for e in EPROCS), head]
    for i in range(len(chain) - 1):
        put(ram, k(chain[i]), "<QQ", chain[i + 1], chain[i - 1] if i else chain[-2])
    dtb = off("_EPROCESS", "Pcb") + off("_KPROCESS", "DirectoryTableBase")
    for e, (pid, ppid, name) in zip(EPROCS, NAMES, strict=True):
        put(ram, k(e) + off("_EPROCESS", "UniqueProcessId"), "<Q", pid)
        put(ram, k(e) + off("_EPROCESS", "InheritedFromUniqueProcessId"), "<Q", ppid)
        at = k(e) + off("_EPROCESS", "ImageFileName")
        ram[at : at + 15] = name.encode().ljust(15, b"\0")
        ram[at + 15] = 2  # PriorityClass, right after the 15 bytes of the name
        put(ram, k(e) + dtb, "<Q", SYSTEM)
        put(ram, k(e) + off("_EPROCESS", "CreateTime"), "<Q", 131_900_000_000_000_000 + pid)
    # the module list: PsLoadedModuleList -> _LDR_DATA_TABLE_ENTRY.InLoadOrderLinks
    head = BASE + RVA["PsLoadedModuleList"]
    chain = [head, *RECORDS, head]
    for i in range(len(chain) - 1):
        put(ram, k(chain[i]), "<Q", chain[i + 1])
    for record, (name, base, size) in zip(RECORDS, MODULES, strict=True):
        put(ram, k(record) + off("_LDR_DATA_TABLE_ENTRY", "DllBase"), "<QQ", base, base + 0x3000)
        put(ram, k(record) + off("_LDR_DATA_TABLE_ENTRY", "SizeOfImage"), "<I", size)
        full = "\\SystemRoot\\system32\\" + name
        unicode_string(ram, k(record) + off("_LDR_DATA_TABLE_ENTRY", "FullDllName"), full, record + 0x200, k(record) + 0x200)
        unicode_string(ram, k(record) + off("_LDR_DATA_TABLE_ENTRY", "BaseDllName"), name, record + 0x180, k(record) + 0x180)
    # the service table: KeServiceDescriptorTable {Base, Count, Limit, Number} -> relative entries
    table = BASE + RVA["KiServiceTable"]
    descriptor = k(BASE + RVA["KeServiceDescriptorTable"])
    put(ram, descriptor + off("_KSERVICE_TABLE_DESCRIPTOR", "Base"), "<Q", table)
    put(ram, descriptor + off("_KSERVICE_TABLE_DESCRIPTOR", "Limit"), "<I", 4)
    entries = [table_entry(BASE + RVA["NtClose"]), table_entry(BASE + RVA["NtOpenFile"], 6), table_entry(OUTSIDE)]
    entries.append(table_entry(HAL_ENTRY, 1))  # before the table by far: a negative entry
    for i, entry in enumerate(entries):
        put(ram, k(table) + 4 * i, "<i", entry)
    # the debugger data block, encoded with the boot's keys
    flag = BASE + RVA["KdpDataBlockEncoded"]
    block = kdbg_plain()
    ram[k(BASE + RVA["KdDebuggerDataBlock"]) : k(BASE + RVA["KdDebuggerDataBlock"]) + len(block)] = encode_kdbg(
        block, flag, NEVER, ALWAYS
    )
    ram[k(flag)] = 1
    put(ram, k(BASE + RVA["KiWaitNever"]), "<QQ", NEVER, ALWAYS)
    return ram


def profile() -> NtProfile:
    identity = ImageIdentity("ntoskrnl.exe", TIMESTAMP, KSIZE, machine=0x8664)
    symbols = {name: rva for name, rva in RVA.items() if name != "KiServiceTable"}
    return NtProfile(IsfTypes(layout(), "win10 x64 17763 (Volatility 2 vtypes)"), symbols, identity, "synthetic")


def give_winlogon_its_own_pml4(ram: bytearray, self_map: int) -> None:
    """winlogon's PML4 shares the kernel half and maps its PEB, parameters and strings in a user page."""
    ram[OWN + 0x800 : OWN + 0x1000] = ram[SYSTEM + 0x800 : SYSTEM + 0x1000]
    put(ram, OWN + self_map * 8, "<Q", OWN | FLAGS | NX)
    put(ram, OWN + ((PEB >> 39) & 0x1FF) * 8, "<Q", UPDPT | FLAGS | US)
    put(ram, UPDPT + ((PEB >> 30) & 0x1FF) * 8, "<Q", UPD | FLAGS | US)
    put(ram, UPD + ((PEB >> 21) & 0x1FF) * 8, "<Q", UPT | FLAGS | US)
    put(ram, UPT + ((PEB >> 12) & 0x1FF) * 8, "<Q", USER | FLAGS | US)
    params = PEB + 0x400
    put(ram, USER + off("_PEB", "ProcessParameters"), "<Q", params)
    path = "\\??\\C:\\Windows\\system32\\winlogon.exe"
    unicode_string(ram, USER + 0x400 + off("_RTL_USER_PROCESS_PARAMETERS", "ImagePathName"), path, PEB + 0x800, USER + 0x800)
    line = "winlogon.exe -x"
    unicode_string(ram, USER + 0x400 + off("_RTL_USER_PROCESS_PARAMETERS", "CommandLine"), line, PEB + 0xA00, USER + 0xA00)
    e = k(EPROCS[2])
    put(ram, e + off("_EPROCESS", "Pcb") + off("_KPROCESS", "DirectoryTableBase"), "<Q", OWN)
    put(ram, e + off("_EPROCESS", "Peb"), "<Q", PEB)


def kernel_space(ram: bytearray) -> tuple[BufferMemory, PagingAddressSpace]:
    mem = BufferMemory({0: ram})
    return mem, PagingAddressSpace(mem, SYSTEM, levels=4)


# -- the layout fixture ----------------------------------------------------------------------------


def test_the_layout_is_windows_10_17763_x64() -> None:
    doc = layout()
    assert "win10_x64_17763_vtypes.py" in str(doc["source"]["files"]) and "17763" in doc["source"]["build"]
    assert [off("_EPROCESS", m) for m in ("UniqueProcessId", "ActiveProcessLinks", "InheritedFromUniqueProcessId")] == [
        0x2E0,
        0x2E8,
        0x3E0,
    ]
    assert (off("_UNICODE_STRING", "Length"), off("_UNICODE_STRING", "Buffer")) == (0, 8)
    # the debugger data block's members are the ABI the decoder reads at
    assert off("_KDDEBUGGER_DATA64", "Header.OwnerTag") == KDBG_OWNER_TAG
    assert off("_KDDEBUGGER_DATA64", "Header.Size") == KDBG_SIZE
    assert {name: off("_KDDEBUGGER_DATA64", name) for name in KDBG_OFFSETS} == KDBG_OFFSETS
    assert profile().pointer_size == 8


# -- the kernel from memory alone ------------------------------------------------------------------


@pytest.mark.parametrize("self_map", [0x1ED, 0x12A], ids=hex)
def test_the_kernel_is_found_from_memory_alone_whatever_the_self_map_index(self_map: int) -> None:
    mem = BufferMemory({0: x64_memory(self_map)})
    # the decoy comes first, the page with two self-maps is no candidate
    assert self_map_index_x64(mem) == [(SYSTEM, self_map), (DECOY, DECOY_INDEX)]
    kernel = find_nt_kernel_x64(mem)
    assert (kernel.base, kernel.directory, kernel.self_map_index, kernel.pae) == (BASE, SYSTEM, self_map, False)
    header = kernel.header
    assert (header.export_name, header.machine, header.timestamp, header.size_of_image) == (
        "ntoskrnl.exe",
        0x8664,
        TIMESTAMP,
        KSIZE,
    )


def test_a_live_cr3_is_tried_first() -> None:
    ram = x64_memory(0x1ED)
    give_winlogon_its_own_pml4(ram, 0x1ED)
    kernel = find_nt_kernel_x64(BufferMemory({0: ram}), cr3=OWN | 0x2)  # low bits (PCID) are dropped
    assert (kernel.base, kernel.directory, kernel.self_map_index) == (BASE, OWN, 0x1ED)


def test_no_x64_kernel_is_said_plainly() -> None:
    ram = x64_memory(0x1ED)
    ram[k(BASE) : k(BASE) + 2] = b"ZM"
    with pytest.raises(ProfileError, match=r"no x64 NT kernel found: 2 PML4 candidates"):
        find_nt_kernel_x64(BufferMemory({0: ram}))


def test_a_pml4_that_names_itself_twice_is_no_candidate() -> None:
    ram = x64_memory(0x1ED)
    put(ram, SYSTEM + 0x1EE * 8, "<Q", SYSTEM | FLAGS)  # the system PML4 gets a second self-map
    mem = BufferMemory({0: ram})
    assert self_map_index_x64(mem) == [(DECOY, DECOY_INDEX)]
    with pytest.raises(ProfileError, match="no x64 NT kernel"):
        find_nt_kernel_x64(mem)
    put(ram, SYSTEM + 0x1EE * 8, "<Q", (SYSTEM + 0x1000) | FLAGS)  # naming another page is not a self-map
    assert self_map_index_x64(mem)[0] == (SYSTEM, 0x1ED)


def test_the_candidate_scan_is_bounded() -> None:
    ram = bytearray(0x40000)
    for page in range(0, len(ram), 0x1000):  # every page a forged PML4
        put(ram, page + 0x100 * 8, "<Q", page | P)
    assert len(self_map_index_x64(BufferMemory({0: ram}), limit=5)) == 5


# -- the lists, with 8-byte links ------------------------------------------------------------------


def test_the_process_list_in_order_with_17763_offsets() -> None:
    ram = x64_memory(0x1ED)
    give_winlogon_its_own_pml4(ram, 0x1ED)
    mem, space = kernel_space(ram)
    procs, problems = list_processes(space, mem, profile(), BASE)
    assert not problems
    assert [(p.pid, p.ppid, p.name) for p in procs] == NAMES
    assert [p.eprocess for p in procs] == EPROCS
    assert [p.directory for p in procs] == [SYSTEM, SYSTEM, OWN]
    assert procs[0].create_time == 131_900_000_000_000_004
    assert procs[2].image_path == "\\??\\C:\\Windows\\system32\\winlogon.exe" and procs[2].command_line == "winlogon.exe -x"
    assert procs[0].image_path is None  # no PEB


def test_a_fifteen_character_name_stops_before_priority_class() -> None:
    ram = x64_memory(0x1ED)
    at = k(EPROCS[1]) + off("_EPROCESS", "ImageFileName")
    ram[at : at + 15] = b"MsMpEngCP.exe.x"
    mem, space = kernel_space(ram)
    procs, _ = list_processes(space, mem, profile(), BASE)
    assert procs[1].name == "MsMpEngCP.exe.x"


def test_a_looping_or_broken_process_list_stops_with_the_reason() -> None:
    ram = x64_memory(0x1ED)
    links = off("_EPROCESS", "ActiveProcessLinks")
    put(ram, k(EPROCS[2] + links), "<Q", EPROCS[1] + links)  # winlogon -> smss again
    mem, space = kernel_space(ram)
    procs, problems = list_processes(space, mem, profile(), BASE)
    assert [p.pid for p in procs] == [4, 388, 612] and "loops back" in problems[0]
    put(ram, k(EPROCS[1] + links), "<Q", 0x0000_7FFF_0000_0000)  # smss -> unmapped
    procs, problems = list_processes(space, mem, profile(), BASE)
    assert [p.pid for p in procs] == [4, 388] and "breaks at" in problems[0]
    put(ram, k(EPROCS[1] + links), "<Q", 0x1234_5678_9ABC_DEF0)  # smss -> not even canonical
    procs, problems = list_processes(space, mem, profile(), BASE)
    assert [p.pid for p in procs] == [4, 388] and "breaks at" in problems[0]


def test_walk_list_reads_four_byte_links_unless_told() -> None:
    ram = x64_memory(0x1ED)
    _, space = kernel_space(ram)
    head = BASE + RVA["PsActiveProcessHead"]
    links = off("_EPROCESS", "ActiveProcessLinks")
    assert walk_list(space, head, links, "process", pointer_size=8) == (EPROCS, [])
    objects, problems = walk_list(space, head, links, "process")  # 4 bytes of a kernel pointer: nowhere
    assert objects == [] and "breaks at" in problems[0]
    with pytest.raises(ValueError, match="4 or 8"):
        walk_list(space, head, links, "process", pointer_size=6)


def test_modules_with_x64_unicode_strings() -> None:
    _, space = kernel_space(x64_memory(0x1ED))
    modules, problems = list_modules(space, profile(), BASE)
    assert not problems
    assert [(m.name, m.base, m.size, m.entry) for m in modules] == [(n, b, s, b + 0x3000) for n, b, s in MODULES]
    assert modules[1].path == "\\SystemRoot\\system32\\hal.dll" and modules[0].record == RECORDS[0]


# -- the service table -----------------------------------------------------------------------------


def test_relative_service_entries_resolve_to_the_kernels_functions() -> None:
    ram = x64_memory(0x1ED)
    _, space = kernel_space(ram)
    prof = profile()
    modules, _ = list_modules(space, prof, BASE)
    services, problems = service_table(space, prof, BASE, modules)
    assert not problems
    assert [(s.number, s.address, s.symbol, s.owner) for s in services] == [
        (0, BASE + RVA["NtClose"], "nt!NtClose", "ntoskrnl.exe"),  # a negative entry: before the table
        (1, BASE + RVA["NtOpenFile"], "nt!NtOpenFile", "ntoskrnl.exe"),  # argument count in the low bits
        (2, OUTSIDE, None, "unknown"),
        (3, HAL_ENTRY, None, "hal.dll"),
    ]


def test_a_hostile_service_table_is_cut_or_refused() -> None:
    ram = x64_memory(0x1ED)
    limit_at = k(BASE + RVA["KeServiceDescriptorTable"]) + off("_KSERVICE_TABLE_DESCRIPTOR", "Limit")
    put(ram, limit_at, "<I", 1_000_000)
    _, space = kernel_space(ram)
    services, problems = service_table(space, profile(), BASE, [])
    assert "claims 1000000 entries" in problems[0] and len(services) == 4096
    base_at = k(BASE + RVA["KeServiceDescriptorTable"]) + off("_KSERVICE_TABLE_DESCRIPTOR", "Base")
    put(ram, base_at, "<Q", 0xFFFF_F804_0000_0000)  # a table nowhere mapped
    services, problems = service_table(kernel_space(ram)[1], profile(), BASE, [])
    assert services == [] and "cannot be read" in problems[-1]
    bare = NtProfile(IsfTypes({"user_types": {}}, "empty"), {}, ImageIdentity("ntoskrnl.exe", 0, 0, 0x8664), "empty")
    assert "lacks" in service_table(space, bare, BASE, [])[1][0]


# -- the debugger data block -----------------------------------------------------------------------


def test_kdbg_decoding_is_what_kdcopydatablock_does() -> None:
    flag = BASE + RVA["KdpDataBlockEncoded"]
    plain = kdbg_plain()
    encoded = encode_kdbg(plain, flag, NEVER, ALWAYS)
    assert encoded[KDBG_OWNER_TAG : KDBG_OWNER_TAG + 4] != b"KDBG"
    assert decode_kdbg(encoded, flag, NEVER, ALWAYS) == plain
    # one word worked by hand: KiWaitAlways ^ bswap(&KdpDataBlockEncoded ^ rol(KiWaitNever ^ w, KiWaitNever))
    (word,) = struct.unpack_from("<Q", encoded, 0x18)
    x = word ^ NEVER
    x = ((x << 58) | (x >> 6)) & (2**64 - 1)  # NEVER & 0xFF = 186, a rotation of 186 % 64 = 58
    x = int.from_bytes((x ^ flag).to_bytes(8, "little"), "big") ^ ALWAYS
    assert x == BASE
    # the block's own address is not the key
    wrong = kdbg_fields(decode_kdbg(encoded, BASE + RVA["KdDebuggerDataBlock"], NEVER, ALWAYS))
    assert wrong is not None and (wrong["Size"], wrong["KernBase"]) != (0x380, BASE)
    assert decode_kdbg(encoded[:13], flag, NEVER, ALWAYS) == plain[:8]  # a part word is left out


def test_the_kdbg_fields_are_what_was_encoded() -> None:
    fields = kdbg_fields(kdbg_plain())
    assert fields == {
        "OwnerTag": "KDBG",
        "Size": 0x380,
        "KernBase": BASE,
        "PsLoadedModuleList": BASE + RVA["PsLoadedModuleList"],
        "PsActiveProcessHead": BASE + RVA["PsActiveProcessHead"],
        "PspCidTable": BASE + 0x23000,
    }
    assert kdbg_fields(b"KDBG") is None
    _, space = kernel_space(x64_memory(0x12A))
    read, problems = read_kdbg(space, profile(), BASE)
    assert not problems and read == fields


def test_a_kdbg_in_the_clear_or_claiming_too_much_or_not_there() -> None:
    ram = x64_memory(0x1ED)
    block_at = k(BASE + RVA["KdDebuggerDataBlock"])
    ram[block_at : block_at + 0x380] = kdbg_plain()  # decoded by an acquisition tool, the flag still set
    _, space = kernel_space(ram)
    fields, problems = read_kdbg(space, profile(), BASE)
    assert not problems and fields is not None and fields["KernBase"] == BASE
    ram[block_at : block_at + 0x380] = encode_kdbg(kdbg_plain(0xFFFF_FFF0), BASE + RVA["KdpDataBlockEncoded"], NEVER, ALWAYS)
    fields, problems = read_kdbg(kernel_space(ram)[1], profile(), BASE)
    assert fields is not None and fields["PsActiveProcessHead"] == BASE + RVA["PsActiveProcessHead"]
    assert "claims 4294967280 bytes" in problems[0]
    ram[block_at : block_at + 0x380] = bytes(0x380)
    fields, problems = read_kdbg(kernel_space(ram)[1], profile(), BASE)
    assert fields is None and "does not read KDBG" in problems[0]
