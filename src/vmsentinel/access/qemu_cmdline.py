"""What a QEMU command line says about guest RAM: the machine type, ``-m`` (size, slots,
maxmem), ``-mem-path``, the ``-object memory-backend-*`` (in QEMU's ``key=value,...`` syntax or
the JSON form libvirt writes), ``-numa node,memdev=``, memory devices (``-device pc-dimm``...),
and the monitors (``-qmp``, ``-chardev`` + ``-mon mode=control``)::

    config = parse_cmdline(Path("/proc/4242/cmdline").read_bytes().split(b"\\0"))
    config.machine_type, config.ram_size(), [b.id for b in config.ram_backends()]

Only parsing here: :mod:`.qemu_process` turns it into a layout, or refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from vmsentinel.errors import LayoutUnknown

MiB = 1 << 20
#: QEMU's RAM size when there is no -m (every x86 machine type)
DEFAULT_RAM = 128 * MiB

_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE = re.compile(r"(0x[0-9a-fA-F]+|\d+(?:\.\d*)?|\.\d+)\s*([bBkKmMgGtTpPeE]?)")

#: options that never take an argument (any other option takes the next word, unless it is an option)
_NO_ARG = frozenset(
    str.split(
        "S s nodefaults no-user-config nodefconfig no-shutdown no-reboot no-acpi no-hpet snapshot daemonize "
        "enable-kvm no-kvm nographic mem-prealloc full-screen no-fd-bootchk no-quit preconfig only-migratable "
        "enable-fips win2k-hack rtc-td-hack no-kvm-pit-reinjection singlestep alt-grab ctrl-grab no-frame "
        "portrait localtime std-vga curses sdl usb xen-attach xen-domid-restrict version help"
    )
)
#: options that always take the next word, even one that starts with '-'
_WITH_ARG = frozenset(
    str.split(
        "machine M m mem-path object numa device qmp qmp-pretty chardev mon monitor name readconfig set global "
        "accel cpu smp kernel initrd append drive netdev net serial display vga boot uuid rtc overcommit sandbox "
        "msg add-fd audiodev bios L incoming pidfile runas chroot D d trace k blockdev fw_cfg smbios icount "
        "action plugin compat dtb option-rom"
    )
)
#: -device drivers that put RAM (or persistent memory) in guest-physical space at run time
MEMORY_DEVICES = frozenset({"pc-dimm", "nvdimm", "virtio-mem-pci", "virtio-mem", "virtio-pmem-pci", "virtio-pmem"})


def parse_size(text: str, default_shift: int = 0) -> int:
    """A QEMU size: ``536870912``, ``512M``, ``4718592k``, ``1.5G``, ``0x20000000``; a number
    without a suffix is in units of ``1 << default_shift`` (MiB for ``-m``, bytes elsewhere)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    number, suffix = m.groups()
    shift = _SHIFT[suffix.lower()] if suffix else default_shift
    if number.lower().startswith("0x"):
        return int(number, 16) << shift
    try:
        return int(Decimal(number) * (1 << shift))
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"not a size: {text!r}") from None


def parse_opts(text: str, implied: str | None = None) -> dict[str, str]:
    """QEMU's ``key=value,key=value`` (``,,`` is a literal comma; a first item without ``=`` is the
    value of the ``implied`` key; a bare ``flag`` is ``flag=on``, ``noflag`` is ``flag=off``), or a
    JSON object (libvirt's ``-object {"qom-type":...}``, ``-device {"driver":...}``)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"bad JSON option {text[:60]!r}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"a JSON option must be an object: {text[:60]!r}")
        return {str(k): _json_value(v) for k, v in data.items()}
    items, current, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    opts: dict[str, str] = {}
    for n, item in enumerate(items):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if eq:
            opts[key] = value
        elif n == 0 and implied:
            opts[implied] = item
        elif item.startswith("no") and len(item) > 2:
            opts[item[2:]] = "off"
        else:
            opts[item] = "on"
    return opts


def _json_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.lower() in ("on", "true", "yes", "y", "1")


@dataclass(frozen=True)
class Backend:
    """A ``memory-backend-*`` object: what holds a run of guest RAM on the host."""

    id: str
    qom_type: str
    size: int
    share: bool
    mem_path: str | None = None
    hugetlb: bool = False

    @property
    def kind(self) -> str:
        """``ram``, ``file``, ``memfd`` (or another backend's name)."""
        return self.qom_type.removeprefix("memory-backend-")


@dataclass
class QemuConfig:
    """The RAM-related parts of one QEMU command line."""

    binary: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    memory: dict[str, str] = field(default_factory=dict)
    mem_path: str | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    numa_nodes: list[dict[str, str]] = field(default_factory=list)
    memory_devices: list[dict[str, str]] = field(default_factory=list)
    chardevs: dict[str, dict[str, str]] = field(default_factory=dict)
    monitors: list[dict[str, str]] = field(default_factory=list)
    qmp: list[str] = field(default_factory=list)
    name: str | None = None
    #: ``-set GROUP.ID.KEY=VALUE`` options, as given
    sets: list[str] = field(default_factory=list)
    #: options that mean the command line is not the whole story (-readconfig)
    config_files: list[str] = field(default_factory=list)

    def elsewhere(self) -> list[str]:
        """What changes RAM outside the options parsed here: config files, and -set on the machine,
        -m, a NUMA node, a memory backend or a memory device."""
        ids = set(self.backends) | {d.get("id", "") for d in self.memory_devices}
        sets = []
        for value in self.sets:
            group, _, rest = value.partition(".")
            if group in ("machine", "memory", "numa") or (group in ("object", "device") and rest.partition(".")[0] in ids):
                sets.append(f"-set {value}")
        return [f"-readconfig {path}" for path in self.config_files] + sets

    @property
    def machine_type(self) -> str:
        """The machine type as given (``pc`` when there is none, QEMU's default on x86)."""
        return self.machine.get("type") or "pc"

    def ram_size(self) -> int:
        """``-m``'s size (MiB without a suffix), or the machine's memory backend's size, or 128 MiB."""
        size = self.memory.get("size")
        if size is not None:
            return parse_size(size, 20)
        backend = self.machine.get("memory-backend")
        if backend and backend in self.backends:
            return self.backends[backend].size
        return DEFAULT_RAM

    def qmp_sockets(self) -> list[str]:
        """The Unix socket paths of the QMP monitors QEMU listens on (``-qmp unix:PATH,server``,
        ``-chardev socket,path=PATH,server=on`` + ``-mon chardev=ID,mode=control``), in order."""
        found = []
        for spec in self.qmp:
            head, _, rest = spec.partition(",")
            if head.startswith("unix:") and _flag(parse_opts(rest).get("server"), False):
                found.append(head.removeprefix("unix:"))
        for mon in self.monitors:
            dev = self.chardevs.get(mon.get("chardev", ""), {})
            control = mon.get("mode") == "control" and dev.get("backend") == "socket"
            if control and "path" in dev and _flag(dev.get("server"), False):
                found.append(dev["path"])
        return found


def parse_cmdline(argv: Sequence[str | bytes]) -> QemuConfig:
    """Parse a QEMU command line (``/proc/PID/cmdline`` split at NULs); raises LayoutUnknown on a
    RAM option it cannot read (a size that is no size, a broken JSON object)."""
    words = [w.decode(errors="replace") if isinstance(w, bytes) else w for w in argv]
    while words and words[-1] == "":
        words.pop()
    config = QemuConfig(binary=words[0] if words else "")
    i = 1
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            continue  # a disk image given bare
        name = word.lstrip("-")
        if name in _NO_ARG:
            continue
        if i >= len(words) or (name not in _WITH_ARG and words[i].startswith("-")):
            continue
        value = words[i]
        i += 1
        try:
            _take(config, name, value)
        except ValueError as exc:
            raise LayoutUnknown(f"cannot read QEMU's -{name} {value[:80]}: {exc}") from None
    return config


def _take(config: QemuConfig, name: str, value: str) -> None:
    if name in ("machine", "M"):
        config.machine.update(parse_opts(value, "type"))
    elif name == "m":
        opts = parse_opts(value, "size")
        for key in ("size", "maxmem"):
            if key in opts:
                parse_size(opts[key], 20)  # a size that is no size is refused here, not later
        config.memory.update(opts)
    elif name == "mem-path":
        config.mem_path = value
    elif name == "object":
        opts = parse_opts(value, "qom-type")
        qom_type = opts.get("qom-type", "")
        if qom_type.startswith("memory-backend-") and "id" in opts:
            config.backends[opts["id"]] = Backend(
                opts["id"],
                qom_type,
                parse_size(opts.get("size", "0")),
                _flag(opts.get("share"), qom_type == "memory-backend-memfd"),
                opts.get("mem-path"),
                _flag(opts.get("hugetlb"), False),
            )
    elif name == "numa":
        opts = parse_opts(value, "type")
        if opts.get("type") == "node":
            config.numa_nodes.append(opts)
    elif name == "device":
        opts = parse_opts(value, "driver")
        if opts.get("driver") in MEMORY_DEVICES:
            config.memory_devices.append(opts)
    elif name == "chardev":
        opts = parse_opts(value, "backend")
        if "id" in opts:
            config.chardevs[opts["id"]] = opts
    elif name == "mon":
        config.monitors.append(parse_opts(value, "chardev"))
    elif name in ("qmp", "qmp-pretty"):
        config.qmp.append(value)
    elif name == "name":
        config.name = parse_opts(value, "guest").get("guest")
    elif name == "readconfig":
        config.config_files.append(value)
    elif name == "set":
        config.sets.append(value)
