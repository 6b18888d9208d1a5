"""Events as plain JSON objects, for the spool and the event bus, and back.

A host's sentinel writes each event it will publish as ``{"kind": NAME, ...fields}`` into its
store's outbox; the central side rebuilds the event from what arrives. What arrives is written by
another machine, which may be compromised: :func:`from_wire` accepts only the kinds below, with
exactly their fields and the right JSON types, and raises :class:`WireError` naming what is wrong.

    body = to_wire(event)               # a dict json.dumps can write
    event = from_wire(json.loads(raw))  # the same event, or WireError
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

from vmsentinel import events as ev
from vmsentinel.detect.finding import Attack, Finding, Severity
from vmsentinel.respond.actions import ResponseRecord

#: the kinds a host publishes durably (sweep timings go as live metrics, not through the spool)
SPOOLED: tuple[type, ...] = (
    ev.FindingRaised,
    ev.FindingCleared,
    ev.ProcessStarted,
    ev.ProcessStopped,
    ev.ModuleLoaded,
    ev.ModuleUnloaded,
    ev.ResponseDone,
    ev.GuestWatched,
    ev.GuestAdded,
    ev.GuestRemoved,
    ev.BaselineTaken,
    ev.BaselineRestored,
    ev.GuestUnreachable,
    ev.PolicyReloaded,
    ev.PolicyRejected,
    ev.WorkerRestarted,
    ev.CodeTracking,
    ev.FirstLook,
    ev.GuestInventory,
)
#: kinds that travel as metrics: frequent, and worth nothing once stale
METRICS: tuple[type, ...] = (ev.SweepDone, ev.SweepMissed)

KINDS: dict[str, type] = {cls.__name__: cls for cls in (*SPOOLED, *METRICS)}

#: the longest text a field may hold, and the most items a collection may: a host cannot make the
#: central side hold or index arbitrary amounts in one event
MAX_TEXT = 64 * 1024
MAX_ITEMS = 200_000


class WireError(ValueError):
    """An event body that is not one the sentinel sends."""


def finding_to_wire(f: Finding) -> dict[str, Any]:
    return {
        "detector": f.detector,
        "title": f.title,
        "severity": f.severity.name.lower(),
        "attack": dataclasses.asdict(f.attack),
        "target": f.target,
        "evidence": json.loads(json.dumps(f.evidence, default=str)),
        "sources": list(f.sources),
        "time": f.time,
        "confirmed": f.confirmed,
    }


def to_wire(event: ev.Event) -> dict[str, Any]:
    """``event`` as a JSON-ready dict with its ``kind``."""
    kind = type(event).__name__
    if isinstance(event, ev.FindingRaised | ev.PolicyRejected):
        return {"kind": kind, "finding": finding_to_wire(event.finding)}
    if isinstance(event, ev.ResponseDone):
        return {"kind": kind, "record": dataclasses.asdict(event.record)}
    body = json.loads(json.dumps(dataclasses.asdict(event), default=str))
    return {"kind": kind, **body}


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"{where}: expected text, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise WireError(f"{where}: text of {len(value)} characters (at most {MAX_TEXT})")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{where}: expected a number, got {type(value).__name__}")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{where}: expected an integer, got {type(value).__name__}")
    return value


def _json_size(value: Any, where: str) -> Any:
    """Any JSON value, bounded in how much it holds."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_ITEMS:
            raise WireError(f"{where}: more than {MAX_ITEMS} values")
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and len(item) > MAX_TEXT:
            raise WireError(f"{where}: text of {len(item)} characters (at most {MAX_TEXT})")
    return value


def _field(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against a dataclass field's annotation (the types events use)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is str:
        return _text(value, where)
    if hint is float:
        return _number(value, where)
    if hint is int:
        return _integer(value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{where}: expected true or false")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _field(value, option, where)
            except WireError:
                continue
        raise WireError(f"{where}: not a {hint}")
    if origin is tuple:
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise WireError(f"{where}: expected a list")
        item = args[0] if args else str
        return tuple(_field(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise WireError(f"{where}: expected an object")
        _, value_hint = args
        return {_text(k, f"{where} key"): _field(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if hint is Any or hint is object:
        return _json_size(value, where)
    raise WireError(f"{where}: cannot read a {hint}")


def finding_from_wire(data: Any, where: str = "finding") -> Finding:
    if not isinstance(data, dict):
        raise WireError(f"{where}: expected an object")
    expected = {"detector", "title", "severity", "attack", "target", "evidence", "sources", "time", "confirmed"}
    if set(data) != expected:
        raise WireError(f"{where}: fields {sorted(set(data) ^ expected)} do not belong or are missing")
    try:
        severity = Severity[_text(data["severity"], f"{where}.severity").upper()]
    except KeyError:
        raise WireError(f"{where}.severity: {data['severity']!r} is no severity") from None
    attack = data["attack"]
    if not isinstance(attack, dict) or set(attack) != {"technique_id", "technique", "tactic_id", "tactic"}:
        raise WireError(f"{where}.attack: expected technique_id, technique, tactic_id, tactic")
    evidence = data["evidence"]
    if not isinstance(evidence, dict):
        raise WireError(f"{where}.evidence: expected an object")
    if not isinstance(data["confirmed"], bool):
        raise WireError(f"{where}.confirmed: expected true or false")
    return Finding(
        detector=_text(data["detector"], f"{where}.detector"),
        title=_text(data["title"], f"{where}.title"),
        severity=severity,
        attack=Attack(**{k: _text(v, f"{where}.attack.{k}") for k, v in attack.items()}),
        target=_text(data["target"], f"{where}.target"),
        evidence=_json_size(evidence, f"{where}.evidence"),
        sources=_field(data["sources"], tuple[str, ...], f"{where}.sources"),
        time=_number(data["time"], f"{where}.time"),
        confirmed=data["confirmed"],
    )


@functools.cache
def _shape(cls: type) -> tuple[dict[str, Any], frozenset[str], frozenset[str]]:
    """A dataclass's field types, its field names and those without a default (worked out once)."""
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return typing.get_type_hints(cls), frozenset(f.name for f in fields), frozenset(required)


def from_wire(data: Any) -> ev.Event:
    """The event ``data`` describes; :class:`WireError` when it is not exactly one the sentinel sends."""
    if not isinstance(data, dict):
        raise WireError("an event must be a JSON object")
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown event kind {kind!r}")
    body = {k: v for k, v in data.items() if k != "kind"}
    if cls in (ev.FindingRaised, ev.PolicyRejected):
        if set(body) != {"finding"}:
            raise WireError(f"{kind}: expected one field, finding")
        return cls(finding_from_wire(body["finding"]))
    if cls is ev.ResponseDone:
        record = body.get("record")
        fields = {f.name: f for f in dataclasses.fields(ResponseRecord)}
        if set(body) != {"record"} or not isinstance(record, dict) or set(record) != set(fields):
            raise WireError(f"{kind}: expected a record with {', '.join(fields)}")
        hints = _shape(ResponseRecord)[0]
        return ev.ResponseDone(ResponseRecord(**{k: _field(v, hints[k], f"record.{k}") for k, v in record.items()}))
    hints, names, required = _shape(cls)
    extra, missing = set(body) - names, required - set(body)
    if extra or missing:
        raise WireError(
            f"{kind}: "
            + "; ".join(
                part
                for part in (
                    f"unknown field(s) {', '.join(sorted(extra))}" if extra else "",
                    f"missing field(s) {', '.join(sorted(missing))}" if missing else "",
                )
                if part
            )
        )
    return cls(**{k: _field(v, hints[k], f"{kind}.{k}") for k, v in body.items()})  # type: ignore[no-any-return]
