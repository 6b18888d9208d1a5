"""Find kernel objects by scanning memory instead of following the lists a
rootkit can edit.

* **task_structs** (psscan-style): the slabs of ``task_struct_cachep`` are found
  from the page array (``vmemmap``: a ``struct slab`` whose ``slab_cache`` is that
  cache), every object slot in them is read, and a slot counts as a task only if
  it looks like one (plausible pids, a printable ``comm``, kernel pointers where
  pointers belong) and is not a freed task (``__state`` is ``TASK_DEAD``).
* **struct modules**: every mapped page of the module area is searched for a
  ``struct module`` whose ``mkobj.mod`` points back at itself, with a printable
  name and a valid state.

Both are bounded (pages and objects capped) and report what they could not read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.arch.x86_64 import PAGE_SIZE
from vmsentinel.errors import ReadError
from vmsentinel.os.linux.reader import KernelReader

TASK_DEAD = 0x80
MODULES_VADDR = 0xFFFFFFFFC0000000
MODULES_END = 0xFFFFFFFFFF000000
MAX_SCAN_PAGES = 1 << 22  # 16 GiB of guest RAM worth of struct pages
MAX_MODULE_AREA = 256 << 20
MASK64 = (1 << 64) - 1


@dataclass
class ScanResult:
    found: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    examined: int = 0


def _printable(raw: bytes) -> bool:
    text = raw.split(b"\0", 1)[0]
    return bool(text) and all(0x20 <= c < 0x7F for c in text)


def _records_holding(data: bytes, record: int, offset: int, value: bytes) -> list[int]:
    """Indexes of the ``record``-sized records of ``data`` that hold ``value`` at ``offset``: found by
    searching the bytes (C speed) instead of unpacking every record."""
    found = []
    hit = data.find(value)
    while hit >= 0:
        index, at = divmod(hit - offset, record)
        if at == 0 and hit >= offset:
            found.append(index)
        hit = data.find(value, hit + 1)
    return found


def _self_pointers(data: bytes, base: int, back: int) -> list[int]:
    """Offsets ``o`` (8-byte aligned) of ``data`` (mapped at ``base``) holding the address ``base + o - back``:
    a structure's field that points at the structure itself. Within one 4 KiB page the pointers sought
    share their top six bytes (two patterns where the range crosses a 64 KiB line), so each page is
    searched for those with ``bytes.find`` and only the hits are checked whole."""
    found = []
    for page in range(0, len(data), PAGE_SIZE):
        end = min(page + PAGE_SIZE, len(data))
        low, high = (base + page - back) & MASK64, (base + end - 8 - back) & MASK64
        for top in {low >> 16, high >> 16}:
            pattern = struct.pack("<Q", top << 16)[2:]
            hit = data.find(pattern, page + 2, end)
            while hit >= 0:
                at = hit - 2
                if at % 8 == 0 and struct.unpack_from("<Q", data, at)[0] == (base + at - back) & MASK64:
                    found.append(at)
                hit = data.find(pattern, hit + 1, end)
    return sorted(found)


def scan_task_structs(r: KernelReader) -> ScanResult:
    result = ScanResult()
    loc = r.location
    if not r.has_symbol("task_struct_cachep") or loc.vmemmap_base is None or loc.page_offset_base is None:
        result.problems.append("task scan needs task_struct_cachep, vmemmap_base and page_offset_base")
        return result
    try:
        cache = r.u64(r.symbol("task_struct_cachep"))
        size = r.u32(cache + r.off("kmem_cache", "size"))
        left_pad = r.u32(cache + r.off("kmem_cache", "red_left_pad")) if r.has("kmem_cache", "red_left_pad") else 0
        oo = r.u32(cache + r.off("kmem_cache", "oo"))
    except ReadError as exc:
        result.problems.append(f"task scan: {exc}")
        return result
    per_slab, order = oo & 0xFFFF, oo >> 16
    if not (1024 <= size <= 1 << 16 and 0 < per_slab <= 256 and order <= 6):
        result.problems.append(f"task scan: implausible cache geometry size={size} objects={per_slab} order={order}")
        return result
    page_size = r.size("page")
    slab_cache_off = r.off("slab", "slab_cache")
    ram_pages = min(sum(rg.end for rg in loc.memory.ranges()[-1:]) // PAGE_SIZE, MAX_SCAN_PAGES)
    chunk_pages = 4096
    t = "task_struct"
    o_pid, o_tgid, o_comm = r.off(t, "pid"), r.off(t, "tgid"), r.off(t, "comm")
    o_tasks, o_cred, o_state = r.off(t, "tasks"), r.off(t, "real_cred"), r.off_any(t, "__state", "state")[1]
    o_stack = r.off(t, "stack")
    cache_bytes = struct.pack("<Q", cache)
    for first in range(0, ram_pages, chunk_pages):
        count = min(chunk_pages, ram_pages - first)
        try:
            pages = r.read(loc.vmemmap_base + first * page_size, count * page_size)
        except ReadError:
            continue  # holes in RAM have no struct pages mapped
        for i in _records_holding(pages, page_size, slab_cache_off, cache_bytes):
            base = loc.page_offset_base + (first + i) * PAGE_SIZE + left_pad
            for k in range(per_slab):
                obj = base + k * size
                result.examined += 1
                try:
                    raw = r.read(obj, max(o_pid, o_tgid, o_comm + 16, o_tasks + 16, o_cred, o_state, o_stack) + 8)
                except ReadError:
                    continue
                pid, tgid = (
                    struct.unpack_from("<ii", raw, o_pid)
                    if o_tgid == o_pid + 4
                    else (struct.unpack_from("<i", raw, o_pid)[0], struct.unpack_from("<i", raw, o_tgid)[0])
                )
                if not (0 < pid < 1 << 22 and 0 < tgid < 1 << 22):
                    continue
                ptrs = [struct.unpack_from("<Q", raw, off)[0] for off in (o_tasks, o_tasks + 8, o_cred, o_stack)]
                if not all(r.is_kernel_pointer(p) for p in ptrs) or not _printable(raw[o_comm : o_comm + 16]):
                    continue
                if struct.unpack_from("<I", raw, o_state)[0] == TASK_DEAD:
                    continue  # a freed task whose memory is not reused yet
                result.found.append(obj)
    return result


def scan_modules(r: KernelReader) -> ScanResult:
    result = ScanResult()
    mod_off = r.off("module", "mkobj") + r.off("module_kobject", "mod")
    name_off, state_off, list_off = r.off("module", "name"), r.off("module", "state"), r.off("module", "list")
    walk = r.space.walk_mappings(start=MODULES_VADDR, end=MODULES_END)
    result.problems.extend(walk.problems)
    scanned = 0
    for m in walk.mappings:
        if scanned > MAX_MODULE_AREA:
            result.problems.append("module area scan stopped at its size cap")
            break
        size = min(m.size, MAX_MODULE_AREA)
        scanned += size
        try:
            data = r.read(m.vaddr, size)
        except ReadError as exc:
            result.problems.append(f"module area {m.vaddr:#x}: {exc}")
            continue
        result.examined += size // 8
        for at in _self_pointers(data, m.vaddr, mod_off):
            candidate = m.vaddr + at - mod_off
            if candidate < m.vaddr:
                continue
            start = candidate - m.vaddr
            if start + max(name_off + 56, state_off + 4, list_off + 16) > len(data):
                continue
            state = struct.unpack_from("<I", data, start + state_off)[0]
            nxt, prev = struct.unpack_from("<QQ", data, start + list_off)
            if (
                state <= 3
                and _printable(data[start + name_off : start + name_off + 56])
                and r.is_kernel_pointer(nxt)
                and r.is_kernel_pointer(prev)
            ):
                result.found.append(candidate)
    return result
