"""Kernel text hashed again only where the host saw writes: a page not written keeps its hash unread,
but only while that hash is the baseline's; a written page, a page that already differed, a page the
last sweep could not read and a region that moved are read again; the region digest is the same
whether pages were read or reused. Without a log, a region is read in one piece and its pages are
hashed only when its content is not the baseline's."""

from __future__ import annotations

from typing import Any

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.symbols import TextRange
from vmsentinel.os.linux.views.kernel_code import hash_region, read_kernel_code
from vmsentinel.os.records import PageBytes

PAGE = 4096
TEXT = 0xFFFFFFFF81000000


class Text:
    """Kernel text in a dict of pages, counting which pages are read."""

    def __init__(self, pages: int) -> None:
        self.pages = {TEXT + i * PAGE: bytes([i]) * PAGE for i in range(pages)}
        self.reads: list[int] = []

    def read(self, addr: int, length: int) -> bytes:
        """Pages start-aligned, as the hashing reads them; every page touched is counted."""
        out = b""
        for page in range(addr, addr + length, PAGE):
            self.reads.append(page)
            if page not in self.pages:
                raise ReadError(f"nothing at {page:#x}")
            out += self.pages[page][: min(PAGE, addr + length - page)]
        return out

    def pieces(self, addr: int, length: int) -> list[bytes]:
        return [self.read(addr, length)]


def reader(text: Text) -> Any:
    return text


def test_only_written_pages_are_read_and_the_digest_does_not_change() -> None:
    text = Text(8)
    base = hash_region(reader(text), "kernel", TEXT, 8 * PAGE, PageBytes())
    text.reads.clear()
    again = hash_region(reader(text), "kernel", TEXT, 8 * PAGE, PageBytes(), base, base.page_hashes, written={TEXT + 2 * PAGE})
    assert text.reads == [TEXT + 2 * PAGE]
    assert (again.digest, again.page_hashes) == (base.digest, base.page_hashes)  # the same, read or not


def test_a_written_page_that_changed_is_seen_and_kept_and_stays_read_while_it_differs() -> None:
    text = Text(4)
    base = hash_region(reader(text), "kernel", TEXT, 4 * PAGE, PageBytes())
    text.pages[TEXT + PAGE] = b"\xe9" + text.pages[TEXT + PAGE][1:]  # an inline hook
    keep = PageBytes()
    hooked = hash_region(reader(text), "kernel", TEXT, 4 * PAGE, keep, base, base.page_hashes, written={TEXT + PAGE})
    assert hooked.page_hashes[1] != base.page_hashes[1] and list(keep) == [TEXT + PAGE]
    assert hooked.digest != base.digest
    text.reads.clear()
    keep = PageBytes()
    # not written since, but unlike the baseline: read again, its bytes kept to explain the change
    later = hash_region(reader(text), "kernel", TEXT, 4 * PAGE, keep, base, hooked.page_hashes, written=set())
    assert text.reads == [TEXT + PAGE] and list(keep) == [TEXT + PAGE] and later == hooked


def test_pages_unreadable_last_time_are_read_again() -> None:
    text = Text(3)
    gone = text.pages.pop(TEXT + 2 * PAGE)
    first = hash_region(reader(text), "kernel", TEXT, 3 * PAGE, PageBytes())
    assert first.unreadable_pages == (TEXT + 2 * PAGE,) and first.content == ""
    text.pages[TEXT + 2 * PAGE] = gone
    text.reads.clear()
    hash_region(reader(text), "kernel", TEXT, 3 * PAGE, PageBytes(), first, first.page_hashes, written=set())
    assert text.reads == [TEXT + 2 * PAGE]


def test_a_region_that_moved_or_grew_is_read_whole() -> None:
    text = Text(6)
    core = TextRange("kernel", TEXT, TEXT + 4 * PAGE)
    first = read_kernel_code(reader(text), core, [])
    reference = {(r.owner, r.start): r for r in first.regions}
    text.reads.clear()
    read_kernel_code(reader(text), core, [], reference, first, written=set())
    assert text.reads == []
    grown = TextRange("kernel", TEXT, TEXT + 6 * PAGE)
    read_kernel_code(reader(text), grown, [], reference, first, written=set())
    assert len(text.reads) == 6


def test_without_a_dirty_log_the_region_is_hashed_whole_and_its_pages_only_when_it_changed() -> None:
    text = Text(5)
    core = TextRange("kernel", TEXT, TEXT + 5 * PAGE)
    first = read_kernel_code(reader(text), core, [])
    assert len(first.page_bytes) == 5 and first.regions[0].content  # a baseline keeps every page
    reference = {("kernel", TEXT): first.regions[0]}
    text.reads.clear()
    same = read_kernel_code(reader(text), core, [], reference, first, written=None)
    assert len(text.reads) == 5  # every page read (hashed whole) ...
    assert same.regions[0].page_hashes is first.regions[0].page_hashes and not same.page_bytes  # ... none hashed
    text.pages[TEXT + 3 * PAGE] = b"\xcc" + text.pages[TEXT + 3 * PAGE][1:]
    text.reads.clear()
    changed = read_kernel_code(reader(text), core, [], reference, first, written=None)
    assert len(text.reads) == 10  # hashed whole, then (it differs) page by page
    assert [
        i for i, (a, b) in enumerate(zip(first.regions[0].page_hashes, changed.regions[0].page_hashes, strict=True)) if a != b
    ] == [3]
    assert list(changed.page_bytes) == [TEXT + 3 * PAGE] and changed.page_bytes[TEXT + 3 * PAGE][0] == 0xCC
    assert changed.regions[0].digest != first.regions[0].digest


def test_a_region_with_an_unreadable_page_is_hashed_page_by_page_and_says_which() -> None:
    text = Text(4)
    core = TextRange("kernel", TEXT, TEXT + 4 * PAGE)
    first = read_kernel_code(reader(text), core, [])
    del text.pages[TEXT + PAGE]
    later = read_kernel_code(reader(text), core, [], {("kernel", TEXT): first.regions[0]}, first, written=None)
    assert later.regions[0].unreadable_pages == (TEXT + PAGE,) and later.regions[0].page_hashes[1] == ""
    assert later.problems == ["kernel: 1 text pages unreadable"]


def test_text_chunks_are_those_hashed_and_a_hostile_module_size_is_capped() -> None:
    from vmsentinel.os.linux.views.kernel_code import MAX_TEXT, text_chunks

    huge = TextRange("module:evil", 0xFFFFFFFFC0000000, 0xFFFFFFFFC0000000 + (1 << 40))  # a size from the guest
    backwards = TextRange("module:odd", 0xFFFFFFFFC1000000, 0xFFFFFFFFC0000000)
    unaligned = TextRange("module:u", 0xFFFFFFFFC2000100, 0xFFFFFFFFC2000100 + PAGE + 10)
    assert len(text_chunks([huge])) == MAX_TEXT // PAGE
    assert text_chunks([backwards]) == []
    assert text_chunks([unaligned]) == [(unaligned.start, PAGE), (unaligned.start + PAGE, 10)]


class Log:
    """A dirty log that says which physical pages were written, and records what it was asked."""

    pid = 1

    def __init__(self, dirty: set[int]) -> None:
        self.written = dirty
        self.asked: set[int] = set()
        self.clears = 0

    def dirty(self, pages: Any) -> set[int]:
        self.asked = set(pages)
        return self.asked & self.written

    def clear(self) -> None:
        self.clears += 1


class Space:
    """Virtual = physical + a constant, for the text; jiffies at a page of its own."""

    def translate(self, vaddr: int) -> int:
        return vaddr - TEXT + 0x1000000


def tracked_guest(log: Log, jiffies: list[int]) -> Any:
    """A LinuxGuest with only what its dirty-text bookkeeping reads."""
    from types import SimpleNamespace

    from vmsentinel.os.linux.guest import LinuxGuest

    guest = LinuxGuest.__new__(LinuxGuest)
    guest.target = SimpleNamespace(dirty_log=log, live=True)
    guest.reader = SimpleNamespace(
        space=Space(),
        has_symbol=lambda name: name == "jiffies",
        symbol=lambda _name: TEXT + 0x100000,
        u64=lambda _address: jiffies[0],
    )
    guest.code_tracking, guest._last_canary = (True, "test"), None
    return guest


def test_a_chunk_on_two_pages_counts_as_written_when_either_page_was() -> None:
    log = Log({0x1000000 + 2 * PAGE})  # the second page under the unaligned chunk
    guest = tracked_guest(log, [5])
    chunk = TextRange("module:u", TEXT + 0x100, TEXT + 0x100 + 3 * PAGE)
    written = guest._written_text([chunk], incremental=True)
    assert written == {TEXT + 0x100 + PAGE, TEXT + 0x100 + 2 * PAGE} and log.clears == 1


def test_a_log_that_misses_the_guests_own_writes_is_dropped() -> None:
    jiffies = [100]
    log = Log(set())  # reports nothing written, ever
    guest = tracked_guest(log, jiffies)
    core = TextRange("kernel", TEXT, TEXT + 4 * PAGE)
    assert guest._written_text([core], incremental=True) == set()  # the first look: nothing to compare yet
    jiffies[0] = 101  # the guest ticked; its page must have come back written
    assert guest._written_text([core], incremental=True) is None
    assert guest.code_tracking == (False, "the host missed a write the guest made (jiffies changed, its page stayed clean)")


def test_a_full_sweep_asks_only_for_the_canary_and_starts_a_new_interval() -> None:
    log = Log(set())
    guest = tracked_guest(log, [7])
    core = TextRange("kernel", TEXT, TEXT + 64 * PAGE)
    assert guest._written_text([core], incremental=False) is None
    assert log.asked == {0x1000000 + 0x100000} and log.clears == 1


def test_page_bytes_kept_as_whole_regions_read_back_per_page() -> None:
    """A region kept as one buffer answers per page (the last one short), a page kept alone wins over
    the region's copy, and addresses off a page boundary or outside every region are not there."""
    kept = PageBytes()
    blob = b"".join(bytes([i]) * PAGE for i in range(3)) + b"\x07" * 100
    kept.add_region(TEXT + 8 * PAGE, b"\x09" * PAGE)
    kept.add_region(TEXT, blob)
    kept[TEXT + PAGE] = b"\xcc" * PAGE
    assert kept[TEXT] == b"\0" * PAGE and kept[TEXT + 2 * PAGE] == b"\x02" * PAGE
    assert kept[TEXT + PAGE] == b"\xcc" * PAGE
    assert kept[TEXT + 3 * PAGE] == b"\x07" * 100
    assert kept[TEXT + 8 * PAGE] == b"\x09" * PAGE
    for absent in (TEXT + 1, TEXT + 4 * PAGE, TEXT - PAGE, TEXT + 9 * PAGE):
        assert absent not in kept and kept.get(absent) is None
    assert sorted(kept) == [TEXT + i * PAGE for i in (0, 1, 2, 3, 8)] and len(kept) == 5


def test_a_baseline_read_keeps_a_readable_region_as_one_buffer_with_the_same_hashes() -> None:
    text = Text(6)
    whole = PageBytes()
    region = hash_region(reader(text), "kernel", TEXT, 6 * PAGE, whole)
    per_page = hash_region(reader(text), "kernel", TEXT, 6 * PAGE, None)
    assert (region.digest, region.page_hashes) == (per_page.digest, per_page.page_hashes)
    assert [whole[TEXT + i * PAGE] for i in range(6)] == [text.pages[TEXT + i * PAGE] for i in range(6)]
