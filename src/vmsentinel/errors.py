"""The exception tree of vmsentinel.

Every error the sentinel raises on purpose descends from :class:`VmSentinelError`,
so callers (the CLI, the watcher) catch one type and print one line::

    VmSentinelError
    ├── MemoryError_                 guest-physical memory could not be read
    │   ├── UnmappedPhysicalAddress  a read of a hole or past the end of RAM
    │   └── UnknownImageFormat       a file that is no memory image we know
    ├── TranslationError             a virtual address did not translate
    │   ├── NonCanonicalAddress      bits 63..47 (or 56) are not a sign extension
    │   ├── PageNotPresent           a paging entry on the walk has P=0
    │   └── BadPageTable             a table sits outside RAM or the walk looped
    ├── TargetError                  a TARGET string that names nothing usable
    ├── HypervisorError              QMP failed, or the VM is gone
    └── LabError                     the lab could not do what was asked
        ├── KernelNotFound           no such kernel series or package
        ├── MissingTool              qemu/busybox/apt-get not installed
        ├── LabExists / LabNotFound  name already used / unknown
        └── GuestTimeout             the guest did not come up in time

Each error carries the context a user needs to act (the address, the level of the
page walk, the file), because failures must be explained where they happen.
"""

from __future__ import annotations


class VmSentinelError(Exception):
    """Root of every error vmsentinel raises on purpose."""


class MemoryError_(VmSentinelError):  # noqa: N801 - avoid shadowing builtins.MemoryError
    """Guest-physical memory could not be read."""


class UnmappedPhysicalAddress(MemoryError_):
    """A physical read touched a hole or went past the end of guest RAM."""

    def __init__(self, address: int, length: int, source: str = "") -> None:
        self.address = address
        self.length = length
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"physical range {address:#x}+{length:#x} is not backed by RAM{where}")


class UnknownImageFormat(MemoryError_):
    """The file is not a memory image in a format we can read."""


class TranslationError(VmSentinelError):
    """A virtual address could not be translated to a physical one."""

    def __init__(self, vaddr: int, reason: str, level: int | None = None) -> None:
        self.vaddr = vaddr
        self.level = level
        self.reason = reason
        at = f" at level {level}" if level is not None else ""
        super().__init__(f"cannot translate {vaddr:#018x}{at}: {reason}")


class NonCanonicalAddress(TranslationError):
    """The address is not canonical for the paging mode in force."""


class PageNotPresent(TranslationError):
    """An entry on the page walk is not present."""


class BadPageTable(TranslationError):
    """A page table lies outside RAM, or its entries make no sense."""


class TargetError(VmSentinelError):
    """A TARGET string that names no usable guest."""


class HypervisorError(VmSentinelError):
    """The hypervisor control channel (QMP) failed or the VM is gone."""


class LabError(VmSentinelError):
    """The lab could not do what was asked."""


class KernelNotFound(LabError):
    """No kernel package matches the requested series or name."""


class MissingTool(LabError):
    """A host tool (qemu, busybox, apt-get) is not installed."""


class LabExists(LabError):
    """A lab guest with this name is already running."""


class LabNotFound(LabError):
    """No lab guest has this name."""


class GuestTimeout(LabError):
    """The guest did not answer within its timeout."""


class BtfError(VmSentinelError):
    """The BTF blob is corrupt, or a name or member is not in it (here so that type lookups can
    be caught without loading the BTF parser)."""
