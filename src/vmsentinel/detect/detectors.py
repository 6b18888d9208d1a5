"""The built-in detectors. Each is a pure function of (target, current snapshot,
previous snapshot or None, baseline or None) returning findings, registered under
the name its findings carry with the snapshot facets it reads; its docstring
names the technique it catches and the ATT&CK technique."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmsentinel.detect.finding import (
    HIDDEN_ARTIFACTS,
    INJECTION,
    KERNEL_MODULES,
    PRIV_ESC,
    ROOTKIT,
    Attack,
    Finding,
    Severity,
)
from vmsentinel.detect.registry import register
from vmsentinel.os.linux.views.modules import TAINT_LETTERS
from vmsentinel.os.records import INTERRUPT_OBJECT, MODULE_LISTS, PROCESS_LISTS

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.os.records import MechanismHook, Task
    from vmsentinel.os.snapshot import GuestSnapshot

SUSPICIOUS_EXEC_DIRS = ("/tmp/", "/dev/shm/", "/var/tmp/", "/run/shm/")
KNOWN_SPECIAL_EXEC = ("[vdso]", "[vsyscall]")
#: the detectors that read only what every guest OS's records hold
EVERY_OS = ("linux", "windows")
#: code kept as evidence of an inline hook, from its first changed byte (a patch starts an instruction)
CONTEXT_BYTES = 32


@register("hidden_process", facets={"tasks"}, os=EVERY_OS)
def hidden_process(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A process seen by the PID table, the thread lists, the run queues or the memory scan but absent
    from the task list: DKOM unlinking of ``task_struct.tasks`` (ATT&CK T1014 Rootkit)."""
    out = []
    for t in snap.tasks.tasks:
        if not PROCESS_LISTS.intersection(t.sources) and t.pid == t.tgid:
            out.append(
                Finding(
                    "hidden_process",
                    f"process {t.pid} ({t.name}) is hidden from the task list",
                    Severity.HIGH,
                    ROOTKIT,
                    target,
                    {"pid": t.pid, "name": t.name, "exe": t.exe, "cmdline": t.args, "uid": t.uid, "task": f"{t.address:#x}"},
                    t.sources,
                )
            )
    return out


@register("hidden_module", facets={"modules"}, os=EVERY_OS)
def hidden_module(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A kernel module found in sysfs kobjects or in module memory but not on the module list
    (ATT&CK T1014 Rootkit)."""
    return [
        Finding(
            "hidden_module",
            f"kernel module {m.name} is hidden from the module list",
            Severity.CRITICAL,
            ROOTKIT,
            target,
            {"module": m.name, "base": f"{m.base:#x}", "size": m.size, "struct": f"{m.address:#x}"},
            m.sources,
        )
        for m in snap.modules.modules
        if not MODULE_LISTS.intersection(m.sources)
    ]


def _hook_findings(
    kind: str, target: str, entries: list[tuple[str, int, str | None, str]], baseline: dict[str, int] | None
) -> list[Finding]:
    out = []
    for slot, handler, symbol, owner in entries:
        was = baseline.get(slot) if baseline is not None else None
        trusted = owner in ("kernel", "kernel-init") or (owner.startswith(INTERRUPT_OBJECT) and not owner.endswith("unknown"))
        if trusted and (was is None or was == handler):
            continue
        why = f"points into {owner}" if not trusted else f"changed from {was:#x}"
        out.append(
            Finding(
                f"{kind}_hook",
                f"{kind} entry {slot} {why}",
                Severity.CRITICAL,
                ROOTKIT,
                target,
                {
                    "slot": slot,
                    "handler": f"{handler:#x}",
                    "symbol": symbol,
                    "owner": owner,
                    "baseline_handler": f"{was:#x}" if was is not None else None,
                },
            )
        )
    return out


@register("syscall_hook", facets={"syscalls"}, os=EVERY_OS)
def syscall_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A system call table entry that leaves core kernel text or changed since the baseline (ATT&CK
    T1014 Rootkit). Since Linux 6.1.85/6.9 the table no longer dispatches system calls, but an
    overwrite is still a rootkit's footprint."""
    entries = [(f"{e.table}:{e.index}", e.handler, e.symbol, e.owner) for e in snap.syscalls.syscalls]
    return _hook_findings("syscall", target, entries, base.syscalls if base else None)


@register("idt_hook", facets={"idt"}, os=EVERY_OS)
def idt_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """An interrupt gate whose handler leaves kernel text or changed since the baseline (ATT&CK T1014)."""
    entries = [(f"cpu{e.cpu}:{e.vector}", e.handler, e.symbol, e.owner) for e in snap.idt.idt]
    return _hook_findings("idt", target, entries, base.idt if base else None)


@register("privilege_escalation", facets={"tasks"})
def privilege_escalation(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A process that became root while running the same program: credentials changed in place rather
    than by executing a set-uid program (ATT&CK T1068 Exploitation for Privilege Escalation)."""
    if prev is None:
        return []
    before = {(t.pid, t.start_time_ns): t for t in prev.tasks.tasks}
    out = []
    for t in snap.tasks.tasks:
        old = before.get((t.pid, t.start_time_ns))
        if old is None or old.exe != t.exe or old.cmdline != t.cmdline:
            continue
        if (old.uid != 0 or old.euid != 0) and (t.uid == 0 or t.euid == 0):
            out.append(
                Finding(
                    "privilege_escalation",
                    f"process {t.pid} ({t.name}) became root without exec",
                    Severity.CRITICAL,
                    PRIV_ESC,
                    target,
                    {
                        "pid": t.pid,
                        "name": t.name,
                        "exe": t.exe,
                        "uid_before": old.uid,
                        "euid_before": old.euid,
                        "uid": t.uid,
                        "euid": t.euid,
                    },
                )
            )
    return out


@register("injected_code", facets={"tasks", "maps"})
def injected_code(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """Code running from where programs should not come from: a deleted executable, a memfd, or a
    world-writable temporary folder (ATT&CK T1055 Process Injection / T1564 Hide Artifacts)."""
    out = []
    for t in snap.tasks.tasks:
        exe = t.exe or ""
        why = None
        if exe.endswith(" (deleted)"):
            why = "runs a deleted executable"
        elif exe.startswith("/memfd:"):
            why = "runs from a memfd"
        elif exe.startswith(SUSPICIOUS_EXEC_DIRS):
            why = "runs from a temporary folder"
        if why:
            out.append(
                Finding(
                    "injected_code",
                    f"process {t.pid} ({t.name}) {why}",
                    Severity.HIGH,
                    INJECTION if "memfd" in why else HIDDEN_ARTIFACTS,
                    target,
                    {"pid": t.pid, "name": t.name, "exe": exe, "cmdline": t.args},
                )
            )
    return out


@register("unsigned_module", facets={"modules"})
def unsigned_module(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A loaded module without a valid signature, or tainting the kernel as out-of-tree/unsigned
    (ATT&CK T1547.006 Kernel Modules and Extensions)."""
    out = []
    for m in snap.modules.modules:
        if not m.sig_ok or any(c in m.taints for c in "OEP"):
            out.append(
                Finding(
                    "unsigned_module",
                    f"kernel module {m.name} is unsigned or tainting ({m.taints or '-'})",
                    Severity.MEDIUM,
                    KERNEL_MODULES,
                    target,
                    {"module": m.name, "sig_ok": m.sig_ok, "taints": m.taints, "base": f"{m.base:#x}"},
                    m.sources,
                )
            )
    return out


@register("kernel_code_unlike_vendor", facets={"vendor"}, os=EVERY_OS)
def kernel_code_unlike_vendor(
    target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None
) -> list[Finding]:
    """Core kernel text or read-only data that differs from the vendor's image of the same build where
    the kernel would not have written it (outside its own patch sites, or not what it writes there),
    found on the first look: a kernel compromised before the sentinel started (ATT&CK T1014 Rootkit)."""
    check = snap.vendor
    if check is None:
        return []
    out = []
    for d in check.differences:
        symbol = d.where.split("+", 1)[0]
        place = f"at its {d.kind.replace('_', ' ')} site" if d.kind else "outside any place the kernel patches"
        out.append(
            Finding(
                "kernel_code_unlike_vendor",
                f"kernel {d.region} at {d.where} differs from the vendor image {place}",
                Severity.CRITICAL,
                ROOTKIT,
                target,
                {
                    "address": f"{d.address:#x}",
                    "symbol": symbol,
                    "where": d.where,
                    "region": d.region,
                    "site": d.kind or None,
                    "bytes_changed": d.length,
                    "expected": d.expected.hex(),
                    "observed": d.observed.hex(),
                    "vendor_image": check.vendor,
                },
            )
        )
    if check.more:
        out.append(
            Finding(
                "kernel_code_unlike_vendor",
                f"kernel code differs from the vendor image in {check.more} more places",
                Severity.CRITICAL,
                ROOTKIT,
                target,
                {"more": check.more, "vendor_image": check.vendor},
            )
        )
    return out


#: ancestors climbed to find where a root process got root
MAX_ANCESTORS = 64


@register("escalated_credentials", facets={"tasks"})
def escalated_credentials(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """Root that no legitimate path gave, seen in one snapshot (no history needed, so an escalation that
    execs at once between two sweeps is caught from its result): a user process on the kernel's own
    credentials (``init_cred``) or sharing another process's, and a root process whose ancestry reaches a
    non-root process through no set-uid-root program (ATT&CK T1068 Exploitation for Privilege Escalation)."""
    tasks = {t.pid: t for t in snap.tasks.tasks}
    user = [t for t in snap.tasks.tasks if not t.kernel_thread and t.cred]
    init_cred = snap.symbols.init_cred if snap.symbols is not None else None
    out = []

    def finding(t: Task, title: str, **evidence: object) -> Finding:
        facts = {"pid": t.pid, "name": t.name, "exe": t.exe, "uid": t.uid, "euid": t.euid, "cred": f"{t.cred:#x}", **evidence}
        return Finding("escalated_credentials", title, Severity.CRITICAL, PRIV_ESC, target, facts)

    sharing: dict[int, list[Task]] = {}
    for t in user:
        if init_cred is not None and t.cred == init_cred:
            out.append(finding(t, f"process {t.pid} ({t.name}) runs on the kernel's own credentials (init_cred)"))
        sharing.setdefault(t.cred, []).append(t)
    for group in sharing.values():
        for t in group[1:]:
            first = group[0]
            out.append(
                finding(
                    t,
                    f"process {t.pid} ({t.name}) shares its credentials with process {first.pid} ({first.name})",
                    with_pid=first.pid,
                )
            )
    for t in user:
        if (t.uid == 0 or t.euid == 0) and t.exe_setuid_root is False:
            source = _non_root_ancestor(t, tasks)
            if source is not None:
                out.append(
                    finding(
                        t,
                        f"process {t.pid} ({t.name}) is root, but its ancestor {source.pid} ({source.name}) is not and no"
                        " set-uid root program lies between",
                        ancestor_pid=source.pid,
                        ancestor_uid=source.uid,
                    )
                )
    return out


def _non_root_ancestor(t: Task, tasks: dict[int, Task]) -> Task | None:
    """The first non-root ancestor reached through root processes that ran no set-uid root program (None:
    root came from the kernel, init, or a set-uid root program, or some program is not known)."""
    seen = {t.pid}
    current = t
    for _ in range(MAX_ANCESTORS):
        parent = tasks.get(current.ppid)
        if parent is None or parent.pid in seen or parent.pid <= 1 or parent.kernel_thread:
            return None
        seen.add(parent.pid)
        if parent.uid != 0 and parent.euid != 0:
            return parent
        if parent.exe_setuid_root is not False:
            return None  # a set-uid root program (sudo, su), or one we could not read: no claim
        current = parent
    return None


@register("dispatcher_hook", facets={"dispatchers"})
def dispatcher_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A syscall dispatcher (``x64_sys_call`` and its 32-bit siblings) calling something that is no
    syscall function: a syscall hook the syscall table does not show, found with no history and no
    vendor image (ATT&CK T1014 Rootkit)."""
    if snap.dispatchers is None:
        return []
    return [
        Finding(
            "dispatcher_hook",
            f"{c.dispatcher} calls {c.lands_in} at {c.address:#x} instead of a syscall function",
            Severity.CRITICAL,
            ROOTKIT,
            target,
            {"dispatcher": c.dispatcher, "address": f"{c.address:#x}", "target": f"{c.target:#x}", "lands_in": c.lands_in},
        )
        for c in snap.dispatchers.calls
        if c.foreign
    ]


@register("kernel_branch_out", facets={"branches"})
def kernel_branch_out(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A direct call or jump in core kernel text to executable memory outside it, at no place the kernel
    patches itself: an inline hook, found on a first look without history and without the vendor's image
    (ATT&CK T1014 Rootkit)."""
    if snap.branches is None:
        return []
    return [
        Finding(
            "kernel_branch_out",
            f"kernel text at {b.symbol or hex(b.at)} {'calls' if b.instruction == 'call' else 'jumps'} into {b.owner}",
            Severity.CRITICAL,
            ROOTKIT,
            target,
            {"at": f"{b.at:#x}", "symbol": b.symbol, "instruction": b.instruction, "target": f"{b.target:#x}", "owner": b.owner},
        )
        for b in snap.branches.branches
    ]


@register("kernel_code_modified", facets={"code"}, os=EVERY_OS)
def kernel_code_modified(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """Kernel or module text whose pages differ from the baseline outside the places the kernel patches
    itself (jump labels, ftrace call sites): inline hooks (ATT&CK T1014 Rootkit)."""
    if base is None or snap.code is None:
        return []
    out = []
    for region in snap.code.regions:
        old = base.code.get((region.owner, region.start))
        if old is None or old.digest == region.digest:
            continue
        for i, (h_old, h_new) in enumerate(zip(old.page_hashes, region.page_hashes, strict=False)):
            if h_old == h_new:
                continue
            page = region.start + i * 4096
            changed = base.changed_bytes(page, snap)
            if not changed:
                continue  # only self-patching sites changed
            first = changed[0]
            symbol = snap.symbols.describe(first) if snap.symbols is not None else None
            # the bytes from the first change on, before and now, for a person to read (hex, disassembly)
            expected = base.bytes_at(page, first, CONTEXT_BYTES)
            observed = snap.code.page_bytes.get(page, b"")[first - page : first - page + CONTEXT_BYTES]
            where = symbol or f"{first:#x}"
            out.append(
                Finding(
                    "kernel_code_modified",
                    f"{region.owner} text modified at {where}",
                    Severity.CRITICAL,
                    ROOTKIT,
                    target,
                    {
                        "owner": region.owner,
                        "page": f"{page:#x}",
                        "first_byte": f"{first:#x}",
                        "bytes_changed": len(changed),
                        "symbol": symbol,
                        "expected": expected.hex(),
                        "observed": bytes(observed).hex(),
                    },
                )
            )
    return out


def _hooked(h: MechanismHook) -> str:
    """What a mechanism hook is on: a kprobe's address, or the functions an ftrace callback covers."""
    if h.mechanism == "ftrace" and h.covers:
        return "every function" if h.covers == ("*",) else ", ".join(h.covers[:3]) + (" ..." if len(h.covers) > 3 else "")
    return h.at_symbol or hex(h.address)


@register("mechanism_hook", facets={"mechanisms"})
def mechanism_hook(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A kprobe or ftrace callback whose handler is not core kernel code: hooking through the kernel's
    own instrumentation, which leaves kernel text untouched (ATT&CK T1014 Rootkit)."""
    out = []
    for h in snap.syscalls.mechanisms:
        if h.owner == "kernel":
            continue
        out.append(
            Finding(
                "mechanism_hook",
                f"{h.mechanism} hook on {_hooked(h)} runs {h.owner} code",
                Severity.CRITICAL,
                ROOTKIT,
                target,
                {
                    "mechanism": h.mechanism,
                    "at": f"{h.address:#x}",
                    "at_symbol": h.at_symbol,
                    "handler": f"{h.handler:#x}",
                    "handler_symbol": h.handler_symbol,
                    "owner": h.owner,
                    **({"covers": list(h.covers)} if h.covers else {}),
                },
            )
        )
    return out


@register("anonymous_exec_memory", facets={"tasks", "maps"})
def anonymous_exec_memory(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """Executable memory in a user process that belongs to no file: shellcode, unpacked or injected code
    (ATT&CK T1055 Process Injection). Needs a scanning sweep (memory maps)."""
    if snap.maps is None:
        return []
    names = {t.pid: t for t in snap.tasks.tasks}
    out = []
    for pid, sweep in snap.maps.items():
        for m in sweep.maps:
            if "x" in m.perms and not m.path:
                t = names.get(pid)
                out.append(
                    Finding(
                        "anonymous_exec_memory",
                        f"process {pid} ({t.name if t else '?'}) has anonymous executable memory at {m.start:#x}",
                        Severity.HIGH,
                        INJECTION,
                        target,
                        {
                            "pid": pid,
                            "name": t.name if t else None,
                            "exe": t.exe if t else None,
                            "start": f"{m.start:#x}",
                            "end": f"{m.end:#x}",
                            "perms": m.perms,
                        },
                    )
                )
    return out


SOCKET_FILTERS = Attack("T1205.002", "Traffic Signaling: Socket Filters", "TA0011", "Command and Control")
SNIFFING = Attack("T1040", "Network Sniffing", "TA0006", "Credential Access")
#: where installed programs live
INSTALLED_PROGRAMS = ("/usr/sbin/", "/usr/bin/", "/usr/lib/", "/usr/libexec/", "/sbin/", "/bin/", "/lib/")


def _installed(exe: str) -> bool:
    return exe.startswith(INSTALLED_PROGRAMS) and not exe.endswith(" (deleted)")


@register("packet_socket", facets={"tasks", "sockets"})
def packet_socket(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A raw packet socket (AF_PACKET, or a raw IP socket): with a packet filter attached, a backdoor
    waiting for its magic packet without any listening port, as BPFDoor does (ATT&CK T1205.002; high, or
    medium for an installed program: DHCP clients do this too); without one, a sniffer (T1040, medium);
    held by no process, hidden (high)."""
    names = {t.pid: t.name for t in snap.tasks.tasks}
    exes = {t.pid: t.exe or "" for t in snap.tasks.tasks}
    out = []
    for sock in snap.sockets.sockets if snap.sockets is not None else ():
        if not (sock.family == "packet" or (sock.family in ("inet", "inet6") and sock.type == "raw")):
            continue
        who = ", ".join(f"{pid} ({names.get(pid, '?')})" for pid in sock.pids) or "no process"
        if sock.filter:
            # DHCP clients (ISC dhclient, systemd-networkd) filter a packet socket too: an installed program
            # doing it is medium; anything else (a backdoor runs from /tmp, /dev/shm, a deleted file) high
            installed = bool(sock.pids) and all(_installed(exes.get(pid, "")) for pid in sock.pids)
            severity = Severity.MEDIUM if installed else Severity.HIGH
            title, attack = f"{who} listens to raw packets through a {sock.filter} filter", SOCKET_FILTERS
        elif not sock.pids:
            title, severity, attack = f"a {sock.family} socket that no process holds", Severity.HIGH, SNIFFING
        else:
            title, severity, attack = f"{who} captures raw packets ({sock.family} {sock.protocol})", Severity.MEDIUM, SNIFFING
        out.append(
            Finding(
                "packet_socket",
                f"process {title}" if sock.pids else title,
                severity,
                attack,
                target,
                {
                    "family": sock.family,
                    "type": sock.type,
                    "protocol": sock.protocol,
                    "filter": sock.filter,
                    "pids": list(sock.pids),
                    "names": [names.get(pid) for pid in sock.pids],
                    "exes": [exes.get(pid) for pid in sock.pids],
                    "inode": sock.inode,
                    "netns": sock.netns,
                },
            )
        )
    return out


@register("kernel_listener", facets={"sockets"})
def kernel_listener(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A listening TCP or bound UDP socket that no process holds: a listener inside the kernel, which no
    process list shows: a module's backdoor (or a kernel service such as an NFS server) (ATT&CK T1014
    Rootkit, medium)."""
    out = []
    for sock in snap.sockets.sockets if snap.sockets is not None else ():
        if sock.pids or sock.family not in ("inet", "inet6") or sock.protocol not in ("tcp", "udp", "udplite"):
            continue
        if sock.protocol == "tcp" and sock.state != "LISTEN":
            continue  # the listening hash holds listeners only; a connection may outlive its process a while
        out.append(
            Finding(
                "kernel_listener",
                f"{sock.protocol} port {sock.local_port} on {sock.local_address} is open, and no process holds it",
                Severity.MEDIUM,
                ROOTKIT,
                target,
                {
                    "family": sock.family,
                    "protocol": sock.protocol,
                    "address": sock.local_address,
                    "port": sock.local_port,
                    "netns": sock.netns,
                    "sock": f"{sock.sock:#x}",
                },
            )
        )
    return out


@register("kernel_taint", facets={"taint"})
def kernel_taint(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """New bits in the kernel's taint mask since the baseline: an unsigned, out-of-tree or forced module
    was loaded, or the kernel oopsed or had a machine check (ATT&CK T1547.006 Kernel Modules and
    Extensions). A module that hides itself still leaves the taint behind."""
    if base is None or base.taint is None or snap.taint is None:
        return []
    new = snap.taint & ~base.taint
    if not new:
        return []
    letters = "".join(ch for bit, ch in enumerate(TAINT_LETTERS) if new >> bit & 1)
    return [
        Finding(
            "kernel_taint",
            f"the kernel became tainted ({letters}) since the baseline",
            Severity.MEDIUM,
            KERNEL_MODULES,
            target,
            {"new_taint": letters, "taint_mask": f"{snap.taint:#x}", "baseline_mask": f"{base.taint:#x}"},
        )
    ]


@register("bpf_program", facets={"bpf"})
def bpf_program(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """An eBPF program that runs inside kernel functions (kprobe, tracepoint, fentry/fexit, LSM...) loaded
    since the baseline: eBPF rootkits hook syscalls and hide files this way without a module or a byte of
    changed kernel text (ATT&CK T1014 Rootkit)."""
    if base is None or snap.bpf is None:
        return []
    out = []
    for p in snap.bpf.programs:
        if not p.hooking or (p.id, p.tag) in base.bpf:
            continue
        where = f" on {p.attach_to}" if p.attach_to else ""
        out.append(
            Finding(
                "bpf_program",
                f"eBPF {p.type} program {p.name or '(unnamed)'} (id {p.id}){where} loaded since the baseline",
                Severity.HIGH,
                ROOTKIT,
                target,
                {"id": p.id, "type": p.type, "name": p.name, "tag": p.tag, "attach_to": p.attach_to, "insns": p.instructions},
            )
        )
    return out
