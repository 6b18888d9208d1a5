"""Where the kernel patches its own text at run time: jump-label sites (core kernel
and every module) and ftrace call sites, read from the kernel's own tables.

A baseline learns these once, so that a later change of kernel text can be
explained byte by byte: a site that holds what the kernel itself would write
there (a NOP, a jump to its own target, a call into ftrace) is no inline hook.

    sites = read_patch_sites(reader, modules)
    sites.jump_targets[site]       # where that jump label jumps when enabled
    site in sites.ftrace
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmsentinel.os.linux.reader import KernelReader
from vmsentinel.os.records import Module

#: at most this many entries are taken from one table (a hostile count cannot make us read forever)
MAX_SITES = 1 << 20
MAX_FTRACE_PAGES = 1 << 14
MAX_RECORDS_PER_PAGE = 1 << 16
MASK = (1 << 64) - 1


@dataclass
class PatchSites:
    #: jump label site -> its jump target
    jump_targets: dict[int, int] = field(default_factory=dict)
    ftrace: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def read_patch_sites(reader: KernelReader, modules: list[Module]) -> PatchSites:
    """Every jump label site (the core ``__jump_table`` and each module's) and every ftrace call site."""
    sites = PatchSites()
    r = reader
    tables: list[tuple[int, int]] = []
    if r.has_symbol("__start___jump_table") and r.has_symbol("__stop___jump_table"):
        start, stop = r.symbol("__start___jump_table"), r.symbol("__stop___jump_table")
        tables.append((start, (stop - start) // max(1, r.size("jump_entry"))))
    if r.has("module", "jump_entries"):
        for m in modules:
            try:
                entries = r.u64(m.address + r.off("module", "jump_entries"))
                count = r.u32(m.address + r.off("module", "num_jump_entries"))
                if entries and count:
                    tables.append((entries, count))
            except Exception as exc:
                sites.problems.append(f"jump table of {m.name}: {exc}")
    size = r.size("jump_entry") if tables else 16
    for start, count in tables:
        count = min(count, MAX_SITES)
        try:
            raw = r.read(start, count * size)
        except Exception as exc:
            sites.problems.append(f"jump table at {start:#x}: {exc}")
            continue
        for i in range(count):
            code_rel, target_rel = struct.unpack_from("<ii", raw, i * size)
            entry = start + i * size
            sites.jump_targets[(entry + code_rel) & MASK] = (entry + 4 + target_rel) & MASK
    if r.has_symbol("ftrace_pages_start"):
        try:
            page = r.u64(r.symbol("ftrace_pages_start"))
            rec_size = r.size("dyn_ftrace")
            for _ in range(MAX_FTRACE_PAGES):
                if not page:
                    break
                records = r.u64(page + r.off("ftrace_page", "records"))
                index = r.s32(page + r.off("ftrace_page", "index"))
                if 0 < index <= MAX_RECORDS_PER_PAGE:
                    raw = r.read(records, index * rec_size)
                    sites.ftrace.update(struct.unpack_from("<Q", raw, i * rec_size)[0] for i in range(index))
                page = r.u64(page + r.off("ftrace_page", "next"))
        except Exception as exc:
            sites.problems.append(f"ftrace pages: {exc}")
    return sites
