"""Events to JSON and back (the spool and the bus), and what the reader refuses: a host on the bus
may be compromised, so anything but exactly an event the sentinel sends is an error naming why."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsentinel import events as ev
from vmsentinel.detect.finding import ROOTKIT, Finding, Severity
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks.wire import KINDS, MAX_TEXT, WireError, from_wire, to_wire

FINDING = Finding(
    "hidden_module", "a module hidden", Severity.CRITICAL, ROOTKIT, "lab:web", {"name": "rk", "base": 123}, ("kobj",)
)

EXAMPLES: list[ev.Event] = [
    ev.FindingRaised(FINDING),
    ev.PolicyRejected(FINDING),
    ev.FindingCleared("lab:web", "k" * 24, "hidden_module", "gone"),
    ev.ProcessStarted("lab:web", 42, 1, "sh", "/bin/sh", "sh -c x", 0),
    ev.ProcessStopped("lab:web", 42, 1, "sh", None, None, 0),
    ev.ModuleLoaded("lab:web", "rk", 0xFFFFFFFFC0000000),
    ev.ResponseDone(ResponseRecord(1.5, "lab:web", "key", "pause", True, "paused")),
    ev.GuestWatched("lab:web", "6.12.0", "qemu"),
    ev.GuestRemoved("lab:web", "domain stopped"),
    ev.BaselineRestored("lab:web", 3.0, 7, ""),
    ev.GuestUnreachable("lab:web", "gone", 5.0),
    ev.SweepDone("lab:web", 0.01, True, 1, 0, {"hidden_process": 0.001}),
    ev.SweepMissed("lab:web", 2),
    ev.WorkerRestarted(1, "killed by SIGKILL", 99, ("lab:web", "lab:db")),
    ev.FirstLook("lab:web", "vmlinuz-6.12", 1000, 0),
    ev.GuestInventory("lab:web", "ab" * 20, "6.12.0", {"syscalls": {"x64:39": "__x64_sys_getpid"}, "taint": {"mask": "0x0"}}),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_kind_comes_back_equal_through_json(event: ev.Event) -> None:
    back = from_wire(json.loads(json.dumps(to_wire(event))))
    assert back == event
    if isinstance(event, ev.FindingRaised):
        assert back.finding.key == event.finding.key  # type: ignore[union-attr]


def test_every_known_kind_has_an_example_or_is_new() -> None:
    named = {type(e).__name__ for e in EXAMPLES}
    assert named <= set(KINDS)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ([], "JSON object"),
        ({"kind": "Nope"}, "unknown event kind"),
        ({"kind": "__class__"}, "unknown event kind"),
        ({"kind": "GuestRemoved", "target": "x"}, "missing field"),
        ({"kind": "GuestRemoved", "target": "x", "reason": "r", "extra": 1}, "unknown field"),
        ({"kind": "GuestRemoved", "target": 5, "reason": "r"}, "expected text"),
        ({"kind": "SweepMissed", "target": "x", "count": True}, "integer"),
        ({"kind": "SweepMissed", "target": "x", "count": 1.5}, "integer"),
        ({"kind": "GuestRemoved", "target": "x" * (MAX_TEXT + 1), "reason": "r"}, "at most"),
        ({"kind": "FindingRaised", "finding": {"detector": "x"}}, "missing"),
        ({"kind": "ResponseDone", "record": {"time": 1}}, "record"),
        ({"kind": "WorkerRestarted", "worker": 1, "how": "x", "pid": 1, "guests": "lab:a"}, "expected a list"),
    ],
)
def test_what_is_not_an_event_is_refused_with_the_reason(body: object, why: str) -> None:
    with pytest.raises(WireError, match=why):
        from_wire(body)


def test_a_finding_with_a_bad_severity_or_deep_evidence_is_refused() -> None:
    raw = to_wire(ev.FindingRaised(FINDING))
    raw["finding"]["severity"] = "apocalyptic"
    with pytest.raises(WireError, match="no severity"):
        from_wire(raw)
    raw = to_wire(ev.FindingRaised(FINDING))
    raw["finding"]["evidence"] = {"many": list(range(300_000))}
    with pytest.raises(WireError, match="more than"):
        from_wire(raw)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c),
        max_leaves=30,
    )
)
def test_arbitrary_json_is_an_event_or_a_wire_error(value: object) -> None:
    for body in (value, {"kind": "FindingRaised", "finding": value}, {"kind": "GuestAdded", "target": value, "reason": value}):
        with contextlib.suppress(WireError):
            from_wire(body)
