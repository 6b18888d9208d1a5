"""Everything a request handler of the service may use, in one object (``app.state.ctx``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmsentinel.service.accounts import ServiceDb
from vmsentinel.service.alerts import Alerts
from vmsentinel.service.live import LiveFeed
from vmsentinel.service.security import LoginLimiter

if TYPE_CHECKING:
    from vmsentinel.fleet.hub import FleetGuests
    from vmsentinel.sinks.metrics import MetricsSink
    from vmsentinel.watch.watcher import Watcher

#: how long a view or a response may take before the API answers 504 (a hung guest's worker)
GUEST_TIMEOUT = 5.0
#: how long a response through the hypervisor may take (a memory dump of a large guest)
RESPONSE_TIMEOUT = 600.0


@dataclass
class ServiceContext:
    db: ServiceDb
    alerts: Alerts
    live: LiveFeed
    #: the guests: a watch on this host, or a fleet's hosts over the bus (serve --fleet)
    watcher: Watcher | FleetGuests
    metrics: MetricsSink
    #: the active policy as the policy page shows it (source, signer, loaded at)
    policy: dict[str, Any] = field(default_factory=dict)
    #: cookies only over TLS (the service listens with a certificate)
    secure_cookies: bool = False
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    started: float = field(default_factory=time.time)
    #: this host's id (rows and guests are shown with their host)
    host: str = ""
