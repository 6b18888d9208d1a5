"""How a request proves who sent it: an API token (``Authorization: Bearer``) or a browser
session cookie; for a session, a state change must also carry the session's CSRF secret (header
``X-CSRF-Token`` or form field ``csrf``), which another site's page cannot know. Failed logins are
rate-limited per client address and per user name."""

from __future__ import annotations

import collections
import hmac
import threading
import time

from fastapi import HTTPException, Request

from vmsentinel.service.accounts import Principal, ServiceDb

SESSION_COOKIE = "vms_session"
LOGIN_CSRF_COOKIE = "vms_login"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: failed logins allowed per client address and per user name within the window
LOGIN_FAILURES = 5
LOGIN_WINDOW = 300.0


class LoginLimiter:
    """Counts failed logins; past the limit, further tries are refused until the window passes."""

    def __init__(self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW) -> None:
        self.failures, self.window = failures, window
        self.lock = threading.Lock()
        self._seen: dict[str, collections.deque[float]] = {}

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        times = self._seen.setdefault(key, collections.deque())
        while times and times[0] < now - self.window:
            times.popleft()
        return times

    def blocked(self, *keys: str) -> float:
        """Seconds until a login may be tried again for any of ``keys`` (0: now)."""
        now = time.monotonic()
        with self.lock:
            waits = [t[0] + self.window - now for k in keys if len(t := self._recent(k, now)) >= self.failures]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self.lock:
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._seen) > 100_000:  # an address sweep must not grow this without end
                self._seen = {k: v for k, v in self._seen.items() if v}

    def succeeded(self, name: str) -> None:
        with self.lock:
            self._seen.pop(f"user:{name}", None)


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


async def identify(request: Request, db: ServiceDb) -> Principal | None:
    """Who sent ``request``, or None; raises 403 for a session's state change without its CSRF secret."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return db.by_token(auth[7:].strip())
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    who = db.by_session(secret)
    if who is None or request.method in SAFE_METHODS:
        return who
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # Starlette keeps the parsed form: the handler reads it again for free
        field = form.get("csrf")
        sent = field if isinstance(field, str) else None
    if not same(sent, who.csrf):
        raise HTTPException(403, "CSRF check failed: this change needs the page's CSRF token")
    return who
