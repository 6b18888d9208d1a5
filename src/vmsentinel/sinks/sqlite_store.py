"""The SQLite store: findings and process events, in WAL mode, committed per
batch (a batch reported as written survives a kill). Findings are linked into
a hash chain (``seq``, ``prev_hash``, ``hash``) whose head is signed now and
then into ``chain_heads`` when the store has a signer (see :mod:`.chain`).

Every row names the ``host`` whose sentinel saw it: this one's (``host=``), or, in a fleet's
central store, the host that published it. A host that publishes to an event bus keeps the
store as its spool: with ``spool=True`` every event to publish is written into ``outbox`` in the
same transaction as the findings it carries, so an event is either recorded and queued or
neither; the publisher's cursor (``bus_cursor``) says how far the bus has acknowledged. The
central side writes what it receives with :meth:`SqliteStore.handle_received`, which keeps each
host's event once however often it arrives (``bus_received``)."""

from __future__ import annotations

import functools
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vmsentinel.detect.finding import Finding
from vmsentinel.events import Event, FindingRaised, PolicyRejected, ProcessStarted, ProcessStopped, ResponseDone
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks.chain import Chain, ChainRecord, HeadSigner, SignedHead, Signer, canonical
from vmsentinel.sinks.wire import SPOOLED, to_wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    target TEXT NOT NULL,
    detector TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    attack TEXT NOT NULL,
    key TEXT NOT NULL,
    confirmed INTEGER NOT NULL,
    evidence TEXT NOT NULL,
    seq INTEGER,
    prev_hash TEXT,
    hash TEXT
);
CREATE TABLE IF NOT EXISTS chain_heads (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    time REAL NOT NULL,
    signature BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_target_time ON findings(target, time);
CREATE INDEX IF NOT EXISTS findings_key ON findings(key);
CREATE INDEX IF NOT EXISTS findings_time ON findings(time);
CREATE INDEX IF NOT EXISTS findings_detector ON findings(detector, id);
CREATE INDEX IF NOT EXISTS findings_severity ON findings(severity, id);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    target TEXT NOT NULL,
    finding_key TEXT NOT NULL,
    action TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_received (
    host TEXT NOT NULL,
    store TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (host, store, seq)
);
CREATE TABLE IF NOT EXISTS process_events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    pid INTEGER NOT NULL,
    ppid INTEGER,
    name TEXT,
    exe TEXT,
    cmdline TEXT,
    uid INTEGER
);
"""
SPOOL_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_cursor (
    bus TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
"""
#: tables that name the host of each row (a column added to stores from before fleets)
HOST_TABLES = ("findings", "responses", "process_events")


def _chained_body(fields: tuple[object, ...], seq: int, prev: str) -> bytes:
    """What a finding's hash covers: its fields, and its host when it has one (rows from before
    fleets have none and keep the hash they were written with)."""
    *rest, host = fields
    return canonical([seq, prev, *rest, host] if host else [seq, prev, *rest])


class SqliteStore:
    def __init__(
        self,
        path: str | Path,
        signer: Signer | None = None,
        readonly: bool = False,
        *,
        host: str = "",
        spool: bool = False,
    ) -> None:
        """Open (or create) the store; ``readonly`` is for checking one: no schema changes, no writes.
        ``host``: the name rows written by :meth:`handle` carry; ``spool``: queue events to publish."""
        self.path = Path(path)
        self.host = host
        self.spool = spool
        self.heads = HeadSigner(self.path.name, signer)
        # one connection, usable from the watcher's thread and its owner's; every use holds the lock
        self.lock = threading.RLock()
        self.chain = Chain()
        #: called (outside the lock) after a batch put events into the outbox: the publisher wakes
        self.on_spooled: Callable[[], None] | None = None
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, check_same_thread=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        #: names this store's outbox on the bus: a store made anew counts its events from 1 again
        self.store_id = ""
        if spool:
            self.db.executescript(SPOOL_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO spool_meta VALUES ('store_id', ?)", (secrets.token_hex(8),))
            self.store_id = str(self.db.execute("SELECT value FROM spool_meta WHERE key = 'store_id'").fetchone()[0])
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(findings)")}
        for column, kind in (("seq", "INTEGER"), ("prev_hash", "TEXT"), ("hash", "TEXT")):
            if column not in columns:  # a store from before the chain: its old rows stay unchained
                self.db.execute(f"ALTER TABLE findings ADD COLUMN {column} {kind}")
        for table in HOST_TABLES:
            if "host" not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN host TEXT NOT NULL DEFAULT ''")
        self.db.execute("CREATE INDEX IF NOT EXISTS findings_host ON findings(host, id)")
        self.db.commit()
        last = self.db.execute("SELECT seq, hash FROM findings WHERE seq IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
        if last:
            self.chain = Chain(int(last[0]), str(last[1]))

    def handle(self, events: Sequence[Event]) -> None:
        """Keep findings (a refused policy is one too), responses and process starts and stops, and
        queue what a bus publishes (with ``spool``), all in one transaction."""
        with self.lock, self.db:
            written = self._write_events(events, self.host)
            spooled = self._spool(events) if self.spool else 0
        if self.heads.due(written):
            self.sign_head()
        if spooled and self.on_spooled is not None:
            self.on_spooled()

    def handle_received(self, host: str, store: str, seq: int, events: Sequence[Event]) -> bool:
        """Keep events host ``host`` published as event ``seq`` of its store ``store``, unless they were
        kept before (a message the bus delivered again): False then. The receipt and the rows commit
        together, so a central service killed between the two keeps neither and takes it again."""
        return self.handle_received_many([(host, store, seq, events)])[0]

    def handle_received_many(self, messages: Sequence[tuple[str, str, int, Sequence[Event]]]) -> list[bool]:
        """:meth:`handle_received` for many messages in one transaction (one disk sync for a batch)."""
        kept = []
        written = 0
        now = time.time()
        with self.lock, self.db:
            for host, store, seq, events in messages:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO bus_received (host, store, seq, time) VALUES (?, ?, ?, ?)", (host, store, seq, now)
                )
                kept.append(bool(cur.rowcount))
                if cur.rowcount:
                    written += self._write_events(events, host)
        if self.heads.due(written):
            self.sign_head()
        return kept

    def write_events(self, events: Sequence[Event], host: str) -> None:
        """Keep findings, responses and process events as ``host``'s (a fleet's central service writes
        what it finds itself about a host's guest)."""
        with self.lock, self.db:
            written = self._write_events(events, host)
        if self.heads.due(written):
            self.sign_head()

    def _write_events(self, events: Sequence[Event], host: str) -> int:
        findings = [e.finding for e in events if isinstance(e, FindingRaised | PolicyRejected)]
        self._write_findings(findings, host)
        self._write_responses([e.record for e in events if isinstance(e, ResponseDone)], host)
        self._write_process_events([e for e in events if isinstance(e, ProcessStarted | ProcessStopped)], host)
        return len(findings)

    def _spool(self, events: Sequence[Event]) -> int:
        rows = [
            (time.time(), e.target, type(e).__name__, json.dumps(to_wire(e), default=str))
            for e in events
            if isinstance(e, SPOOLED)
        ]
        self.db.executemany("INSERT INTO outbox (time, target, kind, body) VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def outbox(self, after: int, limit: int) -> list[tuple[int, str, str, str]]:
        """Queued events after id ``after``, oldest first: (id, target, kind, body)."""
        with self.lock:
            cur = self.db.execute("SELECT id, target, kind, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
            return [(int(i), str(t), str(k), str(b)) for i, t, k, b in cur]

    def cursor(self, bus: str) -> int:
        """The last outbox id ``bus`` acknowledged (0: none yet)."""
        with self.lock:
            row = self.db.execute("SELECT last_id FROM bus_cursor WHERE bus = ?", (bus,)).fetchone()
        return int(row[0]) if row else 0

    def advance(self, bus: str, last_id: int) -> None:
        """Record that ``bus`` acknowledged every outbox event up to ``last_id``."""
        with self.lock, self.db:
            self.db.execute(
                "INSERT INTO bus_cursor (bus, last_id) VALUES (?, ?)"
                " ON CONFLICT(bus) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
                (bus, last_id),
            )

    def write(self, findings: list[Finding]) -> None:
        if not findings:
            return
        with self.lock, self.db:
            self._write_findings(findings, self.host)
        if self.heads.due(len(findings)):
            self.sign_head()

    def _write_findings(self, findings: list[Finding], host: str) -> None:
        if not findings:
            return
        rows = []
        for f in findings:
            fields = (
                f.time,
                f.target,
                f.detector,
                f.severity.name.lower(),
                f.title,
                f.attack.technique_id,
                f.key,
                int(f.confirmed),
                json.dumps(f.evidence, sort_keys=True, default=str),
                host,
            )
            seq, prev, digest = self.chain.append(functools.partial(_chained_body, fields))
            rows.append((*fields, seq, prev, digest))
        self.db.executemany(
            "INSERT INTO findings (time, target, detector, severity, title, attack, key, confirmed, evidence,"
            " host, seq, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def sign_head(self) -> None:
        """Sign the chain's head into ``chain_heads`` (no-op without a signer or new records)."""
        head = self.heads.sign(self.chain)
        if head is None:
            return
        with self.lock, self.db:
            self.db.execute(
                "INSERT INTO chain_heads (seq, hash, time, signature) VALUES (?, ?, ?, ?)",
                (head.seq, head.digest, head.time, head.signature),
            )

    def read_chain(self) -> tuple[list[ChainRecord], list[str]]:
        """The chained findings in row order, and rows outside the chain."""
        records, problems = [], []
        cur = self.db.execute(
            "SELECT id, time, target, detector, severity, title, attack, key, confirmed, evidence,"
            f" {self._host_column('findings')}, seq, prev_hash, hash FROM findings ORDER BY id"
        )
        for row in cur:
            rowid, fields, (seq, prev, digest) = row[0], row[1:11], row[11:14]
            if seq is None or prev is None or digest is None:
                problems.append(f"row {rowid}: not in the hash chain")
                continue
            try:
                body = _chained_body(tuple(fields), int(seq), str(prev))
                records.append(ChainRecord(f"row {rowid}", int(seq), str(prev), str(digest), body))
            except (TypeError, ValueError):
                problems.append(f"row {rowid}: malformed chain columns")
        return records, problems

    def _host_column(self, table: str) -> str:
        """``host``, or an empty one for a store from before fleets opened read-only (not migrated)."""
        columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
        return "host" if "host" in columns else "'' AS host"

    def read_heads(self) -> list[SignedHead]:
        cur = self.db.execute("SELECT seq, hash, signature, time FROM chain_heads ORDER BY id")
        return [SignedHead(int(seq), str(h), bytes(sig), float(t)) for seq, h, sig, t in cur]

    def write_process_events(self, events: Sequence[ProcessStarted | ProcessStopped]) -> None:
        with self.lock, self.db:
            self._write_process_events(events, self.host)

    def _write_process_events(self, events: Sequence[ProcessStarted | ProcessStopped], host: str) -> None:
        if not events:
            return
        self.db.executemany(
            "INSERT INTO process_events (time, target, event, pid, ppid, name, exe, cmdline, uid, host)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.time,
                    e.target,
                    "start" if isinstance(e, ProcessStarted) else "stop",
                    e.pid,
                    e.ppid,
                    e.name,
                    e.exe,
                    e.args,
                    e.uid,
                    host,
                )
                for e in events
            ],
        )

    def write_responses(self, records: list[ResponseRecord]) -> None:
        with self.lock, self.db:
            self._write_responses(records, self.host)

    def _write_responses(self, records: list[ResponseRecord], host: str) -> None:
        if not records:
            return
        self.db.executemany(
            "INSERT INTO responses (time, target, finding_key, action, ok, detail, host) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.time, r.target, r.finding_key, r.action, int(r.ok), r.detail, host) for r in records],
        )

    def findings(self, target: str | None = None, since: float = 0.0) -> list[dict[str, object]]:
        where = " WHERE time >= ?" + (" AND target = ?" if target else "")
        cur = self.db.execute(
            "SELECT time, target, detector, severity, title, attack, key, confirmed, evidence, host FROM findings"
            + where
            + " ORDER BY id",
            (since, target) if target else (since,),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def responses(self) -> list[dict[str, object]]:
        cur = self.db.execute("SELECT time, target, finding_key, action, ok, detail, host FROM responses ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.sign_head()
        self.db.close()
