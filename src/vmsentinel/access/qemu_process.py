"""The RAM of any running QEMU process, unmodified: where each RAM block sits in guest-physical
space (the *layout*), where it sits in QEMU's address space, and how to read it.

The layout comes from the monitor when one is usable (``info memdev``, ``info mtree -f``,
``gpa2hva``), else from the command line (:mod:`.qemu_cmdline`) and ``/proc/PID/maps``:

* the guest's RAM is the machine's memory backend, or the NUMA nodes' memdevs in node order
  (contiguous in guest-physical space), or the legacy ``-m`` block (``pc.ram``);
* the PC rule splits it around the PCI hole (pc: ≥ 3.5 GiB keeps 3 GiB low, or 3.5 GiB before
  pc-i440fx-2.0; q35: ≥ 2.75 GiB keeps 2 GiB low; ``max-ram-below-4g`` lowers both), the rest at 4 GiB;
* each block is the one mapping of QEMU's of exactly its size and kind: anonymous ``rw-p`` (a
  ``memory-backend-ram``), ``/dev/zero (deleted)`` shared (``memory-backend-ram,share=on``),
  ``/memfd:memory-backend-memfd (deleted)``, or the backend's ``mem-path`` file. Of two anonymous
  candidates, the one followed by QEMU's guard page wins; never "the largest mapping" (TCG's
  translation buffer is often larger than RAM).

Whatever is not certain is refused with :class:`~vmsentinel.errors.LayoutUnknown`: several
blocks of one kind and size and no monitor, a size no mapping has, a memory device QEMU placed at
run time, a machine type without a known rule.

A shared file-backed block is mapped read-only and zero-copy through
``/proc/PID/map_files/START-END`` (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE); anything else, and a
private file mapping (whose written pages are not in the file), is read with ``process_vm_readv``
(CAP_SYS_PTRACE, or the same user where Yama lets it)::

    memory, how = qemu_process_memory(4242, "qemu-pid:4242")
    memory.kind, how            # ('process_vm_readv', 'command line + /proc/4242/maps')
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmsentinel.access.qemu_cmdline import Backend, QemuConfig, parse_cmdline, parse_size
from vmsentinel.errors import AccessDenied, HypervisorError, LayoutUnknown, ProcessMemoryError, TargetError
from vmsentinel.memory import PhysicalMemory, Segment
from vmsentinel.memory.joined import JoinedMemory
from vmsentinel.memory.privileges import map_files_refusal, ptrace_read_refusal
from vmsentinel.memory.process import ProcessFileMemory, ProcessMemory
from vmsentinel.memory.qemu_ram import FOUR_GIB, GiB, mtree_regions, pc_layout

__all__ = [
    "HostMapping",
    "PlacedBlock",
    "RamBlock",
    "cmdline_blocks",
    "monitor_blocks",
    "open_placed",
    "parse_maps",
    "place_blocks",
    "qemu_process_memory",
    "read_cmdline",
    "read_maps",
]

PAGE = 4096
#: where AMD's HyperTransport hole starts: QEMU 7.1+ moves RAM above 1 TiB for guests reaching it
AMD_HT_START = 0xFD_0000_0000
#: QEMU's default 64-bit PCI hole (i440fx and q35)
PCI_HOLE64 = 32 * GiB

_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)\s*(.*)$")
_MEMDEV = re.compile(r"^memory backend: (\S+)\s*$((?:\n[ \t]+.*)*)", re.MULTILINE)
_GPA2HVA = re.compile(r"Host virtual address for (0x[0-9a-fA-F]+) \((.*)\) is (0x[0-9a-fA-F]+)")
_VERSION = re.compile(r"^pc-(?:i440fx-)?(\d+)\.(\d+)")

#: runs a human-monitor command line and returns its output (QMP's human-monitor-command, libvirt's
#: qemu-monitor-command --hmp...)
Hmp = Callable[[str], str]


@dataclass(frozen=True)
class HostMapping:
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    @property
    def name(self) -> str:
        """The path without the ``(deleted)`` that unlinked files (memfds) carry."""
        return self.path.removesuffix(" (deleted)")

    @property
    def anonymous(self) -> bool:
        return self.inode == 0 and (not self.path or self.path.startswith("[anon:"))

    @property
    def guard(self) -> bool:
        """An inaccessible anonymous page, as QEMU leaves after each RAM block."""
        return self.perms.startswith("---") and self.anonymous and self.size == PAGE

    def describe(self) -> str:
        return f"{self.start:x}-{self.end:x} {self.perms} {self.path or '(anonymous)'} ({_size(self.size)})"


def parse_maps(text: str) -> list[HostMapping]:
    """The mappings of ``/proc/PID/maps``, in address order."""
    maps = []
    for line in text.splitlines():
        m = _MAPS_LINE.match(line)
        if m:
            start, end, perms, offset, inode, path = m.groups()
            maps.append(HostMapping(int(start, 16), int(end, 16), perms, int(offset, 16), int(inode), path.strip()))
    return maps


@dataclass(frozen=True)
class RamBlock:
    """A memory backend and where its bytes are in guest-physical space (``Segment.file_offset``
    is the offset in the block)."""

    backend: Backend
    segments: tuple[Segment, ...]

    @property
    def name(self) -> str:
        return self.backend.id

    @property
    def size(self) -> int:
        return self.backend.size


@dataclass(frozen=True)
class PlacedBlock:
    """A RAM block and the mapping of QEMU's that holds it, from host address ``host`` on."""

    block: RamBlock
    mapping: HostMapping
    host: int


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 4)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


# -- the process --------------------------------------------------------------------------------


def read_cmdline(pid: int, where: str) -> QemuConfig:
    """The parsed command line of QEMU process ``pid`` (anyone may read it)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise TargetError(f"{where}: no process {pid}") from None
    except PermissionError:
        raise AccessDenied(f"{where}: /proc/{pid}/cmdline cannot be read (is /proc mounted with hidepid?)") from None
    except OSError as exc:
        raise TargetError(f"{where}: cannot read /proc/{pid}/cmdline: {exc.strerror}") from None
    argv = raw.split(b"\0")
    if not argv or not argv[0]:
        raise TargetError(f"{where}: process {pid} has no command line (a kernel thread, or a zombie)")
    if b"qemu" not in Path(os.fsdecode(argv[0])).name.encode() and b"kvm" not in argv[0]:
        raise TargetError(f"{where}: process {pid} is {os.fsdecode(argv[0])!r}, not a QEMU")
    return parse_cmdline(argv)


def read_maps(pid: int, where: str) -> list[HostMapping]:
    try:
        return parse_maps(Path(f"/proc/{pid}/maps").read_text())
    except FileNotFoundError:
        raise TargetError(f"{where}: no process {pid}") from None
    except PermissionError:
        raise AccessDenied(f"{where}: {ptrace_read_refusal(pid, f'reading /proc/{pid}/maps')}") from None


def _where(spec: str, pid: int) -> str:
    return spec if re.search(rf"(?<!\d){pid}(?!\d)", spec) else f"{spec}: QEMU pid {pid}"


# -- the layout from the command line ------------------------------------------------------------


def _machine_rule(config: QemuConfig, where: str) -> tuple[str, bool, int | None]:
    """(``pc`` or ``q35``, gigabyte alignment, max-ram-below-4g) of the command line's machine."""
    binary = Path(config.binary).name
    arch = re.match(r"qemu-system-(\w+)", binary)
    if arch and arch.group(1) not in ("x86_64", "i386"):
        raise LayoutUnknown(f"{where} is {binary}: only x86 PC machines have a layout known without the monitor")
    kind = config.machine_type
    below = config.machine.get("max-ram-below-4g")
    max_below = parse_size(below) if below else None
    if kind == "q35" or kind.startswith("pc-q35-"):
        return "q35", True, max_below
    if kind == "pc" or kind.startswith("pc-i440fx-") or re.fullmatch(r"pc-\d+\.\d+", kind):
        version = _VERSION.match(kind)
        return "pc", not (version and (int(version.group(1)), int(version.group(2))) < (2, 0)), max_below
    raise LayoutUnknown(
        f"{where} runs machine type {kind!r}: without the monitor vmsentinel knows the RAM layout of pc and q35 only"
    )


def _node_backends(config: QemuConfig, where: str) -> list[Backend]:
    """The NUMA nodes' memdevs in node order (nodes without an id take the next one, as QEMU does)."""
    numbered: dict[int, dict[str, str]] = {}
    for node in config.numa_nodes:
        nodeid = int(node["nodeid"]) if "nodeid" in node else len(numbered)
        if nodeid in numbered:
            raise LayoutUnknown(f"{where} defines NUMA node {nodeid} twice")
        numbered[nodeid] = node
    if any("mem" in n for n in numbered.values()):
        raise LayoutUnknown(f"{where} mixes -numa node,mem= and memdev=")
    return [_backend(config, numbered[i]["memdev"], where) for i in sorted(numbered) if "memdev" in numbered[i]]


def _backend(config: QemuConfig, ident: str, where: str) -> Backend:
    backend = config.backends.get(ident)
    if backend is None:
        raise LayoutUnknown(f"{where}: memory backend {ident!r} is not on the command line (added through the monitor?)")
    if backend.kind not in ("ram", "file", "memfd"):
        raise LayoutUnknown(f"{where}: memory backend {ident!r} is a {backend.qom_type}, which vmsentinel cannot place")
    return backend


def cmdline_blocks(config: QemuConfig, pid: int, where: str = "") -> list[RamBlock]:
    """The guest's RAM blocks and their guest-physical segments, from the command line alone; raises
    LayoutUnknown where the command line does not settle it."""
    where = where or f"QEMU pid {pid}"
    if config.elsewhere():
        raise LayoutUnknown(f"{where}: RAM may be set outside the command line ({', '.join(config.elsewhere())})")
    family, gigabyte_align, max_below = _machine_rule(config, where)
    main = config.machine.get("memory-backend")
    nodes = [n for n in config.numa_nodes if "memdev" in n]
    if main and nodes:
        raise LayoutUnknown(f"{where} has both -machine memory-backend= and -numa memdev=")
    if main:
        parts = [_backend(config, main, where)]
    elif nodes:
        parts = _node_backends(config, where)
    else:
        size = config.ram_size()
        kind = "memory-backend-file" if config.mem_path else "memory-backend-ram"
        parts = [Backend("pc.ram", kind, size, False, config.mem_path)]
    ram_size = sum(p.size for p in parts)
    if "size" in config.memory and parse_size(config.memory["size"], 20) != ram_size:
        raise LayoutUnknown(f"{where}: -m {config.memory['size']} is not the {_size(ram_size)} of its memory backends")
    machine_ram = pc_layout(ram_size, family, max_below, gigabyte_align)
    blocks, offset = [], 0
    for backend in parts:
        segments = []
        for seg in machine_ram:  # this block's share of each machine RAM segment
            lo, hi = max(seg.file_offset, offset), min(seg.file_offset + seg.length, offset + backend.size)
            if lo < hi:
                segments.append(Segment(seg.phys_start + lo - seg.file_offset, lo - offset, hi - lo))
        blocks.append(RamBlock(backend, tuple(segments)))
        offset += backend.size
    blocks.extend(_memory_devices(config, where))
    _check_below_amd_hole(config, machine_ram, ram_size, where)
    return blocks


def _memory_devices(config: QemuConfig, where: str) -> list[RamBlock]:
    """pc-dimms given an ``addr=``; persistent memory is no RAM to the guest and is left out; any other
    memory device is placed by QEMU at run time, where only the monitor can say."""
    blocks = []
    for dev in config.memory_devices:
        driver, memdev = dev["driver"], dev.get("memdev", "?")
        if driver in ("nvdimm", "virtio-pmem", "virtio-pmem-pci"):
            continue
        if driver == "pc-dimm" and "addr" in dev:
            backend = _backend(config, memdev, where)
            blocks.append(RamBlock(backend, (Segment(parse_size(dev["addr"]), 0, backend.size),)))
            continue
        ident = dev.get("id", "")
        raise LayoutUnknown(
            f"{where} has a {driver}{f' {ident}' if ident else ''} (memdev {memdev}) that QEMU placed at run time"
            f"{'' if driver != 'pc-dimm' else ' (no addr=)'}: only the monitor knows where; give qmp=SOCKET"
        )
    return blocks


def _check_below_amd_hole(config: QemuConfig, machine_ram: list[Segment], ram_size: int, where: str) -> None:
    top = max(s.phys_end for s in machine_ram)
    maxmem = parse_size(config.memory["maxmem"], 20) if "maxmem" in config.memory else ram_size
    slots = int(config.memory.get("slots", "0") or 0)
    device_memory = maxmem - ram_size + (GiB * slots if maxmem > ram_size else 0)
    if max(top, FOUR_GIB) + GiB + device_memory + PCI_HOLE64 >= AMD_HT_START:
        raise LayoutUnknown(
            f"{where}: its memory reaches AMD's HyperTransport hole at 1012 GiB, and QEMU then moves RAM above"
            " 1 TiB on AMD hosts; only the monitor can say where it is"
        )


# -- blocks to mappings ----------------------------------------------------------------------


def _paths_of(backend: Backend, pid: int) -> set[str]:
    """Where a file backend's ``mem-path`` may show in /proc/PID/maps (QEMU resolves it in its own
    working folder)."""
    assert backend.mem_path is not None
    path = backend.mem_path
    names = {os.path.normpath(path), os.path.realpath(path)}
    if not os.path.isabs(path):
        with contextlib.suppress(OSError):
            names.add(os.path.normpath(os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)))
    return names


def _fits(backend: Backend, m: HostMapping, pid: int) -> bool:
    """Whether mapping ``m`` can be this backend's RAM (its size is checked apart)."""
    if "x" in m.perms or not m.perms.startswith("r") or m.shared != backend.share:
        return False
    if backend.kind == "memfd":
        return m.name.startswith("/memfd:")
    if backend.kind == "ram":
        return m.name == "/dev/zero" if backend.share else (m.anonymous and m.perms.startswith("rw"))
    if backend.kind == "file" and backend.mem_path:
        names = _paths_of(backend, pid)
        folder, _, base = m.name.rpartition("/")
        return m.name in names or (folder in names and base.startswith("qemu_back_mem."))  # mem-path is a folder
    return False


def place_blocks(blocks: Iterable[RamBlock], maps: list[HostMapping], pid: int, where: str = "") -> list[PlacedBlock]:
    """Each block's one mapping: its kind and exactly its size; of several anonymous ones, the one
    followed by QEMU's guard page. Anything else is refused."""
    where = where or f"QEMU pid {pid}"
    blocks = list(blocks)
    placed: list[PlacedBlock] = []
    taken: dict[int, str] = {}
    following = {a.start: b for a, b in itertools.pairwise(maps) if a.end == b.start}
    for block in blocks:
        size = -(-block.size // PAGE) * PAGE
        fits = [m for m in maps if m.size == size and _fits(block.backend, m, pid)]
        if len(fits) > 1:
            guarded = [m for m in fits if (nxt := following.get(m.start)) is not None and nxt.guard]
            fits = guarded if len(guarded) == 1 else fits
        what = f"{block.backend.qom_type} {block.name!r} ({_size(block.size)}"
        what += f", share={'on' if block.backend.share else 'off'})"
        if not fits:
            raise LayoutUnknown(f"{where}: no mapping in /proc/{pid}/maps fits {what}: its size or kind matches nothing")
        if len(fits) > 1:
            alike = sum(1 for b in blocks if b.backend.kind == block.backend.kind and b.size == block.size)
            raise LayoutUnknown(
                f"{where}: cannot tell which mapping holds {what} without the monitor: {len(fits)} candidates"
                f" for {alike} block(s) of that kind and size ({'; '.join(m.describe() for m in fits[:4])}); give qmp=SOCKET"
            )
        mapping = fits[0]
        if mapping.start in taken:
            raise LayoutUnknown(f"{where}: {what} and {taken[mapping.start]} both fit only {mapping.describe()}")
        taken[mapping.start] = what
        placed.append(PlacedBlock(block, mapping, mapping.start))
    return placed


# -- the layout from the monitor ----------------------------------------------------------------


def parse_info_memdev(text: str) -> dict[str, tuple[int, bool]]:
    """``info memdev``: backend id → (size, share)."""
    found = {}
    for m in _MEMDEV.finditer(text.replace("\r\n", "\n")):
        fields = dict(re.findall(r"^\s+([\w -]+):\s*(.*?)\s*$", m.group(2), re.MULTILINE))
        if "size" in fields:
            found[m.group(1)] = (int(fields["size"]), fields.get("share", "false") == "true")
    return found


def monitor_blocks(hmp: Hmp, maps: list[HostMapping], pid: int, where: str = "") -> list[PlacedBlock]:
    """The RAM blocks as QEMU itself places them: its memory backends (``info memdev``), where each
    is mapped for the CPUs (``info mtree -f``) and at which host address (``gpa2hva``), checked
    against /proc/PID/maps. Firmware and device memory (pc.bios, vga.vram...) are not RAM."""
    where = where or f"QEMU pid {pid}"
    memdevs = parse_info_memdev(hmp("info memdev"))
    regions = mtree_regions(hmp("info mtree -f"))
    placed = []
    for ident, (size, share) in sorted(memdevs.items()):
        segments = regions.get(ident) or regions.get(f"/objects/{ident}")
        if not segments:
            continue  # not mapped for the guest (a backend waiting for a hot-plug)
        first = segments[0]
        answer = hmp(f"gpa2hva {first.phys_start:#x}")
        m = _GPA2HVA.search(answer)
        if m is None or m.group(2) not in (ident, f"/objects/{ident}"):
            raise LayoutUnknown(f"{where}: the monitor's gpa2hva {first.phys_start:#x} says {answer.strip()!r}, not {ident}")
        host = int(m.group(3), 16) - first.file_offset
        if any(seg.file_offset + seg.length > size for seg in segments):
            raise LayoutUnknown(f"{where}: the monitor maps more of memory backend {ident!r} than its {_size(size)}")
        mapping = next((mp for mp in maps if mp.start <= host and host + size <= mp.end), None)
        if mapping is None:
            raise LayoutUnknown(
                f"{where}: the monitor puts memory backend {ident!r} ({_size(size)}) at host address {host:#x}, "
                f"where /proc/{pid}/maps has no mapping that holds it"
            )
        kind = "memory-backend-file" if mapping.shared and mapping.path else "memory-backend-ram"
        placed.append(PlacedBlock(RamBlock(Backend(ident, kind, size, share), tuple(segments)), mapping, host))
    if not placed:
        raise LayoutUnknown(f"{where}: the monitor's 'info mtree -f' maps no memory backend for the CPUs")
    return placed


# -- reading ------------------------------------------------------------------------------------


def open_placed(pid: int, placed: list[PlacedBlock], where: str = "") -> tuple[PhysicalMemory, list[str]]:
    """A memory source over the placed blocks, and notes on how: shared file mappings mapped through
    map_files, the rest (and a shared file whose map_files entry we may not open) read with
    process_vm_readv."""
    where = where or f"QEMU pid {pid}"
    what = f"QEMU pid {pid}"
    parts: list[PhysicalMemory] = []
    by_readv: list[Segment] = []
    refused: list[str] = []
    try:
        for p in placed:
            if p.mapping.shared and p.mapping.path:
                map_file = f"/proc/{pid}/map_files/{p.mapping.start:x}-{p.mapping.end:x}"
                base = p.mapping.offset + p.host - p.mapping.start
                try:
                    segs = [Segment(s.phys_start, base + s.file_offset, s.length) for s in p.block.segments]
                    parts.append(ProcessFileMemory(pid, map_file, segs, what))
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EACCES):
                        raise ProcessMemoryError(f"{where}: cannot open {map_file}: {exc.strerror}") from None
                    refused.append(map_files_refusal(pid, f"opening {map_file}"))
            by_readv.extend(Segment(s.phys_start, p.host + s.file_offset, s.length) for s in p.block.segments)
        if by_readv:
            readv = ProcessMemory(pid, by_readv, what)
            parts.append(readv)
            for seg in readv.segments:  # one page of each: a refusal shows now, not in the middle of a sweep
                readv.read_direct(seg.phys_start, min(PAGE, seg.length))
    except AccessDenied as exc:
        for part in parts:
            part.close()
        raise AccessDenied(f"{where}: {'; and '.join([*refused, str(exc)])}") from None
    except BaseException:
        for part in parts:
            part.close()
        raise
    notes = [f"{why}: read with process_vm_readv instead" for why in refused]
    if len(parts) == 1:
        return parts[0], notes
    return JoinedMemory(parts, "+".join(sorted({part.kind for part in parts}))), notes


def qemu_process_memory(
    pid: int, spec: str, hmp: Callable[[str], str] | None = None, host_ranges: list[tuple[int, int, int]] | None = None
) -> tuple[PhysicalMemory, str]:
    """The RAM of running QEMU process ``pid`` (zero-copy mmap through map_files when file/memfd-backed,
    else process_vm_readv) and how its layout was learned (e.g. "monitor: info mtree" or
    "command line + /proc/PID/maps"); ``hmp`` runs a human-monitor command when a monitor is usable.
    Into ``host_ranges`` go (guest-physical start, address in QEMU, length) of each piece of RAM."""
    where = _where(spec, pid)
    config = read_cmdline(pid, where)
    maps = read_maps(pid, where)
    placed, how, notes = None, "monitor: info mtree", []
    if hmp is not None:
        try:
            placed = monitor_blocks(hmp, maps, pid, where)
        except (HypervisorError, LayoutUnknown) as exc:  # the command line has its own certainty
            notes.append(f"the monitor failed: {str(exc).removeprefix(where + ': ')}")
    if placed is None:
        how = f"command line + /proc/{pid}/maps"
        try:
            placed = place_blocks(cmdline_blocks(config, pid, where), maps, pid, where)
        except LayoutUnknown as exc:
            raise LayoutUnknown("; ".join([str(exc), *notes])) from None
        if "maxmem" in config.memory:
            notes.append("-m maxmem= allows DIMMs plugged at run time, which only the monitor shows")
    memory, more = open_placed(pid, placed, where)
    if host_ranges is not None:
        host_ranges.extend((s.phys_start, p.host + s.file_offset, s.length) for p in placed for s in p.block.segments)
    return memory, how + "".join(f" ({note})" for note in [*notes, *more])
