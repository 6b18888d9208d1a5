"""Privilege escalation that execs at once, caught from its result on real guests (6.1 and 6.12, KASLR
on) by ``check`` with no history: a user process (uid 1000, its parent too) is put on the kernel's own
credentials by the test rootkit, as an exploit's ``commit_creds(&init_cred)`` does, and then execs a
program that is not set-uid root at once. Before the exec it runs on init_cred; after it, it is root
under a non-root parent with no set-uid root program between. Unloading the module and killing the
processes leaves no such finding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.guest.conftest import KERNEL_SERIES, Guest, LabPool, guest_sh, kill_matching, vmsentinel
from vmsentinel.lab.kmod import build_module, insert_module

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"
MARK = "100321"


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def victim(request: pytest.FixtureRequest, lab_pool: LabPool) -> Guest:
    return lab_pool.fresh(request.param, "escalate")


def _escalations(guest: Guest) -> list[dict[str, object]]:
    proc = vmsentinel("check", guest.target, "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return [f["evidence"] | {"title": f["title"]} for f in json.loads(proc.stdout) if f["detector"] == "escalated_credentials"]


def test_root_handed_over_and_an_exec_at_once_is_found_on_first_sight(victim: Guest, tmp_path: Path) -> None:
    assert _escalations(victim) == []
    started = guest_sh(
        victim,
        "rm -f /tmp/go /tmp/child.pid; "
        f"(/root/programs/escalate_exec 1000 /tmp/child.pid /tmp/go /bin/sleep {MARK} >/dev/null 2>&1 &); "
        "for i in $(seq 50); do [ -s /tmp/child.pid ] && break; sleep 0.1; done; cat /tmp/child.pid",
    )
    child = int(started.split()[-1])
    ko = build_module(str(victim.info["kernel_package"]), ROOTKIT, tmp_path)
    try:
        assert insert_module(victim.name, ko, f"cred_pid={child} init_cred_addr=0x$(sym init_cred)") == ""
        before = _escalations(victim)
        assert [(e["pid"], e["uid"]) for e in before] == [(child, 0), (child, 0)]
        assert "init_cred" in str(before[0]["title"]) and before[1]["ancestor_uid"] == 1000
        guest_sh(victim, "touch /tmp/go; sleep 0.5")  # the payload execs at once
        assert f"/bin/sleep {MARK}" in guest_sh(victim, f"cat /proc/{child}/cmdline | tr '\\0' ' '")
        after = _escalations(victim)
        assert [(e["pid"], e["exe"], e["uid"], e["ancestor_uid"]) for e in after] == [(child, "/bin/busybox", 0, 1000)]
        assert "init_cred" not in str(after[0]["title"])  # the exec gave it credentials of its own, still root
    finally:
        guest_sh(victim, "rmmod vmsrootkit; true")
        kill_matching(victim, MARK)
        kill_matching(victim, "escalate_exec")
    assert _escalations(victim) == []
