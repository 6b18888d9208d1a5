"""The central side of a fleet (``serve --fleet``): every host's events, kept once, shown together.

The hub reads the event stream through a durable consumer: it acknowledges a message only after the
central store has committed it together with its receipt (host, the host's store, the event's row),
so a hub that is killed takes the unacknowledged messages again and the receipts drop what it had
already kept. A restarted hub, a restarted bus and a host that sends again all end with each event
kept exactly once.

Every host may publish only under its own subjects (the bus's permissions, one credential per
host); the hub checks again that what a message says about its host matches the subject it came
on, and refuses (logs and audits) anything that does not, or that is not an event the sentinel
sends. Guests are named ``HOST/GUEST`` here; each row keeps its host in a column of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from vmsentinel import events as ev
from vmsentinel.detect.finding import finding_key
from vmsentinel.fleet.connection import BusOptions, connect
from vmsentinel.fleet.subjects import (
    CENTRAL_CONSUMER,
    EVENTS,
    EVENTS_STREAM,
    HEARTBEATS,
    HOST_ID,
    control_subject,
    guest_token,
    host_of,
    qualified,
)
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks import Sink
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.sinks.wire import METRICS, WireError, from_wire

log = logging.getLogger("vmsentinel.fleet")

#: messages taken from the stream per fetch
FETCH = 256
#: a host whose last heartbeat is older than this is shown as silent
SILENT_AFTER = 15.0
#: seconds a request to a host may take (a memory dump of a large guest takes long)
REQUEST_TIMEOUT = 600.0
VIEW_TIMEOUT = 5.0
#: how long the stream keeps events (a central service down longer than this misses the oldest)
STREAM_MAX_AGE = 30 * 86400
HEARTBEAT_STREAM = "VMSENTINEL_HEARTBEATS"
HEARTBEAT_MAX_AGE = 3600
HEARTBEAT_MAX_BYTES = 256 << 20
STORE_ID = re.compile(r"[0-9a-f]{16}")

Audit = Callable[[str, str, str], None]
"""``audit(action, object, detail)``: an entry in the service's audit log."""


class Refused(ValueError):
    """A message the hub will not keep, and why."""


@dataclass
class HostState:
    host: str
    last_heartbeat: float = 0.0
    version: str = ""
    guests: list[dict[str, Any]] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    received: int = 0
    duplicates: int = 0
    refused: int = 0

    @property
    def silent(self) -> bool:
        return time.time() - self.last_heartbeat > SILENT_AFTER

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "last_heartbeat": self.last_heartbeat or None,
            "silent": self.silent,
            "version": self.version,
            "guests": len(self.guests),
            "remote_actions": self.allowed,
            "received": self.received,
            "duplicates": self.duplicates,
            "refused": self.refused,
        }


@dataclass
class HubStats:
    received: int = 0
    duplicates: int = 0
    refused: int = 0
    #: seconds from a host writing an event to the hub keeping it (the latest few)
    latencies: list[float] = field(default_factory=list)


def qualify(host: str, event: ev.Event) -> ev.Event:
    """``event`` with its guest named ``HOST/GUEST``."""
    name = qualified(host, event.target)
    if isinstance(event, ev.FindingRaised | ev.PolicyRejected):
        return type(event)(dataclasses.replace(event.finding, target=name))
    if isinstance(event, ev.ResponseDone):
        return ev.ResponseDone(dataclasses.replace(event.record, target=name))
    return dataclasses.replace(event, target=name)


def parse_message(subject: str, data: bytes) -> tuple[str, str, int, float, ev.Event]:
    """(host, host's store, row, sent, event) of a message on the event stream, or :class:`Refused`."""
    host = host_of(subject)
    if host is None or not HOST_ID.fullmatch(host):
        raise Refused(f"a message on {subject!r}, which names no host")
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise Refused(f"host {host}: a message on {subject} that is not JSON ({exc})") from None
    if not isinstance(body, dict) or set(body) != {"host", "store", "seq", "sent", "event"}:
        raise Refused(f"host {host}: a message on {subject} that is not an event envelope")
    if body["host"] != host:
        raise Refused(f"host {host} sent an event that claims to come from host {body['host']!r}")
    store, seq, sent = body["store"], body["seq"], body["sent"]
    if not isinstance(store, str) or not STORE_ID.fullmatch(store):
        raise Refused(f"host {host}: an event with a malformed store id")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0:
        raise Refused(f"host {host}: an event with a malformed sequence number")
    if isinstance(sent, bool) or not isinstance(sent, int | float):
        raise Refused(f"host {host}: an event with a malformed time")
    try:
        event = from_wire(body["event"])
    except WireError as exc:
        raise Refused(f"host {host}: {exc}") from None
    parts = subject.split(".")
    if len(parts) != 5 or parts[3] != guest_token(event.target) or parts[4] != type(event).__name__:
        raise Refused(f"host {host}: an event about {event.target!r} ({type(event).__name__}) sent on {subject}")
    return host, store, seq, float(sent), event


class FleetHub:
    """Consumes every host's events into the central store and sinks; asks hosts for views and
    responses."""

    def __init__(
        self,
        options: BusOptions,
        store: SqliteStore,
        sinks: Sequence[Sink] = (),
        *,
        audit: Audit | None = None,
        compare: Callable[[ev.Event], list[ev.Event]] | None = None,
    ) -> None:
        self.options = options
        self.store = store
        self.sinks = list(sinks)
        self.audit = audit
        #: the fleet's own detector: fed each kept event, returns the events it raises (fleet_outlier)
        self.compare = compare
        self.hosts: dict[str, HostState] = {}
        self.stats = HubStats()
        self.connected = False
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._thread: threading.Thread | None = None
        self._keys: dict[tuple[str, str], str] = {}
        self._audited: dict[tuple[str, str], float] = {}
        self.ready = threading.Event()

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="fleet-hub", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _say(self, message: str) -> None:
        if message != self.last_error:
            log.error("bus %s: %s", self.options.url, message)
        self.last_error = message

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                nc = await connect(self.options, "_INBOX_central", "vmsentinel central", self)
            except Exception as exc:
                self._say(f"cannot connect: {exc or type(exc).__name__}")
                await asyncio.sleep(1.0)
                continue
            self._nc = nc
            try:
                await self._consume(nc)
            except Exception as exc:  # the stream went away with the server: connect and bind again
                self._say(f"consuming: {exc or type(exc).__name__}")
                await asyncio.sleep(1.0)
            finally:
                self.connected = False
                self._nc = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

    async def _ensure_stream(self, js: Any) -> None:
        """The event stream (kept for :data:`STREAM_MAX_AGE`) and the heartbeat stream: heartbeats and
        sweep metrics are kept an hour, so a central service that was away sees how hosts fared, but
        they are not the record (a host does not spool them)."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        wanted = (
            StreamConfig(
                name=EVENTS_STREAM,
                subjects=[f"{EVENTS}.>"],
                storage=StorageType.FILE,
                max_age=STREAM_MAX_AGE,
                duplicate_window=120,
            ),
            StreamConfig(
                name=HEARTBEAT_STREAM,
                subjects=[f"{HEARTBEATS}.>"],
                storage=StorageType.FILE,
                max_age=HEARTBEAT_MAX_AGE,
                max_bytes=HEARTBEAT_MAX_BYTES,
                discard=DiscardPolicy.OLD,
            ),
        )
        for config in wanted:
            try:
                await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config)
                log.info("bus %s: made the stream %s", self.options.url, config.name)

    async def _consume(self, nc: Any) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = nc.jetstream()
        await self._ensure_stream(js)
        sub = await js.pull_subscribe(
            f"{EVENTS}.>",
            durable=CENTRAL_CONSUMER,
            stream=EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=60, max_ack_pending=20_000
            ),
        )
        await nc.subscribe(f"{HEARTBEATS}.*", cb=self._on_heartbeat)
        self.connected = True
        self.last_error = None
        self.ready.set()
        log.info("bus %s: consuming %s as %s", self.options.url, EVENTS_STREAM, CENTRAL_CONSUMER)
        while not self._stop.is_set():
            try:
                messages = await sub.fetch(FETCH, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                if nc.is_closed:
                    return
                continue
            self._take([(msg.subject, msg.data) for msg in messages])
            for msg in messages:
                await msg.ack()

    # -- events
    def _take(self, messages: list[tuple[str, bytes]]) -> None:
        """Keep a batch of messages (one transaction), then tell the other sinks of what was new."""
        parsed = []
        for subject, data in messages:
            try:
                parsed.append(parse_message(subject, data))
            except Refused as exc:
                self.refuse(host_of(subject) or "?", str(exc))
        batch = []
        for host, store, seq, sent, event in parsed:
            central = self._translate(host, qualify(host, event))
            if isinstance(event, ev.FindingRaised) and isinstance(central, ev.FindingRaised):
                self._keys[(host, event.finding.key)] = central.finding.key
            batch.append((host, store, seq, sent, central))
        kept = self.store.handle_received_many([(h, st, seq, [e]) for h, st, seq, _, e in batch])
        now = time.time()
        fresh: list[ev.Event] = []
        for (host, _, _, sent, event), new in zip(batch, kept, strict=True):
            state = self._host(host)
            if not new:
                state.duplicates += 1
                self.stats.duplicates += 1
                continue
            state.received += 1
            self.stats.received += 1
            self.stats.latencies.append(max(0.0, now - sent))
            fresh.append(event)
        del self.stats.latencies[:-10_000]
        if fresh:
            self._emit(fresh)
        if self.compare is not None:
            for event in fresh:
                found = self.compare(event)
                for host in sorted({e.target.partition("/")[0] for e in found}):  # each kept as its guest's host's
                    self.store.write_events([e for e in found if e.target.partition("/")[0] == host], host)
                if found:
                    self._emit(found)

    def _emit(self, events: list[ev.Event]) -> None:
        for sink in self.sinks:
            try:
                sink.handle(events)
            except Exception:  # one sink failing must not stop the others or the stream
                log.exception("sink %s failed", type(sink).__name__)

    def _translate(self, host: str, event: ev.Event) -> ev.Event:
        """A host's clear names its finding by the host's key; here findings are keyed by their
        qualified guest, so the key is looked up."""
        if not isinstance(event, ev.FindingCleared):
            return event
        key = self._keys.get((host, event.key)) or self._lookup_key(host, event)
        return dataclasses.replace(event, key=key) if key else event

    def _lookup_key(self, host: str, event: ev.FindingCleared) -> str | None:
        """The central key of a finding a host cleared, from the store (after a restart of the hub)."""
        _, _, guest = event.target.partition("/")
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT detector, evidence, key FROM findings WHERE host = ? AND target = ? AND detector = ?",
                (host, event.target, event.detector),
            ).fetchall()
        for detector, evidence, key in rows:
            with contextlib.suppress(ValueError):
                if finding_key(str(detector), guest, json.loads(evidence)) == event.key:
                    self._keys[(host, event.key)] = str(key)
                    return str(key)
        return None

    def refuse(self, host: str, reason: str) -> None:
        """A message not kept: logged, counted and (once a minute per host and reason) audited."""
        self.stats.refused += 1
        if HOST_ID.fullmatch(host):
            self._host(host).refused += 1
        log.warning("refused from the bus: %s", reason)
        now = time.time()
        if self.audit is not None and now - self._audited.get((host, reason), 0.0) >= 60:
            self._audited[(host, reason)] = now
            with contextlib.suppress(Exception):
                self.audit("bus.refused", f"host:{host}", reason)

    def _host(self, host: str) -> HostState:
        with self._lock:
            if host not in self.hosts:
                self.hosts[host] = HostState(host)
            return self.hosts[host]

    async def _on_heartbeat(self, msg: Any) -> None:
        host = host_of(msg.subject)
        try:
            body = json.loads(msg.data)
            if host is None or not isinstance(body, dict) or body.get("host") != host:
                raise Refused(f"a heartbeat on {msg.subject} that claims host {body.get('host')!r}")
            guests = body.get("guests", [])
            allowed = body.get("allowed", [])
            if not isinstance(guests, list) or not all(isinstance(g, dict) and isinstance(g.get("target"), str) for g in guests):
                raise Refused(f"host {host}: a heartbeat with a malformed guest list")
            if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
                raise Refused(f"host {host}: a heartbeat with a malformed action list")
            metrics = [from_wire(m) for m in body.get("metrics", [])]
            if not all(isinstance(m, METRICS) for m in metrics):
                raise Refused(f"host {host}: a heartbeat carrying events that are not metrics")
        except (ValueError, WireError) as exc:
            self.refuse(host or "?", str(exc))
            return
        state = self._host(host)
        state.last_heartbeat = time.time()
        state.version = str(body.get("version", ""))[:100]
        state.guests = [
            {
                "target": str(g["target"]),
                "interval": float(g.get("interval", 1.0)) if isinstance(g.get("interval"), int | float) else 1.0,
                "baselined": bool(g.get("baselined")),
                "ended": bool(g.get("ended")),
            }
            for g in guests[:10_000]
        ]
        state.allowed = list(allowed)
        if metrics:
            self._emit([qualify(host, m) for m in metrics])

    # -- requests to hosts
    def request(self, host: str, action: str, body: dict[str, Any], timeout: float) -> Future[dict[str, Any]]:
        """Ask ``host`` (``act`` or ``view``); the answer's JSON, from any thread."""
        loop = self._loop
        if loop is None or self._nc is None:
            failed: Future[dict[str, Any]] = Future()
            failed.set_exception(ConnectionError(f"not connected to the bus {self.options.url}"))
            return failed
        return asyncio.run_coroutine_threadsafe(self._request(host, action, body, timeout), loop)

    async def _request(self, host: str, action: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        nc = self._nc
        if nc is None:
            raise ConnectionError(f"not connected to the bus {self.options.url}")
        try:
            msg = await nc.request(control_subject(host, action), json.dumps(body).encode(), timeout=timeout)
        except NoRespondersError:
            raise ConnectionError(f"host {host} is not on the bus") from None
        except (TimeoutError, NatsTimeout):
            raise TimeoutError(f"host {host} did not answer within {timeout:g} s") from None
        answer = json.loads(msg.data)
        if not isinstance(answer, dict):
            raise ValueError(f"host {host} answered with something that is not a JSON object")
        return answer

    # -- connection callbacks
    async def _on_error(self, exc: Exception) -> None:
        self._say(str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        self.connected = False
        if not self._stop.is_set():
            self._say("disconnected")

    async def _on_reconnected(self) -> None:
        self.connected = True
        log.info("bus %s: reconnected", self.options.url)


@dataclass
class FleetGuestState:
    """A guest of some host, as the service's pages list it (the same fields a watch's guest has)."""

    target: str
    host: str
    interval: float = 1.0
    baselined: bool = False
    ended: bool = False


@dataclass
class FleetPolicy:
    enabled: list[str] = field(default_factory=list)


class FleetGuests:
    """What the service asks of a watch, answered by the fleet: guests from the hosts' heartbeats,
    views and responses by asking their host over the bus."""

    #: the service tells this apart from a local watch (responses carry who asked and why)
    remote = True

    def __init__(self, hub: FleetHub) -> None:
        self.hub = hub
        self.interval = 1.0
        self.compiled = FleetPolicy()

    @property
    def states(self) -> list[FleetGuestState]:
        out = []
        with self.hub._lock:
            hosts = list(self.hub.hosts.values())
        for h in sorted(hosts, key=lambda h: h.host):
            for g in h.guests:
                out.append(
                    FleetGuestState(qualified(h.host, g["target"]), h.host, g["interval"], g["baselined"], g["ended"] or h.silent)
                )
        return out

    def view(self, target: str, name: str) -> Future[dict[str, object]]:
        host, _, guest = target.partition("/")
        out: Future[dict[str, object]] = Future()
        asked = self.hub.request(host, "view", {"guest": guest, "view": name}, VIEW_TIMEOUT)

        def done(f: Future[dict[str, Any]]) -> None:
            try:
                answer = f.result()
            except Exception as exc:
                out.set_exception(exc)
                return
            if answer.get("ok") and isinstance(answer.get("view"), dict):
                out.set_result(answer["view"])
            else:
                out.set_exception(ValueError(str(answer.get("error", "the host could not show it"))))

        asked.add_done_callback(done)
        return out

    def act(self, target: str, actions: list[str], key: str, *, by: str = "", reason: str = "") -> list[ResponseRecord]:
        """Ask the guest's host for each action; its policy decides. Blocks until it answers."""
        host, _, guest = target.partition("/")
        records: list[ResponseRecord] = []
        for action in actions:
            try:
                ask = {"guest": guest, "action": action, "by": by or "central", "reason": reason or key}
                answer = self.hub.request(host, "act", ask, REQUEST_TIMEOUT).result(REQUEST_TIMEOUT + 5)
            except Exception as exc:
                records.append(ResponseRecord(time.time(), target, key, action, False, f"not carried out: {exc}"))
                continue
            got = answer.get("records")
            if isinstance(got, list) and got:
                for r in got:
                    records.append(
                        ResponseRecord(
                            float(r.get("time", time.time())),
                            target,
                            str(r.get("finding_key", key)),
                            str(r.get("action", action)),
                            bool(r.get("ok")),
                            str(r.get("detail", "")),
                        )
                    )
            else:
                records.append(ResponseRecord(time.time(), target, key, action, False, str(answer.get("error", "no answer"))))
        return records

    def request_reload(self) -> None:
        """A fleet's central service has no policy of its own to reload (each host has its own)."""

    def stop(self) -> None:
        self.hub.stop()

    def run(self) -> None:
        self.hub.start()

    def close(self) -> None:
        self.hub.stop()
