"""Kernel modules, from the ``modules`` list and from sysfs kobjects.

A rootkit that hides itself usually unlinks its ``struct module`` from the
``modules`` list (what ``/proc/modules`` and ``lsmod`` show) but leaves its
kobject in ``module_kset`` (``/sys/module``), or the reverse; and a module
scrubbed from both still sits in module memory, where the scan finds it.
Each :class:`Module` says which sources saw it.
"""

from __future__ import annotations

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.views.scan import scan_modules
from vmsentinel.os.records import Module, ModuleSweep

#: taint bits (include/linux/panic.h, a stable ABI) and their letters
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"
MODULE_STATES = {0: "Live", 1: "Loading", 2: "Unloading", 3: "Unformed"}
MAX_MODULES = 4096


#: larger than any real module's block: a bigger size read from the guest is not believed
MAX_MODULE_BYTES = 256 << 20


class ModuleReader:
    def __init__(self, reader: KernelReader) -> None:
        self.r = reader
        r = reader
        self.name = r.off("module", "name")
        self.list = r.off("module", "list")
        self.state = r.off("module", "state")
        self.taints = r.off("module", "taints")
        self.sig_ok = r.off("module", "sig_ok") if r.has("module", "sig_ok") else None
        self.refcnt = r.off("module", "refcnt")
        self.source_list = r.off("module", "source_list")
        self.mkobj_mod = r.off("module_kobject", "mod")
        self.kobj_in_mkobj = r.off("module_kobject", "kobj")
        if r.has("module", "mem"):  # 6.4+: mem[MOD_TEXT..], every type counted in the size
            self.layout = "mem"
            self.mem = r.off("module", "mem")
            self.mem_stride = r.size("module_memory")
            self.mem_base = r.off("module_memory", "base")
            self.mem_size = r.off("module_memory", "size")
            self.mem_types = r.enum_value("mod_mem_type", "MOD_MEM_NUM_TYPES", 7)
        else:
            self.layout = "core_layout"
            self.core = r.off("module", "core_layout")
            self.init = r.off("module", "init_layout")
            self.lay_base = r.off("module_layout", "base")
            self.lay_size = r.off("module_layout", "size")
            self.lay_text = r.off("module_layout", "text_size")  # the core layout holds data too

    def _from_list(self, problems: list[str]) -> list[int]:
        walk = self.r.list_walk(self.r.symbol("modules"), "module", "list", limit=MAX_MODULES)
        problems.extend(walk.problems)
        return walk.items

    def _from_kset(self, problems: list[str]) -> list[int]:
        try:
            kset = self.r.pointer(self.r.symbol("module_kset"))
            if kset is None:
                return []
            walk = self.r.list_walk(kset + self.r.off("kset", "list"), "kobject", "entry", limit=MAX_MODULES)
        except ReadError as exc:
            problems.append(f"module_kset: {exc}")
            return []
        problems.extend(walk.problems)
        out = []
        for kobj in walk.items:
            try:
                mod = self.r.pointer(kobj - self.kobj_in_mkobj + self.mkobj_mod)
            except ReadError as exc:
                problems.append(f"module kobject {kobj:#x}: {exc}")
                continue
            if mod is not None:  # built-in modules have kobjects without a struct module
                out.append(mod)
        return out

    def sweep(self, scan: bool = False) -> ModuleSweep:
        """Read every module; ``scan`` adds the memory scan of the module area."""
        self.r.space.new_sweep()
        problems: list[str] = []
        seen: dict[int, set[str]] = {}
        found = [("module_list", self._from_list(problems)), ("sysfs_kobjects", self._from_kset(problems))]
        if scan:
            scanned = scan_modules(self.r)
            problems.extend(scanned.problems)
            found.append(("memory_scan", scanned.found))
        for source, addrs in found:
            for a in addrs:
                seen.setdefault(a, set()).add(source)
        modules = []
        for addr, sources in seen.items():
            try:
                modules.append(self._module(addr, tuple(sorted(sources)), problems))
            except ReadError as exc:
                problems.append(f"module {addr:#x}: {exc}")
        list_order = {a: i for i, a in enumerate(self._from_list([]))}
        modules.sort(key=lambda m: (list_order.get(m.address, 1 << 30), m.name))
        return ModuleSweep(modules, problems)

    def memory_ranges(self, addr: int) -> list[tuple[int, int]]:
        """(start, size) of each block the module's code and data live in (6.4+ allocates one per kind)."""
        r = self.r
        if self.layout == "mem":
            blocks = [addr + self.mem + i * self.mem_stride for i in range(self.mem_types)]
            ranges = [(r.u64(b + self.mem_base), r.u32(b + self.mem_size)) for b in blocks]
        else:
            ranges = [(r.u64(addr + lay + self.lay_base), r.u32(addr + lay + self.lay_size)) for lay in (self.core, self.init)]
        return [(start, size) for start, size in ranges if start and 0 < size <= MAX_MODULE_BYTES]

    def _module(self, addr: int, sources: tuple[str, ...], problems: list[str]) -> Module:
        r = self.r
        name = r.read(addr + self.name, 56).split(b"\0", 1)[0].decode(errors="replace")
        if self.layout == "mem":
            sizes = [r.u32(addr + self.mem + i * self.mem_stride + self.mem_size) for i in range(self.mem_types)]
            base = r.u64(addr + self.mem + self.mem_base)
            size, text_size = sum(sizes), sizes[0]
        else:
            base = r.u64(addr + self.core + self.lay_base)
            text_size = r.u32(addr + self.core + self.lay_text)
            size = r.u32(addr + self.core + self.lay_size) + r.u32(addr + self.init + self.lay_size)
        taint_bits = r.u64(addr + self.taints)
        taints = "".join(ch for bit, ch in enumerate(TAINT_LETTERS) if taint_bits >> bit & 1)
        users = []
        walk = r.list_walk(addr + self.source_list, "module_use", "source_list", limit=MAX_MODULES)
        problems.extend(walk.problems)
        src_off = r.off("module_use", "source")
        for use in walk.items:
            user = r.pointer(use + src_off)
            if user is not None:
                users.append(r.read(user + self.name, 56).split(b"\0", 1)[0].decode(errors="replace"))
        return Module(
            name=name,
            size=size,
            refcount=r.s32(addr + self.refcnt) - 1,
            used_by=tuple(users),
            state=MODULE_STATES.get(r.u32(addr + self.state), "?"),
            base=base,
            text_size=text_size,
            taints=taints,
            sig_ok=bool(r.u8(addr + self.sig_ok)) if self.sig_ok is not None else False,
            sources=sources,
            address=addr,
        )
