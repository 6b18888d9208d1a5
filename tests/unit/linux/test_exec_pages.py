"""Code pages of a process as mapped: only present pages of file-backed executable mappings, tagged with
the file offset they map; a physical page shared by processes is hashed once; a mapping larger than the
per-process budget is cut and said so."""

from __future__ import annotations

from tests.synthetic import PageTableBuilder, new_memory

from vmsentinel.arch.x86_64 import PagingAddressSpace
from vmsentinel.os.linux.views.exec_pages import MAX_PAGES_PER_PROCESS, exec_pages
from vmsentinel.os.linux.views.memory_maps import MapEntry

CODE = 0x400000


def entry(start: int, pages: int, perms: str, path: str, offset: int = 0) -> MapEntry:
    return MapEntry(pid=1, start=start, end=start + pages * 4096, perms=perms, offset=offset, dev="08:01", inode=7, path=path)


def process() -> PagingAddressSpace:
    mem = new_memory()
    pt = PageTableBuilder(mem)
    pt.map(CODE, 0x500000, user=True, writable=False)  # page 0 of the mapping is present, page 1 is not
    pt.map(CODE + 2 * 4096, 0x501000, user=True, writable=False)
    mem.write(0x500000, b"\x90" * 4096)
    mem.write(0x501000, b"\xcc" * 4096)
    return PagingAddressSpace(mem, pt.root)


def test_present_pages_of_file_backed_code_only_with_their_file_offsets() -> None:
    space = process()
    calls: list[bytes] = []

    def hasher(page: bytes) -> str:
        calls.append(page)
        return f"h{page[0]:02x}"

    maps = [
        entry(CODE, 3, "r-xp", "/bin/prog", offset=0x2000),
        entry(CODE, 3, "r--p", "/bin/prog"),  # not executable
        entry(CODE, 3, "r-xp", ""),  # anonymous: another detector's business
        entry(CODE, 3, "r-xp", "[vdso]"),
    ]
    cache: dict[int, str] = {}
    problems: list[str] = []
    pages = exec_pages(space, maps, hasher, cache, problems)
    assert [(p.path, p.file_offset, p.address, p.digest) for p in pages] == [
        ("/bin/prog", 0x2000, CODE, "h90"),
        ("/bin/prog", 0x4000, CODE + 0x2000, "hcc"),
    ]
    assert not problems and len(calls) == 2
    again = exec_pages(space, maps[:1], hasher, cache, problems)  # another process mapping the same pages
    assert [p.digest for p in again] == ["h90", "hcc"] and len(calls) == 2  # hashed once per sweep


def test_a_mapping_beyond_the_budget_is_cut_and_reported() -> None:
    space = process()
    problems: list[str] = []
    pages = exec_pages(space, [entry(CODE, MAX_PAGES_PER_PROCESS + 100, "r-xp", "/bin/huge")], lambda p: "h", {}, problems)
    assert len(pages) == 2 and any(f"more than {MAX_PAGES_PER_PROCESS} code pages" in p for p in problems)
