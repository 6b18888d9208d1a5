"""The alert queue: the watch's findings (read from its store, never written) joined with what
people decided about them (triage and suppressions, in the service's database), filtered and paged
in SQL so that a store of 100,000 findings answers in milliseconds.

A finding's status is what an analyst set (``acknowledged``, ``closed``), else ``suppressed``
while a suppression covers it, else ``open``. Suppressed findings are kept and listed on request:
a suppression hides noise, it never deletes evidence.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsentinel.service.accounts import ServiceDb

SEVERITIES = ("informational", "low", "medium", "high", "critical")
STATUSES = ("open", "acknowledged", "closed", "suppressed")
#: what a triage request may do
ACTIONS = ("acknowledge", "assign", "close", "reopen")
MAX_PAGE = 500

STATUS_SQL = """COALESCE(t.status, CASE WHEN EXISTS (
    SELECT 1 FROM svc.suppressions s WHERE s.expires > :now
    AND (s.detector = '*' OR s.detector = f.detector) AND (s.target = '*' OR s.target = f.target)
) THEN 'suppressed' ELSE 'open' END)"""


@dataclass
class Query:
    """Filters of the alert queue (every one optional)."""

    severity: list[str] | None = None
    detector: str | None = None
    guest: str | None = None
    host: str | None = None
    status: list[str] | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50
    offset: int = 0


class Alerts:
    """Reads findings from the watch's SQLite store with the service's triage state beside them."""

    def __init__(self, store: str | Path, service: ServiceDb) -> None:
        self.service = service
        self.store = Path(store)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(f"file:{self.store.resolve()}?mode=ro", uri=True, check_same_thread=False, timeout=30.0)
        self.db.execute("ATTACH DATABASE ? AS svc", (f"file:{service.path.resolve()}?mode=ro",))

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _select(self, where: str, args: dict[str, Any], tail: str) -> list[dict[str, Any]]:
        sql = (
            "SELECT f.id, f.time, f.host, f.target, f.detector, f.severity, f.title, f.attack, f.key, f.confirmed, f.evidence,"
            f" {STATUS_SQL} AS status, t.assignee, t.reason AS triage_reason, t.user AS triaged_by, t.time AS triaged"
            " FROM findings f LEFT JOIN svc.triage t ON t.finding = f.id" + where + tail
        )
        with self.lock:
            cur = self.db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        for row in rows:
            row["confirmed"] = bool(row["confirmed"])
            row["evidence"] = json.loads(row["evidence"])
        return rows

    def _where(self, q: Query) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        args: dict[str, Any] = {"now": time.time()}
        if q.severity:
            names = [s for s in q.severity if s in SEVERITIES]
            clauses.append("f.severity IN (" + ", ".join(f":sev{i}" for i in range(len(names))) + ")" if names else "0")
            args.update({f"sev{i}": s for i, s in enumerate(names)})
        if q.detector:
            clauses.append("f.detector = :detector")
            args["detector"] = q.detector
        if q.guest:
            clauses.append("f.target = :guest")
            args["guest"] = q.guest
        if q.host:
            clauses.append("f.host = :host")
            args["host"] = q.host
        if q.since is not None:
            clauses.append("f.time >= :since")
            args["since"] = q.since
        if q.until is not None:
            clauses.append("f.time < :until")
            args["until"] = q.until
        if q.status:
            names = [s for s in q.status if s in STATUSES]
            clauses.append(f"{STATUS_SQL} IN (" + ", ".join(f":st{i}" for i in range(len(names))) + ")" if names else "0")
            args.update({f"st{i}": s for i, s in enumerate(names)})
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def page(self, q: Query) -> tuple[list[dict[str, Any]], int]:
        """One page of findings, newest first, and how many match in all."""
        where, args = self._where(q)
        args.update(limit=max(1, min(q.limit, MAX_PAGE)), offset=max(0, q.offset))
        rows = self._select(where, args, " ORDER BY f.id DESC LIMIT :limit OFFSET :offset")
        with self.lock:
            total = self.db.execute("SELECT COUNT(*) FROM findings f LEFT JOIN svc.triage t ON t.finding = f.id" + where, args)
            count = int(total.fetchone()[0])
        return rows, count

    def get(self, finding_id: int) -> dict[str, Any] | None:
        rows = self._select(" WHERE f.id = :id", {"id": finding_id, "now": time.time()}, "")
        return rows[0] if rows else None

    def locate(self, key: str, target: str) -> int | None:
        """The newest stored finding with ``key`` on ``target``."""
        with self.lock:
            row = self.db.execute(
                "SELECT id FROM findings WHERE key = ? AND target = ? ORDER BY id DESC LIMIT 1", (key, target)
            ).fetchone()
        return int(row[0]) if row else None

    def exists(self, ids: list[int]) -> list[int]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        with self.lock:
            return [int(r[0]) for r in self.db.execute(f"SELECT id FROM findings WHERE id IN ({marks})", ids)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Open findings per guest and severity (the overview's numbers)."""
        sql = (
            "SELECT f.target, f.severity, COUNT(*) FROM findings f LEFT JOIN svc.triage t ON t.finding = f.id"
            f" WHERE {STATUS_SQL} = 'open' GROUP BY f.target, f.severity"
        )
        out: dict[str, dict[str, int]] = {}
        with self.lock:
            for target, severity, n in self.db.execute(sql, {"now": time.time()}):
                out.setdefault(str(target), {})[str(severity)] = int(n)
        return out

    def over_time(self, since: float, bucket: float) -> list[tuple[float, int]]:
        """Findings per time bucket since ``since`` (for the overview's chart)."""
        with self.lock:
            cur = self.db.execute(
                "SELECT CAST((time - ?) / ? AS INTEGER) AS b, COUNT(*) FROM findings WHERE time >= ? GROUP BY b ORDER BY b",
                (since, bucket, since),
            )
            return [(since + int(b) * bucket, int(n)) for b, n in cur]

    def hosts(self) -> list[str]:
        with self.lock:
            return [str(r[0]) for r in self.db.execute("SELECT DISTINCT host FROM findings ORDER BY host")]

    def detectors(self) -> list[str]:
        with self.lock:
            return [str(r[0]) for r in self.db.execute("SELECT DISTINCT detector FROM findings ORDER BY detector")]

    def responses(self, target: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        args: tuple[Any, ...]
        where, args = (" WHERE target = ?", (target, limit)) if target else ("", (limit,))
        with self.lock:
            cur = self.db.execute(
                "SELECT time, host, target, finding_key, action, ok, detail FROM responses" + where + " ORDER BY id DESC LIMIT ?",
                args,
            )
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def triage(service: ServiceDb, ids: list[int], action: str, user: str, reason: str, assignee: str | None = None) -> None:
    """Set the triage state of findings ``ids`` and write each change into the audit log."""
    if action not in ACTIONS:
        raise ValueError(f"triage action {action!r}: one of {', '.join(ACTIONS)}")
    now = time.time()
    with service.lock, service.db:
        for fid in ids:
            row = service.db.execute("SELECT status, assignee FROM triage WHERE finding = ?", (fid,)).fetchone()
            status, who = (row[0], row[1]) if row else ("open", None)
            if action == "acknowledge":
                status = "acknowledged"
            elif action == "close":
                status = "closed"
            elif action == "reopen":
                status = "open"
            elif action == "assign":
                who = assignee
                status = "acknowledged" if status == "open" else status
            service.db.execute(
                "INSERT INTO triage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(finding) DO UPDATE SET"
                " status = excluded.status, assignee = excluded.assignee, reason = excluded.reason,"
                " time = excluded.time, user = excluded.user",
                (fid, status, who, reason, now, user),
            )
            detail = f"status {status}" + (f", assignee {who}" if who else "")
            service.add_audit_entry(user, f"finding.{action}", f"finding:{fid}", detail, reason)


def suppress(service: ServiceDb, detector: str, target: str, days: float, user: str, reason: str) -> int:
    """Hide findings of ``detector`` (``*``: any) on ``target`` (``*``: any guest) for ``days``."""
    if days <= 0 or days > 365:
        raise ValueError("a suppression lasts more than 0 and at most 365 days")
    now = time.time()
    with service.lock, service.db:
        cur = service.db.execute(
            "INSERT INTO suppressions (detector, target, created, expires, reason, user) VALUES (?, ?, ?, ?, ?, ?)",
            (detector, target, now, now + days * 86400, reason, user),
        )
        sid = int(cur.lastrowid or 0)
        scope = f"detector {detector}, guest {target}, {days:g} days"
        service.add_audit_entry(user, "suppression.add", f"suppression:{sid}", scope, reason)
    return sid


def end_suppression(service: ServiceDb, sid: int, user: str, reason: str) -> bool:
    """End suppression ``sid`` now; False when none by that id is in force."""
    now = time.time()
    with service.lock, service.db:
        if not service.db.execute("UPDATE suppressions SET expires = ? WHERE id = ? AND expires > ?", (now, sid, now)).rowcount:
            return False
        service.add_audit_entry(user, "suppression.end", f"suppression:{sid}", "", reason)
    return True
