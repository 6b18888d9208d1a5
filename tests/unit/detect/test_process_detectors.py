"""The process-side detectors on hand-made snapshots: what each must find, and the normal things (busybox
applets, kernel threads, bind mounts elsewhere, the page cache's own pages) it must leave alone."""

from __future__ import annotations

from dataclasses import replace

from vmsentinel.detect.registry import run_detectors
from vmsentinel.os.linux.views.environ import Environment, EnvironSweep
from vmsentinel.os.linux.views.files import FileSweep
from vmsentinel.os.linux.views.memory_maps import MapEntry, MapSweep
from vmsentinel.os.linux.views.mounts import Mount, MountSweep
from vmsentinel.os.linux.views.page_diffs import CodePageDiff, PageCopy, PageDiffSweep
from vmsentinel.os.linux.views.ptrace import PtraceLink, PtraceSweep
from vmsentinel.os.linux.views.sockets import SocketSweep
from vmsentinel.os.linux.views.tasks import PF_KTHREAD
from vmsentinel.os.records import HookSweep, ModuleSweep, Task, TaskSweep
from vmsentinel.os.snapshot import GuestSnapshot

MINE = ["process_masquerade", "linker_hijack", "ptrace_attach", "wx_file_mapping", "patched_code_page", "proc_mount"]


def proc(
    pid: int, comm: str = "sleep", cmdline: tuple[str, ...] | None = ("sleep", "1"), exe: str | None = "/bin/busybox"
) -> Task:
    return Task(
        pid=pid,
        ppid=1,
        tgid=pid,
        name=comm,
        comm=comm,
        state="S",
        kernel_thread=False,
        flags=0,
        uid=0,
        gid=0,
        euid=0,
        egid=0,
        suid=0,
        fsuid=0,
        cap_effective=0,
        start_time_ns=pid,
        threads=(pid,),
        exe=exe,
        cmdline=cmdline,
        sources=("task_list", "pid_table"),
        address=0xFFFF888000000000 + pid * 0x1000,
    )


def kthread(pid: int, name: str) -> Task:
    return replace(proc(pid, name, None, None), kernel_thread=True, flags=PF_KTHREAD)


def snap(tasks: list[Task], **facets: object) -> GuestSnapshot:
    s = GuestSnapshot(
        TaskSweep(tasks, {}, {}), ModuleSweep([]), HookSweep(), HookSweep(), [FileSweep()], SocketSweep(), None, 0.0
    )
    for name, value in facets.items():
        setattr(s, name, value)
    return s


def run(s: GuestSnapshot) -> list[tuple[str, str]]:
    return sorted((f.detector, f.title) for f in run_detectors("t", s, None, None, enabled=MINE))


def test_a_clean_lab_guest_gives_nothing() -> None:
    tasks = [
        proc(1, "init", ("/bin/sh", "/init", "kaslr")),
        proc(148, "sh", ("/bin/sh", "/sbin/vmsentinel-agent")),
        proc(150, "sleep", ("sleep", "100")),  # a busybox applet: exe /bin/busybox, argv[0] sleep
        proc(151, "sleep", ("/dev/shm/sleep", "100003"), exe="/dev/shm/sleep"),  # another detector's business
        proc(152, "python3", ("/usr/bin/python3", "x.py"), exe="/usr/bin/python3.11"),  # a symlink
        proc(153, "watchdog", ("/usr/sbin/watchdog",), exe="/usr/sbin/watchdog"),  # the daemon, not watchdog/0
        proc(154, "zombie", None, None),  # no mm
        proc(155, "kworker/u2:1", (), "/sbin/modprobe"),  # a usermode helper in the middle of its exec
        kthread(2, "kthreadd"),
        kthread(3, "kworker/0:1"),
        kthread(9, "rcu_sched"),
    ]
    s = snap(
        tasks,
        environ=EnvironSweep({1: Environment(1, "init", ("HOME=/", "TERM=linux", "LD_PRELOAD=", "LD_LIBRARY_PATH=/usr/lib"))}),
        ptrace=PtraceSweep(),
        maps={148: MapSweep([MapEntry(148, 0x400000, 0x500000, "r-xp", 0, "00:02", 12, "/bin/busybox")])},
        mounts=MountSweep(
            [
                Mount(1, 1, 1, "/", "/", "rootfs", "rootfs", 1),
                Mount(1, 24, 1, "/proc", "/", "proc", "proc", 2),
                Mount(1, 25, 24, "/proc/sys", "/sys", "proc", "proc", 3),  # docker's read-only /proc/sys
                Mount(1, 26, 24, "/proc/kcore", "/null", "devtmpfs", "udev", 4),  # docker's masked paths
            ]
        ),
        page_diffs=PageDiffSweep(),
    )
    assert run(s) == []


def test_processes_dressed_as_kernel_threads_or_system_programs() -> None:
    tasks = [
        proc(10, "kworker/0:2", ("[kworker/0:2]",), exe="/tmp/.x/miner"),
        proc(11, "bash", ("[kthreadd]",), exe="/root/implant"),
        proc(12, "[ksoftirqd/0]", ("x",), exe="/root/implant"),
        proc(13, "sshd", ("/usr/sbin/sshd", "-D"), exe="/dev/shm/.s/sshd"),
        proc(14, "ksoftirqd/1", ("ksoftirqd/1",), exe="/root/implant"),
        proc(15, "rcu_preempt", ("x",), exe="/root/implant"),
    ]
    found = run_detectors("t", snap(tasks), None, None, enabled=["process_masquerade"])
    by_pid = {f.evidence["pid"]: f for f in found}
    assert sorted(by_pid) == [10, 11, 12, 13, 14, 15]
    assert len(by_pid[10].evidence["reasons"]) == 2 and by_pid[10].severity.name == "HIGH"
    assert "kernel thread's" in by_pid[11].evidence["reasons"][0]
    assert by_pid[13].severity.name == "MEDIUM" and "runs /dev/shm/.s/sshd" in by_pid[13].title
    assert {f.attack.technique_id for f in found} == {"T1036.005"}


def test_linker_variables_in_the_environment() -> None:
    env = EnvironSweep(
        {
            20: Environment(20, "sleep", ("LD_PRELOAD=/tmp/libx.so", "PATH=/bin")),
            21: Environment(21, "sshd", ("LD_AUDIT=/usr/lib/audit.so",)),
            22: Environment(22, "app", ("LD_LIBRARY_PATH=/opt/app/lib:/dev/shm/l",)),
            23: Environment(23, "ok", ("LD_LIBRARY_PATH=/opt/app/lib", "LD_PRELOAD= ")),
        }
    )
    found = run_detectors("t", snap([], environ=env), None, None, enabled=["linker_hijack"])
    assert [(f.evidence["pid"], f.evidence["variable"], f.severity.name) for f in found] == [
        (20, "LD_PRELOAD", "HIGH"),
        (21, "LD_AUDIT", "HIGH"),
        (22, "LD_LIBRARY_PATH", "MEDIUM"),
    ]


def test_ptrace_links_one_finding_per_traced_process() -> None:
    links = [
        PtraceLink(30, 30, "victim", 40, 40, "injector", 1, 1, False, 0),
        PtraceLink(31, 30, "victim", 40, 40, "injector", 1, 1, False, 0),
        PtraceLink(50, 50, "child", 51, 51, "strace", 51, 1, False, 0),
    ]
    found = run_detectors("t", snap([], ptrace=PtraceSweep(links)), None, None, enabled=["ptrace_attach"])
    assert [(f.evidence["pid"], f.evidence["threads"], f.evidence["tracer_pid"], f.severity.name) for f in found] == [
        (30, [30, 31], 40, "HIGH"),  # attached to a process it did not start
        (50, [50], 51, "MEDIUM"),  # traces its own child
    ]
    assert found[0].attack.technique_id == "T1055.008"


def test_writable_executable_file_mappings() -> None:
    maps = {
        60: MapSweep(
            [
                MapEntry(60, 0x1000, 0x2000, "rwxp", 0, "00:02", 9, "/root/wx.bin"),
                MapEntry(60, 0x3000, 0x4000, "rwxp", 0, "00:00", 0, ""),  # anonymous: anonymous_exec_memory's
                MapEntry(60, 0x5000, 0x6000, "rw-p", 0, "00:02", 9, "/root/data"),
                MapEntry(60, 0x7000, 0x8000, "r-xp", 0, "00:02", 9, "/root/prog"),
            ]
        )
    }
    found = run_detectors("t", snap([proc(60)], maps=maps), None, None, enabled=["wx_file_mapping"])
    assert [(f.evidence["pid"], f.evidence["path"], f.evidence["start"]) for f in found] == [(60, "/root/wx.bin", "0x1000")]


def test_a_patched_code_page() -> None:
    diff = CodePageDiff(
        "/lib/libc.so.6",
        "08:01",
        77,
        0x25000,
        (
            PageCopy("aa", (1, 70), (0x7F0000025000, 0x7F1000025000), (0x5000,), False),
            PageCopy("bb", (71,), (0x7F2000025000,), (0x9000,), True, 0x10, 5, b"\xe9\x00\x00\x00\x00"),
        ),
        b"\x48\x89\xe5\x41\x57",
    )
    found = run_detectors(
        "t", snap([proc(71, "nginx")], page_diffs=PageDiffSweep([diff])), None, None, enabled=["patched_code_page"]
    )
    [f] = found
    assert f.evidence["differing_pids"] == [71] and "71 (nginx)" in f.title and "0x25000" in f.title
    assert f.evidence["copies"][1]["observed"] == "e900000000" and f.evidence["expected"] == "4889e54157"
    assert f.evidence["copies"][1]["private"] is True and f.evidence["copies"][0]["addresses"] == [
        "0x7f0000025000",
        "0x7f1000025000",
    ]


def test_mounts_that_hide_processes_from_proc() -> None:
    mounts = MountSweep(
        [
            Mount(1, 24, 1, "/proc", "/", "proc", "proc", 1),
            Mount(1, 30, 24, "/proc/4242", "/empty", "tmpfs", "tmpfs", 2),
            Mount(1, 31, 24, "/proc/4243/fd", "/", "tmpfs", "tmpfs", 3),
            Mount(5, 40, 39, "/proc", "/fake", "tmpfs", "tmpfs", 4),
        ]
    )
    found = run_detectors("t", snap([], mounts=mounts), None, None, enabled=["proc_mount"])
    assert [(f.evidence["mountpoint"], f.evidence["hidden_pid"]) for f in found] == [
        ("/proc/4242", 4242),
        ("/proc/4243/fd", 4243),
        ("/proc", None),
    ]
    assert "not by procfs" in found[2].title


def test_facets_not_collected_give_nothing() -> None:
    zombie = proc(2, "kworker/0:1", None, None)  # a zombie keeps its name, but no address space: no claim
    assert run(snap([proc(1), zombie])) == []  # environ, ptrace, maps, mounts, page_diffs: not collected
