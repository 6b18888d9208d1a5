"""Connectors: how a guest's memory and its hypervisor are reached.

A TARGET string names a guest; :func:`open_connector` gives its
:class:`Connector` (physical memory, and a :class:`HypervisorControl` when the
guest is live). Each way in is one module here that registers its scheme
(:mod:`.qemu`, :mod:`.lab`, :mod:`.libvirt`; :mod:`.image` for paths)::

    with open_connector("lab:web1") as guest:
        guest.memory.read(0, 16)
        guest.registers()

This package knows memory, CPUs and hypervisors, never an operating system.
"""

from vmsentinel.access.connector import Connector, CpuRegisters, HypervisorControl
from vmsentinel.access.registry import Scheme, expand_targets, open_connector, register_scheme, schemes, usage

__all__ = [
    "Connector",
    "CpuRegisters",
    "HypervisorControl",
    "Scheme",
    "expand_targets",
    "open_connector",
    "register_scheme",
    "schemes",
    "usage",
]
