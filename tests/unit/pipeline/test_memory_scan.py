"""YARA over listed memory regions: a string across a chunk boundary is found, unreadable pages read
as zeros (offsets stay right), and each match names its process or module and region."""

from __future__ import annotations

from pathlib import Path

from vmsentinel.detect.yara_rules import YaraRules
from vmsentinel.errors import ReadError
from vmsentinel.os.records import MemoryRegion
from vmsentinel.pipeline.memory_scan import CHUNK, scan_regions

RULES = Path(__file__).parents[2] / "data" / "yara"
MARKER = b"vmsentinel-yara-test-marker-7f3a"


def test_a_marker_across_a_chunk_boundary_and_after_a_hole_is_found() -> None:
    rules = YaraRules.load([RULES])
    start = 0x7F0000000000
    data = bytearray(2 * CHUNK)
    at = CHUNK - 7  # straddles the first chunk's end
    data[at : at + len(MARKER)] = MARKER
    hole = range(start + 0x3000, start + 0x5000)

    reads: list[tuple[int, int]] = []

    def read(addr: int, length: int) -> bytes:
        reads.append((addr, length))
        if addr < hole.stop and hole.start < addr + length:
            raise ReadError(f"page {max(addr, hole.start):#x} not present")
        return bytes(data[addr - start : addr - start + length])

    regions = [
        MemoryRegion(42, "sh", "[heap]", start, len(data), read),
        MemoryRegion(None, "veth", "module veth", start, 0x2000, read),
    ]
    matches = scan_regions(rules, regions)
    assert [(m.pid, m.name, m.region, m.address) for m in matches] == [(42, "sh", "[heap]", start + at)]
    assert reads[0] == (start, CHUNK + 4096)  # one read for a readable chunk ... page by page only around the hole
    assert (start + 0x3000, 4096) in reads and (start + 0x2000, 4096) in reads


def test_a_marker_in_an_unreadable_page_is_not_seen_and_one_after_it_is_found_where_it_is() -> None:
    rules = YaraRules.load([RULES])
    start = 0x7F0000000000
    data = bytearray(0x8000)
    data[0x3100 : 0x3100 + len(MARKER)] = MARKER  # in the hole
    data[0x6010 : 0x6010 + len(MARKER)] = MARKER

    def read(addr: int, length: int) -> bytes:
        if addr < start + 0x5000 and start + 0x3000 < addr + length:
            raise ReadError("not present")
        return bytes(data[addr - start : addr - start + length])

    matches = scan_regions(rules, [MemoryRegion(7, "x", "[anon]", start, len(data), read)])
    assert [m.address for m in matches] == [start + 0x6010]


class CountingRules(YaraRules):
    """The test rules, counting the bytes handed to the engine."""

    scanned = 0

    def scan(self, data: bytes, scanner: object | None = None) -> list[tuple[str, int]]:
        CountingRules.scanned += len(data)
        return super().scan(data, scanner)


def test_processes_mapping_the_same_frames_are_scanned_once_and_each_is_reported_at_its_own_address() -> None:
    """Three processes: two map one library's frames (at different addresses), the third has the same
    bytes in frames of its own. The shared frames are scanned once, the copy on its own; all three match."""
    from tests.synthetic import PageTableBuilder, new_memory

    from vmsentinel.arch.x86_64 import PagingAddressSpace

    mem = new_memory(0x800000)
    library = bytearray(4 * 4096)
    library[0x2FF0 : 0x2FF0 + len(MARKER)] = MARKER  # across a page boundary
    spaces = []
    for pid, (vbase, frames) in enumerate([(0x7F0000000000, 0x400000), (0x7F1230000000, 0x400000), (0x7F0000000000, 0x600000)]):
        pt = PageTableBuilder(mem, 4, pool_start=0x100000 + pid * 0x40000, pool_end=0x140000 + pid * 0x40000)
        for page in range(4):
            pt.map(vbase + page * 4096, frames + page * 4096)
        mem.write(frames, bytes(library))
        spaces.append((pid + 1, vbase, PagingAddressSpace(mem, pt.root, 4)))
    rules = CountingRules(YaraRules.load([RULES]).rules, [])
    CountingRules.scanned = 0
    regions = [MemoryRegion(pid, "p", "lib", vbase, len(library), s.read_present, s.physical_runs) for pid, vbase, s in spaces]
    matches = scan_regions(rules, regions)
    assert [(m.pid, m.address) for m in matches] == [(pid, vbase + 0x2FF0) for pid, vbase, _ in spaces]
    assert CountingRules.scanned == 2 * len(library)
    # the same regions without layouts: each scanned, the same matches
    CountingRules.scanned = 0
    plain = [MemoryRegion(pid, "p", "lib", vbase, len(library), s.read_present) for pid, vbase, s in spaces]
    assert scan_regions(rules, plain) == matches
    assert CountingRules.scanned == 3 * len(library)
