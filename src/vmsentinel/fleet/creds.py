"""Credentials for a fleet, and the NATS server configuration that enforces them.

Each host gets an NKey (an Ed25519 key: the server keeps only its public half) that may publish
only under ``vms.ev.HOST.>`` and ``vms.hb.HOST``, receive only ``vms.ctl.HOST.>`` and its own reply
inbox, and answer the requests it receives. The central service's key may read every event,
manage the stream and ask any host. All of them live in one NATS account with JetStream.

    vmsentinel fleet creds web1 web2 db1 --out /etc/vmsentinel/fleet
    nats-server -c /etc/vmsentinel/fleet/nats-server.conf
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vmsentinel.errors import VmSentinelError
from vmsentinel.fleet.subjects import CONTROL, EVENTS, HEARTBEATS, check_host_id

CENTRAL = "central"
ACCOUNT = "VMSENTINEL"


@dataclass(frozen=True)
class Identity:
    name: str
    seed_file: Path
    public_key: str


def new_seed() -> tuple[bytes, str]:
    """A new user NKey: (seed, public key)."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed, nkeys.from_seed(seed).public_key.decode()


def public_key_of(seed_file: Path) -> str:
    import nkeys

    try:
        return str(nkeys.from_seed(seed_file.read_bytes().strip()).public_key.decode())
    except OSError as exc:
        raise VmSentinelError(f"{seed_file}: {exc.strerror}") from exc
    except Exception as exc:
        raise VmSentinelError(f"{seed_file}: not a user NKey seed ({exc})") from exc


def identity(folder: Path, name: str) -> Identity:
    """The identity ``name`` in ``folder``, made now unless it exists (its seed is never replaced)."""
    path = folder / f"{name}.nk"
    if not path.exists():
        seed, _ = new_seed()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
    return Identity(name, path, public_key_of(path))


def host_permissions(host: str) -> dict[str, object]:
    return {
        "publish": {"allow": [f"{EVENTS}.{host}.>", f"{HEARTBEATS}.{host}"]},
        "subscribe": {"allow": [f"{CONTROL}.{host}.>", f"_INBOX_{host}.>"]},
        "allow_responses": True,
    }


def central_permissions() -> dict[str, object]:
    return {
        "publish": {"allow": [f"{CONTROL}.>", "$JS.API.>", "$JS.ACK.>"]},
        "subscribe": {"allow": [f"{EVENTS}.>", f"{HEARTBEATS}.>", "_INBOX_central.>"]},
    }


def server_config(
    hosts: list[Identity],
    central: Identity,
    *,
    listen: str = "127.0.0.1:4222",
    store_dir: str = "/var/lib/nats",
    tls: tuple[str, str] | None = None,
) -> str:
    """A nats-server configuration (its JSON-like syntax) with JetStream and these identities, and TLS
    with ``tls`` (certificate and key files)."""
    users = [{"nkey": central.public_key, "permissions": central_permissions()}]
    users += [{"nkey": h.public_key, "permissions": host_permissions(h.name)} for h in hosts]
    lines = [
        "# made by vmsentinel fleet creds: one NKey per host, each allowed only its own subjects",
        f"listen: {json.dumps(listen)}",
        f"jetstream: {{store_dir: {json.dumps(store_dir)}}}",
        *([f"tls: {{cert_file: {json.dumps(tls[0])}, key_file: {json.dumps(tls[1])}}}"] if tls else []),
        "accounts: {",
        f"  {ACCOUNT}: {{",
        "    jetstream: enabled",
        f"    users: {json.dumps(users, indent=2)}",
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)


def make_fleet(
    folder: Path, hosts: list[str], *, listen: str, store_dir: str, tls: tuple[str, str] | None = None
) -> tuple[list[Identity], Identity, Path]:
    """Keys for ``hosts`` and the central service in ``folder`` (existing ones kept), and the server
    configuration naming all of them (serving TLS with ``tls``: certificate and key files)."""
    if tls is not None:
        for path in tls:
            if not Path(path).is_file():
                raise VmSentinelError(f"{path}: no such file (the server's TLS certificate and key)")
        tls = (str(Path(tls[0]).resolve()), str(Path(tls[1]).resolve()))
    for h in hosts:
        check_host_id(h)
    if CENTRAL in hosts:
        raise VmSentinelError(f"{CENTRAL!r} is the central service's own identity, not a host id")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    known = sorted({p.stem for p in folder.glob("*.nk")} - {CENTRAL} | set(hosts))
    ids = [identity(folder, h) for h in known]
    central = identity(folder, CENTRAL)
    conf = folder / "nats-server.conf"
    conf.write_text(server_config(ids, central, listen=listen, store_dir=store_dir, tls=tls))
    return ids, central, conf
