"""How a sentinel reaches the bus: its address, its credentials and TLS, checked before the first
connection so that a mistake is an error naming the option, not a silent retry loop.

Credentials are per host: an NKey seed file (a line ``SU...``, made by ``vmsentinel fleet creds``)
or a NATS ``.creds`` file (a user JWT and its seed, from ``nsc``). Plain ``nats://`` is accepted
only to this host's loopback; anything else needs ``tls://`` (or ``--bus-tls-ca``), since the
credentials' signature and every finding would otherwise cross the network in clear.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from vmsentinel.errors import VmSentinelError

DEFAULT_PORT = 4222


@dataclass(frozen=True)
class BusOptions:
    url: str
    creds: Path | None = None
    #: a CA bundle to verify the server with (implies TLS)
    tls_ca: Path | None = None
    #: a client certificate and key, when the server asks for one
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "tls" or self.tls_ca is not None

    def check(self) -> BusOptions:
        """Refuse what cannot work or would be unsafe, naming the option."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise VmSentinelError(f"--bus {self.url!r}: give nats://HOST:PORT (or tls://HOST:PORT)")
        try:
            parts.port  # noqa: B018 (validates it)
        except ValueError:
            raise VmSentinelError(f"--bus {self.url!r}: the port is not a number from 1 to 65535") from None
        if not self.tls and not _loopback(parts.hostname):
            raise VmSentinelError(
                f"--bus {self.url}: not on this host, so the bus needs TLS: use tls://{parts.hostname}:"
                f"{parts.port or DEFAULT_PORT} and, for a private CA, --bus-tls-ca FILE"
            )
        for option, path in (
            ("--bus-creds", self.creds),
            ("--bus-tls-ca", self.tls_ca),
            ("--bus-tls-cert", self.tls_cert),
            ("--bus-tls-key", self.tls_key),
        ):
            if path is not None and not path.is_file():
                raise VmSentinelError(f"{option} {path}: no such file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise VmSentinelError("give both --bus-tls-cert and --bus-tls-key, or neither")
        if self.creds is not None:
            credential_kind(self.creds)
        return self

    def connect_args(self, inbox: str, name: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``: ``inbox`` is the prefix of this side's reply
        subjects (a host may only subscribe under its own); the client reconnects for ever, since
        the sentinel keeps running (and spooling) while the bus is away."""
        args: dict[str, Any] = {
            "servers": [self.url],
            "inbox_prefix": inbox.encode(),
            "name": name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 3,
        }
        if self.creds is not None:
            if credential_kind(self.creds) == "creds":
                args["user_credentials"] = str(self.creds)
            else:
                args["nkeys_seed"] = str(self.creds)
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            args["tls"] = context
            args["tls_hostname"] = self.host
        return args


class ConnectionWatcher(Protocol):
    async def _on_error(self, exc: Exception) -> None: ...
    async def _on_disconnected(self) -> None: ...
    async def _on_reconnected(self) -> None: ...


async def connect(options: BusOptions, inbox: str, name: str, watcher: ConnectionWatcher) -> Any:
    """A NATS connection with ``options``, telling ``watcher`` of errors, losses and returns."""
    import nats

    return await nats.connect(
        **options.connect_args(inbox, name),
        error_cb=watcher._on_error,
        disconnected_cb=watcher._on_disconnected,
        reconnected_cb=watcher._on_reconnected,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credential_kind(path: Path) -> str:
    """``nkey`` (a user NKey seed) or ``creds`` (a JWT and seed); an error for anything else."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise VmSentinelError(f"--bus-creds {path}: {exc.strerror}") from exc
    if "-----BEGIN NATS USER JWT-----" in text:
        return "creds"
    if text.strip().startswith("SU") and len(text.strip()) == 58:
        return "nkey"
    raise VmSentinelError(
        f"--bus-creds {path}: neither a user NKey seed (SU...) nor a NATS .creds file (make one with vmsentinel fleet creds)"
    )
