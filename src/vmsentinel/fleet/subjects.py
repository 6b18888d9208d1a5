"""Names on the bus. Everything a host publishes lies under its own host id, so that the bus's
permissions (one credential per host, allowed to publish only there) decide who may say what:

    vms.ev.HOST.GUEST.KIND   durable events (the stream EVENTS_STREAM keeps them)
    vms.hb.HOST              heartbeats and sweep metrics (live only: stale ones are worth nothing)
    vms.ctl.HOST.ACTION      requests from the central service to that host (a reply comes back)

A guest's name may hold characters a subject cannot (``.``, spaces, ``*``, ``>``); its token is the
name with those made ``_`` and a short digest of the name, so two guests never share a subject.
The payload names the guest exactly.
"""

from __future__ import annotations

import hashlib
import re
import socket

from vmsentinel.errors import VmSentinelError

EVENTS_STREAM = "VMSENTINEL_EVENTS"
EVENTS = "vms.ev"
HEARTBEATS = "vms.hb"
CONTROL = "vms.ctl"
#: the durable consumer the central service reads through
CENTRAL_CONSUMER = "central"

HOST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_host_id(name: str) -> str:
    """``name`` if it can be a host id (letters, digits, ``-``, ``_``; at most 64), else an error."""
    if not HOST_ID.fullmatch(name):
        raise VmSentinelError(
            f"host id {name!r}: use 1 to 64 letters, digits, '-' or '_' (it is part of the bus's subject names)"
        )
    return name


def default_host_id() -> str:
    """This machine's short host name, made a valid host id."""
    name = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "host"


def guest_token(guest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", guest)[:48]
    return f"{safe}-{hashlib.blake2s(guest.encode(), digest_size=4).hexdigest()}"


def event_subject(host: str, guest: str, kind: str) -> str:
    return f"{EVENTS}.{host}.{guest_token(guest)}.{kind}"


def heartbeat_subject(host: str) -> str:
    return f"{HEARTBEATS}.{host}"


def control_subject(host: str, action: str) -> str:
    return f"{CONTROL}.{host}.{action}"


def host_of(subject: str) -> str | None:
    """The host token of an event or heartbeat subject, None when it is not one."""
    parts = subject.split(".")
    if len(parts) >= 3 and parts[0] == "vms" and parts[1] in ("ev", "hb"):
        return parts[2]
    return None


def qualified(host: str, guest: str) -> str:
    """How the central service names a guest: its host's id and its name there."""
    return f"{host}/{guest}"


def split_qualified(name: str) -> tuple[str, str]:
    host, sep, guest = name.partition("/")
    if not sep or not HOST_ID.fullmatch(host) or not guest:
        raise VmSentinelError(f"{name!r}: a fleet guest is named HOST/GUEST")
    return host, guest
