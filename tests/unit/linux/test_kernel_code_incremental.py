"""Kernel text hashed again only where the host saw writes: a page not written keeps its hash unread,
but only while that hash is the baseline's; a written page, a page that already differed, a page the
last sweep could not read and a region that moved are read again; the region digest is the same
whether pages were read or reused."""

from __future__ import annotations

from typing import Any

from vmsentinel.errors import ReadError
from vmsentinel.os.linux.symbols import TextRange
from vmsentinel.os.linux.views.kernel_code import hash_region, read_kernel_code

PAGE = 4096
TEXT = 0xFFFFFFFF81000000


class Text:
    """Kernel text in a dict of pages, counting which pages are read."""

    def __init__(self, pages: int) -> None:
        self.pages = {TEXT + i * PAGE: bytes([i]) * PAGE for i in range(pages)}
        self.reads: list[int] = []

    def read(self, addr: int, length: int) -> bytes:
        self.reads.append(addr)
        if addr not in self.pages:
            raise ReadError(f"nothing at {addr:#x}")
        return self.pages[addr][:length]


def reader(text: Text) -> Any:
    return text


def test_only_written_pages_are_read_and_the_digest_does_not_change() -> None:
    text = Text(8)
    base = hash_region(reader(text), "kernel", TEXT, 8 * PAGE, {})
    text.reads.clear()
    again = hash_region(reader(text), "kernel", TEXT, 8 * PAGE, {}, base.page_hashes, base.page_hashes, written={TEXT + 2 * PAGE})
    assert text.reads == [TEXT + 2 * PAGE]
    assert again == base  # same hashes, same digest, read or not


def test_a_written_page_that_changed_is_seen_and_kept_and_stays_read_while_it_differs() -> None:
    text = Text(4)
    base = hash_region(reader(text), "kernel", TEXT, 4 * PAGE, {})
    text.pages[TEXT + PAGE] = b"\xe9" + text.pages[TEXT + PAGE][1:]  # an inline hook
    keep: dict[int, bytes] = {}
    hooked = hash_region(reader(text), "kernel", TEXT, 4 * PAGE, keep, base.page_hashes, base.page_hashes, written={TEXT + PAGE})
    assert hooked.page_hashes[1] != base.page_hashes[1] and list(keep) == [TEXT + PAGE]
    assert hooked.digest != base.digest
    text.reads.clear()
    keep = {}
    # not written since, but unlike the baseline: read again, its bytes kept to explain the change
    later = hash_region(reader(text), "kernel", TEXT, 4 * PAGE, keep, base.page_hashes, hooked.page_hashes, written=set())
    assert text.reads == [TEXT + PAGE] and list(keep) == [TEXT + PAGE] and later == hooked


def test_pages_unreadable_last_time_are_read_again() -> None:
    text = Text(3)
    gone = text.pages.pop(TEXT + 2 * PAGE)
    first = hash_region(reader(text), "kernel", TEXT, 3 * PAGE, {})
    assert first.unreadable_pages == (TEXT + 2 * PAGE,)
    text.pages[TEXT + 2 * PAGE] = gone
    text.reads.clear()
    hash_region(reader(text), "kernel", TEXT, 3 * PAGE, {}, first.page_hashes, first.page_hashes, written=set())
    assert text.reads == [TEXT + 2 * PAGE]


def test_a_region_that_moved_or_grew_is_read_whole() -> None:
    text = Text(6)
    core = TextRange("kernel", TEXT, TEXT + 4 * PAGE)
    first = read_kernel_code(reader(text), core, [])
    reference = {(r.owner, r.start): r.page_hashes for r in first.regions}
    text.reads.clear()
    read_kernel_code(reader(text), core, [], reference, first, written=set())
    assert text.reads == []
    grown = TextRange("kernel", TEXT, TEXT + 6 * PAGE)
    read_kernel_code(reader(text), grown, [], reference, first, written=set())
    assert len(text.reads) == 6


def test_without_a_dirty_log_every_page_is_read() -> None:
    text = Text(5)
    core = TextRange("kernel", TEXT, TEXT + 5 * PAGE)
    first = read_kernel_code(reader(text), core, [])
    text.reads.clear()
    read_kernel_code(reader(text), core, [], {("kernel", TEXT): first.regions[0].page_hashes}, first, written=None)
    assert len(text.reads) == 5
