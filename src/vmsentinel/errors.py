"""The exception tree of vmsentinel.

Every error the sentinel raises on purpose descends from :class:`VmSentinelError`,
so callers (the CLI, the watcher) catch one type and print one line::

    VmSentinelError
    ├── MemoryError_                 guest-physical memory could not be read
    │   ├── UnmappedPhysicalAddress  a read of a hole or past the end of RAM
    │   ├── UnknownImageFormat       a file that is no memory image we know
    │   └── ProcessMemoryError       a running process's RAM could not be read (short read, it exited)
    ├── TranslationError             a virtual address did not translate
    │   ├── NonCanonicalAddress      bits 63..47 (or 56) are not a sign extension
    │   ├── PageNotPresent           a paging entry on the walk has P=0
    │   └── BadPageTable             a table sits outside RAM or the walk looped
    ├── TargetError                  a TARGET string that names nothing usable
    │   ├── AccessDenied             the sentinel lacks a privilege it needs (a capability, Yama's leave)
    │   └── LayoutUnknown            a running QEMU whose guest-physical layout cannot be known for sure
    ├── HypervisorError              QMP (or libvirt) failed, or the VM is gone
    │   └── RegistersUnavailable     this control reads no vCPU registers (libvirt without its monitor)
    ├── KernelNotFound               no Linux kernel could be located in this memory
    ├── ReadError                    a kernel address could not be read (a view's structure is unreadable)
    ├── ProfileError                 a kernel profile could not be built, read or matched
    │   ├── BtfError                 the BTF blob is corrupt, or lacks a name or member
    │   ├── KallsymsError            no consistent kallsyms tables, or corrupt ones
    │   └── KernelImageError         not a kernel image we can read
    ├── PolicyError                  the policy file is invalid (unknown key, detector, action)
    │   ├── RuleError                a rule the policy names does not compile
    │   │   ├── SigmaError           a Sigma rule could not be read or converted
    │   │   └── YaraError            a YARA rule file does not compile
    │   └── PolicyRefused            a policy or what it names failed verification
    ├── TrustError                   signed material that cannot be trusted or read
    │   ├── SignatureError           missing, malformed, untrusted or mismatching signature
    │   ├── BundleError              a policy bundle could not be packed, verified or read
    │   └── AllowlistError           an allowlist or one of its sources is unusable
    ├── WorkerLost                   a watch's worker process died with this sweep in flight
    └── LabError                     the lab could not do what was asked
        ├── KernelPackageNotFound    no such kernel series or package in the archive
        ├── MissingTool              qemu/busybox/apt-get not installed
        ├── LabExists / LabNotFound  name already used / unknown
        └── GuestTimeout             the guest did not come up in time

Each error carries the context a user needs to act (the address, the level of the
page walk, the file), because failures must be explained where they happen. The
classes are all defined here, so that catching one needs none of the code that
raises it (a quick ``ps`` does not load the YARA compiler to catch ``YaraError``).
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


class ProcessMemoryError(MemoryError_):
    """A running process's memory could not be read: a short read (it unmapped its RAM) or it
    exited. Never a hole of the guest: the bytes are there for the guest, we could not get them."""


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


class AccessDenied(TargetError):
    """The sentinel lacks a privilege it needs to read the target (the message names the
    capability, and Yama's ptrace_scope when it is in the way)."""


class LayoutUnknown(TargetError):
    """A running QEMU whose guest-physical RAM layout cannot be known for sure (the message names
    the PID and what was ambiguous): the sentinel refuses rather than read the wrong bytes."""


class HypervisorError(VmSentinelError):
    """The hypervisor control channel (QMP or libvirt) failed, or the VM is gone."""


class RegistersUnavailable(HypervisorError):
    """The hypervisor control cannot read vCPU registers (a libvirt target whose QEMU monitor is not
    allowed): the page-table root is found from memory, as for an image."""


class KernelNotFound(VmSentinelError):
    """No Linux kernel could be located in this memory."""


class ReadError(VmSentinelError):
    """A kernel address could not be read."""


class ProfileError(VmSentinelError):
    """A kernel profile could not be built, read or matched."""


class KallsymsError(ProfileError):
    """No consistent kallsyms tables were found, or they are corrupt."""


class KernelImageError(ProfileError):
    """Not a kernel image we can read."""


class PolicyError(VmSentinelError):
    """The policy file is invalid."""


class RuleError(PolicyError):
    """A rule file the policy names does not compile (the message names the file and line)."""


class SigmaError(RuleError):
    """A Sigma rule file could not be read or converted."""


class YaraError(RuleError):
    """A YARA rule file does not compile."""


class PolicyRefused(PolicyError):
    """A policy (or something it names) failed verification and may not be used."""


class TrustError(VmSentinelError):
    """Signed material (a bundle, an allowlist, a signature) that cannot be trusted or read."""


class SignatureError(TrustError):
    """A signature is missing, malformed, made by an untrusted key, or does not match."""


class BundleError(TrustError):
    """A policy bundle could not be packed, verified or read."""


class AllowlistError(TrustError):
    """An allowlist or one of its sources is unusable (missing, corrupt, hostile, over a limit)."""


class LabError(VmSentinelError):
    """The lab could not do what was asked."""


class KernelPackageNotFound(LabError):
    """No kernel package matches the requested series or name."""


class MissingTool(LabError):
    """A host tool (qemu, busybox, apt-get) is not installed."""


class LabExists(LabError):
    """A lab guest with this name is already running."""


class LabNotFound(LabError):
    """No lab guest has this name."""


class WorkerLost(VmSentinelError):
    """A worker process of the watch died while it had this request; the pool restarts it."""


class GuestTimeout(LabError):
    """The guest did not answer within its timeout."""


class BtfError(ProfileError):
    """The BTF blob is corrupt, or a name or member is not in it (here so that type lookups can
    be caught without loading the BTF parser)."""


def host_error_text(exc: OSError) -> str:
    """One line for an error the host gave (a file, a socket), as every command prints it."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
