"""The process side of the rootkit and malware catalogue on real guests (6.1 and 6.12, KASLR on): each
technique is performed inside the guest by a test program or busybox, then ``check`` (one first look,
no history) must report it with the right evidence, and must stop reporting it once the technique is
undone. A clean guest gives none of these findings, and the views that feed them (``mounts``,
``envars``, ``ptrace``) show what the guest holds.

Techniques: a user process dressed up as a kernel thread (``masquerade``: prctl name and argv[0]
rewritten); ``LD_PRELOAD``/``LD_AUDIT`` in a process's environment; a process attached with ptrace by
another (``ptracer``); a file mapped writable and executable (``wxmap``); a code page patched in one of
two processes running the same program (``selfpatch``); a bind mount over ``/proc/PID`` that hides a
process from ps inside the guest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.guest.conftest import Guest, guest_sh, kill_matching, vmsentinel

pytestmark = pytest.mark.guest
MINE = ("process_masquerade", "linker_hijack", "ptrace_attach", "wx_file_mapping", "patched_code_page", "proc_mount")
PROGRAMS = "/root/programs"


def _check(guest: Guest) -> list[dict[str, Any]]:
    proc = vmsentinel("check", guest.target, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return [f for f in json.loads(proc.stdout) if f["detector"] in MINE]


def _found(guest: Guest, detector: str) -> list[dict[str, Any]]:
    return [f for f in _check(guest) if f["detector"] == detector]


def _view(guest: Guest, view: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(vmsentinel(view, guest.target, "--json").stdout)
    return records


def _start(guest: Guest, command: str) -> int:
    """Start ``command`` in the background in the guest; its pid."""
    return int(guest_sh(guest, f"{command} >/dev/null 2>&1 & echo $!").split()[-1])


def _mountinfo(guest: Guest) -> tuple[int, list[tuple[object, ...]]]:
    """The guest's own /proc/self/mountinfo (its mount namespace's number and mounts), as the view's fields."""
    text = guest_sh(guest, "readlink /proc/self/ns/mnt; cat /proc/self/mountinfo")
    first, *lines = text.splitlines()
    rows = []
    for line in lines:
        before, after = line.split(" - ")
        mount_id, parent, dev, root, mountpoint, options, *optional = before.split()
        fs, source, super_options = after.split()[:3]
        generic = super_options.split(",")[0]  # rw or ro; the rest is the filesystem's own
        rows.append((int(mount_id), int(parent), dev, root, mountpoint, options, " ".join(optional), fs, source, generic))
    return int(first.strip().removeprefix("mnt:[").removesuffix("]")), rows


def test_a_clean_guest_gives_none_of_these_findings_and_the_views_read(guest: Guest) -> None:
    assert _check(guest) == []
    namespace, expected = _mountinfo(guest)
    seen = [
        (
            m["mount_id"],
            m["parent_id"],
            m["dev"],
            m["root"],
            m["mountpoint"],
            m["options"],
            m["propagation"],
            m["fs"],
            m["source"],
            m["sb_options"].split(",")[0],
        )
        for m in _view(guest, "mounts")
        if m["namespace"] == namespace
    ]
    assert sorted(seen) == sorted(expected) and len(seen) >= 7  # what mountinfo says inside, field for field
    env = {(e["pid"], e["key"], e["value"]) for e in _view(guest, "envars")}
    init = guest_sh(guest, "tr '\\0' '\\n' < /proc/1/environ").split()
    assert init and {(1, *v.split("=", 1)) for v in init} <= env  # what the kernel started init with
    assert _view(guest, "ptrace") == []


def test_a_user_process_dressed_as_a_kernel_thread(guest: Guest) -> None:
    pid = _start(guest, f"{PROGRAMS}/masquerade kworker/0:9")
    try:
        guest_sh(guest, "sleep 0.3")
        # inside the guest, ps shows it as a kernel thread
        assert "[kworker/0:9]" in guest_sh(guest, f"ps | grep '^ *{pid} '")
        found = _found(guest, "process_masquerade")
        assert [(f["evidence"]["pid"], f["evidence"]["comm"], f["evidence"]["argv0"]) for f in found] == [
            (pid, "kworker/0:9", "[kworker/0:9]")
        ]
        assert found[0]["severity"] == "high" and found[0]["evidence"]["exe"] == f"{PROGRAMS}/masquerade"
        assert found[0]["attack"]["technique_id"] == "T1036.005"
    finally:
        guest_sh(guest, f"kill -9 {pid}; true")
        kill_matching(guest, "[kworker/0:9]")
    assert _found(guest, "process_masquerade") == []


def test_ld_preload_and_ld_audit_in_a_process_environment(guest: Guest) -> None:
    pid = _start(guest, "LD_PRELOAD=/tmp/libvms.so LD_AUDIT=/dev/shm/vmsaudit.so sleep 100611")
    try:
        assert "LD_PRELOAD=/tmp/libvms.so" in guest_sh(guest, f"tr '\\0' '\\n' < /proc/{pid}/environ")
        found = _found(guest, "linker_hijack")
        assert sorted((f["evidence"]["pid"], f["evidence"]["variable"], f["evidence"]["value"]) for f in found) == [
            (pid, "LD_AUDIT", "/dev/shm/vmsaudit.so"),
            (pid, "LD_PRELOAD", "/tmp/libvms.so"),
        ]
        assert all(f["severity"] == "high" and f["attack"]["technique_id"] == "T1574.006" for f in found)
        env = {(e["pid"], e["key"], e["value"]) for e in _view(guest, "envars")}
        assert (pid, "LD_PRELOAD", "/tmp/libvms.so") in env
    finally:
        kill_matching(guest, "sleep 100611")
    assert _found(guest, "linker_hijack") == []


def test_a_process_attached_with_ptrace_by_another(guest: Guest) -> None:
    tracee = _start(guest, "sleep 100612")
    tracer = 0
    try:
        tracer = int(
            guest_sh(
                guest,
                f"rm -f /tmp/ptracer.out; {PROGRAMS}/ptracer {tracee} >/tmp/ptracer.out 2>&1 & t=$!; "
                "for i in $(seq 50); do grep -q attached /tmp/ptracer.out && break; sleep 0.1; done; "
                "grep -q attached /tmp/ptracer.out && echo $t",
            ).split()[-1]
        )
        assert f"TracerPid:\t{tracer}" in guest_sh(guest, f"cat /proc/{tracee}/status")
        found = _found(guest, "ptrace_attach")
        facts = [(f["evidence"]["pid"], f["evidence"]["tracer_pid"], f["evidence"]["tracer_name"]) for f in found]
        assert facts == [(tracee, tracer, "ptracer")]
        assert found[0]["severity"] == "high" and found[0]["attack"]["technique_id"] == "T1055.008"
        links = _view(guest, "ptrace")
        assert [(link["tracee"], link["tracer"], link["real_parent"]) for link in links] == [(tracee, tracer, 1)]
    finally:
        if tracer:
            guest_sh(guest, f"kill -9 {tracer}; true")
        kill_matching(guest, "ptracer")
        kill_matching(guest, "sleep 100612")
    assert _found(guest, "ptrace_attach") == []


def test_a_file_mapped_writable_and_executable(guest: Guest) -> None:
    pid = _start(guest, f"{PROGRAMS}/wxmap /root/vms-wx.bin")
    try:
        guest_sh(guest, "sleep 0.3")
        assert "rwxp" in guest_sh(guest, f"grep vms-wx.bin /proc/{pid}/maps")
        found = _found(guest, "wx_file_mapping")
        assert [(f["evidence"]["pid"], f["evidence"]["path"], f["evidence"]["perms"]) for f in found] == [
            (pid, "/root/vms-wx.bin", "rwxp")
        ]
    finally:
        kill_matching(guest, "wxmap")
        guest_sh(guest, "rm -f /root/vms-wx.bin")
    assert _found(guest, "wx_file_mapping") == []


def test_a_code_page_patched_in_one_of_two_processes(guest: Guest) -> None:
    started = guest_sh(
        guest,
        f"rm -f /tmp/selfpatch.pid; {PROGRAMS}/selfpatch /tmp/selfpatch.pid >/dev/null 2>&1 & "
        "for i in $(seq 50); do [ -s /tmp/selfpatch.pid ] && break; sleep 0.1; done; cat /tmp/selfpatch.pid",
    )
    parent, child = (int(x) for x in started.split()[-2:])
    try:
        # both map the program's code read-execute again: nothing in the maps gives the patch away
        assert "rwx" not in guest_sh(guest, f"grep selfpatch /proc/{parent}/maps")
        found = _found(guest, "patched_code_page")
        assert len(found) == 1, found
        evidence = found[0]["evidence"]
        assert evidence["path"] == f"{PROGRAMS}/selfpatch" and evidence["differing_pids"] == [parent]
        original, patched = evidence["copies"]
        assert original["pids"] == [child] and original["private"] is False  # the page cache's page
        assert patched["pids"] == [parent] and patched["private"] is True  # a copy of its own
        assert patched["bytes_changed"] == 1 and patched["observed"].startswith("cc")  # the int3 it wrote
        assert original["addresses"] == patched["addresses"]
    finally:
        kill_matching(guest, "selfpatch")
    assert _found(guest, "patched_code_page") == []


def test_a_bind_mount_over_proc_pid_hides_a_process(guest: Guest) -> None:
    pid = _start(guest, "sleep 100613")
    try:
        guest_sh(guest, f"mkdir -p /tmp/vms-empty; mount -o bind /tmp/vms-empty /proc/{pid}")
        assert "100613" not in guest_sh(guest, "ps")  # ps inside the guest no longer sees it
        found = _found(guest, "proc_mount")
        assert [(f["evidence"]["mountpoint"], f["evidence"]["hidden_pid"], f["evidence"]["root"]) for f in found] == [
            (f"/proc/{pid}", pid, "/vms-empty")
        ]
        mounts = [m for m in _view(guest, "mounts") if m["mountpoint"] == f"/proc/{pid}"]
        assert [(m["fs"], m["root"]) for m in mounts] == [("tmpfs", "/vms-empty")]
    finally:
        guest_sh(guest, f"umount /proc/{pid} 2>/dev/null; kill -9 {pid}; rmdir /tmp/vms-empty; true")
    assert _found(guest, "proc_mount") == []
