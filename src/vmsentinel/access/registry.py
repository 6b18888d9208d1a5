"""TARGET strings to connectors. Each way of reaching a guest is one module of
this package that registers its scheme when imported; the registry imports
them all the first time a TARGET is opened, so a new way in is one new file::

    # access/xen.py
    register_scheme("xen:", open_xen, "xen:DOMAIN")

    with open_connector("qemu:/dev/shm/vm.ram,qmp=/run/vm.qmp") as guest:
        guest.memory.read(0, 16)
    expand_targets("libvirt:")            # ['libvirt:web1?uri=qemu:///system', ...]: one TARGET a guest

A TARGET with no registered scheme is a memory image path (:mod:`.image`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsentinel.access.connector import Connector
from vmsentinel.errors import TargetError

#: opens a whole TARGET string (prefix included, so that errors can quote it)
Opener = Callable[[str], Connector]
#: the guests a TARGET that names several stands for now, each as its own TARGET; None: it names one
Expander = Callable[[str], list[str] | None]

#: the modules of this package that are no scheme (every other one is imported to register its own)
_NOT_SCHEMES = frozenset({"connector", "image", "qemu_cmdline", "qemu_process", "qmp", "qmp_control", "registry"})
_PREFIX = re.compile(r"[a-z][a-z0-9+.-]*:")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # what looks like a scheme, to say "unknown scheme" of it


@dataclass(frozen=True)
class Scheme:
    prefix: str
    opener: Opener
    #: the TARGET form for help and error texts ("lab:NAME")
    usage: str
    #: lists the guests of a TARGET of this scheme that names several ("libvirt:": every running domain)
    expand: Expander | None = None
    #: for a TARGET that names a set of guests, what follows the set as guests come and go (for watch);
    #: None when the scheme's TARGETs name one guest each
    source: SourceOpener | None = None


#: opens a TARGET that names many guests: an object with ``running()``, ``changes()`` and ``close()``
#: (the watcher's ``TargetSource``), or None when this TARGET names one guest
SourceOpener = Callable[[str], Any]

_schemes: dict[str, Scheme] = {}
_discovered = False


def register_scheme(
    prefix: str, opener: Opener, usage: str, expand: Expander | None = None, source: SourceOpener | None = None
) -> None:
    """Make TARGETs starting with ``prefix`` (``"name:"``) open with ``opener``; ``expand`` lists the
    guests of a TARGET of this scheme that names several (``libvirt:``: every running domain), and
    ``source`` follows them as they come and go (it returns None for a TARGET that names one guest)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"a target scheme is lower-case letters, digits, '+', '.' or '-', then ':' (not {prefix!r})")
    _schemes[prefix] = Scheme(prefix, opener, usage, expand, source)


def open_source(spec: str) -> Any:
    """What follows the guests a set-of-guests TARGET names (``libvirt:``), or None for a TARGET that
    names one guest."""
    _discover()
    head, colon, _ = spec.partition(":")
    scheme = _schemes.get(head + colon)
    return scheme.source(spec) if scheme is not None and scheme.source is not None else None


def schemes() -> list[Scheme]:
    """The registered schemes, by prefix."""
    _discover()
    return sorted(_schemes.values(), key=lambda s: s.prefix)


def usage() -> str:
    """What a TARGET may be, for help and error texts."""
    return ", ".join(["a memory image path (raw, QEMU ELF core, LiME)", *(s.usage for s in schemes())])


def expand_targets(spec: str) -> list[str]:
    """The guests a TARGET names, each as a TARGET of its own: ``[spec]`` for one guest; for a TARGET
    that names several (``libvirt:``), those there are now (a watcher that follows them as they come
    and go asks the scheme for more, e.g. :class:`~vmsentinel.access.libvirt.LibvirtDomains`)."""
    _discover()
    head, colon, _ = spec.partition(":")
    scheme = _schemes.get(head + colon)
    if scheme is not None and scheme.expand is not None:
        several = scheme.expand(spec)
        if several is not None:
            return several
    return [spec]


def open_connector(spec: str) -> Connector:
    """Open a TARGET string: a registered scheme, else a memory image path."""
    _discover()
    head, colon, _ = spec.partition(":")
    scheme = _schemes.get(head + colon)
    if scheme is not None:
        return scheme.opener(spec)
    if not Path(spec).exists():
        if colon and _NAME.fullmatch(head):
            raise TargetError(f"unknown target scheme {head + colon!r} in {spec!r}; a TARGET is {usage()}")
        raise TargetError(f"no such memory image or target: {spec!r}; a TARGET is {usage()}")
    from vmsentinel.access.image import open_image_connector

    return open_image_connector(spec)


def _discover() -> None:
    """Import every scheme module of this package once (a directory listing: pkgutil would cost the
    quick view commands a millisecond). Threads opening guests at once are safe: each import runs
    once under Python's import lock, and the flag is set only when all have registered."""
    global _discovered
    if _discovered:
        return
    names = {p.name.partition(".")[0] for p in Path(__file__).parent.iterdir() if p.suffix in (".py", ".pyc")}
    for name in sorted(names - _NOT_SCHEMES - {"__init__"}):
        importlib.import_module(f"{__package__}.{name}")
    _discovered = True
