"""Baselines kept in the alert store: they come back only for the same guest and kernel boot, chained
and signed; a row that was edited, forged or signed by another key is refused with the reason, and
``alerts verify`` finds the damage. A forged row cannot make the sentinel load any other class."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import blake3
import pytest
import zstandard
from tests.unit.watch.test_page_store import PAGE, TEXT, baseline

from vmsentinel.sinks.baseline_record import BaselineRecord, _row_body, verify_baselines
from vmsentinel.sinks.chain import link
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.sinks.verify import verify_sqlite_file
from vmsentinel.trust.signing import new_key

IDENTITY = ("6.1.0-41-amd64", "feed", "81000000", "boot-1")


@pytest.fixture
def key(tmp_path: Path) -> str:
    secret, _public = new_key(tmp_path / "record")
    return str(secret)


def stored(record: BaselineRecord, target: str = "lab:a", identity: tuple[str, ...] = IDENTITY) -> None:
    base = baseline([b"\x01" * PAGE])
    base.page_bytes = {}  # kept elsewhere, as the watch does
    base.taint, base.first_look = 0x1000, {"k1"}
    record.save(target, identity, base)


def test_a_baseline_comes_back_for_the_same_guest_and_boot_only(tmp_path: Path, key: str) -> None:
    record = BaselineRecord(tmp_path / "store.db", key)
    stored(record)
    back, row = record.load("lab:a", IDENTITY)
    assert back is not None and row is not None and not row.problems and row.seq == 1
    assert back.taint == 0x1000 and back.first_look == {"k1"} and (("kernel", TEXT) in back.code)
    assert back.code[("kernel", TEXT)].page_hashes == baseline([b"\x01" * PAGE]).code[("kernel", TEXT)].page_hashes
    assert record.load("lab:a", (*IDENTITY[:3], "boot-2")) == (None, None)  # rebooted: a new first look
    assert record.load("lab:b", IDENTITY) == (None, None)
    stored(record)  # a second baseline of the same boot (the guest was re-baselined): the latest wins
    assert record.load("lab:a", IDENTITY)[1].seq == 2  # type: ignore[union-attr]


def test_the_record_travels_to_a_worker_as_its_path_and_key(tmp_path: Path, key: str) -> None:
    record = BaselineRecord(tmp_path / "store.db", key)
    stored(record)
    copy = pickle.loads(pickle.dumps(record))
    assert copy.path == record.path and copy.key == key and copy.load("lab:a", IDENTITY)[0] is not None


def _tamper(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()


def test_an_edited_row_is_refused_and_verify_finds_it(tmp_path: Path, key: str) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path).close()  # the alert store the baselines are kept in
    record = BaselineRecord(path, key)
    stored(record)
    stored(record, "lab:b")
    _tamper(path, "UPDATE baselines SET time = time - 3600 WHERE target = 'lab:a'")
    back, row = record.load("lab:a", IDENTITY)
    assert back is None and row is not None and "altered" in row.problems[0]
    assert record.load("lab:b", IDENTITY)[0] is not None
    report = verify_sqlite_file(path)
    assert report.baselines == 2 and any("baseline row 1" in p and "altered" in p for p in report.problems)


def test_a_replaced_body_is_refused(tmp_path: Path, key: str) -> None:
    path = tmp_path / "store.db"
    record = BaselineRecord(path, key)
    stored(record)
    other = baseline([b"\x02" * PAGE])
    other.page_bytes = {}
    _tamper(path, "UPDATE baselines SET body = ?", zstandard.ZstdCompressor().compress(pickle.dumps(other)))
    back, row = record.load("lab:a", IDENTITY)
    assert back is None and row is not None and "does not match its digest" in row.problems[0]


def _rewrite(path: Path, content: object) -> None:
    """Replace the one row's baseline with ``content`` and fix its digest and hash, as whoever can write
    the file (but lacks the record key) can."""
    body = zstandard.ZstdCompressor().compress(pickle.dumps(content))
    digest = blake3.blake3(body).hexdigest()
    db = sqlite3.connect(path)
    seq, prev, when, ident = db.execute("SELECT seq, prev_hash, time, identity FROM baselines").fetchone()
    with db:
        db.execute(
            "UPDATE baselines SET body = ?, digest = ?, hash = ?",
            (body, digest, link(prev, _row_body(seq, prev, when, "lab:a", ident, digest))),
        )
    db.close()


def test_a_row_rewritten_whole_without_the_key_is_refused(tmp_path: Path, key: str) -> None:
    """Whoever can write the file can recompute digest and hash, but not the signature."""
    path = tmp_path / "store.db"
    record = BaselineRecord(path, key)
    stored(record)
    other = baseline([b"\x02" * PAGE])
    other.page_bytes = {}
    _rewrite(path, other)
    back, row = record.load("lab:a", IDENTITY)
    assert back is None and row is not None and "signature does not verify" in row.problems[0]
    other_secret, _other_public = new_key(tmp_path / "other")
    assert BaselineRecord(path, str(other_secret)).load("lab:a", IDENTITY)[0] is None  # another key: refused too
    assert BaselineRecord(path).load("lab:a", IDENTITY)[0] is not None  # no key, no check (an unsigned record)


def test_a_forged_row_cannot_name_another_class(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("touch /tmp/vmsentinel-pwned",))

    path = tmp_path / "store.db"
    record = BaselineRecord(path)  # unsigned: only the digest and the chain protect it
    stored(record)
    _rewrite(path, Evil())
    back, row = record.load("lab:a", IDENTITY)
    assert back is None and row is not None and "not part of a baseline" in row.problems[0]
    assert not Path("/tmp/vmsentinel-pwned").exists()


def test_verify_finds_a_deleted_baseline_and_a_foreign_signature(tmp_path: Path, key: str) -> None:
    path = tmp_path / "store.db"
    record = BaselineRecord(path, key)
    for target in ("lab:a", "lab:b", "lab:c"):
        stored(record, target)
    _tamper(path, "DELETE FROM baselines WHERE target = 'lab:b'")
    db = sqlite3.connect(path)
    count, problems = verify_baselines(db, path, None)
    assert count == 2 and any("missing (deleted)" in p for p in problems)

    from vmsentinel.trust.signing import load_trusted_keys, verify_bytes

    def check_with(public: Path) -> object:
        keys = load_trusted_keys([public])

        def check(message: bytes, signature: bytes) -> str | None:
            try:
                verify_bytes(message, signature, keys)
                return None
            except Exception as exc:
                return str(exc)

        return check

    _count, good = verify_baselines(db, path, check_with(Path(key).with_suffix(".pub")))  # type: ignore[arg-type]
    assert not any("signature" in p for p in good)
    _, other_public = new_key(tmp_path / "other")
    _count, bad = verify_baselines(db, path, check_with(other_public))  # type: ignore[arg-type]
    assert sum("signature does not verify" in p for p in bad) == 2


def test_a_row_written_before_code_regions_moved_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A baseline pickled when ``CodeRegion`` lived in ``os.linux.views.kernel_code`` names that module;
    it loads as the class's new home, and only that one old name is mapped."""
    import io

    from vmsentinel.os.records import CodeRegion
    from vmsentinel.sinks.baseline_record import _Unpickler

    region = CodeRegion("kernel", 0x1000, 0x1000, "d", ("h",), ())
    with monkeypatch.context() as m:  # pickled as it was: the class named by its old module
        m.setattr(CodeRegion, "__module__", "vmsentinel.os.linux.views.kernel_code")
        old = pickle.dumps(region, protocol=4)
    assert b"vmsentinel.os.linux.views.kernel_code" in old and b"vmsentinel.os.records" not in old
    assert _Unpickler(io.BytesIO(old)).load() == region
    other = old.replace(b"CodeRegion", b"CodeRegioX")  # another class of the old module: not mapped
    with pytest.raises(pickle.UnpicklingError, match="not part of a baseline"):
        _Unpickler(io.BytesIO(other)).load()
