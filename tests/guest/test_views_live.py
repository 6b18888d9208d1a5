"""The outside view of processes and modules equals the inside view, on real
guests (6.1 and 6.12, KASLR on) with a few hundred processes: sleepers, shells,
a long command line, a threaded program and a non-root process.

The inside view reads /proc directly (what ``ps`` reads). Processes that exist
only while ``lab exec`` runs (its own shells) are told apart by taking the
inside view before and after the outside one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.guest.conftest import Guest, Shell, guest_sh, kill_matching
from tests.guest.helpers import INSIDE, InsideProcess, parse_inside
from vmsentinel.os.linux.guest import LinuxGuest
from vmsentinel.os.linux.views.tasks import PF_WQ_WORKER
from vmsentinel.os.records import Task

pytestmark = pytest.mark.guest

LONG_ARGS = " ".join(f"argument-{i:04d}" for i in range(600))  # about 8 KiB of command line


def _inside(guest: Shell) -> dict[int, InsideProcess]:
    return parse_inside(guest_sh(guest, INSIDE))


def _outside(task: Task) -> InsideProcess:
    return (task.ppid, task.uid, task.name, task.cmdline or None, task.exe, task.threads)


def start_crowd(guest: Shell) -> None:
    """A few hundred processes: sleepers, shells, a long command line, a threaded program, a non-root one."""
    started = guest_sh(
        guest,
        f"""
        for i in $(seq 1 200); do sleep 10000 & done
        for i in $(seq 1 20); do sh -c 'sleep 10001; :' & done
        sh -c 'sleep 10002; :' {LONG_ARGS} &
        /root/programs/threads 5 &
        su -s /bin/sh nobody -c 'exec sleep 10003' &
        sleep 0.5
        pidof threads
    """,
    )
    assert started.split(), "the threaded test program did not start"


def stop_crowd(guest: Shell) -> None:
    kill_matching(guest, "sleep 1000")
    kill_matching(guest, "/root/programs/threads")


@pytest.fixture
def crowd(guest: Guest) -> Iterator[Guest]:
    start_crowd(guest)
    yield guest
    stop_crowd(guest)


def test_processes_equal_the_inside_view(crowd: Guest) -> None:
    check_processes_equal_the_inside_view(crowd)


def check_processes_equal_the_inside_view(crowd: Shell) -> None:
    """Every process seen from outside as /proc shows it inside (run with a crowd started)."""
    before = _inside(crowd)
    with LinuxGuest.open(crowd.target) as lg:
        sweep = lg.tasks()
    after = _inside(crowd)
    assert not sweep.problems
    ours = {t.pid: t for t in sweep.tasks}
    stable = {pid for pid in before.keys() & after.keys() if before[pid] == after[pid]}
    assert len(stable) > 250
    for pid in sorted(stable):
        assert pid in ours, f"pid {pid} {before[pid]} missing from the outside view"
        inside = before[pid]
        if ours[pid].flags & PF_WQ_WORKER and inside[2] != ours[pid].name:
            # /proc/PID/comm of a workqueue worker is rebuilt by wq_worker_comm(): the worker's
            # name (on 6.12 a rescuer gets its workqueue's full name) plus "-" or "+" and the
            # current work's description. task->comm, which we report, is its first 15 characters.
            assert inside[2].startswith(ours[pid].name) and len(ours[pid].name) <= 15, pid
            inside = (inside[0], inside[1], ours[pid].name, *inside[3:])
        assert _outside(ours[pid]) == inside, pid
    # anything else we saw was one of lab exec's own short-lived shells
    for pid in ours.keys() - stable:
        assert pid not in before or pid not in after or before[pid] != after[pid], pid
    long_one = [t for t in sweep.tasks if t.cmdline and len(t.cmdline) > 500]
    assert long_one and " ".join(long_one[0].cmdline[3:]) == LONG_ARGS
    threaded = [t for t in sweep.tasks if t.exe == "/root/programs/threads"]
    assert threaded and len(threaded[0].threads) == 6, [
        (t.pid, t.comm, t.exe) for t in sweep.tasks if not t.kernel_thread and t.comm not in ("sleep", "sh")
    ]
    assert any(t.uid == 65534 and t.comm == "sleep" for t in sweep.tasks)
    kthreads = [t for t in sweep.tasks if t.kernel_thread]
    assert kthreads and all(t.cmdline is None and t.exe is None for t in kthreads)
    # every process is seen by the task list and the PID table; threads by the thread lists too
    assert all({"task_list", "pid_table", "thread_list"} <= set(t.sources) for t in sweep.tasks if t.pid in stable)


def test_modules_equal_proc_modules(guest: Guest) -> None:
    check_modules_equal_proc_modules(guest)


def check_modules_equal_proc_modules(guest: Shell) -> None:
    inside = []
    for line in guest_sh(guest, "cat /proc/modules").splitlines():
        name, size, refs, deps, state, addr = line.split()[:6]
        used_by = tuple(d for d in deps.split(",") if d and d != "-")
        inside.append((name, int(size), int(refs), used_by, state, int(addr, 16)))
    with LinuxGuest.open(guest.target) as lg:
        sweep = lg.modules()
    assert not sweep.problems
    ours = [(m.name, m.size, m.refcount, m.used_by, m.state, m.base) for m in sweep.modules]
    assert ours == inside
    assert all(m.sources == ("module_list", "sysfs_kobjects") and m.sig_ok for m in sweep.modules)


def _kallsyms_by_name(guest: Shell) -> dict[str, int]:
    table: dict[str, int] = {}
    for line in guest_sh(guest, "cat /proc/kallsyms").splitlines():
        parts = line.split()
        if len(parts) == 3:
            table.setdefault(parts[2], int(parts[0], 16))
    return table


def test_syscall_table_and_idt_resolve_to_the_kernels_own_symbols(guest: Guest) -> None:
    check_syscalls_and_idt_resolve_to_the_kernels_own_symbols(guest)


def check_syscalls_and_idt_resolve_to_the_kernels_own_symbols(guest: Shell) -> None:
    inside = _kallsyms_by_name(guest)
    with LinuxGuest.open(guest.target) as lg:
        sys_sweep = lg.syscalls()
        live_idt = lg.idt()  # IDTR from QEMU: the cpu_entry_area alias of idt_table (idt_table without registers)
        from vmsentinel.os.linux.views.hooks import read_idt

        table_idt = read_idt(lg.reader, lg.resolver, lg.module_text())  # idt_table itself, memory only
    assert not sys_sweep.problems and not live_idt.problems
    x64 = [e for e in sys_sweep.syscalls if e.table == "x64"]
    assert len(x64) > 400
    for e in x64:
        assert e.owner == "kernel" and e.symbol is not None and "+" not in e.symbol, e
        assert inside[e.symbol] == e.handler, e
        assert e.symbol.startswith(("__x64_sys_", "sys_ni_syscall", "__x64_sys_ni_syscall")), e
    assert [(e.vector, e.handler, e.present) for e in live_idt.idt] == [(e.vector, e.handler, e.present) for e in table_idt.idt]
    for e in live_idt.idt:
        assert e.owner in ("kernel", "kernel-init"), e
        if e.owner == "kernel" and e.symbol and "+" not in e.symbol:
            assert inside[e.symbol] == e.handler
    assert live_idt.idt[0].symbol == "asm_exc_divide_error"


MAPS_AND_FDS = r"""
for pid in $PIDS; do
  echo "== $pid"
  cat /proc/$pid/maps
  for fd in /proc/$pid/fd/*; do echo "fd ${fd##*/} $(readlink $fd)"; done
done
"""


def test_maps_and_open_files_equal_proc(crowd: Guest) -> None:
    guest_sh(crowd, "/root/programs/sockets >/dev/null 2>&1 & syslogd; sleep 0.5")
    with LinuxGuest.open(crowd.target) as lg:
        tasks = [t for t in lg.tasks().tasks if not t.kernel_thread]
        chosen = [t for t in tasks if t.exe in ("/root/programs/threads", "/root/programs/sockets")]
        chosen += [t for t in tasks if t.pid == 1 or t.comm == "syslogd"] + [t for t in tasks if t.comm == "sleep"][:3]
        ours = {t.pid: (lg.maps(t.pid), lg.files(t.pid)) for t in chosen}
    text = guest_sh(crowd, MAPS_AND_FDS.replace("$PIDS", " ".join(str(p) for p in ours)))
    inside_maps: dict[int, list[tuple[int, int, str, int, str, int, str]]] = {}
    inside_fds: dict[int, dict[int, str]] = {}
    pid = 0
    for line in text.splitlines():
        if line.startswith("== "):
            pid = int(line[3:])
            inside_maps[pid], inside_fds[pid] = [], {}
        elif line.startswith("fd "):
            _, fd, target = line.split(" ", 2)
            inside_fds[pid][int(fd)] = target
        elif line.strip():
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            inside_maps[pid].append(
                (start, end, parts[1], int(parts[2], 16), parts[3], int(parts[4]), parts[5].strip() if len(parts) > 5 else "")
            )
    for pid, (maps, files) in ours.items():
        if pid not in inside_maps or not inside_maps[pid]:
            continue  # the process ended between the two looks
        assert not maps.problems and not files.problems, (maps.problems, files.problems)
        assert [(m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path) for m in maps.maps] == inside_maps[pid], pid
        assert {f.fd: f.path for f in files.files} == inside_fds[pid], pid
    assert any(m.path == "[heap]" for maps, _ in ours.values() for m in maps.maps)
    assert any(f.path.startswith("socket:[") for _, files in ours.values() for f in files.files)


NET = "cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6; echo UNIX; cat /proc/net/unix"
TCP_STATE_HEX = {"ESTABLISHED": "01", "LISTEN": "0A", "CLOSE": "07", "TIME_WAIT": "06", "CLOSE_WAIT": "08"}


def _proc_net_address(addr: str) -> tuple[str, int]:
    import ipaddress

    host, port = addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1])), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words)), int(port, 16)


def test_sockets_equal_proc_net(guest: Guest) -> None:
    guest_sh(guest, "/root/programs/sockets >/dev/null 2>&1 & sleep 0.5")
    text = guest_sh(guest, NET)
    with LinuxGuest.open(guest.target) as lg:
        sweep = lg.sockets()
    assert not sweep.problems
    inet_part, unix_part = text.split("UNIX\n")
    inside_inet = {}
    for line in inet_part.splitlines():
        parts = line.split()
        if len(parts) > 9 and parts[0].endswith(":") and parts[9] != "0":
            local, remote = _proc_net_address(parts[1]), _proc_net_address(parts[2])
            inside_inet[int(parts[9])] = (*local, *remote, parts[3])
    ours_inet = {
        s.inode: (s.local_address, s.local_port, s.remote_address, s.remote_port, TCP_STATE_HEX.get(s.state, s.state))
        for s in sweep.sockets
        if s.family != "unix"
    }
    assert ours_inet == inside_inet
    inside_unix = {}
    for line in unix_part.splitlines()[1:]:
        parts = line.split()
        inside_unix[int(parts[6])] = parts[7] if len(parts) > 7 else None
    ours_unix = {s.inode: s.path for s in sweep.sockets if s.family == "unix"}
    # /proc/net/unix lists every unix socket; ours are those some process holds (all of them here)
    assert ours_unix == {i: p for i, p in inside_unix.items() if i in ours_unix}
    assert {"/tmp/vms-test.sock", "@vms-abstract"} <= {p for p in ours_unix.values() if p}
    assert {s.local_port for s in sweep.sockets if s.family != "unix"} >= {7001, 7002, 7003, 7004}


def test_memory_scans_find_every_listed_task_and_module(crowd: Guest) -> None:
    with LinuxGuest.open(crowd.target) as lg:
        tasks = lg.tasks(scan=True)
        modules = lg.modules(scan=True)
    assert not tasks.problems and not modules.problems
    # every live task (threads included) sits in a task_struct slab; only the boot CPU's idle task,
    # init_task (pid 0), is static and not in a slab
    for addr, sources in tasks.seen_by.items():
        if "task_list" in sources or "pid_table" in sources:
            assert "memory_scan" in sources or addr == lg.reader.symbol("init_task"), (hex(addr), sources)
    assert all(set(m.sources) == {"module_list", "sysfs_kobjects", "memory_scan"} for m in modules.modules)
    assert len(modules.modules) >= 6


def test_a_command_line_changes_by_exec_at_once_and_in_place_by_the_next_full_sweep(guest: Guest) -> None:
    """A steady sweep keeps a process's path and command line while its mm, executable file and
    argument area stay (reading them is most of a sweep); an exec changes the mm, so the next sweep
    sees the new program; a rewrite in place is seen by the next full sweep."""
    pid = int(guest_sh(guest, "/root/programs/argv_rewrite before-the-rewrite >/dev/null 2>&1 & echo $!").strip())
    try:
        with LinuxGuest.open(guest.target) as opened:

            def seen(scan: bool = False) -> dict[int, tuple[tuple[str, ...] | None, str | None]]:
                return {t.pid: (t.cmdline, t.exe) for t in opened.tasks(scan=scan).tasks}

            assert seen()[pid][0] == ("/root/programs/argv_rewrite", "before-the-rewrite")
            guest_sh(guest, f"kill -USR1 {pid}; sleep 0.3")
            assert seen(scan=True)[pid][0] == ("/root/programs/argv_rewrite", "x" * len("before-the-rewrite"))
            execs = int(guest_sh(guest, "sh -c 'sleep 1; exec sleep 10005' >/dev/null 2>&1 & echo $!").strip())
            assert seen()[execs] == (("sh", "-c", "sleep 1; exec sleep 10005"), "/bin/busybox")
            guest_sh(guest, "sleep 1.5")
            assert seen()[execs][0] == ("sleep", "10005")  # a steady sweep, right after the exec
    finally:
        kill_matching(guest, "argv_rewrite")
        kill_matching(guest, "sleep 1000")
