"""Baseline page bytes on disk, by content: a baseline needs the bytes of its
kernel and module text only to explain a page whose hash changed (which bytes,
at which patch site), which is rare, so they are kept in one SQLite file per
watch, keyed by the page's BLAKE3 hash, instead of in every guest's memory.
Guests of one kernel build placed alike share every page; the worker processes
of one watch share the file.

    store = PageStore(session / "pages.sqlite")
    baseline.page_bytes = store.keep(baseline)   # written once per distinct page; read back on demand
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from blake3 import blake3

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline

PAGE = 4096
#: page hashes asked about in one query (SQLite allows some hundreds of parameters at least)
LOOKUP_BATCH = 500


class PageStore:
    def __init__(self, path: Path, table: str = "pages", durable: bool = False) -> None:
        """``table`` in the SQLite file ``path``; ``durable`` for pages kept beyond this watch (the baselines
        in the alert store): written through to disk, not left to the OS."""
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        self.path = path
        self.table = table
        self.durable = durable
        self._local = threading.local()  # sqlite connections are per thread
        self._db().execute(f"CREATE TABLE IF NOT EXISTS {table} (digest TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)  # transactions are ours to open
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # set once, by whoever makes the file
                db.execute("PRAGMA journal_mode=WAL")
            # a scratch file of one watch is lost with it anyway; the alert store's pages must outlive a crash
            db.execute("PRAGMA synchronous=NORMAL" if self.durable else "PRAGMA synchronous=OFF")
            self._local.db = db
        return db

    def keep(self, baseline: Baseline) -> Mapping[int, bytes]:
        """Write the baseline's page bytes that the store lacks and return a mapping that reads them back;
        if the store cannot take them, the bytes stay in memory (the baseline loses nothing)."""
        kept = baseline.page_bytes
        rows: dict[str, int] = {}  # digest -> a page with those bytes
        for region in baseline.code.values():
            for i, digest in enumerate(region.page_hashes):
                page = region.start + i * PAGE
                if digest and digest not in rows and page in kept:
                    rows[digest] = page
        try:
            db = self._db()
            digests = list(rows)
            for i in range(0, len(digests), LOOKUP_BATCH):  # guests of one build share most pages: write only new ones
                batch = digests[i : i + LOOKUP_BATCH]
                query = f"SELECT digest FROM {self.table} WHERE digest IN ({','.join('?' * len(batch))})"
                for (known,) in db.execute(query, batch):
                    rows.pop(known, None)
            if rows:
                db.execute("BEGIN IMMEDIATE")  # take the write lock first (waiting for it), never upgrade to it
                try:  # one page's bytes at a time: a baseline's thousands of pages are never copied out at once
                    db.executemany(
                        f"INSERT OR IGNORE INTO {self.table} VALUES (?, ?)", ((d, kept[page]) for d, page in rows.items())
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error:
            return baseline.page_bytes
        return self.view(baseline)

    def view(self, baseline: Baseline) -> StoredPages:
        return StoredPages(self, baseline)

    def get(self, digest: str) -> bytes | None:
        """The page with this BLAKE3 digest; None when the store lacks it or holds other bytes under it."""
        row = self._db().execute(f"SELECT data FROM {self.table} WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        data = bytes(row[0])
        return data if blake3(data).hexdigest(length=len(digest) // 2) == digest else None

    def __len__(self) -> int:
        return int(self._db().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])


class StoredPages(Mapping[int, bytes]):
    """page address -> bytes of a baseline, read from the store through the baseline's own page hashes."""

    def __init__(self, store: PageStore, baseline: Baseline) -> None:
        self.store = store
        self._regions = sorted(((r.start, r.size, r.page_hashes) for r in baseline.code.values()), key=lambda r: r[0])
        self._starts = [r[0] for r in self._regions]

    def _digest(self, page: int) -> str | None:
        i = bisect.bisect_right(self._starts, page) - 1
        if i < 0:
            return None
        start, size, hashes = self._regions[i]
        index = (page - start) // PAGE
        if page >= start + size or (page - start) % PAGE or index >= len(hashes):
            return None
        return hashes[index] or None

    def __getitem__(self, page: int) -> bytes:
        digest = self._digest(page)
        data = self.store.get(digest) if digest else None
        if data is None:
            raise KeyError(page)
        return data

    def __iter__(self) -> Iterator[int]:
        for start, _size, hashes in self._regions:
            for i, digest in enumerate(hashes):
                if digest:
                    yield start + i * PAGE

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __reduce__(self) -> tuple[type[dict[int, bytes]], tuple[()]]:
        return (dict, ())  # pickled as nothing: whoever loads the baseline views the store again
