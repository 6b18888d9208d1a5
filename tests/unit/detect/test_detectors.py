"""Every detector on hand-made snapshots: what it must find and what it must leave alone."""

from __future__ import annotations

from dataclasses import replace

from vmsentinel.detect.baseline import Baseline
from vmsentinel.detect.registry import run_detectors
from vmsentinel.os.linux.views.files import FileSweep
from vmsentinel.os.linux.views.memory_maps import MapEntry, MapSweep
from vmsentinel.os.linux.views.sockets import SocketSweep
from vmsentinel.os.records import HookSweep, IdtEntry, MechanismHook, Module, ModuleSweep, SyscallEntry, Task, TaskSweep
from vmsentinel.os.snapshot import GuestSnapshot
from vmsentinel.pipeline.sweep import confirm

ALL = ("pid_table", "task_list", "thread_list")


def task(pid: int, uid: int = 0, exe: str | None = "/bin/busybox", sources: tuple[str, ...] = ALL) -> Task:
    return Task(
        pid=pid,
        ppid=1,
        tgid=pid,
        name="sleep",
        comm="sleep",
        state="S",
        kernel_thread=False,
        flags=0,
        uid=uid,
        gid=uid,
        euid=uid,
        egid=uid,
        suid=uid,
        fsuid=uid,
        cap_effective=0,
        start_time_ns=pid * 10,
        threads=(pid,),
        exe=exe,
        cmdline=("sleep", "1"),
        sources=sources,
        address=0xFFFF888000000000 + pid,
    )


def module(
    name: str, sources: tuple[str, ...] = ("module_list", "sysfs_kobjects"), sig_ok: bool = True, taints: str = ""
) -> Module:
    return Module(
        name=name,
        size=4096,
        refcount=0,
        used_by=(),
        state="Live",
        base=0xFFFFFFFFC0000000,
        text_size=4096,
        taints=taints,
        sig_ok=sig_ok,
        sources=sources,
        address=0xFFFFFFFFC0001000,
    )


def snapshot(
    tasks: list[Task],
    modules: list[Module] | None = None,
    syscalls: list[SyscallEntry] | None = None,
    idt: list[IdtEntry] | None = None,
    mechanisms: list[MechanismHook] | None = None,
    maps: dict[int, MapSweep] | None = None,
) -> GuestSnapshot:
    return GuestSnapshot(
        TaskSweep(tasks, {}, {}),
        ModuleSweep(modules or []),
        HookSweep(syscalls=syscalls or [], mechanisms=mechanisms or []),
        HookSweep(idt=idt or []),
        [FileSweep()],
        SocketSweep(),
        None,
        0.01,
        maps,
    )


def names(findings: list) -> list[str]:  # type: ignore[type-arg]
    return sorted(f.detector for f in findings)


def test_a_clean_snapshot_has_no_findings() -> None:
    snap = snapshot(
        [task(1), task(2, uid=1000)],
        [module("veth")],
        [SyscallEntry("x64", 0, 0xFFFFFFFF81000000, "__x64_sys_read", "kernel")],
        [IdtEntry(0, 0, 0xFFFFFFFF81000100, "asm_exc_divide_error", "kernel", 14, 0, 0, True)],
        [MechanismHook("kprobe", 1, "f", 2, "kprobe_handler", "kernel")],
        {
            2: MapSweep(
                [
                    MapEntry(2, 0x400000, 0x401000, "r-xp", 0, "00:02", 12, "/bin/busybox"),
                    MapEntry(2, 0x7000, 0x8000, "r-xp", 0, "00:00", 0, "[vdso]"),
                ]
            )
        },
    )
    assert run_detectors("t", snap, snap, None) == []


def test_cross_view_and_foreign_code_findings() -> None:
    snap = snapshot(
        [task(7, sources=("memory_scan", "pid_table")), task(8, exe="/dev/shm/x"), task(9, exe="/usr/bin/y (deleted)")],
        [module("evil", sources=("memory_scan",), sig_ok=False, taints="OE")],
        [SyscallEntry("x64", 39, 0xFFFFFFFFC0000000, None, "module:evil")],
        [IdtEntry(0, 128, 0xFFFFFFFFC0000010, None, "unknown", 14, 3, 0, True)],
        [MechanismHook("ftrace", 1, None, 0xFFFFFFFFC0000020, None, "module:evil")],
        {8: MapSweep([MapEntry(8, 0x10000, 0x11000, "rwxp", 0, "00:00", 0, "")])},
    )
    found = run_detectors("t", snap, None, None)
    assert names(found) == sorted(
        [
            "hidden_process",
            "hidden_module",
            "syscall_hook",
            "idt_hook",
            "mechanism_hook",
            "unsigned_module",
            "injected_code",
            "injected_code",
            "anonymous_exec_memory",
        ]
    )
    hidden = next(f for f in found if f.detector == "hidden_process")
    assert hidden.evidence["pid"] == 7 and "task_list" not in hidden.sources


def test_baseline_changes_and_privilege_escalation() -> None:
    before = snapshot([task(5, uid=65534)], syscalls=[SyscallEntry("x64", 1, 0xFFFFFFFF81000000, "w", "kernel")])
    base = Baseline(syscalls={"x64:1": 0xFFFFFFFF81000000}, idt={}, code={})
    after = snapshot([task(5, uid=0)], syscalls=[SyscallEntry("x64", 1, 0xFFFFFFFF81000040, "w+0x40", "kernel")])
    found = run_detectors("t", after, before, base)
    assert names(found) == ["privilege_escalation", "syscall_hook"]
    # a new program image (exec of a set-uid binary) is not an escalation
    execd = snapshot([replace(task(5, uid=0), exe="/bin/su")])
    assert run_detectors("t", execd, before, None, ["privilege_escalation"]) == []


def test_confirm_keeps_only_what_two_reads_agree_on() -> None:
    first = run_detectors("t", snapshot([task(7, sources=("pid_table",)), task(8, sources=("pid_table",))]), None, None)
    second = run_detectors("t", snapshot([task(7, sources=("pid_table",))]), None, None)
    confirmed = confirm(first, second)
    assert [f.evidence["pid"] for f in confirmed] == [7] and confirmed[0].confirmed


def test_taint_bits_new_since_the_baseline_are_a_finding() -> None:
    base = Baseline({}, {}, {}, taint=1 << 12)  # O: an out-of-tree module was there at first sight
    assert run_detectors("t", replace(snapshot([task(1)]), taint=1 << 12), None, base, ["kernel_taint"]) == []
    found = run_detectors("t", replace(snapshot([task(1)]), taint=(1 << 12) | (1 << 13) | 1), None, base, ["kernel_taint"])
    assert [f.evidence["new_taint"] for f in found] == ["PE"]  # proprietary, unsigned
    assert run_detectors("t", replace(snapshot([task(1)]), taint=None), None, base, ["kernel_taint"]) == []


def test_new_hooking_bpf_programs_are_findings_filters_and_known_ones_are_not() -> None:
    from vmsentinel.os.linux.views.bpf import BpfProgram, BpfSweep

    def prog(ident: int, kind: str, hooking: bool, attach: str | None = None) -> BpfProgram:
        return BpfProgram(ident, kind, f"p{ident}", f"{ident:016x}", attach, 2, 0, hooking, 0xFFFF888000100000 + ident)

    known = prog(1, "kprobe", True)
    base = Baseline({}, {}, {}, bpf={(known.id, known.tag)})
    progs = [known, prog(2, "cgroup_skb", False), prog(3, "tracing", True, "do_sys_openat2"), prog(4, "kprobe", True)]
    found = run_detectors("t", replace(snapshot([task(1)]), bpf=BpfSweep(progs)), None, base, ["bpf_program"])
    assert sorted(f.evidence["id"] for f in found) == [3, 4]
    assert "on do_sys_openat2" in next(f.title for f in found if f.evidence["id"] == 3)
    assert run_detectors("t", replace(snapshot([task(1)]), bpf=BpfSweep(progs)), None, None, ["bpf_program"]) == []
