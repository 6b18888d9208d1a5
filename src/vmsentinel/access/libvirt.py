"""``libvirt:DOMAIN[,monitor=yes][?uri=URI]``: a domain that libvirt runs, as it runs it (no shared
RAM file, no QMP socket of our own); ``libvirt:`` names every running domain of the connection.
The URI defaults to ``qemu:///system``; options come before ``?uri=``, which takes the rest::

    with open_connector("libvirt:web1") as guest:       # memory from web1's QEMU process, no monitor
        guest.memory.read(0, 16)
        guest.control.pause()                           # virDomainSuspend
    expand_targets("libvirt:")                          # ['libvirt:web1?uri=qemu:///system', ...]

How a domain is reached:

- **the QEMU process**: its pid from libvirt's pid file (``/run/libvirt/qemu/NAME.pid`` for
  ``qemu:///system``), else the process whose command line carries the domain's ``-uuid``; either
  way it must carry ``-uuid UUID`` and ``-name guest=NAME`` of the domain, or it is not read. The
  memory comes from :func:`vmsentinel.access.qemu_process.qemu_process_memory` (the process's RAM,
  file- or memfd-backed mapped through ``/proc/PID/map_files``, else read with ``process_vm_readv``).
  So the URI must be local: a remote domain's QEMU is not on this host.
- **the control** is libvirt's API (:class:`LibvirtControl`): pause, resume, state, memory-only
  dumps, NIC links. libvirt owns the domain's QMP monitor; a monitor command through libvirt
  (``virDomainQemuMonitorCommand``) marks the domain *tainted: custom-monitor* for the rest of its
  run (libvirt logs it and reports it in the domain's log; vendors' support treats such domains as
  changed outside libvirt). So it is **off** unless the TARGET says ``monitor=yes``; without it the
  kernel and page-table root are found from memory alone (as in an image), the IDT is read from
  ``idt_table``, and only live per-vCPU registers (CR3/CR4/IDTR) are unknown.
- **lifecycle**: :class:`LibvirtDomains` lists the running domains and yields ``started`` and
  ``stopped`` as libvirt reports them (``virConnectDomainEventRegisterAny``).

libvirt's Python binding (``libvirt-python``) is imported only for these targets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vmsentinel.access.connector import Connector, CpuRegisters
from vmsentinel.access.qmp_control import parse_info_registers
from vmsentinel.access.registry import register_scheme
from vmsentinel.errors import AccessDenied, HypervisorError, LayoutUnknown, RegistersUnavailable, TargetError

if TYPE_CHECKING:  # asyncio loads with the first changes(), not with every TARGET (this module is imported for all)
    import asyncio

PREFIX = "libvirt:"
DEFAULT_URI = "qemu:///system"
#: where libvirt's system QEMU driver writes each running domain's pid
SYSTEM_PID_DIR = Path("/run/libvirt/qemu")
USAGE = "libvirt:[DOMAIN][,monitor=yes][?uri=URI]"
#: seconds a libvirt call may take (a dump gets DUMP_TIMEOUT): libvirtd can hang like any hypervisor
CALL_TIMEOUT = 30.0
DUMP_TIMEOUT = 600.0
_YES, _NO = ("yes", "on", "true", "1"), ("no", "off", "false", "0")
#: virDomainState, by number (libvirt's stable ABI), as QMP's run states are named where they match
_STATES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")
_STARTED = ("BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "WAKEUP")
_STOPPED = ("SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED", "FROM_SNAPSHOT")

log = logging.getLogger("vmsentinel.libvirt")
T = TypeVar("T")


@dataclass(frozen=True)
class LibvirtTarget:
    """A parsed ``libvirt:`` TARGET; ``domain`` is empty for every running domain."""

    domain: str
    uri: str = DEFAULT_URI
    monitor: bool = False

    @property
    def spec(self) -> str:
        """The TARGET in its one canonical form (what :class:`LibvirtDomains` gives)."""
        return libvirt_target(self.domain, self.uri, self.monitor)


def libvirt_target(domain: str, uri: str = DEFAULT_URI, monitor: bool = False) -> str:
    """``libvirt:DOMAIN[,monitor=yes]?uri=URI``."""
    return f"{PREFIX}{domain}{',monitor=yes' if monitor else ''}?uri={uri}"


def default_uri() -> str:
    """The connection a ``libvirt:`` TARGET without ``?uri=`` uses: ``$LIBVIRT_DEFAULT_URI`` (libvirt's own
    variable, which ``vmsentinel --connect URI`` sets), else ``qemu:///system``."""
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def parse_target(spec: str) -> LibvirtTarget:
    body = spec.removeprefix(PREFIX)
    head, query_mark, query = body.partition("?")
    uri = default_uri()
    if query_mark:
        if not query.startswith("uri=") or not query[4:]:
            raise TargetError(f"{spec}: after '?' comes uri=URI (a TARGET is {USAGE})")
        uri = query[4:]
        if ",monitor=" in uri:
            raise TargetError(f"{spec}: options come before '?uri=': libvirt:DOMAIN,monitor=yes?uri=URI")
    domain, *options = head.split(",")
    monitor = False
    for option in options:
        key, _, value = option.partition("=")
        if key != "monitor" or value.lower() not in _YES + _NO:
            raise TargetError(f"{spec}: unknown option {option!r} (know: monitor=yes|no)")
        monitor = value.lower() in _YES
    if "/" in domain:
        raise TargetError(f"{spec}: a libvirt domain name has no '/'")
    return LibvirtTarget(domain, uri, monitor)


def with_uri(spec: str, uri: str) -> str:
    """A ``libvirt:`` TARGET that names no URI gets ``uri`` (a CLI's ``--connect URI``); any other
    TARGET is returned as it is."""
    if not spec.startswith(PREFIX) or "?" in spec:
        return spec
    return f"{spec}?uri={uri}"


# -- the binding ---------------------------------------------------------------------------------


def _binding() -> Any:
    """libvirt-python, with its default error handler (which prints every error on stderr) silenced:
    each error is raised to us, and we say it once."""
    try:
        import libvirt
    except ImportError as exc:
        raise TargetError(
            "libvirt targets need libvirt-python (scripts/setup installs it: pip install libvirt-python, "
            "with libvirt-dev and pkg-config from apt)"
        ) from exc
    if not getattr(libvirt, "_vmsentinel_quiet", False):
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt._vmsentinel_quiet = True
    return libvirt


def _message(exc: BaseException) -> str:
    get = getattr(exc, "get_error_message", None)
    text = get() if callable(get) else None
    return str(text or exc)


def bounded(what: str, fn: Callable[..., T], *args: Any, timeout: float = CALL_TIMEOUT) -> T:
    """``fn(*args)`` in a thread of its own, given up on after ``timeout`` seconds: a libvirt call
    blocks in C, and a sentinel must not hang on a wedged daemon. libvirt's errors and the timeout
    become :class:`HypervisorError` naming ``what``."""
    lv = _binding()
    result: list[T] = []
    failure: list[BaseException] = []

    def call() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=call, name=f"libvirt: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise HypervisorError(f"{what}: no answer from libvirt within {timeout:.0f} s")
    if failure:
        if isinstance(failure[0], lv.libvirtError):
            raise HypervisorError(f"{what}: {_message(failure[0])}") from failure[0]
        raise failure[0]
    return result[0]


def _connect(uri: str, spec: str) -> Any:
    lv = _binding()
    try:
        return bounded(f"connect to {uri}", lv.open, uri)
    except HypervisorError as exc:
        message = f"{spec}: cannot connect to libvirt at {uri}: {exc}"
        if uri.endswith(":///system") and os.geteuid() != 0:  # libvirt's own words speak of sockets and buses
            raise AccessDenied(
                f"{message} (the system connection needs root, or a user libvirtd's access rules allow: "
                "the 'libvirt' group or polkit)"
            ) from exc
        raise TargetError(message) from exc


def _active_names(conn: Any) -> list[str]:
    lv = _binding()
    domains = bounded("list domains", conn.listAllDomains, lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    return sorted(str(d.name()) for d in domains)


# -- the QEMU process ----------------------------------------------------------------------------


def _option_value(args: list[str], option: str) -> str | None:
    for flag, value in itertools.pairwise(args):
        if flag in (option, "-" + option):
            return value
    return None


def _first_field(value: str) -> str:
    """The first field of a QEMU option value, where ``,,`` is a comma inside it."""
    return re.split(r"(?<!,),(?!,)", value, maxsplit=1)[0].replace(",,", ",")


def qemu_identity(pid: int) -> tuple[str | None, str | None]:
    """(guest name, uuid) from a QEMU process's command line (``-name guest=NAME,...``, ``-uuid``)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None, None
    name = _option_value(args, "-name")
    if name is not None:
        name = _first_field(name)
        name = name.removeprefix("guest=")
    uuid = _option_value(args, "-uuid")
    return name, uuid.lower() if uuid else None


def _pid_file(uri: str, name: str) -> Path | None:
    if uri.split("?")[0] in ("qemu:///system", "qemu+unix:///system"):
        return SYSTEM_PID_DIR / f"{name}.pid"
    return None


def find_qemu_pid(name: str, uuid: str, uri: str) -> int | None:
    """The pid of the QEMU process that runs domain ``name`` (``uuid``) on this host, or None."""
    uuid = uuid.lower()
    candidates: list[int] = []
    pid_file = _pid_file(uri, name)
    if pid_file is not None:
        with contextlib.suppress(OSError, ValueError):
            candidates.append(int(pid_file.read_text().split()[0]))
    for pid in candidates:
        if qemu_identity(pid) == (name, uuid):
            return pid
    # no pid file we know (a session or custom URI), or a stale one: the process that says it runs this uuid
    needle = f"\0-uuid\0{uuid}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline.lower() and qemu_identity(int(entry.name)) == (name, uuid):
            return int(entry.name)
    return None


# -- the control ---------------------------------------------------------------------------------


class LibvirtControl:
    """Hypervisor control through libvirt's API: one connection and one domain. QEMU monitor
    commands (registers, and what the memory layout asks QEMU) go through libvirt only when the
    TARGET allows them (``monitor=yes``), since they taint the domain."""

    kind = "libvirt"

    def __init__(self, conn: Any, dom: Any, target: LibvirtTarget, timeout: float = CALL_TIMEOUT) -> None:
        self.conn = conn
        self.dom = dom
        self.target = target
        self.timeout = timeout
        self.name = str(dom.name())

    def describe(self) -> str:
        return f"libvirt domain {self.name} on {self.target.uri}"

    def _call(self, what: str, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        return bounded(f"{self.describe()}: {what}", fn, *args, timeout=timeout or self.timeout)

    def hmp(self, command: str, timeout: float | None = None) -> str:
        """A human-monitor command through libvirt (taints the domain: allowed with monitor=yes only)."""
        if not self.target.monitor:
            raise HypervisorError(
                f"{self.describe()}: QEMU monitor commands are off (libvirt marks a domain that gets one "
                f"'tainted: custom-monitor'); {libvirt_target(self.name, self.target.uri, True)} allows them"
            )
        import libvirt_qemu

        out = self._call(
            f"monitor command {command!r}",
            libvirt_qemu.qemuMonitorCommand,
            self.dom,
            command,
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            timeout=timeout,
        )
        return str(out).replace("\r\n", "\n")

    def registers(self) -> list[CpuRegisters]:
        if not self.target.monitor:
            raise RegistersUnavailable(
                f"{self.describe()}: vCPU registers need QEMU's monitor, which this target does not allow "
                f"({libvirt_target(self.name, self.target.uri, True)} allows it, and taints the domain)"
            )
        cpus = parse_info_registers(self.hmp("info registers -a"), self.describe())
        return [replace(cpu, source="libvirt monitor") for cpu in cpus]

    def pause(self) -> None:
        self._call("suspend", self.dom.suspend)

    def resume(self) -> None:
        self._call("resume", self.dom.resume)

    def status(self) -> str:
        state, _reason = self._call("state", self.dom.state)
        return _STATES[state] if 0 <= state < len(_STATES) else f"state {state}"

    def dump(self, path: Path) -> None:
        """A memory-only ELF core (what QEMU's dump-guest-memory writes), written by libvirt;
        libvirt pauses a running domain for the dump and resumes it after."""
        lv = _binding()
        self._call(
            f"memory dump to {path}",
            self.dom.coreDumpWithFormat,
            str(path.resolve()),
            lv.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
            lv.VIR_DUMP_MEMORY_ONLY,
            timeout=DUMP_TIMEOUT,
        )

    def set_links(self, up: bool) -> list[str]:
        """Every interface's link up or down on the live domain (what ``virsh domif-setlink`` does);
        the cards by their QEMU id (libvirt's alias, ``net0``), else their MAC."""
        import xml.etree.ElementTree as ET

        lv = _binding()
        root = ET.fromstring(self._call("XML description", self.dom.XMLDesc, 0))
        names: list[str] = []
        for iface in root.findall("./devices/interface"):
            link = iface.find("link")
            if link is None:
                link = ET.SubElement(iface, "link")
            link.set("state", "up" if up else "down")
            alias, mac = iface.find("alias"), iface.find("mac")
            name = (alias.get("name") if alias is not None else None) or (mac.get("address") if mac is not None else None)
            name = name or f"interface {len(names)}"
            xml = ET.tostring(iface, encoding="unicode")
            self._call(f"link {'up' if up else 'down'} on {name}", self.dom.updateDeviceFlags, xml, lv.VIR_DOMAIN_AFFECT_LIVE)
            names.append(name)
        return names

    def close(self) -> None:
        with contextlib.suppress(HypervisorError):
            self._call("close", self.conn.close, timeout=5.0)


# -- the scheme ----------------------------------------------------------------------------------


def open_libvirt(spec: str) -> Connector:
    target = parse_target(spec)
    if not target.domain:
        raise TargetError(
            f"{spec} names every running domain of {target.uri} ({_running_list(target.uri)}); "
            "reading one guest takes libvirt:DOMAIN, and 'watch' takes libvirt: to follow them all"
        )
    lv = _binding()
    conn = _connect(target.uri, spec)
    try:
        driver = str(bounded("driver type", conn.getType))
        if driver != "QEMU":
            raise TargetError(f"{spec}: {target.uri} is a {driver} connection; libvirt targets are QEMU domains")
        try:
            dom = bounded(f"look up domain {target.domain}", conn.lookupByName, target.domain)
        except HypervisorError as exc:
            cause = exc.__cause__
            if not isinstance(cause, lv.libvirtError) or cause.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                raise
            known = ", ".join(_active_names(conn)) or "none"
            raise TargetError(f"{spec}: no domain {target.domain!r} on {target.uri} (running: {known})") from exc
        state = bounded("domain state", dom.state)[0]
        if state not in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_BLOCKED):
            name = _STATES[state] if 0 <= state < len(_STATES) else str(state)
            raise TargetError(f"{spec}: domain {target.domain} is {name}; only a running (or paused) domain can be read")
        uuid = str(dom.UUIDString())
        pid = find_qemu_pid(target.domain, uuid, target.uri)
        if pid is None:
            raise TargetError(
                f"{spec}: no QEMU process of domain {target.domain} (uuid {uuid}) on this host; its memory is read "
                "from that process, so the libvirt URI must be local"
            )
        control = LibvirtControl(conn, dom, target)
        from vmsentinel.access.qemu_process import qemu_process_memory

        try:
            ranges: list[tuple[int, int, int]] = []
            memory, layout = qemu_process_memory(pid, spec, control.hmp if target.monitor else None, ranges)
        except LayoutUnknown as exc:
            if target.monitor:
                raise
            raise LayoutUnknown(
                f"{exc} (a libvirt domain's QMP socket is libvirt's: "
                f"{libvirt_target(target.domain, target.uri, True)} asks QEMU through libvirt, which taints the domain)"
            ) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise
    from vmsentinel.access.dirty_log import SoftDirtyLog

    return Connector(spec, memory, control, target.domain, layout, SoftDirtyLog(pid, ranges))


def _running_list(uri: str) -> str:
    domains = LibvirtDomains(uri)
    try:
        return "running: " + (", ".join(domains.running_names()) or "none")
    except (TargetError, HypervisorError) as exc:
        return f"cannot list them: {exc}"
    finally:
        domains.close()


def expand_libvirt(spec: str) -> list[str] | None:
    """``libvirt:`` (any options, any URI): a TARGET per running domain now; None for one domain."""
    target = parse_target(spec)
    if target.domain:
        return None
    domains = LibvirtDomains(target.uri, monitor=target.monitor)
    try:
        return domains.running()
    finally:
        domains.close()


def follow_libvirt(spec: str) -> LibvirtDomains | None:
    """``libvirt:`` (any options, any URI): its domains as they come and go, for watch; None for one domain."""
    target = parse_target(spec)
    return None if target.domain else LibvirtDomains(target.uri, monitor=target.monitor)


register_scheme(PREFIX, open_libvirt, USAGE, expand_libvirt, follow_libvirt)


# -- lifecycle -----------------------------------------------------------------------------------


class _EventLoop:
    """libvirt's event loop, once per process: events of any connection reach their callbacks only
    while one runs. This is libvirt's own (``virEventRegisterDefaultImpl``) on a thread of its own,
    not ``libvirtaio`` on the caller's asyncio loop: an event implementation is registered once per
    process and sees every connection's socket, so every libvirt call, from any sweep thread, calls
    into it, and ``libvirtaio`` would then touch its asyncio loop from those threads (asyncio is not
    thread-safe). If the application registered ``libvirtaio`` itself, that one is used."""

    _lock = threading.Lock()
    _started = False

    @classmethod
    def ensure(cls) -> None:
        lv = _binding()
        with cls._lock:
            if cls._started:
                return
            try:
                import libvirtaio

                theirs = libvirtaio.getCurrentImpl() is not None
            except ImportError:
                theirs = False
            if not theirs:
                lv.virEventRegisterDefaultImpl()
                threading.Thread(target=cls._run, args=(lv,), name="libvirt events", daemon=True).start()
            cls._started = True

    @staticmethod
    def _run(lv: Any) -> None:
        while True:
            try:
                lv.virEventRunDefaultImpl()
            except lv.libvirtError as exc:  # a bad watch: say it, and keep the loop alive
                log.warning("libvirt event loop: %s", _message(exc))
                time.sleep(0.1)


_CLOSED = ("closed", "", "")  # the events connection went away (libvirtd restarted)
_STOP = ("stop", "", "")  # close() ends every changes()


class LibvirtDomains:
    """The running domains of one libvirt connection, and their comings and goings::

        domains = LibvirtDomains()                     # qemu:///system
        domains.running()                              # ['libvirt:web1?uri=qemu:///system']
        async for kind, target, detail in domains.changes():
            ...                                        # ('started', 'libvirt:db1?uri=...', 'booted')

    ``changes()`` yields ``started`` when libvirt reports a domain started (detail: ``booted``,
    ``restored``, ``migrated``, ``from_snapshot``, ``wakeup``) and ``stopped`` when one stopped
    (``shutdown``, ``destroyed``, ``crashed``, ``migrated``, ``saved``, ``failed``, ``from_snapshot``);
    a domain that started or stopped between the last :meth:`running` and the subscription (or
    while libvirtd restarted) is reported with detail ``running`` or ``gone``. Each domain's events
    alternate: no ``started`` twice without a ``stopped`` between. Targets carry ``monitor=yes``
    when the object was made with ``monitor=True``.
    """

    def __init__(self, uri: str = DEFAULT_URI, *, monitor: bool = False) -> None:
        self.uri = uri
        self.monitor = monitor
        self._conn: Any = None
        self._seen: set[str] | None = None  # the names the caller has been told are running
        self._queues: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, str, str]]]] = []
        self._closed = False

    def target(self, name: str) -> str:
        return libvirt_target(name, self.uri, self.monitor)

    def running_names(self) -> list[str]:
        if self._conn is None:
            self._conn = _connect(self.uri, PREFIX + f"?uri={self.uri}")
        try:
            return _active_names(self._conn)
        except HypervisorError:  # the daemon restarted since: one new connection
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = _connect(self.uri, PREFIX + f"?uri={self.uri}")
            return _active_names(self._conn)

    def running(self) -> list[str]:
        """TARGET strings of the domains running now (paused ones too: their memory is there)."""
        names = self.running_names()
        self._seen = set(names)
        return [self.target(n) for n in names]

    async def changes(self) -> AsyncIterator[tuple[str, str, str]]:
        """(kind, target, detail) as libvirt reports them, until :meth:`close`."""
        import asyncio

        lv = _binding()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        entry = (loop, queue)
        self._queues.append(entry)
        started = {getattr(lv, f"VIR_DOMAIN_EVENT_STARTED_{d}"): d.lower() for d in _STARTED}
        stopped = {getattr(lv, f"VIR_DOMAIN_EVENT_STOPPED_{d}"): d.lower() for d in _STOPPED}

        def post(item: tuple[str, str, str]) -> None:  # from libvirt's event thread
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def lifecycle(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            if event == lv.VIR_DOMAIN_EVENT_STARTED:
                post(("started", str(dom.name()), started.get(detail, f"detail {detail}")))
            elif event == lv.VIR_DOMAIN_EVENT_STOPPED:
                post(("stopped", str(dom.name()), stopped.get(detail, f"detail {detail}")))

        def closed(_conn: Any, reason: int, _opaque: Any) -> None:
            post(_CLOSED)

        def subscribe() -> tuple[Any, int]:
            _EventLoop.ensure()
            conn = _connect(self.uri, PREFIX + f"?uri={self.uri}")
            try:
                with contextlib.suppress(lv.libvirtError):  # local drivers (test:///) keep no keepalive
                    conn.setKeepAlive(5, 3)
                callback = conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
                with contextlib.suppress(lv.libvirtError):
                    conn.registerCloseCallback(closed, None)
            except BaseException:
                conn.close()
                raise
            return conn, callback

        def unsubscribe(conn: Any, callback: int) -> None:
            for undo in (lambda: conn.domainEventDeregisterAny(callback), conn.unregisterCloseCallback, conn.close):
                with contextlib.suppress(Exception):
                    undo()

        known = set(self._seen) if self._seen is not None else None
        conn: Any = None
        callback = -1
        delay = 0.5
        try:
            while not self._closed:
                if conn is None:
                    try:
                        conn, callback = await loop.run_in_executor(None, subscribe)
                        now = set(await loop.run_in_executor(None, _active_names, conn))
                    except (TargetError, HypervisorError) as exc:
                        if conn is not None:
                            unsubscribe(conn, callback)
                            conn = None
                        log.warning("libvirt events from %s: %s; again in %.1f s", self.uri, exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10.0)
                        continue
                    delay = 0.5
                    if known is None:
                        known = now
                    for kind, names in (("stopped", known - now), ("started", now - known)):
                        for name in sorted(names):
                            known.symmetric_difference_update({name})
                            yield kind, self.target(name), "gone" if kind == "stopped" else "running"
                item = await queue.get()
                if item == _STOP:
                    break
                if item == _CLOSED:
                    log.warning("libvirt connection to %s closed; reconnecting", self.uri)
                    unsubscribe(conn, callback)
                    conn = None
                    continue
                kind, name, detail = item
                assert known is not None
                if (kind == "started") == (name in known):
                    continue  # already said (the listing at subscription saw it first)
                known.symmetric_difference_update({name})
                yield kind, self.target(name), detail
        finally:
            if entry in self._queues:
                self._queues.remove(entry)
            if conn is not None:
                unsubscribe(conn, callback)

    def close(self) -> None:
        """Close the connection and end every ``changes()`` (after what it has already queued)."""
        self._closed = True
        for loop, queue in list(self._queues):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, _STOP)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
