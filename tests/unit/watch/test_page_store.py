"""Baseline page bytes kept on disk by content: written once per distinct page however many guests
share it, read back through each baseline's own page hashes, and kept in memory instead when the
store cannot take them; a baseline kept for a guest comes back only for the same kernel."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from blake3 import blake3

from vmsentinel.detect.baseline import Baseline
from vmsentinel.os.records import CodeRegion
from vmsentinel.watch.page_store import PageStore, StoredPages
from vmsentinel.watch.runtime import BaselineFiles

PAGE = 4096
TEXT = 0xFFFFFFFF81000000


def baseline(pages: list[bytes], start: int = TEXT) -> Baseline:
    hashes = tuple(blake3(p).hexdigest(length=16) for p in pages)
    region = CodeRegion("kernel", start, len(pages) * PAGE, "d", hashes, ())
    return Baseline({}, {}, {("kernel", start): region}, {start + i * PAGE: p for i, p in enumerate(pages)})


def test_pages_are_written_once_and_read_back_through_each_baseline(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "pages.sqlite")
    text = [bytes([i]) * PAGE for i in range(6)]
    first, second = baseline(text), baseline([*text[:3], b"\xcc" * PAGE], start=TEXT + (1 << 21))  # another slide
    kept = store.keep(first)
    assert isinstance(kept, StoredPages) and len(store) == 6
    again = store.keep(second)
    assert len(store) == 7  # only the page the first did not have
    assert kept[TEXT + 5 * PAGE] == text[5] and again[TEXT + (1 << 21) + 3 * PAGE] == b"\xcc" * PAGE
    assert kept.get(TEXT + 6 * PAGE) is None and kept.get(TEXT + 1) is None and kept.get(TEXT - PAGE) is None
    assert sorted(kept) == [TEXT + i * PAGE for i in range(6)]


def test_a_store_that_cannot_take_the_pages_leaves_them_in_memory(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "pages.sqlite")
    other = sqlite3.connect(tmp_path / "pages.sqlite", timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock for longer than we wait
    store._db().execute("PRAGMA busy_timeout = 100")
    try:
        base = baseline([b"\x01" * PAGE, b"\x02" * PAGE])
        kept = store.keep(base)
        assert kept is base.page_bytes and kept[TEXT + PAGE] == b"\x02" * PAGE
    finally:
        other.rollback()
        other.close()


def test_a_kept_baseline_comes_back_only_for_the_same_kernel(tmp_path: Path) -> None:
    files = BaselineFiles(tmp_path / "baselines", PageStore(tmp_path / "pages.sqlite"))
    text = [bytes([i]) * PAGE for i in range(3)]
    saved = files.save("lab:a", ("6.1", "feed", "81000000"), baseline(text))
    assert isinstance(saved.page_bytes, StoredPages)
    back, _ = files.load("lab:a", ("6.1", "feed", "81000000"))
    assert back is not None and back.page_bytes[TEXT + 2 * PAGE] == text[2]
    assert files.load("lab:a", ("6.1", "feed", "82000000")) == (None, None)  # rebooted elsewhere: a new baseline
    assert files.load("lab:b", ("6.1", "feed", "81000000")) == (None, None)
    files.forget("lab:a")
    assert files.load("lab:a", ("6.1", "feed", "81000000")) == (None, None)


def test_a_page_whose_bytes_do_not_match_its_digest_is_not_read_back(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "pages.sqlite", table="baseline_pages", durable=True)
    kept = store.keep(baseline([b"\x01" * PAGE, b"\x02" * PAGE]))
    db = sqlite3.connect(tmp_path / "pages.sqlite")
    with db:
        db.execute("UPDATE baseline_pages SET data = ? WHERE data = ?", (b"\x90" * PAGE, b"\x02" * PAGE))
    assert kept.get(TEXT) == b"\x01" * PAGE and kept.get(TEXT + PAGE) is None
