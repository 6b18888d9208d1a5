"""Typed, bounded reads of kernel memory: the one place the OS views touch guest bytes.

    reader = KernelReader(resolved.location)
    task = reader.symbol("init_task")
    pid = reader.s32(task + reader.off("task_struct", "pid"))
    walk = reader.list_walk(task + reader.off("task_struct", "tasks"), "task_struct", "tasks", limit=65536)
    walk.items, walk.problems

Everything read is hostile: every pointer is checked (canonical, in the kernel
half, mapped) before it is followed; every list walk has a limit and stops on a
loop; failures come back as problems with the address, never as exceptions
out of a view.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.errors import BtfError, ReadError, TranslationError, UnmappedPhysicalAddress, VmSentinelError
from vmsentinel.os.linux.kernel_locate import KernelLocation

KERNEL_HALF = 1 << 63
DEFAULT_LIST_LIMIT = 1 << 16


@dataclass
class Walk:
    """Addresses a walk reached, and what stopped or bothered it."""

    items: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False


class Fields:
    """Several members of a record unpacked by one ``Struct`` call, in the order given.

    ``layout`` is (offset, format letter) per member, in any order; members must not overlap.
    One unpack per record instead of one per member is what makes reading hundreds of tasks and
    VMAs a sweep cheap."""

    def __init__(self, layout: list[tuple[int, str]]) -> None:
        order = sorted(range(len(layout)), key=lambda i: layout[i][0])
        fmt, at = "<", 0
        for i in order:
            off, letter = layout[i]
            if off < at:
                raise ValueError(f"member at {off} overlaps the one before it")
            fmt += (f"{off - at}x" if off > at else "") + letter
            at = off + struct.calcsize("<" + letter)
        self._struct = struct.Struct(fmt)
        #: bytes a record must have to unpack
        self.size = self._struct.size
        back = [order.index(i) for i in range(len(layout))]
        self._reorder = operator.itemgetter(*back) if len(back) > 1 else lambda v: v

    def unpack(self, raw: bytes | memoryview) -> tuple[int, ...]:
        return self._reorder(self._struct.unpack_from(raw))  # type: ignore[no-any-return]


class KernelReader:
    """Reads kernel structures of one guest through the kernel's page tables and its profile."""

    def __init__(self, location: KernelLocation) -> None:
        self.location = location
        self.profile = location.profile
        if self.profile.types is None:
            raise VmSentinelError("the kernel profile has no types (BTF or ISF); views need them")
        self.types = self.profile.types
        self.space: PagingAddressSpace = location.address_space()
        self._offsets: dict[tuple[str, str], int] = {}
        self._sizes: dict[str, int] = {}
        #: values derived once from the build (table sizes and such), shared by the views
        self.derived: dict[str, int] = {}

    # -- layout ------------------------------------------------------------
    def off(self, struct_name: str, member: str) -> int:
        key = (struct_name, member)
        if key not in self._offsets:
            hot = self.profile.hot_layout
            name = f"{struct_name}.{member}"
            if name not in hot:
                hot[name] = self.types.member_offset(struct_name, member)
            self._offsets[key] = hot[name]
        return self._offsets[key]

    def off_any(self, struct_name: str, *members: str) -> tuple[str, int]:
        """The first member that exists (kernels rename fields): (name, offset)."""
        for member in members:
            if self.has(struct_name, member):
                return member, self.off(struct_name, member)
        raise BtfError(f"struct {struct_name} has none of {', '.join(members)}")

    def profile_array_len(self, struct_name: str, member: str) -> int:
        """Element count of an array member (needs BTF)."""
        btf = self.profile.btf
        if btf is None:
            raise VmSentinelError(f"{struct_name}.{member}: array sizes need BTF types")
        _, type_id = btf.member_offset(struct_name, member)
        return btf.array_info(type_id)[1]

    def has(self, struct_name: str, member: str) -> bool:
        hot = self.profile.hot_layout
        name = f"{struct_name}.{member}"
        if name not in hot:
            hot[name] = self.types.member_offset(struct_name, member) if self.types.has_member(struct_name, member) else -1
        return hot[name] >= 0

    def enum_value(self, enum: str, name: str, default: int) -> int:
        """An enumerator's value (``default`` when the build lacks it), remembered with the hot layout."""
        hot = self.profile.hot_layout
        key = f"{enum}={name}"
        if key not in hot:
            hot[key] = self.types.enum_values(enum).get(name, default)
        return hot[key]

    def size(self, struct_name: str) -> int:
        if struct_name not in self._sizes:
            hot = self.profile.hot_layout
            if struct_name not in hot:
                hot[struct_name] = self.types.struct_size(struct_name)
            self._sizes[struct_name] = hot[struct_name]
        return self._sizes[struct_name]

    def symbol(self, name: str) -> int:
        return self.location.runtime_symbol(name)

    def has_symbol(self, name: str) -> bool:
        return name in self.profile.symbols

    # -- reads ---------------------------------------------------------------
    def read(self, vaddr: int, length: int) -> bytes:
        try:
            return self.space.read(vaddr, length)
        except (TranslationError, UnmappedPhysicalAddress) as exc:
            raise ReadError(f"cannot read {length} bytes at {vaddr:#x}: {exc}") from None

    def pieces(self, vaddr: int, length: int) -> list[bytes | memoryview]:
        """``length`` bytes at ``vaddr`` in physically contiguous pieces, views where possible (to hash, not keep)."""
        try:
            return self.space.pieces(vaddr, length)
        except (TranslationError, UnmappedPhysicalAddress) as exc:
            raise ReadError(f"cannot read {length} bytes at {vaddr:#x}: {exc}") from None

    def u64(self, vaddr: int) -> int:
        try:
            return self.space.read_u64(vaddr)
        except (TranslationError, UnmappedPhysicalAddress) as exc:
            raise ReadError(f"cannot read at {vaddr:#x}: {exc}") from None

    def u32(self, vaddr: int) -> int:
        return int(struct.unpack("<I", self.read(vaddr, 4))[0])

    def s32(self, vaddr: int) -> int:
        return int(struct.unpack("<i", self.read(vaddr, 4))[0])

    def u8(self, vaddr: int) -> int:
        return self.read(vaddr, 1)[0]

    def cstring(self, vaddr: int, cap: int = 256) -> str:
        try:
            raw = self.space.read_cstring(vaddr, cap)
        except (TranslationError, UnmappedPhysicalAddress) as exc:
            raise ReadError(f"cannot read a string at {vaddr:#x}: {exc}") from None
        return raw.decode(errors="replace")

    def is_kernel_pointer(self, ptr: int) -> bool:
        return ptr >= KERNEL_HALF and self.space.is_canonical(ptr)

    def pointer(self, vaddr: int) -> int | None:
        """A kernel pointer stored at ``vaddr``, or None when it is NULL or implausible."""
        ptr = self.u64(vaddr)
        return ptr if ptr and self.is_kernel_pointer(ptr) else None

    # -- lists -----------------------------------------------------------------
    def list_walk(
        self, head: int, struct_name: str, member: str, limit: int = DEFAULT_LIST_LIMIT, include_head: bool = False
    ) -> Walk:
        """Containers on a circular ``list_head`` list starting at ``head`` (a list_head address).

        Stops at the head, on a loop that does not return to the head, on an
        unreadable or implausible pointer, or after ``limit`` entries.
        """
        member_off = self.off(struct_name, member)
        walk = Walk()
        if include_head:
            walk.items.append(head - member_off)
        seen = {head}
        node = head
        for _ in range(limit):
            try:
                nxt = self.u64(node)
            except ReadError as exc:
                walk.problems.append(f"{struct_name}.{member} list: {exc}")
                return walk
            if nxt == head:
                return walk
            if not self.is_kernel_pointer(nxt):
                walk.problems.append(f"{struct_name}.{member} list: bad next pointer {nxt:#x} at {node:#x}")
                return walk
            if nxt in seen:
                walk.problems.append(f"{struct_name}.{member} list loops back to {nxt:#x} without reaching its head")
                return walk
            seen.add(nxt)
            walk.items.append(nxt - member_off)
            node = nxt
        walk.truncated = True
        walk.problems.append(f"{struct_name}.{member} list longer than {limit}: stopped")
        return walk

    def hlist_walk(self, first_ptr_at: int, struct_name: str, member: str, limit: int = 1024) -> Walk:
        """Containers on an ``hlist`` whose ``first`` pointer is stored at ``first_ptr_at``."""
        member_off = self.off(struct_name, member)
        walk = Walk()
        seen: set[int] = set()
        node = self.u64(first_ptr_at)
        for _ in range(limit):
            if node == 0:
                return walk
            if not self.is_kernel_pointer(node) or node in seen:
                walk.problems.append(f"{struct_name}.{member} hlist: bad or looping node {node:#x}")
                return walk
            seen.add(node)
            walk.items.append(node - member_off)
            try:
                node = self.u64(node)
            except ReadError as exc:
                walk.problems.append(str(exc))
                return walk
        walk.truncated = True
        walk.problems.append(f"{struct_name}.{member} hlist longer than {limit}: stopped")
        return walk

    def xarray_entries(self, xa_head_at: int, limit: int = 1 << 20) -> tuple[list[tuple[int, int]], list[str]]:
        """(index, entry) pairs of an XArray (radix tree; the IDR behind PID numbers).

        Internal nodes are tagged pointers (low bits ``10``); ``xa_node.shift``
        must fall by 6 at each level, so a cycle cannot recurse forever.
        """
        problems: list[str] = []
        out: list[tuple[int, int]] = []
        head = self.u64(xa_head_at)
        slots_off = self.off("xa_node", "slots")
        shift_off = self.off("xa_node", "shift")

        stack: list[tuple[int, int, int | None, int]] = [(head, 0, None, 0)]  # no recursive closure: no cycle
        while stack and len(out) < limit:
            entry, index, parent_shift, depth = stack.pop()
            if not (entry & 3 == 2 and entry > 4096):  # not an internal node
                if entry and entry & 3 == 0:  # a pointer; sibling/retry (internal) and value (tagged) entries are skipped
                    out.append((index, entry))
                continue
            node = entry - 2
            try:
                shift = self.u8(node + shift_off)
                slots = struct.unpack("<64Q", self.read(node + slots_off, 64 * 8))
            except ReadError as exc:
                problems.append(f"xarray node {node:#x}: {exc}")
                continue
            if shift % 6 or shift > 60 or (parent_shift is not None and shift != parent_shift - 6) or depth > 11:
                problems.append(f"xarray node {node:#x} has shift {shift} under {parent_shift}: skipped")
                continue
            stack.extend(
                (child, index | (slot << shift), shift, depth + 1) for slot, child in reversed(list(enumerate(slots))) if child
            )
        if len(out) >= limit:
            problems.append(f"xarray holds more than {limit} entries: stopped")
        return out, problems

    def relative_table(self, start: str, stop: str, stride: int, limit: int, problems: list[str]) -> list[int]:
        """The addresses a linker table between symbols ``start`` and ``stop`` points at: entries of
        ``stride`` bytes whose first field is a signed 32-bit offset from the entry itself (tracepoints,
        static call sites). At most ``limit`` entries (more is said in ``problems``); [] without the
        symbols or when the table cannot be read."""
        if not (self.has_symbol(start) and self.has_symbol(stop)):
            return []
        first = self.symbol(start)
        count = (self.symbol(stop) - first) // stride
        if count <= 0:
            return []
        if count > limit:
            problems.append(f"{start}: {count} entries claimed, read {limit}")
            count = limit
        try:
            raw = self.read(first, count * stride)
        except ReadError as exc:
            problems.append(f"{start}: {exc}")
            return []
        mask = (1 << 64) - 1
        return [(first + i * stride + struct.unpack_from("<i", raw, i * stride)[0]) & mask for i in range(count)]

    def iter_array(self, base: int, count: int, stride: int) -> Iterator[int]:
        for i in range(count):
            yield base + i * stride
