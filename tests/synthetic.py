"""Builders of synthetic guests for unit tests: page tables in BufferMemory."""

from __future__ import annotations

from vmsentinel.arch.x86_64 import NX, PS, RW, US, P
from vmsentinel.memory.buffer import BufferMemory

PAGE = 0x1000
_SHIFT = {1: 12, 2: 21, 3: 30, 4: 39, 5: 48}


class PageTableBuilder:
    """Allocates page tables from a pool and maps pages, like a tiny kernel."""

    def __init__(self, mem: BufferMemory, levels: int = 4, pool_start: int = 0x100000, pool_end: int = 0x400000) -> None:
        self.mem = mem
        self.levels = levels
        self.next_free = pool_start
        self.pool_end = pool_end
        self.root = self.alloc_table()

    def alloc_table(self) -> int:
        addr = self.next_free
        assert addr + PAGE <= self.pool_end, "page-table pool exhausted"
        self.next_free += PAGE
        self.mem.write(addr, bytes(PAGE))
        return addr

    def map(
        self,
        vaddr: int,
        paddr: int,
        size: int = PAGE,
        writable: bool = True,
        user: bool = False,
        nx: bool = False,
        upper_flags: int = P | RW | US,
    ) -> None:
        leaf_level = {PAGE: 1, 1 << 21: 2, 1 << 30: 3}[size]
        table = self.root
        for level in range(self.levels, leaf_level, -1):
            index = (vaddr >> _SHIFT[level]) & 0x1FF
            slot = table + index * 8
            entry = self.mem.read_u64(slot)
            if not entry & P:
                entry = self.alloc_table() | upper_flags
                self.mem.write_u64(slot, entry)
            table = entry & 0x000FFFFFFFFFF000
        flags = P | (RW if writable else 0) | (US if user else 0) | (NX if nx else 0) | (PS if leaf_level > 1 else 0)
        self.mem.write_u64(table + ((vaddr >> _SHIFT[leaf_level]) & 0x1FF) * 8, paddr | flags)

    def set_entry(self, table: int, index: int, value: int) -> None:
        self.mem.write_u64(table + index * 8, value)


def new_memory(size: int = 0x800000) -> BufferMemory:
    return BufferMemory({0: bytearray(size)})


def write_elf_core(path: str, loads: list[tuple[int, bytes]], cr3: int = 0, cr4: int = 0, cpus: int = 1) -> None:
    """A minimal ELF core like QEMU's dump-guest-memory: QEMU notes + PT_LOAD by physical address."""
    import struct

    desc = bytearray(8 + 18 * 8 + 10 * 24 + 6 * 8)
    struct.pack_into("<II", desc, 0, 1, len(desc))
    struct.pack_into("<5Q", desc, 8 + 18 * 8 + 10 * 24, 0x80050033, 0, 0, cr3, cr4)
    note = struct.pack("<III", 5, len(desc), 0) + b"QEMU\0\0\0\0" + bytes(desc)
    notes = note * cpus
    phnum = 1 + len(loads)
    ehsize, phentsize = 64, 56
    data_off = ehsize + phnum * phentsize
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, data_off, 0, 0, len(notes), len(notes), 0)]
    body = bytearray(notes)
    for paddr, data in loads:
        offset = data_off + len(body)
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, 0, paddr, len(data), len(data), 0))
        body += data
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(header + b"".join(phdrs) + body)


DIRECT_MAP = 0xFFFF888000000000  # a synthetic kernel's direct map: DIRECT_MAP + p is physical p


def synthetic_kernel_reader(btf_blob: bytes, ram: int = 0x1000000, symbols: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    """(memory, KernelReader) over a kernel whose direct map covers RAM below its page-table pool
    (the top MiB), typed by ``btf_blob``: the ground the walker tests build their structures on."""
    from vmsentinel.os.linux.kernel_locate import KernelLocation
    from vmsentinel.os.linux.profile.btf import Btf
    from vmsentinel.os.linux.profile.profile import KernelIdentity, KernelProfile, SymbolTable
    from vmsentinel.os.linux.profile.types import BtfTypes
    from vmsentinel.os.linux.reader import KernelReader

    mem = BufferMemory({0: bytearray(ram)})
    pool = ram - 0x100000
    pt = PageTableBuilder(mem, pool_start=pool, pool_end=ram)
    for off in range(0, pool & ~((1 << 21) - 1), 1 << 21):
        pt.map(DIRECT_MAP + off, off, size=1 << 21)
    symbols = symbols or {"x": DIRECT_MAP}
    profile = KernelProfile(
        KernelIdentity("Linux version 9.9", "9.9", None),
        BtfTypes(Btf(btf_blob), "synthetic"),
        SymbolTable(list(symbols), "D" * len(symbols), list(symbols.values())),
        {},
    )
    location = KernelLocation(
        profile=profile,
        banner_phys=0,
        text_phys=0,
        kaslr_slide=0,
        physical_slide=0,
        phys_base=0,
        page_table_root=pt.root,
        paging_levels=4,
        page_offset_base=DIRECT_MAP,
        vmalloc_base=None,
        vmemmap_base=None,
        notes=[],
        memory=mem,
    )
    return mem, KernelReader(location)
