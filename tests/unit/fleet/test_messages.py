"""What the central side accepts from the bus: an event envelope whose host matches the subject it
came on, about the guest and kind the subject names; everything else is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmsentinel import events as ev
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.errors import VmSentinelError
from vmsentinel.fleet.connection import BusOptions
from vmsentinel.fleet.creds import host_permissions, make_fleet
from vmsentinel.fleet.hub import Refused, parse_message, qualify
from vmsentinel.fleet.subjects import check_host_id, event_subject, guest_token, split_qualified
from vmsentinel.sinks.wire import to_wire

FINDING = Finding("hidden_module", "hidden", Severity.CRITICAL, ROOTKIT, "lab:web.1", {"name": "rk"})


def envelope(host: str = "h1", about: ev.Event | None = None, **changes: object) -> bytes:
    body = {
        "host": host,
        "store": "0123456789abcdef",
        "seq": 7,
        "sent": 1.0,
        "event": to_wire(about or ev.FindingRaised(FINDING)),
    }
    body.update(changes)
    return json.dumps(body).encode()


def test_an_event_is_read_back_with_its_origin() -> None:
    subject = event_subject("h1", "lab:web.1", "FindingRaised")
    host, store, seq, sent, event = parse_message(subject, envelope())
    assert (host, store, seq, sent) == ("h1", "0123456789abcdef", 7, 1.0)
    assert event == ev.FindingRaised(FINDING)
    central = qualify(host, event)
    assert central.target == "h1/lab:web.1"
    assert central.finding.evidence == FINDING.evidence  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("subject", "data", "why"),
    [
        (event_subject("h1", "lab:web.1", "FindingRaised"), envelope(host="h2"), "claims to come from host 'h2'"),
        (event_subject("h1", "lab:other", "FindingRaised"), envelope(), "sent on"),
        (event_subject("h1", "lab:web.1", "GuestAdded"), envelope(), "sent on"),
        (event_subject("h1", "lab:web.1", "FindingRaised"), b"not json", "not JSON"),
        (event_subject("h1", "lab:web.1", "FindingRaised"), envelope(seq=-1), "sequence"),
        (event_subject("h1", "lab:web.1", "FindingRaised"), envelope(store="../x"), "store id"),
        (event_subject("h1", "lab:web.1", "FindingRaised"), envelope(extra=1), "envelope"),
        (event_subject("h1", "lab:web.1", "FindingRaised"), envelope(event={"kind": "Evil"}), "unknown event kind"),
        ("vms.ev", envelope(), "names no host"),
    ],
)
def test_what_does_not_match_is_refused(subject: str, data: bytes, why: str) -> None:
    with pytest.raises(Refused, match=why):
        parse_message(subject, data)


def test_subjects_hold_any_guest_name_and_no_two_guests_share_one() -> None:
    names = ["lab:web", "lab:web.1", "lab:web_1", "libvirt:x?uri=qemu:///system", "a b*>"]
    tokens = {guest_token(n) for n in names}
    assert len(tokens) == len(names)
    assert all(set(t) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for t in tokens)
    assert split_qualified("h1/lab:a/b") == ("h1", "lab:a/b")
    for bad in ("", "a.b", "a>", "x" * 65, "h 1"):
        with pytest.raises(VmSentinelError):
            check_host_id(bad)


def test_plain_nats_beyond_this_host_is_refused(tmp_path: Path) -> None:
    BusOptions("nats://127.0.0.1:4222").check()
    BusOptions("tls://bus.example:4222").check()
    with pytest.raises(VmSentinelError, match="needs TLS"):
        BusOptions("nats://10.0.0.5:4222").check()
    with pytest.raises(VmSentinelError, match="give nats://"):
        BusOptions("http://127.0.0.1:4222").check()
    with pytest.raises(VmSentinelError, match="no such file"):
        BusOptions("nats://127.0.0.1:4222", tmp_path / "missing.nk").check()
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(VmSentinelError, match="neither"):
        BusOptions("nats://127.0.0.1:4222", junk).check()


def test_creds_bind_each_host_to_its_own_subjects_and_keep_existing_keys(tmp_path: Path) -> None:
    ids, central, conf = make_fleet(tmp_path / "f", ["h1", "h2"], listen="127.0.0.1:4222", store_dir=str(tmp_path / "js"))
    seeds = {i.name: i.seed_file.read_bytes() for i in ids}
    assert all(i.seed_file.stat().st_mode & 0o077 == 0 for i in [*ids, central])
    text = conf.read_text()
    assert all(i.public_key in text for i in [*ids, central])
    assert "vms.ev.h1.>" in text and "vms.ev.h2.>" in text
    perms = host_permissions("h1")
    assert perms["publish"] == {"allow": ["vms.ev.h1.>", "vms.hb.h1"]}
    ids2, _, _ = make_fleet(tmp_path / "f", ["h3"], listen="127.0.0.1:4222", store_dir=str(tmp_path / "js"))
    assert {i.name for i in ids2} == {"h1", "h2", "h3"}
    assert all(i.seed_file.read_bytes() == seeds[i.name] for i in ids2 if i.name in seeds)
    with pytest.raises(VmSentinelError):
        make_fleet(tmp_path / "f", ["central"], listen="127.0.0.1:4222", store_dir="/x")
