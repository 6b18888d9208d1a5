"""The SQLite store: findings and process events, in WAL mode, committed per
batch (a batch reported as written survives a kill). Findings are linked into
a hash chain (``seq``, ``prev_hash``, ``hash``) whose head is signed now and
then into ``chain_heads`` when the store has a signer (see :mod:`.chain`)."""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from vmsentinel.detect.finding import Finding
from vmsentinel.events import Event, FindingRaised, PolicyRejected, ProcessStarted, ProcessStopped, ResponseDone
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks.chain import Chain, ChainRecord, HeadSigner, SignedHead, Signer, canonical

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


def _chained_body(fields: tuple[object, ...], seq: int, prev: str) -> bytes:
    return canonical([seq, prev, *fields])


class SqliteStore:
    def __init__(self, path: str | Path, signer: Signer | None = None, readonly: bool = False) -> None:
        """Open (or create) the store; ``readonly`` is for checking one: no schema changes, no writes."""
        self.path = Path(path)
        self.heads = HeadSigner(self.path.name, signer)
        # one connection, usable from the watcher's thread and its owner's; every use holds the lock
        self.lock = threading.RLock()
        self.chain = Chain()
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, check_same_thread=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(findings)")}
        for column, kind in (("seq", "INTEGER"), ("prev_hash", "TEXT"), ("hash", "TEXT")):
            if column not in columns:  # a store from before the chain: its old rows stay unchained
                self.db.execute(f"ALTER TABLE findings ADD COLUMN {column} {kind}")
        last = self.db.execute("SELECT seq, hash FROM findings WHERE seq IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
        if last:
            self.chain = Chain(int(last[0]), str(last[1]))

    def handle(self, events: Sequence[Event]) -> None:
        """Keep findings (a refused policy is one too), responses and process starts and stops."""
        self.write([e.finding for e in events if isinstance(e, FindingRaised | PolicyRejected)])
        self.write_responses([e.record for e in events if isinstance(e, ResponseDone)])
        self.write_process_events([e for e in events if isinstance(e, ProcessStarted | ProcessStopped)])

    def write(self, findings: list[Finding]) -> None:
        if not findings:
            return
        with self.lock, self.db:
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
                )
                seq, prev, digest = self.chain.append(functools.partial(_chained_body, fields))
                rows.append((*fields, seq, prev, digest))
            self.db.executemany(
                "INSERT INTO findings (time, target, detector, severity, title, attack, key, confirmed, evidence,"
                " seq, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        if self.heads.due(len(findings)):
            self.sign_head()

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
            "SELECT id, time, target, detector, severity, title, attack, key, confirmed, evidence, seq, prev_hash, hash"
            " FROM findings ORDER BY id"
        )
        for row in cur:
            rowid, fields, (seq, prev, digest) = row[0], row[1:10], row[10:13]
            if seq is None or prev is None or digest is None:
                problems.append(f"row {rowid}: not in the hash chain")
                continue
            try:
                body = _chained_body(tuple(fields), int(seq), str(prev))
                records.append(ChainRecord(f"row {rowid}", int(seq), str(prev), str(digest), body))
            except (TypeError, ValueError):
                problems.append(f"row {rowid}: malformed chain columns")
        return records, problems

    def read_heads(self) -> list[SignedHead]:
        cur = self.db.execute("SELECT seq, hash, signature, time FROM chain_heads ORDER BY id")
        return [SignedHead(int(seq), str(h), bytes(sig), float(t)) for seq, h, sig, t in cur]

    def write_process_events(self, events: Sequence[ProcessStarted | ProcessStopped]) -> None:
        if not events:
            return
        with self.lock, self.db:
            self.db.executemany(
                "INSERT INTO process_events (time, target, event, pid, ppid, name, exe, cmdline, uid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    )
                    for e in events
                ],
            )

    def write_responses(self, records: list[ResponseRecord]) -> None:
        if not records:
            return
        with self.lock, self.db:
            self.db.executemany(
                "INSERT INTO responses (time, target, finding_key, action, ok, detail) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.time, r.target, r.finding_key, r.action, int(r.ok), r.detail) for r in records],
            )

    def findings(self, target: str | None = None, since: float = 0.0) -> list[dict[str, object]]:
        where = " WHERE time >= ?" + (" AND target = ?" if target else "")
        cur = self.db.execute(
            "SELECT time, target, detector, severity, title, attack, key, confirmed, evidence FROM findings"
            + where
            + " ORDER BY id",
            (since, target) if target else (since,),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def responses(self) -> list[dict[str, object]]:
        cur = self.db.execute("SELECT time, target, finding_key, action, ok, detail FROM responses ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.sign_head()
        self.db.close()
