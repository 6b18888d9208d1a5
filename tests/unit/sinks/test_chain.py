"""The alert record's hash chain: an edited, deleted or reordered alert (JSON lines or SQLite) is found
and located; signed heads catch a rewritten or cut chain; restarts continue the chain."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from pathlib import Path

from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.sinks.ocsf import OcsfJsonl
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.sinks.verify import verify_ocsf_file, verify_sqlite_file

SECRET = b"test-record-key"


def sign(message: bytes) -> bytes:
    """A stand-in signer (the real one is minisign Ed25519; the chain only needs sign/check)."""
    return hmac.new(SECRET, message, hashlib.sha256).digest()


def check(message: bytes, signature: bytes) -> str | None:
    return None if hmac.compare_digest(sign(message), signature) else "signature does not verify"


def findings(n: int, start: int = 0) -> list[Finding]:
    return [
        Finding("syscall_hook", f"hook {i}", Severity.CRITICAL, ROOTKIT, "lab:web", {"slot": f"x64:{i}"}, time=1700000000.0 + i)
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, batches: list[int], signer: object = sign) -> None:
    start = 0
    for n in batches:  # one sink per batch: the chain continues across restarts
        sink = OcsfJsonl(path, signer=signer)  # type: ignore[arg-type]
        sink.write(findings(n, start))
        sink.close()
        start += n


def test_an_untouched_jsonl_record_verifies_and_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [3, 2, 4])
    report = verify_ocsf_file(path, check)
    assert report.intact, report.problems
    assert report.records == 9 and report.signed_heads == 3 and report.last_signed == 9
    seqs = [json.loads(line)["unmapped"]["vmsentinel_chain"]["seq"] for line in path.read_text().splitlines()]
    assert seqs == list(range(1, 10))


def test_an_edited_jsonl_alert_is_found_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [5])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"hook 2"', '"hook 2 (benign)"')
    path.write_text("\n".join(lines) + "\n")
    problems = verify_ocsf_file(path, check).problems
    assert any(p.startswith("line 3: record 3 was altered") for p in problems), problems


def test_a_deleted_or_reordered_jsonl_alert_is_found(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [5])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert any("records 2..2 are missing (deleted)" in p for p in verify_ocsf_file(path).problems)
    path.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    problems = verify_ocsf_file(path).problems
    assert any("reordered" in p for p in problems) or any("missing" in p for p in problems), problems


def test_a_rewritten_chain_is_caught_by_the_signed_head(tmp_path: Path) -> None:
    """Editing a record and recomputing every hash after it keeps the links whole: the signed head does not."""
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [4])
    forged = tmp_path / "forged.jsonl"
    sink = OcsfJsonl(forged)  # no signer: the forger has no record key
    changed = findings(4)
    changed[1] = Finding("syscall_hook", "nothing to see", Severity.LOW, ROOTKIT, "lab:web", {"slot": "x64:1"}, time=1700000001.0)
    sink.write(changed)
    sink.close()
    path.write_text(forged.read_text())  # the heads file of the real record stays
    report = verify_ocsf_file(path, check)
    assert any("differs from the head signed for it" in p for p in report.problems), report.problems


def test_a_cut_tail_and_a_forged_head_signature_are_found(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [3, 3])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n")
    assert any("a head signed at record 6 is missing" in p for p in verify_ocsf_file(path, check).problems)
    heads = Path(str(path) + ".heads")
    heads.write_text(heads.read_text().replace('"seq": 3', '"seq": 2'))
    assert any("signature does not verify" in p for p in verify_ocsf_file(path, check).problems)


def test_sqlite_edits_deletions_and_rewrites_are_found(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    for start in (0, 3):
        store = SqliteStore(db, signer=sign)
        store.write(findings(3, start))
        store.close()
    assert verify_sqlite_file(db, check).intact
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("UPDATE findings SET title = 'nothing' WHERE seq = 4")
    problems = verify_sqlite_file(db, check).problems
    assert any(p.startswith("row 4: record 4 was altered") for p in problems), problems
    with raw:
        raw.execute("DELETE FROM findings WHERE seq = 2")
    assert any("records 2..2 are missing (deleted)" in p for p in verify_sqlite_file(db, check).problems)
    raw.close()


def test_hostile_records_are_problems_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    write_jsonl(path, [2])
    with open(path, "a") as f:
        f.write('{"unmapped": {"vmsentinel_chain": {"seq": "x"}}}\n[1,2]\n\x00\xff garbage\n')
    problems = verify_ocsf_file(path).problems
    assert sum("not a chained OCSF record" in p for p in problems) == 3
    (tmp_path / "bad.db").write_bytes(b"not sqlite at all" * 100)
    assert verify_sqlite_file(tmp_path / "bad.db").problems
