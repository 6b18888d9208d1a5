"""``vmsentinel serve``: the watch and the web service in one process. The watcher runs in a
thread of its own (its sweeps in worker processes); the web server (uvicorn) owns the main thread
and its signals: SIGTERM or Ctrl-C stop both, after the sweeps in flight are written. Findings go
to the store before the browsers hear of them, so a restart loses none; triage lives in the
service's database and survives restarts too."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmsentinel.errors import VmSentinelError
from vmsentinel.events import Event
from vmsentinel.service.accounts import ServiceDb
from vmsentinel.service.alerts import Alerts
from vmsentinel.service.context import ServiceContext
from vmsentinel.service.live import LiveFeed

if TYPE_CHECKING:
    from fastapi import FastAPI

    from vmsentinel.fleet.connection import BusOptions
    from vmsentinel.fleet.host_link import HostLink
    from vmsentinel.fleet.hub import FleetGuests
    from vmsentinel.pipeline.loading import ActivePolicy
    from vmsentinel.sinks import Sink
    from vmsentinel.watch.watcher import TargetSource, Watcher

DEFAULT_LISTEN = "127.0.0.1:8787"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Listen:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise VmSentinelError(f"--listen {text!r}: give ADDR:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    return Listen(host, int(port))


def check_listen(listen: Listen, tls: tuple[str, str] | None, insecure_http: bool) -> str | None:
    """Refuse plain HTTP beyond this host unless asked for by name; the warning to print, if any."""
    if listen.loopback or tls is not None:
        return None
    if not insecure_http:
        raise VmSentinelError(
            f"listening on {listen.host} (not this host only) needs TLS: give --tls-cert FILE and --tls-key FILE"
            " (or --insecure-http, if something else encrypts the traffic)"
        )
    return (
        f"WARNING: serving plain HTTP on {listen.host}:{listen.port}: passwords, session cookies and API tokens"
        " cross the network unencrypted (--insecure-http)"
    )


def policy_facts(active: ActivePolicy, source: str | None, loaded: float) -> dict[str, object]:
    return {
        "source": source,
        "description": active.description,
        "signer": active.description if active.signed else None,
        "loaded": loaded,
    }


class Service:
    """The watcher, its sinks and the web app, wired together (``run`` blocks until stopped)."""

    def __init__(
        self,
        targets: list[str],
        active: ActivePolicy,
        state: Path,
        *,
        policy_source: str | None = None,
        sources: list[TargetSource] | None = None,
        workers: int = 0,
        db: str | None = None,
        ocsf: str | None = None,
        extra_sinks: list[Sink] | None = None,
        secure_cookies: bool = False,
        loader: Callable[[], ActivePolicy] | None = None,
        host: str = "",
        bus: BusOptions | None = None,
        fleet: bool = False,
    ) -> None:
        """``host``: this host's id in the rows it writes; ``bus``: publish every event there, or with
        ``fleet``, be the fleet's central service reading every host's events from it."""
        import time

        from vmsentinel.sinks.baseline_record import BaselineRecord
        from vmsentinel.sinks.metrics import MetricsSink
        from vmsentinel.sinks.ocsf import OcsfJsonl
        from vmsentinel.sinks.sqlite_store import SqliteStore
        from vmsentinel.watch.watcher import Watcher

        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self._place(active)
        if loader is not None:  # a reloaded policy's relative places are the state folder's too
            load = loader

            def reload() -> ActivePolicy:
                fresh = load()
                self._place(fresh)
                return fresh

            loader = reload
        self.service_db = ServiceDb(state / "service.db")
        self.store = SqliteStore(db or state / "findings.db", host=host, spool=bus is not None and not fleet)
        self.jsonl = OcsfJsonl(ocsf or state / "findings.jsonl")
        self.live = LiveFeed(host, fleet)
        self.metrics = MetricsSink(None)
        self.alerts = Alerts(self.store.path, self.service_db)
        self.live.locate = self.alerts.locate
        self.host = host
        self.fleet = fleet
        self.link: HostLink | None = None
        self.watcher: Watcher | FleetGuests
        if fleet:
            from vmsentinel.fleet.hub import FleetGuests, FleetHub

            if bus is None:
                raise VmSentinelError("a fleet's central service reads the bus: give --bus URL")
            # the central store keeps what arrives (with its receipt) before the other sinks hear of it
            hub = FleetHub(
                bus,
                self.store,
                [self.jsonl, *(extra_sinks or []), self.live, self.metrics],
                audit=lambda action, what, detail: self.service_db.audit("bus", action, what, detail),
                compare=fleet_comparison(),
            )
            self.watcher = FleetGuests(hub)
        else:
            # the store first: a finding is on disk before any browser or metric hears of it
            sinks: list[Sink] = [self.store, self.jsonl, *(extra_sinks or []), self.live, self.metrics]
            watcher = Watcher(
                targets,
                active.policy.interval,
                sinks,
                policy=active.policy,
                allowlist=active.allowlist,
                loader=loader,
                sources=sources,
                workers=workers,
                baseline_record=BaselineRecord(self.store.path),
                peer_compare=bus is None,  # a host on a bus: its guests are compared with the fleet's centrally
            )
            watcher.watched_files = active.watched
            if bus is not None:
                from vmsentinel.fleet.host_link import HostLink, WatcherControl

                self.link = HostLink(bus, host, self.store, WatcherControl(watcher))
                watcher.sinks.append(self.link)
            self.watcher = watcher
        self.context = ServiceContext(
            self.service_db,
            self.alerts,
            self.live,
            self.watcher,
            self.metrics,
            policy=policy_facts(active, policy_source, time.time()),
            secure_cookies=secure_cookies,
            host=host,
        )
        self._thread: threading.Thread | None = None
        self.watch_error: BaseException | None = None
        #: the signal that stopped the service, if one did
        self.stopped_by: str | None = None

    def _place(self, active: ActivePolicy) -> None:
        """Memory dumps go under the state folder unless the policy names an absolute place: a
        service's working directory is nobody's (``/`` under systemd, and read-only there)."""
        if not Path(active.policy.dumps).is_absolute():
            active.policy.dumps = str(self.state / active.policy.dumps)

    def app(self) -> FastAPI:
        from vmsentinel.service.app import create_app

        return create_app(self.context)

    def start_watch(self) -> None:
        if self.link is not None:
            self.link.start()

        def run() -> None:
            try:
                self.watcher.run()
            except BaseException as exc:  # the web side stays up and says so in the log
                self.watch_error = exc
                logging.getLogger("vmsentinel.serve").exception("the watch stopped")

        self._thread = threading.Thread(target=run, name="watch", daemon=True)
        self._thread.start()

    def stop_watch(self) -> None:
        self.watcher.stop()
        if self._thread is not None:
            self._thread.join(timeout=120)
        self.watcher.close()
        if self.link is not None:
            self.link.stop()

    def close(self) -> None:
        self.alerts.close()
        self.jsonl.close()
        self.store.close()
        self.service_db.close()

    def run(self, listen: Listen, tls: tuple[str, str] | None = None, ready: threading.Event | None = None) -> None:
        """Serve until SIGTERM or Ctrl-C (uvicorn's handlers), then stop the watch and close."""
        import uvicorn

        config = uvicorn.Config(
            self.app(),
            host=listen.host,
            port=listen.port,
            log_level="warning",
            access_log=False,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=3,
        )
        server = uvicorn.Server(config)
        self.start_watch()
        # uvicorn handles SIGTERM and SIGINT while it serves, then raises the signal again to whatever
        # handler was there before it: ours only notes it, so the watch is stopped and the stores closed
        # below (the default handler would end the process first)
        handlers = {sig: signal.signal(sig, self._noted) for sig in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self.watcher.request_reload())
        try:
            if ready is not None:
                threading.Thread(target=_signal_when_started, args=(server, ready), daemon=True).start()
            server.run()
        finally:
            self.stop_watch()
            self.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _noted(self, signum: int, _frame: object) -> None:
        self.stopped_by = signal.Signals(signum).name


def fleet_comparison() -> Callable[[Event], list[Event]]:
    """The fleet's own detector for the central service (fleet_outlier), fed every kept event."""
    from vmsentinel.fleet.outliers import FleetComparison

    return FleetComparison()


def _signal_when_started(server: object, ready: threading.Event) -> None:
    import time

    while not getattr(server, "started", False):
        time.sleep(0.05)
    ready.set()


def port_free(listen: Listen) -> bool:
    """Whether the web server will be able to listen there (as it will: with SO_REUSEADDR, so that a
    restart does not wait for the last connections' TIME_WAIT)."""
    with socket.socket(socket.AF_INET6 if ":" in listen.host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((listen.host, listen.port))
        except OSError:
            return False
    return True
