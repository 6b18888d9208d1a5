"""A host's side of the bus: publish what the watch saw, answer the central service.

The watch writes every event to publish into its store's outbox (the spool) in the same
transaction as the findings themselves. The link publishes the outbox in order to JetStream, each
event with a message id made of the store's id and the event's row, and advances its cursor only
when the stream has acknowledged: a bus that is down, a link that is killed or a sentinel that
restarts resumes from the cursor, and what it sends again is dropped by the stream's duplicate
window and, beyond it, by the central store's receipts. Nothing is lost, nothing is kept twice.

Heartbeats (every ``HEARTBEAT`` seconds) carry the host's guests, its sweep metrics since the last
one and the actions its policy lets the central service ask for. Requests on ``vms.ctl.HOST.*``
(a response such as pause, a view of a guest) are answered only as this host's signed policy
allows; each is recorded as a response event, refused or done, so the audit travels back too.

The link runs in a thread with its own event loop; the watch never waits for the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmsentinel.events import Event, ResponseDone
from vmsentinel.fleet.connection import BusOptions, connect
from vmsentinel.fleet.subjects import CONTROL, EVENTS_STREAM, control_subject, event_subject, heartbeat_subject
from vmsentinel.respond.actions import ResponseRecord
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.sinks.wire import METRICS, to_wire
from vmsentinel.version import __version__

log = logging.getLogger("vmsentinel.fleet")

#: seconds between heartbeats
HEARTBEAT = 2.0
#: outbox rows published per round (each acknowledged before the cursor moves)
BATCH = 256
#: seconds to wait for the stream's acknowledgements of one round
ACK_TIMEOUT = 5.0
#: the largest answer to a view request (NATS's default maximum payload is 1 MiB)
MAX_ANSWER = 900_000
#: metrics events kept between heartbeats (the rest are counted, not sent)
MAX_METRICS = 5000


class HostControl(Protocol):
    """What the link needs of the watch to answer the central service."""

    def guests(self) -> list[dict[str, Any]]: ...

    def allowed(self) -> list[str]:
        """Actions this host's policy lets the fleet's central service ask for."""

    def act(self, target: str, actions: list[str], key: str) -> list[ResponseRecord]: ...

    def view(self, target: str, name: str) -> Future[dict[str, object]]: ...

    def record(self, records: list[ResponseRecord]) -> None:
        """Keep responses that were refused (they go into the store and the outbox like any other)."""


@dataclass
class LinkStatus:
    connected: bool = False
    published: int = 0
    last_error: str | None = None
    cursor: int = 0
    since: float = field(default_factory=time.time)


class HostLink:
    """A sink (sweep metrics for the heartbeats) and the publisher of the store's outbox."""

    def __init__(
        self,
        options: BusOptions,
        host: str,
        store: SqliteStore,
        control: HostControl | None = None,
        *,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        if not store.spool:
            raise ValueError("the link publishes a store opened with spool=True")
        self.options = options
        self.host = host
        self.store = store
        self.control = control
        self.heartbeat = heartbeat
        self.status = LinkStatus(cursor=store.cursor(EVENTS_STREAM))
        self._metrics: list[dict[str, Any]] = []
        self._dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._errors: dict[str, float] = {}
        store.on_spooled = self.wake

    # -- the sink side: sweep metrics wait for the next heartbeat
    def handle(self, events: Sequence[Event]) -> None:
        with self._lock:
            for event in events:
                if isinstance(event, METRICS):
                    if len(self._metrics) < MAX_METRICS:
                        self._metrics.append(to_wire(event))
                    else:
                        self._dropped += 1

    def close(self) -> None:
        """Stop after publishing what is queued (for a few seconds at most)."""
        self.stop()

    # -- the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="bus-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _main(self) -> None:
        asyncio.run(self._run())

    def _say(self, message: str) -> None:
        """Log an error once a minute at most (a bus that is down must not flood the log)."""
        self.status.last_error = message
        now = time.monotonic()
        if now - self._errors.get(message, -1e9) >= 60:
            self._errors[message] = now
            log.error("bus %s: %s", self.options.url, message)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                nc = await connect(
                    self.options, f"_INBOX_{self.host}", f"vmsentinel host {self.host} ({socket.gethostname()})", self
                )
            except Exception as exc:  # refused, wrong credentials, no server: keep spooling, try again
                self._say(f"cannot connect: {_reason(exc)}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            self.status.connected = True
            log.info("bus %s: connected as host %s", self.options.url, self.host)
            try:
                await self._serve(nc)
            finally:
                self.status.connected = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _serve(self, nc: Any) -> None:
        js = nc.jetstream()
        if self.control is not None:
            await nc.subscribe(control_subject(self.host, "*"), cb=self._on_control)
        beat = asyncio.create_task(self._beat(nc))
        try:
            while True:
                sent = await self._publish_round(js)
                if self._stop.is_set() and (sent == 0 or not nc.is_connected):
                    break
                if sent == 0:
                    await self._sleep(1.0)
                if nc.is_closed:
                    break
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
            if self._stop.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._send_heartbeat(nc), 2)

    async def _publish_round(self, js: Any) -> int:
        """Publish the next outbox rows; the cursor moves only past rows the stream acknowledged."""
        rows = self.store.outbox(self.status.cursor, BATCH)
        if not rows:
            return 0
        store_id = self.store.store_id
        futures: list[asyncio.Future[Any]] = []
        try:
            for rowid, target, kind, body in rows:
                payload = (
                    f'{{"host":{json.dumps(self.host)},"store":"{store_id}","seq":{rowid},"sent":{time.time()},"event":{body}}}'
                ).encode()
                futures.append(
                    await js.publish_async(
                        event_subject(self.host, target, kind),
                        payload,
                        stream=EVENTS_STREAM,
                        headers={"Nats-Msg-Id": f"{self.host}:{store_id}:{rowid}"},
                    )
                )
            _, pending = await asyncio.wait(futures, timeout=ACK_TIMEOUT)
        except Exception as exc:
            for f in futures:
                f.cancel()
            self._say(f"publishing: {_reason(exc)}")
            await self._sleep(1.0)
            return 0
        for f in pending:
            f.cancel()
        acked = 0
        for f in futures:  # in row order: the cursor moves over the acknowledged prefix only
            if f in pending or f.cancelled() or f.exception() is not None:
                break
            acked += 1
        if acked:
            last = rows[acked - 1][0]
            self.store.advance(EVENTS_STREAM, last)
            self.status.cursor = last
            self.status.published += acked
            self.status.last_error = None
        if acked < len(rows):
            failed = next((f for f in futures[acked:] if f.done() and not f.cancelled() and f.exception()), None)
            why = _reason(failed.exception()) if failed is not None else f"no acknowledgement within {ACK_TIMEOUT:g} s"
            self._say(f"the stream {EVENTS_STREAM} did not take event {rows[acked][0]}: {why}")
            await self._sleep(1.0)
        return acked

    async def _beat(self, nc: Any) -> None:
        while True:
            await self._send_heartbeat(nc)
            await asyncio.sleep(self.heartbeat)

    async def _send_heartbeat(self, nc: Any) -> None:
        with self._lock:
            metrics, self._metrics = self._metrics, []
            dropped, self._dropped = self._dropped, 0
        control = self.control
        body = {
            "host": self.host,
            "time": time.time(),
            "version": __version__,
            "guests": control.guests() if control is not None else [],
            "allowed": control.allowed() if control is not None else [],
            "metrics": metrics,
            "dropped_metrics": dropped,
            "spooled": self.status.cursor,
        }
        await nc.publish(heartbeat_subject(self.host), json.dumps(body, default=str).encode())

    async def _on_control(self, msg: Any) -> None:
        """A request from the central service: ``act`` (a response) or ``view``."""
        action = msg.subject.rsplit(".", 1)[-1]
        try:
            request = json.loads(msg.data)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            answer = await self._answer(action, request)
        except Exception as exc:
            answer = {"ok": False, "error": _reason(exc)}
        data = json.dumps(answer, default=str).encode()
        if len(data) > MAX_ANSWER:
            data = json.dumps({"ok": False, "error": f"the answer is {len(data)} bytes, more than the bus carries"}).encode()
        if msg.reply:
            await msg.respond(data)

    async def _answer(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        control = self.control
        assert control is not None
        guest = request.get("guest")
        if not isinstance(guest, str) or guest not in {g["target"] for g in control.guests()}:
            return {"ok": False, "error": f"host {self.host} watches no guest {guest!r}"}
        if action == "view":
            name = request.get("view")
            if not isinstance(name, str):
                return {"ok": False, "error": "which view?"}
            result = await asyncio.wrap_future(control.view(guest, name))
            return {"ok": True, "view": result}
        if action == "act":
            return await self._act(control, guest, request)
        return {"ok": False, "error": f"unknown request {action!r} on {CONTROL}"}

    async def _act(self, control: HostControl, guest: str, request: dict[str, Any]) -> dict[str, Any]:
        what, by, reason = request.get("action"), request.get("by"), request.get("reason")
        if not isinstance(what, str) or not isinstance(by, str) or not isinstance(reason, str):
            return {"ok": False, "error": "a response request names action, by and reason"}
        key = f"fleet-{int(time.time())}-{by}"[:200]
        allowed = control.allowed()
        if what not in allowed:
            record = ResponseRecord(
                time.time(),
                guest,
                key,
                what,
                False,
                f"refused: this host's policy lets the fleet ask for {', '.join(allowed) or 'nothing'} (asked by {by}: {reason})",
            )
            control.record([record])
            log.warning("refused %s of %s asked by %s through the bus: not allowed by this host's policy", what, guest, by)
            return {"ok": False, "refused": True, "records": [_record_json(record)]}
        log.warning("carrying out %s of %s asked by %s through the bus: %s", what, guest, by, reason)
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(None, control.act, guest, [what], key)
        return {"ok": all(r.ok for r in records), "records": [_record_json(r) for r in records]}

    # -- connection callbacks
    async def _on_error(self, exc: Exception) -> None:
        self._say(_reason(exc))

    async def _on_disconnected(self) -> None:
        self.status.connected = False
        if not self._stop.is_set():
            self._say("disconnected; events are kept in the store until it is back")

    async def _on_reconnected(self) -> None:
        self.status.connected = True
        log.info("bus %s: reconnected", self.options.url)
        self.wake()


def _record_json(r: ResponseRecord) -> dict[str, Any]:
    return {"time": r.time, "target": r.target, "finding_key": r.finding_key, "action": r.action, "ok": r.ok, "detail": r.detail}


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    text = str(exc) or type(exc).__name__
    return text.strip().strip("'\"")


class WatcherControl:
    """:class:`HostControl` over a running :class:`~vmsentinel.watch.watcher.Watcher`."""

    def __init__(self, watcher: Any, emit: Callable[[list[Event]], None] | None = None) -> None:
        self.watcher = watcher
        self.emit = emit or watcher.emit

    def guests(self) -> list[dict[str, Any]]:
        return [
            {"target": s.target, "interval": s.interval, "baselined": s.baselined, "ended": s.ended, "sweeps": s.sweeps}
            for s in list(self.watcher.states)
        ]

    def allowed(self) -> list[str]:
        return list(self.watcher.policy.fleet_actions)

    def act(self, target: str, actions: list[str], key: str) -> list[ResponseRecord]:
        return self.watcher.act(target, actions, key)  # type: ignore[no-any-return]

    def view(self, target: str, name: str) -> Future[dict[str, object]]:
        return self.watcher.view(target, name)  # type: ignore[no-any-return]

    def record(self, records: list[ResponseRecord]) -> None:
        self.emit([ResponseDone(r) for r in records])
