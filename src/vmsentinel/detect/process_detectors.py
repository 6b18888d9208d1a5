"""Detectors over processes as their memory shows them: a user process dressed up as a kernel thread
or as a system program, a dynamic linker told to load a library first, a process traced by another,
file-backed memory both writable and executable, a code page patched in one process only, and a
mount that hides a process from ``/proc``. Each rule is one a clean system does not trip: busybox
applets (``/bin/busybox`` run as ``sleep``), threads renamed with ``prctl`` and the like are normal
and left alone."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vmsentinel.detect.finding import HIDDEN_ARTIFACTS, INJECTION, Attack, Finding, Severity
from vmsentinel.detect.registry import register

if TYPE_CHECKING:
    from vmsentinel.detect.baseline import Baseline
    from vmsentinel.os.linux.views.ptrace import PtraceLink
    from vmsentinel.os.records import Task
    from vmsentinel.os.snapshot import GuestSnapshot

MASQUERADING = Attack("T1036.005", "Masquerading: Match Legitimate Name or Location", "TA0005", "Defense Evasion")
LINKER_HIJACK = Attack("T1574.006", "Hijack Execution Flow: Dynamic Linker Hijacking", "TA0005", "Defense Evasion")
PTRACE_INJECTION = Attack("T1055.008", "Process Injection: Ptrace System Calls", "TA0005", "Defense Evasion")

#: names only the kernel gives its threads (a prefix with "/" or a digit, or a whole name): a user
#: process has no business carrying one
KERNEL_THREAD_NAME = re.compile(
    r"(kworker|ksoftirqd|migration|cpuhp|idle_inject|watchdog|rcuc|rcuog|rcuop|jbd2|xfsaild|irq)/"
    r"|rcu_(sched|preempt|bh|gp|par_gp|tasks\w*|exp\w*)$"
    r"|(kthreadd|khugepaged|kdevtmpfs|kauditd|khungtaskd|oom_reaper|ksmd|kblockd|kintegrityd|kthrotld"
    r"|mm_percpu_wq|ipv6_addrconf|kstrp|kpsmoused|edac-poller|devfreq_wq|blkcg_punt_bio|inet_frag_wq)$"
    r"|(kswapd|kcompactd|scsi_eh_|scsi_tmf_)\d+$"
)
#: where system programs live: a process claiming (by argv[0]) to run one of these from outside them lies
SYSTEM_BIN_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/", "/usr/libexec/")
#: where programs are installed (a program under one of these is no impostor of a system program)
INSTALLED_DIRS = ("/bin/", "/sbin/", "/usr/", "/lib/", "/lib64/", "/opt/", "/snap/", "/nix/", "/gnu/", "/app/")
#: the dynamic linker loads what these name into every program, before its own libraries
PRELOAD_VARIABLES = ("LD_PRELOAD", "LD_AUDIT")
#: library search paths into folders anyone may write
WRITABLE_DIRS = ("/tmp", "/dev/shm", "/var/tmp", "/run/shm")
PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


def _looks_like_kernel_thread(name: str) -> bool:
    bare = name[1:-1] if len(name) > 2 and name[0] == "[" and name[-1] == "]" else name
    return bool(KERNEL_THREAD_NAME.match(bare))


def _is_user_process(t: Task) -> bool:
    """A process that runs a program of its own: an address space with its arguments in it. A kernel
    thread has none, a zombie has lost its own, and a helper the kernel starts (modprobe, init) has,
    for the instant its exec takes, a new address space but no arguments yet and still the name of
    the kworker that forked it."""
    return not t.kernel_thread and bool(t.cmdline)


@register("process_masquerade", facets={"tasks"})
def process_masquerade(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A user process named like a kernel thread (``kworker/0:1``, ``[kthreadd]``...) or shown in
    brackets as ps shows kernel threads, or one whose argv[0] names a system program while it runs a
    program from elsewhere (ATT&CK T1036.005 Masquerading: Match Legitimate Name or Location)."""
    out = []
    for t in snap.tasks.tasks:
        if not _is_user_process(t):
            continue
        argv0 = t.cmdline[0] if t.cmdline else ""
        reasons = []
        if _looks_like_kernel_thread(t.comm):
            reasons.append(f"its name {t.comm!r} is a kernel thread's")
        elif t.comm.startswith("[") and t.comm.endswith("]"):
            reasons.append(f"its name {t.comm!r} is bracketed as ps shows kernel threads")
        if _looks_like_kernel_thread(argv0):
            reasons.append(f"its argv[0] {argv0!r} is a kernel thread's")
        elif len(argv0) > 2 and argv0.startswith("[") and argv0.endswith("]"):
            reasons.append(f"its argv[0] {argv0!r} is bracketed as ps shows kernel threads")
        severity = Severity.HIGH
        if not reasons and t.exe and argv0.startswith(SYSTEM_BIN_DIRS) and not t.exe.startswith(INSTALLED_DIRS):
            reasons.append(f"its argv[0] {argv0!r} names a system program, but it runs {t.exe}")
            severity = Severity.MEDIUM
        if reasons:
            out.append(
                Finding(
                    "process_masquerade",
                    f"process {t.pid} ({t.name}) masquerades: {'; '.join(reasons)}",
                    severity,
                    MASQUERADING,
                    target,
                    {
                        "pid": t.pid,
                        "comm": t.comm,
                        "argv0": argv0,
                        "exe": t.exe,
                        "cmdline": t.args,
                        "uid": t.uid,
                        "reasons": reasons,
                    },
                )
            )
    return out


@register("linker_hijack", facets={"tasks", "environ"})
def linker_hijack(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A process started with ``LD_PRELOAD`` or ``LD_AUDIT`` in its environment (the dynamic linker loads
    that library into it first: userland rootkits, credential stealers), or with ``LD_LIBRARY_PATH``
    into a folder anyone may write (ATT&CK T1574.006 Dynamic Linker Hijacking)."""
    if snap.environ is None:
        return []
    out = []
    for pid, env in sorted(snap.environ.environ.items()):
        for key, value in env.pairs():
            if key in PRELOAD_VARIABLES and value.strip(" :"):
                severity, why = Severity.HIGH, f"has {key}={value}"
            elif key == "LD_LIBRARY_PATH" and any(_under(d, WRITABLE_DIRS) for d in value.split(":")):
                severity, why = Severity.MEDIUM, f"searches libraries in a world-writable folder: {key}={value}"
            else:
                continue
            out.append(
                Finding(
                    "linker_hijack",
                    f"process {pid} ({env.name}) {why}",
                    severity,
                    LINKER_HIJACK,
                    target,
                    {"pid": pid, "name": env.name, "variable": key, "value": value},
                )
            )
    return out


def _under(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


@register("ptrace_attach", facets={"ptrace"})
def ptrace_attach(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A process traced by another through ptrace, which can read and write its memory and registers:
    injection, credential theft from a running program (high when the tracer attached to a process it
    did not start, medium when it traces its own child) (ATT&CK T1055.008 Ptrace System Calls)."""
    if snap.ptrace is None:
        return []
    pairs: dict[tuple[int, int], list[int]] = {}
    first: dict[tuple[int, int], PtraceLink] = {}
    for link in snap.ptrace.links:
        key = (link.tracee_tgid, link.tracer_tgid)
        pairs.setdefault(key, []).append(link.tracee)
        first.setdefault(key, link)
    out = []
    for key, threads in pairs.items():
        link = first[key]
        attached = link.tracer_tgid != link.real_parent
        how = "attached to it" if attached else "started it and traces it"
        out.append(
            Finding(
                "ptrace_attach",
                f"process {link.tracee_tgid} ({link.tracee_name}) is traced by process {link.tracer_tgid} ({link.tracer_name}),"
                f" which {how}",
                Severity.HIGH if attached else Severity.MEDIUM,
                PTRACE_INJECTION,
                target,
                {
                    "pid": link.tracee_tgid,
                    "name": link.tracee_name,
                    "threads": sorted(threads),
                    "tracer_pid": link.tracer_tgid,
                    "tracer_name": link.tracer_name,
                    "real_parent": link.real_parent,
                    "seized": link.seized,
                },
            )
        )
    return out


@register("wx_file_mapping", facets={"tasks", "maps"})
def wx_file_mapping(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A file mapped both writable and executable in a user process: code that can be rewritten where it
    runs, the file-backed half of malfind (ATT&CK T1055 Process Injection). Needs the memory maps
    (new processes, every process on a full sweep)."""
    if snap.maps is None:
        return []
    names = {t.pid: t for t in snap.tasks.tasks}
    out = []
    for pid, sweep in sorted(snap.maps.items()):
        t = names.get(pid)
        for m in sweep.maps:
            if "w" in m.perms and "x" in m.perms and m.path.startswith("/"):
                out.append(
                    Finding(
                        "wx_file_mapping",
                        f"process {pid} ({t.name if t else '?'}) maps {m.path} writable and executable at {m.start:#x}",
                        Severity.HIGH,
                        INJECTION,
                        target,
                        {
                            "pid": pid,
                            "name": t.name if t else None,
                            "exe": t.exe if t else None,
                            "path": m.path,
                            "start": f"{m.start:#x}",
                            "end": f"{m.end:#x}",
                            "perms": m.perms,
                            "offset": f"{m.offset:#x}",
                        },
                    )
                )
    return out


@register("patched_code_page", facets={"tasks", "page_diffs"})
def patched_code_page(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """A code page of a file whose bytes differ between the processes that map it: a process's own copy
    of a library's or program's code, patched in memory (inline hooks in libc, injected code). Read on
    full sweeps (ATT&CK T1055 Process Injection)."""
    if snap.page_diffs is None:
        return []
    names = {t.pid: t.name for t in snap.tasks.tasks}
    out = []
    for d in snap.page_diffs.diffs:
        odd = [p for c in d.copies[1:] for p in c.pids]
        who = ", ".join(f"{p} ({names.get(p, '?')})" for p in odd[:8]) + (" ..." if len(odd) > 8 else "")
        out.append(
            Finding(
                "patched_code_page",
                f"code of {d.path} at file offset {d.file_offset:#x} differs in process {who} from the others mapping it",
                Severity.HIGH,
                INJECTION,
                target,
                {
                    "path": d.path,
                    "dev": d.dev,
                    "inode": d.inode,
                    "file_offset": f"{d.file_offset:#x}",
                    "differing_pids": odd,
                    "copies": [
                        {
                            "pids": list(c.pids),
                            "addresses": [f"{a:#x}" for a in c.addresses],
                            "digest": c.digest,
                            "private": c.private,
                            "first_difference": c.first_difference,
                            "bytes_changed": c.bytes_changed,
                            "observed": c.observed.hex(),
                        }
                        for c in d.copies
                    ],
                    "expected": d.expected.hex(),
                },
            )
        )
    return out


@register("proc_mount", facets={"mounts"})
def proc_mount(target: str, snap: GuestSnapshot, prev: GuestSnapshot | None, base: Baseline | None) -> list[Finding]:
    """Something mounted over ``/proc/PID`` (``mount --bind /empty /proc/PID``: ps, top and every tool that
    reads /proc inside the guest no longer see that process), or something other than procfs mounted
    on ``/proc`` itself (ATT&CK T1564 Hide Artifacts)."""
    if snap.mounts is None:
        return []
    out = []
    for m in snap.mounts.mounts:
        hit = PROC_PID.match(m.mountpoint)
        if hit:
            source = f"{m.source or m.fs}:{m.root}"
            title = f"{m.mountpoint} is covered by a mount of {source}: process {hit.group(1)} is hidden from /proc"
        elif m.mountpoint == "/proc" and m.fs != "proc":
            title = f"/proc is covered by a {m.fs} mount of {m.source or m.fs}:{m.root}, not by procfs"
        else:
            continue
        out.append(
            Finding(
                "proc_mount",
                title,
                Severity.HIGH,
                HIDDEN_ARTIFACTS,
                target,
                {
                    "namespace": m.namespace,
                    "mount_id": m.mount_id,
                    "mountpoint": m.mountpoint,
                    "hidden_pid": int(hit.group(1)) if hit else None,
                    "fs": m.fs,
                    "source": m.source,
                    "root": m.root,
                },
            )
        )
    return out
