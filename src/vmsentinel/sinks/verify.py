"""``vmsentinel alerts verify``: walk the hash chain of an alert record (JSON lines
file or SQLite store) and its signed heads, and say where it was damaged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmsentinel.sinks.chain import ChainRecord, SignedHead, verify_heads, verify_links

#: (message, signature) -> None when the signature is good, else the reason
HeadCheck = Callable[[bytes, bytes], str | None]


@dataclass
class ChainReport:
    path: str
    records: int = 0
    signed_heads: int = 0
    last_signed: int = 0
    #: baselines kept in the store (a chain of their own), checked with it
    baselines: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "intact": self.intact,
            "records": self.records,
            "signed_heads": self.signed_heads,
            "last_signed_record": self.last_signed,
            "baselines": self.baselines,
            "problems": self.problems,
        }


def _report(
    path: Path, records: list[ChainRecord], unreadable: list[str], heads: list[SignedHead], check: HeadCheck | None
) -> ChainReport:
    report = ChainReport(str(path), len(records), len(heads), max((h.seq for h in heads), default=0))
    problems, good = verify_links(records)
    last = max((r.seq for r in records), default=0)
    report.problems = unreadable + problems + verify_heads(path.name, heads, good, last, check)
    return report


def verify_ocsf_file(path: str | Path, check: HeadCheck | None = None) -> ChainReport:
    from vmsentinel.sinks.ocsf import read_chain, read_heads

    path = Path(path)
    records, unreadable = read_chain(path)
    heads, bad_heads = read_heads(Path(str(path) + ".heads"))
    return _report(path, records, unreadable + bad_heads, heads, check)


def verify_sqlite_file(path: str | Path, check: HeadCheck | None = None) -> ChainReport:
    import sqlite3

    from vmsentinel.sinks.sqlite_store import SqliteStore

    path = Path(path)
    if not path.exists():
        return ChainReport(str(path), problems=[f"no alert store at {path}"])
    from vmsentinel.sinks.baseline_record import verify_baselines

    try:
        store = SqliteStore(path, readonly=True)
        try:
            records, unreadable = store.read_chain()
            heads = store.read_heads()
            baselines, baseline_problems = verify_baselines(store.db, path, check)
        finally:
            store.db.close()
    except sqlite3.DatabaseError as exc:
        return ChainReport(str(path), problems=[f"{path}: not a readable SQLite store ({exc})"])
    report = _report(path, records, unreadable, heads, check)
    report.baselines = baselines
    report.problems += baseline_problems
    return report
