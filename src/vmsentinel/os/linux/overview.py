"""What the sentinel sees of a target at first glance (``vmsentinel info``):
the memory source, its layout, the kernel banner and the paging mode."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vmsentinel.access import Connector
from vmsentinel.errors import HypervisorError, VmSentinelError
from vmsentinel.os.linux.banner import find_banner
from vmsentinel.os.linux.kernel_profile import resolve_kernel


@dataclass
class TargetInfo:
    target: str
    source_kind: str
    layout_source: str
    ram_size: int
    physical_ranges: list[tuple[int, int]]
    banner: str | None
    kernel_release: str | None
    paging_levels: int | None
    page_table_root: int | None
    registers_source: str | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "source_kind": self.source_kind,
            "layout_source": self.layout_source,
            "ram_size": self.ram_size,
            "physical_ranges": [{"start": f"{s:#x}", "end": f"{e:#x}", "size": e - s} for s, e in self.physical_ranges],
            "banner": self.banner,
            "kernel_release": self.kernel_release,
            "paging_levels": self.paging_levels,
            "page_table_root": None if self.page_table_root is None else f"{self.page_table_root:#x}",
            "registers_source": self.registers_source,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }


def inspect_target(target: Connector) -> TargetInfo:
    started = time.perf_counter()
    mem = target.memory
    notes: list[str] = []
    banner = find_banner(mem)
    if banner is None:
        notes.append("no Linux kernel banner found in physical memory")
    try:
        regs = target.registers()
    except HypervisorError as exc:
        regs = None
        notes.append(f"registers unavailable: {exc}")
    located = None
    try:
        located = resolve_kernel(mem, target.spec).location
    except VmSentinelError as exc:
        notes.append(f"kernel not located from memory: {exc}")
    banner_text: str | None
    release: str | None
    if located is not None:
        banner_text = located.profile.identity.banner
        release = located.profile.identity.release
    else:
        banner_text = banner.text if banner else None
        release = banner.release if banner else None
    levels = regs.paging_levels if regs else located.paging_levels if located else None
    root = regs.page_table_root if regs else located.page_table_root if located else None
    source = regs.source if regs else "init_top_pgt found from memory" if located else None
    if levels is None:
        notes.append("paging mode and page-table root unknown: no CPU registers and no kernel located")
    return TargetInfo(
        target=target.spec,
        source_kind=mem.kind,
        layout_source=target.layout_source,
        ram_size=mem.size(),
        physical_ranges=[(r.start, r.end) for r in mem.ranges()],
        banner=banner_text,
        kernel_release=release,
        paging_levels=levels,
        page_table_root=root,
        registers_source=source,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
