"""Who may use the service: users with a role and an Argon2id password hash, API tokens and
browser sessions (both stored as SHA-256 of a random secret: the secret itself is shown once and
never kept), and the audit log of every change anyone makes.

    db = ServiceDb(state / "service.db")
    db.add_user("ana", "analyst", password, by="root (cli)")   # with its audit entry, in one transaction
    token_id, secret = db.new_token("ana", 30, by="root (cli)") # the secret is printed once
    who = db.by_token(secret)                                   # Principal("ana", "analyst") or None
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from vmsentinel.errors import VmSentinelError

#: what each role may do includes what the roles before it may do
ROLES = ("viewer", "analyst", "admin")
#: a browser session lasts this long without use (seconds)
SESSION_IDLE = 8 * 3600
TOKEN_PREFIX = "vms_"
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    digest TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    expires REAL,
    last_used REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    digest TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS triage (
    finding INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    assignee TEXT,
    reason TEXT NOT NULL,
    time REAL NOT NULL,
    user TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS triage_status ON triage(status);
CREATE TABLE IF NOT EXISTS suppressions (
    id INTEGER PRIMARY KEY,
    detector TEXT NOT NULL,
    target TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    reason TEXT NOT NULL,
    user TEXT NOT NULL
);
"""


class AccountError(VmSentinelError):
    """A user or token request that cannot be done (unknown user, bad role, bad name)."""


@dataclass(frozen=True)
class Principal:
    """Who is asking, and how they proved it (``token`` or ``session``)."""

    name: str
    role: str
    via: str = "token"
    #: the session's CSRF secret (sessions only)
    csrf: str | None = None

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def digest(secret: str) -> str:
    """What is kept of a token or session secret: 256 random bits need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ServiceDb:
    """The service's own state, in one SQLite file (WAL: the CLI and the service use it at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self.path.chmod(0o600)  # password hashes and token digests: the service's alone
        self.hasher = PasswordHasher()  # Argon2id with the library's (RFC 9106 low-memory) parameters

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.lock:
            cur = self.db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # -- users ---------------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str, *, by: str, reason: str = "") -> None:
        if not NAME.match(name):
            raise AccountError(f"user name {name!r}: use 1-64 letters, digits and . _ @ -")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
        if len(password) < 12:
            raise AccountError("the password needs at least 12 characters")
        with self.lock, self.db:
            if self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"user {name!r} exists already")
            self.db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (name, role, self.hasher.hash(password), time.time()))
            self.add_audit_entry(by, "user.add", f"user:{name}", f"role {role}", reason)

    def set_password(self, name: str, password: str, *, by: str, reason: str = "") -> None:
        if len(password) < 12:
            raise AccountError("the password needs at least 12 characters")
        with self.lock, self.db:
            if not self.db.execute("UPDATE users SET password = ? WHERE name = ?", (self.hasher.hash(password), name)).rowcount:
                raise AccountError(f"no user {name!r}")
            self.db.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self.add_audit_entry(by, "user.passwd", f"user:{name}", "", reason)

    def remove_user(self, name: str, *, by: str, reason: str = "") -> None:
        with self.lock, self.db:
            if not self.db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise AccountError(f"no user {name!r}")
            self.add_audit_entry(by, "user.remove", f"user:{name}", "", reason)

    def users(self) -> list[dict[str, Any]]:
        return self.rows("SELECT name, role, created FROM users ORDER BY name")

    def role_of(self, name: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def check_password(self, name: str, password: str) -> Principal | None:
        with self.lock:
            row = self.db.execute("SELECT role, password FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            self.hasher.hash(password)  # as slow as a real check: no user enumeration by timing
            return None
        role, stored = row
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if self.hasher.check_needs_rehash(stored):
            with self.lock, self.db:
                self.db.execute("UPDATE users SET password = ? WHERE name = ?", (self.hasher.hash(password), name))
        return Principal(name, str(role), "password")

    # -- API tokens ------------------------------------------------------------------------------

    def new_token(self, user: str, expires_days: float | None = None, *, by: str, reason: str = "") -> tuple[str, str]:
        """(token id, secret): the secret is shown to the user once and kept only as a digest."""
        if self.role_of(user) is None:
            raise AccountError(f"no user {user!r}")
        if expires_days is not None and expires_days <= 0:
            raise AccountError("a token's lifetime must be positive")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(4)
        now = time.time()
        expires = now + expires_days * 86400 if expires_days is not None else None
        with self.lock, self.db:
            self.db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)", (token_id, user, digest(secret), now, expires))
            lifetime = f", {expires_days:g} days" if expires_days is not None else ""
            self.add_audit_entry(by, "token.new", f"user:{user}", f"token {token_id}{lifetime}", reason)
        return token_id, secret

    def by_token(self, secret: str) -> Principal | None:
        now = time.time()
        with self.lock:
            row = self.db.execute(
                "SELECT t.id, u.name, u.role, t.expires FROM tokens t JOIN users u ON u.name = t.user WHERE t.digest = ?",
                (digest(secret),),
            ).fetchone()
            if row is None or (row[3] is not None and row[3] <= now):
                return None
            with self.db:
                self.db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, row[0]))
        return Principal(str(row[1]), str(row[2]), "token")

    def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE user = ?", (user,)) if user else ("", ())
        return self.rows("SELECT id, user, created, expires, last_used FROM tokens" + where + " ORDER BY created", args)

    def revoke_token(self, token_id: str, user: str | None = None, *, by: str, reason: str = "") -> None:
        """Revoke a token (only one of ``user``'s when given)."""
        args: tuple[str, ...]
        sql, args = "DELETE FROM tokens WHERE id = ?", (token_id,)
        if user is not None:
            sql, args = sql + " AND user = ?", (token_id, user)
        with self.lock, self.db:
            if not self.db.execute(sql, args).rowcount:
                raise AccountError(f"no token {token_id!r}")
            self.add_audit_entry(by, "token.revoke", f"token:{token_id}", "", reason)

    # -- browser sessions ---------------------------------------------------------------------------

    def new_session(self, user: str) -> tuple[str, str]:
        """(session secret for the cookie, CSRF secret for the pages' forms)."""
        secret, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time()
        with self.lock, self.db:
            self.db.execute("DELETE FROM sessions WHERE last_used < ?", (now - SESSION_IDLE,))
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (digest(secret), user, csrf, now, now))
        return secret, csrf

    def by_session(self, secret: str) -> Principal | None:
        now = time.time()
        key = digest(secret)
        with self.lock:
            row = self.db.execute(
                "SELECT u.name, u.role, s.csrf, s.last_used FROM sessions s JOIN users u ON u.name = s.user WHERE s.digest = ?",
                (key,),
            ).fetchone()
            if row is None or row[3] < now - SESSION_IDLE:
                return None
            if now - row[3] > 60:  # touched once a minute at most: reads stay reads
                with self.db:
                    self.db.execute("UPDATE sessions SET last_used = ? WHERE digest = ?", (now, key))
        return Principal(str(row[0]), str(row[1]), "session", str(row[2]))

    def end_session(self, secret: str) -> None:
        with self.lock, self.db:
            self.db.execute("DELETE FROM sessions WHERE digest = ?", (digest(secret),))

    # -- the audit log ---------------------------------------------------------------------------------

    def audit(self, user: str, action: str, target: str, detail: str = "", reason: str = "") -> None:
        with self.lock, self.db:
            self.add_audit_entry(user, action, target, detail, reason)

    def add_audit_entry(self, user: str, action: str, target: str, detail: str, reason: str) -> None:
        """One audit entry, in the caller's transaction: a change and its entry are written together."""
        self.db.execute(
            "INSERT INTO audit (time, user, action, target, detail, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), user, action, target, detail, reason),
        )

    def audit_log(self, limit: int = 200, target: str | None = None) -> list[dict[str, Any]]:
        args: tuple[Any, ...]
        where, args = (" WHERE target = ?", (target, limit)) if target else ("", (limit,))
        return self.rows(  # newest first
            "SELECT id, time, user, action, target, detail, reason FROM audit" + where + " ORDER BY id DESC LIMIT ?", args
        )
