"""Baselines that outlive the sentinel: kept in the alert store beside the
findings, hash-chained and signed like them, so a restarted sentinel compares
each guest with what it saw before instead of trusting the guest anew.

A baseline belongs to one boot of one kernel: the record is looked up by the
guest's name and its identity (kernel build, where its text lies, and a boot id
the guest cannot choose freely). A guest that rebooted gets a new first look.

Each record is one row: the baseline without its page bytes (the watch keeps
those by content in ``baseline_pages`` of the same file, shared by every guest
of a build), compressed, with its BLAKE3 digest, linked into its own chain
(``seq``, ``prev_hash``, ``hash``) and, with a record key, a signed head per
record. A record that does not verify is not used: the guest gets a new first
look, and the watch says why.

    record = BaselineRecord("vmsentinel.db", key="record.key")   # plain data: it travels to workers
    record.save(target, identity, baseline)       # its page bytes already elsewhere (they pickle as nothing)
    baseline, row = record.load(target, identity) # row.problems: why a stored one was refused
"""

from __future__ import annotations

import io
import json
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import zstandard

from vmsentinel.sinks.chain import GENESIS, canonical, head_message, link

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline

SCHEMA = """
CREATE TABLE IF NOT EXISTS baselines (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    target TEXT NOT NULL,
    identity TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature BLOB
);
CREATE INDEX IF NOT EXISTS baselines_target ON baselines(target, identity, id);
"""
#: the chain's name in head signatures: binds a signature to this table of this store
CHAIN_SUFFIX = "#baselines"
#: a stored baseline is at most this big once inflated (a kernel's hashes and patch sites: a few MB)
MAX_BODY = 256 << 20

#: what a stored baseline may be made of: the sentinel's own data classes and plain containers
_ALLOWED = {("builtins", name) for name in ("set", "frozenset", "dict", "list", "tuple", "bytes", "bytearray", "int", "str")} | {
    ("array", "array"),
    ("array", "_array_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("vmsentinel.detect.baseline", "Baseline"),
    ("vmsentinel.detect.baseline", "AddressMap"),
    ("vmsentinel.detect.baseline", "AddressSet"),
    ("vmsentinel.os.records", "CodeRegion"),
}
#: where a class a stored baseline names lives now (rows written before it moved still load)
_MOVED = {("vmsentinel.os.linux.views.kernel_code", "CodeRegion"): ("vmsentinel.os.records", "CodeRegion")}


class _Unpickler(pickle.Unpickler):
    """Loads only what a baseline is made of: a damaged or forged row cannot name any other class."""

    def find_class(self, module: str, name: str) -> Any:
        module, name = _MOVED.get((module, name), (module, name))
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a baseline")
        return super().find_class(module, name)


def _store_name(path: Path) -> str:
    return path.name + CHAIN_SUFFIX


def _row_body(seq: int, prev: str, when: float, target: str, identity: str, digest: str) -> bytes:
    return canonical([seq, prev, when, target, identity, digest])


@dataclass
class StoredBaseline:
    """One row of the record, as verified."""

    seq: int
    time: float
    target: str
    identity: tuple[str, ...]
    problems: list[str] = field(default_factory=list)


class BaselineRecord:
    """The baselines of a store file. Plain data (the path and the key's path): a worker process
    opens its own connections."""

    def __init__(self, path: str | Path, key: str | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self._local = threading.local()
        self._signer: Any = None
        self._public: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["key"])  # type: ignore[misc]

    # -- storage ----------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._local.db = db
        return db

    def _sign(self, seq: int, digest: str) -> bytes | None:
        if self.key is None:
            return None
        if self._signer is None:
            from vmsentinel.trust.signing import secret_key_signer

            self._signer = secret_key_signer(self.key)
        signature: bytes = self._signer(head_message(_store_name(self.path), seq, digest))
        return signature

    def _check(self, seq: int, digest: str, signature: bytes | None) -> str | None:
        """None when the row's signature is good (or there is no key to check it with), else why not."""
        if self.key is None:
            return None
        if signature is None:
            return "it is not signed, and this watch signs its record"
        if self._public is None:
            from vmsentinel.trust.signing import public_key_of_secret

            self._public = public_key_of_secret(self.key)
        return _check_signature(self.path, seq, digest, signature, lambda m, s: _verify_with(self._public, m, s))

    # -- the record -------------------------------------------------------------------------------

    def save(self, target: str, identity: tuple[str, ...], baseline: Baseline) -> Baseline:
        """Append ``baseline``, whose page bytes must already be kept elsewhere (a mapping that pickles as
        nothing). Appending takes the file's write lock, so the workers of one watch extend one chain."""
        blob = pickle.dumps(baseline, protocol=pickle.HIGHEST_PROTOCOL)  # page bytes pickle as nothing
        body = zstandard.ZstdCompressor(level=3).compress(blob)
        digest = blake3.blake3(body).hexdigest()
        ident, now = json.dumps(list(identity)), time.time()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute("SELECT seq, hash FROM baselines ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
            row_hash = link(prev, _row_body(seq, prev, now, target, ident, digest))
            db.execute(
                "INSERT INTO baselines (time, target, identity, digest, body, seq, prev_hash, hash, signature)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, target, ident, digest, body, seq, prev, row_hash, self._sign(seq, row_hash)),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return baseline

    def load(self, target: str, identity: tuple[str, ...]) -> tuple[Baseline | None, StoredBaseline | None]:
        """The latest baseline of ``target`` taken of this very kernel boot, if one verifies. The second
        value describes the row found (with its problems when it was refused), None when there was none."""
        try:
            row = (
                self._db()
                .execute(
                    "SELECT seq, prev_hash, hash, time, digest, body, signature FROM baselines"
                    " WHERE target = ? AND identity = ? ORDER BY id DESC LIMIT 1",
                    (target, json.dumps(list(identity))),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            return None, StoredBaseline(0, 0.0, target, identity, [f"{self.path}: {exc}"])
        if row is None:
            return None, None
        seq, prev, row_hash, when, digest, body, signature = row
        found = StoredBaseline(int(seq), float(when), target, identity)
        ident = json.dumps(list(identity))
        if link(str(prev), _row_body(int(seq), str(prev), float(when), target, ident, str(digest))) != row_hash:
            found.problems.append(f"record {seq} was altered (its content does not match its hash)")
        elif blake3.blake3(bytes(body)).hexdigest() != digest:
            found.problems.append(f"record {seq}: the stored baseline does not match its digest")
        else:
            reason = self._check(int(seq), str(row_hash), bytes(signature) if signature is not None else None)
            if reason is not None:
                found.problems.append(f"record {seq}: {reason}")
        if found.problems:
            return None, found
        try:
            blob = zstandard.ZstdDecompressor().decompress(bytes(body), max_output_size=MAX_BODY)
            baseline = _Unpickler(io.BytesIO(blob)).load()
        except (zstandard.ZstdError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            found.problems.append(f"record {seq}: not a baseline ({exc})")
            return None, found
        return baseline, found

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


HeadCheck = Callable[[bytes, bytes], "str | None"]


def _verify_with(key: Any, message: bytes, signature: bytes) -> str | None:
    from vmsentinel.errors import SignatureError
    from vmsentinel.trust.signing import verify_bytes

    try:
        verify_bytes(message, signature, [key], what="stored baseline")
    except SignatureError as exc:
        return str(exc)
    return None


def _check_signature(path: Path, seq: int, digest: str, signature: bytes, check: HeadCheck) -> str | None:
    reason = check(head_message(_store_name(path), seq, digest), signature)
    return f"its signature does not verify ({reason})" if reason is not None else None


def verify_baselines(db: sqlite3.Connection, path: Path, check: HeadCheck | None) -> tuple[int, list[str]]:
    """Walk the stored baselines of a store (opened read-only by ``alerts verify``): how many there are,
    and every problem (an altered, deleted or reordered record, a body that does not match its digest, a
    signature that does not verify, a record without one when the others have one)."""
    from vmsentinel.sinks.chain import ChainRecord, verify_links

    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'baselines'").fetchone():
        return 0, []
    records, problems = [], []
    rows = db.execute(
        "SELECT id, seq, prev_hash, hash, time, target, identity, digest, body, signature FROM baselines ORDER BY id"
    )
    for rowid, seq, prev, row_hash, when, target, ident, digest, body, signature in rows:
        try:
            body_bytes = _row_body(int(seq), str(prev), float(when), str(target), str(ident), str(digest))
        except (TypeError, ValueError):
            problems.append(f"baseline row {rowid}: malformed columns")
            continue
        records.append(ChainRecord(f"baseline row {rowid}", int(seq), str(prev), str(row_hash), body_bytes))
        if blake3.blake3(bytes(body or b"")).hexdigest() != digest:
            problems.append(f"baseline row {rowid}: the stored baseline does not match its digest")
        if check is not None:
            if signature is None:
                problems.append(f"baseline row {rowid}: not signed")
            else:
                reason = _check_signature(path, int(seq), str(row_hash), bytes(signature), check)
                if reason is not None:
                    problems.append(f"baseline row {rowid}: {reason}")
    link_problems, _good = verify_links(records)
    return len(records), [p.replace("record ", "baseline record ") for p in link_problems] + problems
