"""A hash chain over an alert record, so that a deleted, reordered or edited
alert is found afterwards.

Every record carries its sequence number, the hash of the record before it and
its own hash: ``hash = SHA-256(prev || canonical bytes of the record)``. A chain
alone can be rewritten from the edited record onwards by whoever can write the
file, so the sentinel also signs the head (sequence number and hash) now and
then with its record key; a signed head pins everything before it.

    chain = Chain(last_seq, last_hash)                 # continuing a store
    seq, prev, digest = chain.append(lambda seq, prev: canonical([seq, prev, record]))
    problems = verify_links(records)          # records: (seq, prev, hash, canonical bytes)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
#: sign the head after this many records (and whenever the sink is closed)
SIGN_EVERY = 64
HEAD_CONTEXT = b"vmsentinel-alert-chain-head\n"

Signer = Callable[[bytes], bytes]


def canonical(value: Any) -> bytes:
    """The bytes a record is hashed as: JSON with sorted keys and no spaces (stable across writers)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def link(prev: str, record: bytes) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + record).hexdigest()


def head_message(store: str, seq: int, digest: str) -> bytes:
    """What a head signature covers: the store's name binds it to one record."""
    return HEAD_CONTEXT + f"{store}\n{seq}\n{digest}\n".encode()


@dataclass
class Chain:
    seq: int = 0  # sequence number of the last record (0: none yet)
    head: str = GENESIS

    def append(self, body: Callable[[int, str], bytes]) -> tuple[int, str, str]:
        """Link the next record; ``body(seq, prev)`` gives its canonical bytes (which include both, so a
        record moved elsewhere no longer fits). Returns (seq, prev, hash)."""
        seq, prev = self.seq + 1, self.head
        digest = link(prev, body(seq, prev))
        self.seq, self.head = seq, digest
        return seq, prev, digest


@dataclass
class HeadSigner:
    """Signs a store's head every ``SIGN_EVERY`` records (and when asked, e.g. on close)."""

    store: str
    signer: Signer | None
    unsigned: int = 0

    def due(self, written: int) -> bool:
        self.unsigned += written
        return self.unsigned >= SIGN_EVERY

    def sign(self, chain: Chain) -> SignedHead | None:
        """A signature over the current head, or None (no signer, or nothing new since the last one)."""
        if self.signer is None or chain.seq == 0 or self.unsigned == 0:
            return None
        signature = self.signer(head_message(self.store, chain.seq, chain.head))
        self.unsigned = 0
        return SignedHead(chain.seq, chain.head, signature, time.time())


@dataclass(frozen=True)
class ChainRecord:
    where: str  # "line 12", "row 7": how a person finds it
    seq: int
    prev: str
    digest: str
    body: bytes


@dataclass(frozen=True)
class SignedHead:
    seq: int
    digest: str
    signature: bytes
    time: float


def verify_links(records: Iterable[ChainRecord]) -> tuple[list[str], dict[int, str]]:
    """Problems found walking the chain, and seq -> hash of every record that checked out.

    Names the first place of each kind of damage: an altered record (its hash does not match its
    content), a deleted one (a gap in the sequence or a broken ``prev``), reordering (a sequence
    number going back)."""
    problems: list[str] = []
    good: dict[int, str] = {}
    expected_seq, expected_prev = 1, GENESIS
    for r in records:
        if r.seq < expected_seq:
            problems.append(f"{r.where}: record {r.seq} comes after record {expected_seq - 1} (reordered or duplicated)")
        elif r.seq > expected_seq:
            problems.append(f"{r.where}: records {expected_seq}..{r.seq - 1} are missing (deleted)")
        elif r.prev != expected_prev:
            problems.append(f"{r.where}: record {r.seq} does not follow the record before it (a record was replaced)")
        if link(r.prev, r.body) != r.digest:
            problems.append(f"{r.where}: record {r.seq} was altered (its content does not match its hash)")
        else:
            good.setdefault(r.seq, r.digest)
        expected_seq, expected_prev = max(expected_seq, r.seq + 1), r.digest
    return problems, good


def verify_heads(
    store: str,
    heads: list[SignedHead],
    good: dict[int, str],
    last_seq: int,
    check: Callable[[bytes, bytes], str | None] | None,
) -> list[str]:
    """Problems with the signed heads: a bad signature, a head whose record is gone or differs (the
    chain was rewritten or cut). ``check(message, signature)`` returns None or the reason it fails."""
    problems = []
    for h in heads:
        if check is not None:
            reason = check(head_message(store, h.seq, h.digest), h.signature)
            if reason is not None:
                problems.append(f"signed head at record {h.seq}: {reason}")
                continue
        if h.seq > last_seq:
            problems.append(f"records after {last_seq} are gone: a head signed at record {h.seq} is missing from the record")
        elif good.get(h.seq) != h.digest:
            problems.append(f"record {h.seq} differs from the head signed for it (the chain was rewritten)")
    return problems
