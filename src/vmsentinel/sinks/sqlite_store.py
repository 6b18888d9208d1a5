"""The SQLite store: findings and process events, in WAL mode, committed per
batch (a batch reported as written survives a kill)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from ..detect.finding import Finding
from ..hypervisor.responses import ResponseRecord

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
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_target_time ON findings(target, time);
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


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection, usable from the watcher's thread and its owner's; every use holds the lock
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def write(self, findings: list[Finding]) -> None:
        if not findings:
            return
        with self.lock, self.db:
            self.db.executemany(
                "INSERT INTO findings (time, target, detector, severity, title, attack, key, confirmed, evidence)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
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
                    for f in findings
                ],
            )

    def write_process_events(
        self, target: str, events: list[tuple[float, str, int, int, str, str | None, str | None, int]]
    ) -> None:
        if not events:
            return
        with self.lock, self.db:
            self.db.executemany(
                "INSERT INTO process_events (time, target, event, pid, ppid, name, exe, cmdline, uid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(t, target, e, p, pp, n, x, c, u) for t, e, p, pp, n, x, c, u in events],
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
        self.db.close()
