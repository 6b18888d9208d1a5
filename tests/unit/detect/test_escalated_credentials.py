"""Root that no legitimate path gave, from one snapshot: a user process on init_cred or on another's
credentials, and a root process whose ancestry reaches a non-root one through no set-uid root program.
What is left alone: root from init or a kernel thread, through sudo (set-uid root), threads of one
process, a program that could not be read, and an ancestry that loops."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from tests.unit.detect.test_detectors import snapshot, task

from vmsentinel.detect.registry import run_detectors
from vmsentinel.os.records import Task

INIT_CRED = 0xFFFFFFFF82A50000


def proc(pid: int, ppid: int, uid: int, setuid_root: bool | None = False, kthread: bool = False, cred: int = 0) -> Task:
    return replace(
        task(pid, uid),
        ppid=ppid,
        kernel_thread=kthread,
        exe_setuid_root=None if kthread else setuid_root,
        cred=cred or 0xFFFF888100000000 + pid * 0x100,
    )


def titles(tasks: list[Task]) -> list[str]:
    snap = snapshot(tasks)
    snap.symbols = SimpleNamespace(init_cred=INIT_CRED)  # type: ignore[assignment]
    return [f.title for f in run_detectors("t", snap, None, None, ["escalated_credentials"])]


BASE = [proc(1, 0, 0), proc(2, 0, 0, kthread=True, cred=INIT_CRED), proc(3, 2, 0, kthread=True, cred=INIT_CRED)]


def test_a_user_process_on_the_kernels_credentials_is_found_and_kernel_threads_are_not() -> None:
    assert titles([*BASE, proc(100, 1, 1000), proc(101, 100, 0, cred=INIT_CRED)]) == [
        "process 101 (sleep) runs on the kernel's own credentials (init_cred)",
        "process 101 (sleep) is root, but its ancestor 100 (sleep) is not and no set-uid root program lies between",
    ]


def test_two_processes_on_one_credential_are_found() -> None:
    shared = 0xFFFF888100777700
    found = titles([*BASE, proc(200, 1, 1000, cred=shared), proc(201, 1, 1000, cred=shared)])
    assert found == ["process 201 (sleep) shares its credentials with process 200 (sleep)"]


def test_root_after_an_exec_under_a_non_root_ancestor_is_found_through_root_processes_between() -> None:
    chain = [*BASE, proc(300, 1, 1000), proc(301, 300, 0), proc(302, 301, 0)]  # user -> escalated -> its child
    assert titles(chain) == [
        "process 301 (sleep) is root, but its ancestor 300 (sleep) is not and no set-uid root program lies between",
        "process 302 (sleep) is root, but its ancestor 300 (sleep) is not and no set-uid root program lies between",
    ]


def test_legitimate_roots_are_left_alone() -> None:
    legit = [
        *BASE,
        proc(400, 1, 0),  # a daemon started by init
        proc(401, 400, 1000),  # a user's shell under it
        proc(402, 401, 0, setuid_root=True),  # sudo: set-uid root
        proc(403, 402, 0),  # the command sudo runs
        proc(404, 2, 0),  # a user-mode helper the kernel started
        proc(405, 401, 0, setuid_root=None),  # a program that could not be read: no claim
        proc(406, 405, 0),
    ]
    assert titles(legit) == []


def test_an_ancestry_that_loops_ends() -> None:
    looped = [*BASE, proc(500, 501, 0), proc(501, 500, 0)]
    assert titles(looped) == []
