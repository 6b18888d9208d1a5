"""Where the kernel jumps: system call tables and the interrupt descriptor table.

Each entry is resolved to a symbol and to its owner (core kernel text, a
module's text, or unknown memory): an entry that leaves core kernel text is
what the hook detectors look at. Since 6.1.85/6.9, x86-64 system calls are
dispatched by ``x64_sys_call()`` rather than through ``sys_call_table``; the
table is still read (an overwrite is still a finding) and ``x64_sys_call``'s
code is covered by the kernel code view.
"""

from __future__ import annotations

import struct

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.linux.symbols import SymbolResolver, TextRange
from vmsentinel.os.records import HookSweep, IdtEntry, MechanismHook, SyscallEntry

MAX_SYSCALLS = 1024
SYSCALL_TABLES = (("x64", "sys_call_table"), ("ia32", "ia32_sys_call_table"), ("x32", "x32_sys_call_table"))


def table_length(reader: KernelReader, name: str) -> int:
    """Entries in a table of pointers: the gap to the next symbol (kallsyms has no sizes). Cached per guest."""
    key = f"table_length:{name}"
    if key not in reader.derived:
        profile = reader.profile
        addr = profile.symbol(name)
        later = [a for a in profile.symbols.addresses if a > addr]
        gap = min(later) - addr if later else MAX_SYSCALLS * 8
        reader.derived[key] = max(0, min(MAX_SYSCALLS, gap // 8))
    return reader.derived[key]


def read_syscalls(reader: KernelReader, resolver: SymbolResolver, module_text: list[TextRange]) -> HookSweep:
    sweep = HookSweep()
    for table, symbol in SYSCALL_TABLES:
        if not reader.has_symbol(symbol):
            continue
        base = reader.symbol(symbol)
        count = table_length(reader, symbol)
        try:
            raw = reader.read(base, count * 8)
        except ReadError as exc:
            sweep.problems.append(f"{symbol}: {exc}")
            continue
        for index, handler in enumerate(struct.unpack(f"<{count}Q", raw)):
            if handler == 0:
                break  # alignment padding after the table
            sweep.syscalls.append(
                SyscallEntry(table, index, handler, resolver.describe(handler), resolver.owner(handler, module_text))
            )
    return sweep


def read_idt(
    reader: KernelReader, resolver: SymbolResolver, module_text: list[TextRange], idt_bases: dict[int, int] | None = None
) -> HookSweep:
    """The IDT of each CPU: ``idt_bases`` (cpu -> IDTR base, from the hypervisor) or ``idt_table``."""
    sweep = HookSweep()
    bases = idt_bases or {0: reader.symbol("idt_table")}
    for cpu, base in sorted(bases.items()):
        try:
            raw = reader.read(base, 256 * 16)
        except ReadError as exc:
            sweep.problems.append(f"IDT of CPU {cpu} at {base:#x}: {exc}")
            continue
        for vector in range(256):
            low, _seg, bits, mid, high, _ = struct.unpack_from("<HHHHII", raw, vector * 16)
            present = bool(bits >> 15 & 1)
            handler = low | mid << 16 | high << 32
            if not present and handler == 0:
                continue
            sweep.idt.append(
                IdtEntry(
                    cpu,
                    vector,
                    handler,
                    resolver.describe(handler),
                    resolver.owner(handler, module_text),
                    bits >> 8 & 0x1F,
                    bits >> 13 & 3,
                    bits & 7,
                    present,
                )
            )
    return sweep


MAX_KPROBES = 4096
MAX_FTRACE_OPS = 1024
#: functions named per ftrace callback, at most (a hash may hold thousands; the rest are counted)
MAX_COVERED = 64
MAX_HASH_BITS = 16


def ftrace_filter(r: KernelReader, resolver: SymbolResolver, ops: int, problems: list[str]) -> tuple[str, ...]:
    """The functions an ftrace callback covers, from its filter hash (``ops->func_hash->filter_hash``):
    their symbols, or ``("*",)`` for an empty filter (every function), with "+N more" past the cap."""
    if not (r.has("ftrace_ops", "func_hash") and r.has("ftrace_hash", "buckets")):
        return ()
    try:
        hashes = r.pointer(ops + r.off("ftrace_ops", "func_hash"))
        table = r.pointer(hashes + r.off("ftrace_ops_hash", "filter_hash")) if hashes is not None else None
        if table is None:
            return ("*",)
        count = r.u64(table + r.off("ftrace_hash", "count"))
        bits = r.u64(table + r.off("ftrace_hash", "size_bits"))
        buckets = r.pointer(table + r.off("ftrace_hash", "buckets"))
        if count == 0 or buckets is None:
            return ("*",)
        if bits > MAX_HASH_BITS:
            problems.append(f"ftrace_ops {ops:#x}: filter hash of 2^{bits} buckets: not read")
            return (f"{count} functions",)
        ip_off = r.off("ftrace_func_entry", "ip")
        names: list[str] = []
        for bucket in range(1 << bits):
            walk = r.hlist_walk(buckets + 8 * bucket, "ftrace_func_entry", "hlist", limit=MAX_COVERED + 1)
            problems.extend(walk.problems)
            for entry in walk.items:
                if len(names) < MAX_COVERED:
                    ip = r.u64(entry + ip_off)
                    names.append(resolver.describe(ip) or f"{ip:#x}")
            if len(names) >= MAX_COVERED:
                break
        if count > len(names):
            names.append(f"+{count - len(names)} more")
        return tuple(names)
    except ReadError as exc:
        problems.append(f"ftrace_ops {ops:#x} filter: {exc}")
        return ()


def registered_kprobes(r: KernelReader, problems: list[str]) -> list[int]:
    """Every registered ``struct kprobe`` (bounded): those in the ``kprobe_table`` hash, with an
    aggregate probe (several kprobes on one address) replaced by the kprobes on its ``list``."""
    if not r.has_symbol("kprobe_table"):
        return []
    table = r.symbol("kprobe_table")
    aggregate = r.symbol("aggr_pre_handler") if r.has_symbol("aggr_pre_handler") else None
    found: list[int] = []
    for bucket in range(64):  # KPROBE_TABLE_SIZE
        try:
            walk = r.hlist_walk(table + bucket * 8, "kprobe", "hlist", limit=MAX_KPROBES)
        except ReadError as exc:
            problems.append(f"kprobe_table[{bucket}]: {exc}")
            continue
        problems.extend(walk.problems)
        for kp in walk.items:
            try:
                if aggregate is not None and r.u64(kp + r.off("kprobe", "pre_handler")) == aggregate:
                    children = r.list_walk(kp + r.off("kprobe", "list"), "kprobe", "list", limit=MAX_KPROBES)
                    problems.extend(children.problems)
                    found.extend(children.items)
                    continue
            except ReadError as exc:
                problems.append(f"kprobe {kp:#x}: {exc}")
            found.append(kp)
    return found[:MAX_KPROBES]


def read_mechanism_hooks(
    reader: KernelReader, resolver: SymbolResolver, module_text: list[TextRange]
) -> tuple[list[MechanismHook], list[str]]:
    """kprobes (the ``kprobe_table`` hash) and ftrace callbacks (``ftrace_ops_list``), handlers resolved."""
    hooks: list[MechanismHook] = []
    problems: list[str] = []
    r = reader
    if r.has_symbol("kprobe_table"):
        addr_off, pre_off, post_off = r.off("kprobe", "addr"), r.off("kprobe", "pre_handler"), r.off("kprobe", "post_handler")
        for kp in registered_kprobes(r, problems):
            try:
                at = r.u64(kp + addr_off)
                for handler in (r.u64(kp + pre_off), r.u64(kp + post_off)):
                    if handler:
                        hooks.append(
                            MechanismHook(
                                "kprobe",
                                at,
                                resolver.describe(at),
                                handler,
                                resolver.describe(handler),
                                resolver.owner(handler, module_text),
                            )
                        )
            except ReadError as exc:
                problems.append(f"kprobe {kp:#x}: {exc}")
    if r.has_symbol("ftrace_ops_list") and r.has_symbol("ftrace_list_end"):
        end = r.symbol("ftrace_list_end")
        try:
            ops = r.u64(r.symbol("ftrace_ops_list"))
            func_off, next_off = r.off("ftrace_ops", "func"), r.off("ftrace_ops", "next")
            seen: set[int] = set()
            while ops and ops != end and len(seen) < MAX_FTRACE_OPS:
                if ops in seen or not r.is_kernel_pointer(ops):
                    problems.append(f"ftrace_ops list broken at {ops:#x}")
                    break
                seen.add(ops)
                func = r.u64(ops + func_off)
                owner = resolver.owner(func, module_text)
                covers = ftrace_filter(r, resolver, ops, problems) if owner != "kernel" else ()
                hooks.append(MechanismHook("ftrace", ops, resolver.describe(ops), func, resolver.describe(func), owner, covers))
                ops = r.u64(ops + next_off)
        except ReadError as exc:
            problems.append(f"ftrace_ops_list: {exc}")
    return hooks, problems
