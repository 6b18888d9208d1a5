"""Detection on real guests (6.1 and 6.12, KASLR on) against a real rootkit
module (vmsentinel/lab/rootkit) built for each kernel from Debian's
headers: a clean guest gives no findings; after the rootkit loads, every one of
its tricks is found, and confirmed by a second read."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import KERNEL_SERIES, Guest, LabPool, guest_sh
from vmsentinel.detect.baseline import Baseline
from vmsentinel.detect.registry import run_detectors
from vmsentinel.lab.kmod import build_module, insert_module
from vmsentinel.os.linux.guest import LinuxGuest
from vmsentinel.pipeline.sweep import confirm
from vmsentinel.sinks.console import ConsoleSink
from vmsentinel.sinks.ocsf import OcsfJsonl
from vmsentinel.sinks.sqlite_store import SqliteStore
from vmsentinel.watch.watcher import Watcher

pytestmark = pytest.mark.guest
ROOTKIT = Path(__file__).parents[2] / "src" / "vmsentinel" / "lab" / "rootkit"


@pytest.fixture(scope="module", params=KERNEL_SERIES)
def victim(request: pytest.FixtureRequest, lab_pool: LabPool, tmp_path_factory: pytest.TempPathFactory) -> Guest:
    return lab_pool.fresh(request.param, "rk")


@pytest.fixture(
    scope="module", params=[(p, s) for p in ("lab", "libvirt") for s in KERNEL_SERIES], ids=lambda ps: f"{ps[0]}-{ps[1]}"
)
def any_victim(request: pytest.FixtureRequest, lab_pool: LabPool) -> Any:
    """A guest for the rootkit, reached as a lab guest (QEMU's shared RAM file and QMP) and as a libvirt
    domain (anonymous RAM read from its QEMU process, no monitor)."""
    path, series = request.param
    if path == "lab":
        return lab_pool.fresh(series, "rk")
    return request.getfixturevalue("libvirt_pool").get(series, "rootkit")


def _load_rootkit(guest: Any, ko: Path, hide: int, escalate: int) -> None:
    insert_module(
        guest.name,
        ko,
        f"hide_pid={hide} hide_self=1 root_pid={escalate} tasklist_lock_addr=0x$(sym tasklist_lock) "
        "syscall_table=0x$(sym sys_call_table) syscall_nr=39 idt_table=0x$(sym idt_table) "
        "idt_vector=128 patch_addr=0x$(sym __x64_sys_getpid) kprobe_hook=1 ftrace_hook=1",
        None if isinstance(guest, Guest) else guest.run,
    )


def test_clean_guest_then_rootkit(any_victim: Any, tmp_path: Path) -> None:
    victim = any_victim
    ko = build_module(str(victim.info["kernel_package"]), ROOTKIT, tmp_path)
    hidden = int(guest_sh(victim, "sleep 100000 >/dev/null 2>&1 & echo $!").strip())
    user = int(
        guest_sh(
            victim,
            "su -s /bin/sh nobody -c 'exec sleep 100001' >/dev/null 2>&1 & sleep 0.3; "
            "pidof sleep | tr ' ' '\\n' | sort -n | tail -1",
        ).strip()
    )
    ocsf, db = tmp_path / "findings.jsonl", tmp_path / "store.db"
    with LinuxGuest.open(victim.target) as guest:
        first = guest.snapshot(with_code=True, scan=True)
        baseline = Baseline.take(first)
        assert not baseline.problems and len(baseline.patch_sites) > 1000
        second = guest.snapshot(with_code=True, scan=True)
        clean = run_detectors(victim.target, second, first, baseline)
        assert clean == [], [f.title for f in clean]  # no false alarm on a clean, running guest
        assert any(t.pid == user and t.uid == 65534 for t in second.tasks.tasks)

        _load_rootkit(victim, ko, hidden, user)
        # busybox picks its applet from argv[0], so the copies are named after one
        guest_sh(
            victim,
            "cp /bin/busybox /dev/shm/sleep; /dev/shm/sleep 100003 >/dev/null 2>&1 & "
            "mkdir -p /root/gone; cp /bin/busybox /root/gone/sleep; /root/gone/sleep 100004 >/dev/null 2>&1 & "
            "/root/programs/anonexec >/dev/null 2>&1 & /root/programs/bpfhook >/tmp/bpfhook.out 2>&1 & "
            "sleep 0.3; rm /root/gone/sleep",
        )
        anon = int(guest_sh(victim, "pidof anonexec").strip())
        after = guest.snapshot(with_code=True, scan=True)
        found = run_detectors(victim.target, after, second, baseline)
        again = run_detectors(victim.target, guest.snapshot(with_code=True, scan=True), second, baseline)
        confirmed = confirm(found, again)
    by_detector: dict[str, list[str]] = {}
    for f in confirmed:
        by_detector.setdefault(f.detector, []).append(json.dumps(f.evidence, sort_keys=True))
    # exactly the rootkit's tricks: nothing else in the kernel or its modules is reported
    assert set(by_detector) == {
        "hidden_process",
        "hidden_module",
        "syscall_hook",
        "idt_hook",
        "kernel_code_modified",
        "privilege_escalation",
        "unsigned_module",
        "mechanism_hook",
        "injected_code",
        "anonymous_exec_memory",
        "kernel_taint",
        "bpf_program",
    }
    assert all(f.evidence["owner"] == "kernel" for f in confirmed if f.detector == "kernel_code_modified")
    assert f'"pid": {hidden}' in " ".join(by_detector["hidden_process"])
    assert '"module": "vmsrootkit"' in " ".join(by_detector["hidden_module"])
    assert '"slot": "x64:39"' in " ".join(by_detector["syscall_hook"])
    assert '"slot": "cpu0:128"' in " ".join(by_detector["idt_hook"])
    assert "__x64_sys_getpid" in " ".join(by_detector["kernel_code_modified"])
    assert f'"pid": {user}' in " ".join(by_detector["privilege_escalation"])
    assert '"module": "vmsrootkit"' in " ".join(by_detector["unsigned_module"])
    suspicious = " ".join(by_detector["injected_code"])
    assert '"exe": "/dev/shm/sleep"' in suspicious and '"exe": "/root/gone/sleep (deleted)"' in suspicious
    assert f'"pid": {anon}' in " ".join(by_detector["anonymous_exec_memory"])
    taint = json.loads(by_detector["kernel_taint"][0])["new_taint"]
    assert "O" in taint and "E" in taint  # out-of-tree, unsigned
    bpf = [json.loads(e) for e in by_detector["bpf_program"]]
    assert [(b["name"], b["type"], b["attach_to"]) for b in bpf] == [("vms_hook", "kprobe", "kprobe:__x64_sys_getdents64")]
    hooks = " ".join(by_detector["mechanism_hook"])
    assert '"mechanism": "kprobe"' in hooks and '"mechanism": "ftrace"' in hooks and "module:vmsrootkit" in hooks
    assert all(f.confirmed for f in confirmed)
    # the same findings through the sinks: OCSF lines and the SQLite store
    jsonl, store = OcsfJsonl(ocsf), SqliteStore(db)
    jsonl.write(confirmed)
    store.write(confirmed)
    jsonl.close()
    store.close()
    events = [json.loads(line) for line in ocsf.read_text().splitlines()]
    assert {e["class_uid"] for e in events} == {2004} and len(events) == len(confirmed)
    assert all(e["finding_info"]["attacks"][0]["technique"]["uid"].startswith("T") for e in events)
    rows = sqlite3.connect(db).execute("SELECT detector FROM findings").fetchall()
    assert sorted(r[0] for r in rows) == sorted(f.detector for f in confirmed)


def test_watcher_reports_once_and_survives_a_vanished_guest(victim: Guest, tmp_path: Path) -> None:
    ocsf, db = tmp_path / "w.jsonl", tmp_path / "w.db"
    jsonl, store = OcsfJsonl(ocsf), SqliteStore(db)
    events: list[str] = []
    watcher = Watcher(
        [victim.target, "lab:no-such-guest"],
        interval=0.2,
        sinks=[jsonl, store, ConsoleSink(lambda t, m: events.append(f"{t}: {m}"))],
    )
    watcher.run(max_sweeps=1)  # baseline (the rootkit from the previous test is part of it now)
    guest_sh(victim, "sleep 100002 >/dev/null 2>&1 &")
    watcher.run(max_sweeps=3)
    watcher.close()
    jsonl.close()
    store.close()
    assert any("baseline taken" in e for e in events)
    assert any("lab:no-such-guest: unreachable" in e for e in events)
    starts = sqlite3.connect(db).execute("SELECT cmdline FROM process_events WHERE event='start'").fetchall()
    assert ("sleep 100002",) in starts
    # findings that need no baseline (hidden objects, foreign hooks) are reported once, not every sweep
    lines = ocsf.read_text().splitlines()
    keys = [json.loads(line)["finding_info"]["uid"] for line in lines]
    assert keys and len(keys) == len(set(keys))


def test_responses_dump_cut_network_and_pause(victim: Guest, tmp_path: Path) -> None:
    from vmsentinel.access.qmp import Qmp
    from vmsentinel.memory import open_image
    from vmsentinel.pipeline.policy import load_policy

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f"""
interval = 0.2
[responses]
critical = ["dump", "cut_network", "pause"]
[sinks]
dumps = "{tmp_path / "dumps"}"
""")
    policy = load_policy(policy_file)
    store = SqliteStore(tmp_path / "r.db")
    watcher = Watcher([victim.target], policy.interval, [store], policy=policy)
    try:
        watcher.run(max_sweeps=2)  # baseline, then the rootkit's critical findings and their responses
    finally:
        watcher.close()
    records = store.responses()
    store.close()
    qmp = Qmp(str(victim.info["qmp_socket"]))
    qmp.connect()
    try:
        assert qmp.status() == "paused"
        assert {r["action"] for r in records} >= {"dump", "cut_network", "pause"} and all(r["ok"] for r in records)
        dumps = [str(r["detail"]) for r in records if r["action"] == "dump"]
        with open_image(dumps[0]) as core:
            assert core.kind == "elf-core" and core.size() >= 256 << 20
        qmp.cont()
    finally:
        qmp.close()
    assert guest_sh(victim, "cat /sys/class/net/eth0/carrier").strip() == "0"  # the link stays cut after resume


def test_sigma_rule_matches_a_new_process_within_two_sweeps(victim: Guest, tmp_path: Path) -> None:
    from vmsentinel.pipeline.policy import load_policy

    rules = Path(__file__).parents[1] / "data" / "sigma"
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f'interval = 1.0\n[sigma]\nrules = ["{rules}"]\n')
    policy = load_policy(policy_file)
    store = SqliteStore(tmp_path / "s.db")
    watcher = Watcher([victim.target], policy.interval, [store], policy=policy)
    try:
        watcher.run(max_sweeps=1)  # baseline
        guest_sh(victim, "nc -l -p 4444 >/dev/null 2>&1 &")
        watcher.run(max_sweeps=2)
    finally:
        watcher.close()
    sigma = [r for r in store.findings() if r["detector"] == "sigma"]
    store.close()
    assert len(sigma) == 1 and "nc -l -p 4444" in str(sigma[0]["evidence"])


def test_yara_rules_match_a_new_process_and_a_new_module_within_two_sweeps(victim: Guest, tmp_path: Path) -> None:
    """The default cadence (full sweeps every 5th) still looks into what is new on every sweep."""
    import shutil

    from vmsentinel.pipeline.policy import load_policy

    rules = Path(__file__).parents[1] / "data" / "yara"
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f'interval = 1.0\n[yara]\nrules = ["{rules}"]\n')
    # the test rootkit's source under another name: a second module that carries its strings
    source = tmp_path / "vmsyara"
    shutil.copytree(ROOTKIT, source)
    (source / "vmsrootkit.c").rename(source / "vmsyara.c")
    (source / "Makefile").write_text((source / "Makefile").read_text().replace("vmsrootkit", "vmsyara"))
    ko = build_module(str(victim.info["kernel_package"]), source, tmp_path)
    store = SqliteStore(tmp_path / "y.db")
    watcher = Watcher([victim.target], 1.0, [store], policy=load_policy(policy_file))
    try:
        watcher.run(max_sweeps=2)  # baseline (a full sweep), then one that is not
        pid = guest_sh(victim, "sh -c 'sleep 100005; : vmsentinel-yara-test-marker-7f3a' >/dev/null 2>&1 & echo $!")
        insert_module(victim.name, ko)
        watcher.run(max_sweeps=2)
    finally:
        watcher.close()
    assert watcher.states[0].sweeps == 4 and watcher.scan_every == 5  # no full sweep after the baseline
    yara = [r for r in store.findings() if r["detector"] == "yara"]
    store.close()
    assert any(f'"pid": {int(pid)}' in str(r["evidence"]) for r in yara), yara
    assert any(
        '"region": "module vmsyara"' in str(r["evidence"]) and "vmsentinel_test_rootkit" in str(r["evidence"]) for r in yara
    ), yara


class _Events:
    """Every event a watch hands its sinks, in order."""

    def __init__(self) -> None:
        import threading

        self.events: list[object] = []
        self.lock = threading.Lock()

    def handle(self, events: list[object]) -> None:
        with self.lock:
            self.events.extend(events)

    def close(self) -> None:
        pass


def test_an_inline_hook_is_found_within_two_sweeps_while_only_written_pages_are_hashed(lab_pool: LabPool, tmp_path: Path) -> None:
    """With host dirty tracking on, a one-byte inline hook written into kernel text from inside the guest
    (the test rootkit's ``patch_addr``) is found within two sweeps of the write. Needs a host kernel that
    sets soft-dirty bits (CONFIG_MEM_SOFT_DIRTY); without one, the fall-back to hashing every page is
    what the watch tests check."""
    import time

    from vmsentinel.access.dirty_log import host_sets_soft_dirty
    from vmsentinel.events import CodeTracking, FindingRaised, SweepDone
    from vmsentinel.pipeline.policy import Policy

    if not host_sets_soft_dirty():
        pytest.skip("this host's kernel sets no soft-dirty bits (built without CONFIG_MEM_SOFT_DIRTY): nothing to track with")
    victim = lab_pool.fresh("6.1", "tracked")
    ko = build_module(str(victim.info["kernel_package"]), ROOTKIT, tmp_path)
    sink = _Events()
    watcher = Watcher(
        [victim.target], 0.5, [sink], policy=Policy(interval=0.5, detectors=["kernel_code_modified"]), scan_every=1000
    )
    import threading

    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not any(isinstance(e, SweepDone) for e in sink.events[1:]) and time.monotonic() < deadline:
            time.sleep(0.1)
        tracking = [e for e in sink.events if isinstance(e, CodeTracking)]
        assert tracking and tracking[-1].incremental, tracking
        with sink.lock:
            before = len(sink.events)
        insert_module(victim.name, ko, "patch_addr=0x$(sym __x64_sys_getpid)")
        while time.monotonic() < deadline and not any(isinstance(e, FindingRaised) for e in sink.events[before:]):
            time.sleep(0.1)
        with sink.lock:
            after = sink.events[before:]
        found = next(i for i, e in enumerate(after) if isinstance(e, FindingRaised))
        assert "__x64_sys_getpid" in str(after[found].finding.evidence)  # type: ignore[attr-defined]
        # the sweep under way when the hook was written may miss it; the next one must not
        missed = [e for e in after[:found] if isinstance(e, SweepDone)]
        assert len(missed) <= 1, f"found only after {len(missed)} sweeps that missed it"
        assert not any(isinstance(e, CodeTracking) and not e.incremental for e in after), "tracking was dropped"
    finally:
        watcher.stop()
        runner.join(timeout=60)
        watcher.close()
        guest_sh(victim, "rmmod vmsrootkit; true")
