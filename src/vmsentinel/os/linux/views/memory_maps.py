"""Memory maps of a process (``/proc/PID/maps`` from outside): the VMAs of its
``mm_struct``, found by walking the maple tree (Linux 6.1+) that holds them.

Maple tree nodes are tagged pointers carrying their type in bits 3..6 (dense
and 64-bit leaves hold entries; range and allocation-range nodes hold
children). The walk is bounded in depth
and nodes, and every VMA must point back at its ``mm`` to count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.errors import ReadError
from vmsentinel.os.declare import column
from vmsentinel.os.linux.reader import Fields, KernelReader
from vmsentinel.os.linux.views.files import FileNamer

VM_READ, VM_WRITE, VM_EXEC, VM_MAYSHARE = 0x1, 0x2, 0x4, 0x80
MAX_VMAS = 1 << 16
MAX_NODES = 1 << 14
MAPLE_HEIGHT_MAX = 31
DENSE, LEAF_64, RANGE_64, ARANGE_64 = 0, 1, 2, 3
VSYSCALL_NONE = 2
PERM_BITS = VM_READ | VM_WRITE | VM_EXEC | VM_MAYSHARE
#: ``rwxp`` for each combination of the bits: one string each, not one per mapping of every process
_PERMS = {
    bits: ("r" if bits & VM_READ else "-")
    + ("w" if bits & VM_WRITE else "-")
    + ("x" if bits & VM_EXEC else "-")
    + ("s" if bits & VM_MAYSHARE else "p")
    for bits in range(PERM_BITS + 1)
    if bits & ~PERM_BITS == 0
}


@dataclass(frozen=True, slots=True)
class MapEntry:
    pid: int = column("PID", table=False)
    start: int = column("START", hex=True)
    end: int = column("END", hex=True)
    perms: str = column("PERMS")
    offset: int = column("OFFSET", hex=True)
    dev: str = column("DEV")
    inode: int = column("INODE")
    path: str = column("PATH")


@dataclass
class MapSweep:
    maps: list[MapEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class MapReader:
    def __init__(self, reader: KernelReader, namer: FileNamer) -> None:
        r = self.r = reader
        self.namer = namer
        self.mm_mt = r.off("mm_struct", "mm_mt")
        self.ma_root = r.off("maple_tree", "ma_root")
        self.slots = {
            DENSE: (r.off("maple_node", "slot"), reader.profile_array_len("maple_node", "slot")),
            LEAF_64: (r.off("maple_range_64", "slot"), reader.profile_array_len("maple_range_64", "slot")),
            RANGE_64: (r.off("maple_range_64", "slot"), reader.profile_array_len("maple_range_64", "slot")),
            ARANGE_64: (r.off("maple_arange_64", "slot"), reader.profile_array_len("maple_arange_64", "slot")),
        }
        v = "vm_area_struct"
        self.vm_start, self.vm_end, self.vm_mm = r.off(v, "vm_start"), r.off(v, "vm_end"), r.off(v, "vm_mm")
        _, self.vm_flags = r.off_any(v, "vm_flags", "__vm_flags")
        self.vm_pgoff, self.vm_file = r.off(v, "vm_pgoff"), r.off(v, "vm_file")
        self.vm_ops, self.vm_private = r.off(v, "vm_ops"), r.off(v, "vm_private_data")
        order = (self.vm_start, self.vm_end, self.vm_mm, self.vm_flags, self.vm_pgoff, self.vm_file, self.vm_ops, self.vm_private)
        self.vma = Fields([(off, "Q") for off in order])
        self.start_brk, self.brk = r.off("mm_struct", "start_brk"), r.off("mm_struct", "brk")
        self.start_stack = r.off("mm_struct", "start_stack")
        self.special_ops = {r.symbol(s) for s in ("special_mapping_vmops", "legacy_special_mapping_vmops") if r.has_symbol(s)}

    def vma_addresses(self, mm: int, problems: list[str]) -> list[int]:
        """Every VMA pointer in the mm's maple tree.

        ``ma_root`` is either one entry or a node tagged ``| 2``; inside nodes,
        children are encoded as ``node | type << 3 | 4`` and leaves hold entries.
        """
        root = self.r.u64(mm + self.mm_mt + self.ma_root)
        out: list[int] = []
        if root & 3 == 2 and root > 4096:
            self._walk_nodes(root, out, problems)
        elif root and root & 7 == 0 and self.r.is_kernel_pointer(root):
            out.append(root)  # a tree of one entry keeps it in the root
        return out

    def _walk_nodes(self, root: int, out: list[int], problems: list[str]) -> None:
        """Depth first, children in slot order, with a stack of its own (a recursive closure would make
        a reference cycle per call, garbage only the cycle collector frees)."""
        seen: set[int] = set()
        stack = [(root, 0)]
        while stack:
            enode, depth = stack.pop()
            node, ntype = enode & ~0xFF, (enode >> 3) & 0xF
            if depth > MAPLE_HEIGHT_MAX or node in seen or len(seen) >= MAX_NODES or ntype not in self.slots:
                problems.append(f"maple node {enode:#x}: loop, depth or type {ntype} out of bounds; skipped")
                continue
            if not self.r.is_kernel_pointer(node):
                problems.append(f"maple node pointer {enode:#x} is not a kernel address")
                continue
            seen.add(node)
            off, count = self.slots[ntype]
            try:
                slots = struct.unpack(f"<{count}Q", self.r.read(node + off, count * 8))
            except ReadError as exc:
                problems.append(f"maple node {node:#x}: {exc}")
                continue
            if ntype in (DENSE, LEAF_64):
                for slot in slots:
                    if len(out) >= MAX_VMAS:
                        problems.append(f"more than {MAX_VMAS} VMAs: stopped")
                        return
                    if slot and slot & 7 == 0 and self.r.is_kernel_pointer(slot):  # VMAs are 8-aligned; skip markers
                        out.append(slot)
            else:
                stack.extend((slot, depth + 1) for slot in reversed(slots) if slot)

    def maps(self, pid: int, mm: int) -> MapSweep:
        sweep = MapSweep()
        try:
            vmas = self.vma_addresses(mm, sweep.problems)
            brk0, brk1 = self.r.u64(mm + self.start_brk), self.r.u64(mm + self.brk)
            stack = self.r.u64(mm + self.start_stack)
        except ReadError as exc:
            sweep.problems.append(f"pid {pid}: {exc}")
            return sweep
        entries: dict[int, MapEntry] = {}
        for vma in vmas:
            try:
                raw = self.r.read(vma, self.vma.size)
            except ReadError as exc:
                sweep.problems.append(f"pid {pid}: vma {vma:#x}: {exc}")
                continue
            start, end, owner, flags, pgoff, file, ops, private = self.vma.unpack(raw)
            if owner != mm or not start < end or start & 0xFFF or end & 0xFFF:
                sweep.problems.append(f"pid {pid}: vma {vma:#x} does not belong to this mm or is malformed")
                continue
            perms = _PERMS[flags & PERM_BITS]
            dev, inode, path, offset = "00:00", 0, "", 0
            if file and self.r.is_kernel_pointer(file):
                try:
                    named = self.namer.name(file)
                    dev, inode, path = named.dev, named.inode, named.path
                except ReadError as exc:
                    sweep.problems.append(f"pid {pid}: file of vma {start:#x}: {exc}")
                offset = pgoff << 12
            elif ops in self.special_ops and private:
                try:
                    path = self.r.cstring(self.r.u64(private), 64)
                except ReadError as exc:
                    sweep.problems.append(f"pid {pid}: special mapping name: {exc}")
            elif start <= brk1 and end >= brk0:
                path = "[heap]"
            elif start <= stack <= end:
                path = "[stack]"
            entries[start] = MapEntry(pid, start, end, perms, offset, dev, inode, path)
        sweep.maps = [entries[s] for s in sorted(entries)]
        for a, b in zip(sweep.maps, sweep.maps[1:], strict=False):
            if b.start < a.end:
                sweep.problems.append(f"pid {pid}: VMAs overlap at {b.start:#x}")
        gate = self._gate(pid)
        if gate is not None:
            sweep.maps.append(gate)
        return sweep

    def _gate(self, pid: int) -> MapEntry | None:
        """The vsyscall page, which /proc lists after the VMAs though it is no VMA of the process."""
        if not self.r.has_symbol("gate_vma"):
            return None
        gate = self.r.symbol("gate_vma")
        try:
            # enum { EMULATE, XONLY, NONE } vsyscall_mode: with NONE there is no gate area
            if self.r.has_symbol("vsyscall_mode") and self.r.u32(self.r.symbol("vsyscall_mode")) == VSYSCALL_NONE:
                return None
            start, end = self.r.u64(gate + self.vm_start), self.r.u64(gate + self.vm_end)
            flags = self.r.u64(gate + self.vm_flags)
        except ReadError:
            return None
        if not start < end:
            return None
        perms = ("r" if flags & VM_READ else "-") + ("w" if flags & VM_WRITE else "-") + ("x" if flags & VM_EXEC else "-") + "p"
        return MapEntry(pid, start, end, perms, 0, "00:00", 0, "[vsyscall]")
