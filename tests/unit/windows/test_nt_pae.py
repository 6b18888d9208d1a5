"""A 32-bit PAE NT kernel (how real 32-bit Windows runs) found in synthetic memory alone: the top GB's
page directory that names itself and its three siblings through entries 0..3 (the self-map at
0xC0600000), the page-directory-pointer table naming the four (32-byte aligned, not page aligned),
then the kernel's image through it; and the guest read through three-level paging, each process's
PEB through its own PDPT. Forged self-maps and copied PDPTs are bounded, never believed blindly."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
from tests.unit.windows.test_nt_memory import BASE, KPHYS, OFF, put
from tests.unit.windows.test_windows_guest import guest_memory

from vmsentinel.arch.x86_32 import PS, RW, US, P, PagingAddressSpace32
from vmsentinel.errors import ProfileError, VmSentinelError
from vmsentinel.memory.buffer import BufferMemory
from vmsentinel.os.types import IsfTypes
from vmsentinel.os.windows.guest import WindowsGuest
from vmsentinel.os.windows.locate import (
    MAX_CANDIDATES,
    MAX_PDPTS_PER_DIRECTORY,
    find_nt_kernel,
    pae_directories,
    pae_self_maps,
    self_mapping_directories,
)
from vmsentinel.os.windows.profile.profile import ImageIdentity, NtProfile
from vmsentinel.os.windows.views.processes import list_processes

#: the system's PDPT (what CR3 holds: 32-byte aligned, not page aligned) and its four directories
PDPT, PDS = 0x5020, (0x10000, 0x11000, 0x12000, 0x13000)
#: winlogon's own PDPT and directories (the kernel's GB, PD2, is shared), a page table and a user page
OWN_PDPT, OWN_PDS, OWN_PT, OWN_USER = 0x5040, (0x20000, 0x21000, 0x12000, 0x23000), 0x24000, 0x25000
PEB = 0x7FFD0000
#: what NT puts in a page-directory entry it uses (present, writable, accessed, dirty): RW, A and D are
#: reserved bits in a PDPT entry, so a PD3 is never taken for the PDPT that names the same four pages
PDE_FLAGS = P | RW | 0x60
PWT = 1 << 3
PATH, LINE = "\\Device\\HarddiskVolume1\\WINDOWS\\system32\\winlogon.exe", "winlogon.exe -v"


def pae_tables(ram: bytearray, pdpt: int, pds: tuple[int, int, int, int], flags: int = P) -> None:
    """A PDPT at ``pdpt`` naming ``pds``, and the self-map: PD3's entries 0..3 name PD0..PD3."""
    for index, pd in enumerate(pds):
        put(ram, pdpt + index * 8, "<Q", pd | flags)
        put(ram, pds[3] + index * 8, "<Q", pd | PDE_FLAGS)


def pae_memory() -> tuple[bytearray, list[int], dict[str, Any]]:
    """``guest_memory`` of test_windows_guest (System, smss unlinked, winlogon; the loader's list, a
    service table with one entry outside every module) paged with PAE: its non-PAE directory erased,
    the kernel's 4 MiB mapped by two 2 MiB pages, every DirectoryTableBase the system PDPT but
    winlogon's, whose own PDPT maps its PEB, parameters and strings at 0x7FFD0000."""
    ram, eprocs, parts = guest_memory()
    ram[0x1000:0x2000] = bytes(0x1000)  # no non-PAE directory left
    pae_tables(ram, PDPT, PDS)
    for half in range(2):  # 0x80400000 and 0x80600000: 2 MiB pages
        put(ram, PDS[2] + ((BASE >> 21) & 0x1FF) * 8 + half * 8, "<Q", (KPHYS + (half << 21)) | P | RW | PS)
    pae_tables(ram, OWN_PDPT, OWN_PDS, P | PWT)  # flags of a PDPT entry are not compared
    put(ram, OWN_PDS[1] + ((PEB >> 21) & 0x1FF) * 8, "<Q", OWN_PT | P | RW | US)
    put(ram, OWN_PT + ((PEB >> 12) & 0x1FF) * 8, "<Q", OWN_USER | P | RW | US)
    path, line = PATH.encode("utf-16-le"), LINE.encode("utf-16-le")
    put(ram, OWN_USER + 0x10, "<I", PEB + 0x100)  # PEB.ProcessParameters
    put(ram, OWN_USER + 0x100 + 0x38, "<HHI", len(path), len(path) + 2, PEB + 0x200)
    put(ram, OWN_USER + 0x100 + 0x40, "<HHI", len(line), len(line) + 2, PEB + 0x400)
    ram[OWN_USER + 0x200 : OWN_USER + 0x200 + len(path)] = path
    ram[OWN_USER + 0x400 : OWN_USER + 0x400 + len(line)] = line
    for e in eprocs:
        put(ram, e - BASE + KPHYS + OFF["dtb"], "<I", PDPT)
    winlogon = eprocs[2] - BASE + KPHYS
    put(ram, winlogon + OFF["dtb"], "<I", OWN_PDPT)
    put(ram, winlogon + OFF["peb"], "<I", PEB)
    return ram, eprocs, parts


def open_pae() -> WindowsGuest:
    ram, _, parts = pae_memory()
    memory = BufferMemory({0: ram})
    connector: Any = SimpleNamespace(memory=memory, spec="synthetic-pae", live=False, layout_source="none", close=lambda: None)
    prof = NtProfile(IsfTypes(parts["doc"], "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    return WindowsGuest(connector, find_nt_kernel(memory), prof, None)


def test_the_pae_kernel_is_found_by_its_pdpt_from_memory_alone() -> None:
    memory = BufferMemory({0: pae_memory()[0]})
    assert self_mapping_directories(memory) == []  # nothing non-PAE to find
    assert pae_self_maps(memory) == [PDS, OWN_PDS]
    # PD3's first 32 bytes name PD0..PD3 in order too, but with bits a PDPT entry must not have
    assert pae_directories(memory) == [PDPT, OWN_PDPT]
    kernel = find_nt_kernel(memory)
    assert (kernel.base, kernel.directory, kernel.pae, kernel.header.export_name) == (BASE, PDPT, True, "ntoskrnl.exe")


def test_a_live_cr3_is_tried_as_a_pdpt_first_when_it_is_not_page_aligned_or_when_non_pae_fails() -> None:
    ram = pae_memory()[0]
    ram[0x6000:0x6020] = ram[OWN_PDPT : OWN_PDPT + 0x20]  # a page-aligned copy of winlogon's PDPT
    memory = BufferMemory({0: ram})
    found = find_nt_kernel(memory, cr3=OWN_PDPT | 0x18)  # PWT and PCD set: not part of the address
    assert (found.directory, found.pae) == (OWN_PDPT, True)
    found = find_nt_kernel(memory, cr3=0x6000)  # page aligned: tried as a non-PAE directory, then as a PDPT
    assert (found.directory, found.pae) == (0x6000, True)


def test_the_processes_of_a_pae_guest_with_their_pebs_read_through_their_own_pdpts() -> None:
    guest = open_pae()
    assert guest.kernel.pae and guest.about()["paging_levels"] == 3
    sweep = guest.tasks()
    assert not sweep.problems, sweep.problems
    by_pid = {t.pid: t for t in sweep.tasks}
    assert sorted(by_pid) == [4, 80, 140]
    assert by_pid[80].sources == ("PspCidTable",)  # unlinked from the active list, still in the table
    assert by_pid[140].exe == PATH and by_pid[140].cmdline == (LINE,) and by_pid[140].threads == (144,)
    assert by_pid[4].exe is None  # System has no PEB
    scanned = guest.tasks(scan=True)
    assert any("no memory scan for PAE NT processes yet" in p for p in scanned.problems)
    assert sorted(t.pid for t in scanned.tasks) == [4, 80, 140]
    assert [(e.index, e.symbol, e.owner) for e in guest.syscalls().syscalls] == [
        (0, "nt!NtClose", "kernel"),
        (1, "nt!NtOpenFile", "kernel"),
        (2, None, "unknown"),
    ]
    user = [(r.pid, r.start, r.size) for r in guest.regions(sweep, []) if r.label == "user memory"]
    assert user == [(140, PEB, 0x1000)]  # winlogon's own PDPT; the others map no user memory


def test_a_non_pae_read_of_a_pae_pdpt_finds_no_peb() -> None:
    """The same process list read as if non-PAE: nothing crashes, the PEB is simply not read."""
    ram, _, parts = pae_memory()
    memory = BufferMemory({0: ram})
    prof = NtProfile(IsfTypes(parts["doc"], "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    kernel = PagingAddressSpace32(memory, PDPT, pae=True)
    procs, problems = list_processes(kernel, memory, prof, BASE)
    assert not problems and [p.pid for p in procs] == [4, 140] and procs[1].command_line is None
    procs, _ = list_processes(kernel, memory, prof, BASE, pae=True)
    assert procs[1].command_line == LINE


def test_a_self_naming_page_without_a_pdpt_is_not_returned() -> None:
    ram = bytearray(0x40000)
    pds = (0x10000, 0x11000, 0x12000, 0x13000)
    for index, pd in enumerate(pds):
        put(ram, pds[3] + index * 8, "<Q", pd | PDE_FLAGS)
    put(ram, 0x20000 + 3 * 8, "<Q", 0x20000 | P)  # names itself, but entries 0..2 name nothing
    put(ram, 0x21000, "<4Q", 0x10000 | P, 0x10000 | P, 0x11000 | P, 0x21000 | P)  # the same directory twice
    put(ram, 0x22000, "<4Q", 0x10000 | P, 0x11000 | P, 0x80000000 | P, 0x22000 | P)  # a directory outside RAM
    put(ram, 0x23000, "<4Q", 0x10000 | P, 0x11000 | P | PS, 0x12000 | P, 0x23000 | P)  # a large page
    memory = BufferMemory({0: ram})
    assert pae_self_maps(memory) == [pds]
    assert pae_directories(memory) == []
    with pytest.raises(ProfileError, match="0 page directories and 0 PAE page-directory-pointer tables tried"):
        find_nt_kernel(memory)
    put(ram, 0x8000, "<4Q", 0x10000 | P, 0x11000 | P, 0x12000 | P, 0x13000 | P | (1 << 8))  # a reserved bit
    put(ram, 0x8040, "<4Q", 0x10000 | P, 0x11000 | P, 0x13000 | P, 0x12000 | P)  # out of order
    put(ram, 0x8068, "<4Q", 0x10000 | P, 0x11000 | P, 0x12000 | P, 0x13000 | P)  # not 32-byte aligned
    assert pae_directories(BufferMemory({0: ram})) == []


def test_pdpts_naming_the_same_directories_are_all_fine_and_bounded() -> None:
    ram = pae_memory()[0]
    ram[0x7000:0x7020] = ram[PDPT : PDPT + 0x20]  # a second PDPT naming the system's directories
    memory = BufferMemory({0: ram})
    assert pae_directories(memory) == [PDPT, OWN_PDPT, 0x7000]
    assert find_nt_kernel(memory).directory == PDPT
    for copy in range(0x30000, 0x31000, 0x20):  # 128 more copies
        ram[copy : copy + 0x20] = ram[PDPT : PDPT + 0x20]
    found = pae_directories(BufferMemory({0: ram}))
    assert MAX_PDPTS_PER_DIRECTORY == 4 and found == [PDPT, OWN_PDPT, 0x7000, 0x30000, 0x30020]  # 4 of the system's
    assert len(pae_directories(BufferMemory({0: ram}), limit=2)) == 2


def test_ram_full_of_self_naming_pages_is_bounded_by_the_limit() -> None:
    """Every page of 4 MiB is a PD3 candidate with a PDPT naming it: the scans stop at ``limit``, and
    the search for a kernel behind all of them ends, said plainly."""
    ram = bytearray(0x400000)
    for page in range(0x4000, len(ram), 0x1000):
        put(ram, page, "<4Q", 0x1000 | PDE_FLAGS, 0x2000 | PDE_FLAGS, 0x3000 | PDE_FLAGS, page | PDE_FLAGS)
        put(ram, page + 0xFE0, "<4Q", 0x1000 | P, 0x2000 | P, 0x3000 | P, page | P)
    memory = BufferMemory({0: ram})
    assert len(pae_self_maps(memory, limit=5)) == 5
    assert len(pae_self_maps(memory)) == MAX_CANDIDATES
    assert pae_directories(memory, limit=7) == [page + 0xFE0 for page in range(0x4000, 0xB000, 0x1000)]
    started = time.monotonic()
    with pytest.raises(ProfileError, match=f"and {MAX_CANDIDATES} PAE page-directory-pointer tables tried"):
        find_nt_kernel(memory)
    assert time.monotonic() - started < 30


def test_hostile_pae_memory_raises_no_more_than_a_profile_error() -> None:
    """Seeded mutations of the tables, the PE header and the process list (and RAM of random words
    with self-naming pages in it): the finder and the guest's views say what they cannot read; they
    do not crash, and each case ends."""
    base_ram, eprocs, parts = pae_memory()
    prof = NtProfile(IsfTypes(parts["doc"], "s"), parts["symbols"], ImageIdentity("ntoskrnl.exe", 0, 0), "synthetic")
    pages = [PDS[2], PDS[3], OWN_PDS[1], OWN_PDS[3], OWN_PT, OWN_USER, KPHYS, KPHYS + 0x10000, KPHYS + 0x3000]
    # the words that matter most: the PDPTs, the self-maps, the kernel's 2 MiB entries, the PEB's page
    # table entry, the PE header's pointers, winlogon's directory and PEB
    spots = [PDPT, OWN_PDPT, PDS[3], OWN_PDS[3], PDS[2] + 0x10, OWN_PDS[1] + 0xFF8, OWN_PT + 0xE80, KPHYS + 0x3C]
    spots += [KPHYS + 0x800, KPHYS + 0xD8, eprocs[2] - BASE + KPHYS + OFF["dtb"], eprocs[2] - BASE + KPHYS + OFF["peb"]]
    rng = random.Random(20261206)
    found = 0
    for _case in range(80):
        ram = bytearray(base_ram)
        for _ in range(rng.randint(1, 4)):
            at = (
                rng.choice(spots) + rng.randrange(0, 32, 4)
                if rng.random() < 0.7
                else rng.choice(pages) + rng.randrange(0, 0x1000, 4)
            )
            word = rng.choice([0, 1, 0xFFFFFFFF, rng.getrandbits(32), rng.choice(pages + spots) | rng.getrandbits(5)])
            put(ram, at, "<I", word)
        memory = BufferMemory({0: ram})
        try:
            kernel = find_nt_kernel(memory)
        except ProfileError:
            continue
        found += 1
        connector: Any = SimpleNamespace(memory=memory, spec="fuzz", live=False, layout_source="none", close=lambda: None)
        guest = WindowsGuest(connector, kernel, prof, None)
        try:
            sweep = guest.tasks(scan=True)
            guest.regions(sweep, [])
            guest.syscalls()
        except VmSentinelError:
            pass
    assert 0 < found < 80  # some mutations hide the kernel, others leave it to the views
    for _case in range(4):
        ram = bytearray(rng.getrandbits(8) for _ in range(0x20000))
        for page in rng.sample(range(0, 0x20000, 0x1000), 8):
            put(ram, page + 24, "<Q", page | P)
        with pytest.raises(ProfileError):
            find_nt_kernel(BufferMemory({0: ram}))
